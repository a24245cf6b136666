"""Writing a computed patch (patch.py) of an opened checkpoint (checkpoints.py): nothing here decides anything, and
nothing is read but the files the `Checkpoint` already holds.

Everything else is kept: in a safetensors file the header entries, their order, the other tensors' bytes and the
file metadata are copied as they are, and only the bias bytes change; in a PyTorch file the loaded object is saved
again with only the bias replaced, in the main state dict and in every copy beside it; a Hugging Face folder is
copied whole, with each changed file rewritten. Writes are atomic: nothing is left behind when one fails.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import CheckpointError, OptionError, OutputError
from ..data.writers import (atomic_path, check_output, check_output_folder, stage_folder, temporary_prefix,
                            torch_save, write_text)
from .checkpoints import (PATCH_FILE, PATCH_METADATA_KEY, TORCH_SUFFIXES, Checkpoint, WeightFile, is_safetensors,
                          patch_record_path)

TORCH_TO_SAFETENSORS = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}


def _weight_of(bias: str) -> str:
    return bias[: -len("bias")] + "weight"


def file_changes(checkpoint: Checkpoint, patch) -> dict[Path, dict[tuple, tuple[dict, dict]]]:
    """Every file the patch rewrites, with the changes to each state dict in it: {file: {key path: (replace, add)}}
    (a safetensors file has one state dict, at key ()). A new bias goes to the file holding its weight."""
    changes: dict[Path, dict] = {}
    for weights in checkpoint.weights:
        replace, add = (patch.replace, patch.add) if not weights.label else patch.copies.get(weights.label, ({}, {}))
        for names, slot in ((replace, 0), (add, 1)):
            for name, tensor in names.items():
                file = weights.tensors[name if slot == 0 else _weight_of(name)].file
                key = checkpoint.files[file].key_path(weights.key)
                changes.setdefault(file, {}).setdefault(key, ({}, {}))[slot][name] = tensor
    return changes


def _write_file(file: WeightFile, target: Path, changes: dict, record: dict) -> None:
    """Write `file` to `target` with `changes` ({key path: (replace, add)}) and the provenance `record`."""
    if is_safetensors(file.path):
        replace, add = changes.get((), ({}, {}))
        write_safetensors(file, target, replace, add, {PATCH_METADATA_KEY: json.dumps(record)})
    else:
        write_torch(file, target, changes, record)


def _tensor_bytes(tensor) -> bytes:
    import torch

    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def write_safetensors(file: WeightFile, target: Path, replace: dict, add: dict, metadata: dict) -> None:
    """Copy the safetensors `file` to `target`, replacing the bytes of the tensors in `replace` (same dtype and
    shape), appending the tensors in `add`, and merging `metadata` into __metadata__. Everything else is copied
    unchanged."""
    source, header, data_start = file.path, file.header, file.data_start
    new_header = {}
    if "__metadata__" not in header:
        new_header["__metadata__"] = {}
    end = 0
    for name, entry in header.items():
        new_header[name] = dict(entry) if name == "__metadata__" else entry
        if name != "__metadata__":
            end = max(end, entry["data_offsets"][1])
    # transformers refuses a safetensors file whose metadata lacks "format"; files saved without metadata get "pt"
    new_header["__metadata__"] = {"format": "pt", **(new_header["__metadata__"] or {}), **metadata}
    appended = []
    for name, tensor in add.items():
        data = _tensor_bytes(tensor)
        dtype = TORCH_TO_SAFETENSORS[str(tensor.dtype).replace("torch.", "")]
        new_header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [end, end + len(data)]}
        appended.append(data)
        end += len(data)
    encoded = json.dumps(new_header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        writer.write(len(encoded).to_bytes(8, "little"))
        writer.write(encoded)
        new_start = 8 + len(encoded)
        reader.seek(data_start)
        shutil.copyfileobj(reader, writer, 1 << 24)
        for data in appended:
            writer.write(data)
        for name, tensor in replace.items():
            begin, stop = header[name]["data_offsets"]
            data = _tensor_bytes(tensor)
            if len(data) != stop - begin:
                raise CheckpointError(f"new bytes for {name!r} do not fit its slot", source)
            writer.seek(new_start + begin)
            writer.write(data)


def write_torch(file: WeightFile, target: Path, changes: dict, record: dict) -> None:
    """Save the loaded object of `file` again to `target` with, in each state dict `changes` names ({key path:
    (replace, add)}), the tensors in `replace` swapped and those in `add` inserted right after their layer's weight.
    Every other key of a training checkpoint (optimizer, epoch, args, ...) is kept. The provenance `record` goes
    into the changed state dicts' _metadata (which load_state_dict ignores for names that are no module), and beside
    the state dict in a training checkpoint."""
    main = file.layout.main
    new_obj = _changed_state(file.state(main), *changes.get(main, ({}, {})), record)
    if main:
        new_obj = _with(file.obj, main, new_obj)
        for key in file.layout.copies:
            if key in changes:
                new_obj = _with(new_obj, key, _changed_state(file.state(key), *changes[key], record))
        new_obj = _with(new_obj, main[:-1] + (PATCH_METADATA_KEY,), record)
    torch_save(new_obj, target)


def _with(obj, key: tuple, value):
    """A shallow copy of the nested dict `obj` with `value` at key path `key` (the containers on the path copied,
    everything else shared)."""
    outer = type(obj)(obj)
    outer[key[0]] = value if len(key) == 1 else _with(obj[key[0]], key[1:], value)
    return outer


def _changed_state(state: dict, replace: dict, add: dict, record: dict) -> dict:
    # a plain dict becomes an OrderedDict, whose _metadata carries the record inside the file too
    new_state = type(state)() if type(state) is not dict else collections.OrderedDict()
    for name, tensor in state.items():
        new_state[name] = replace.get(name, tensor)
        for added, value in add.items():
            if name == added[: -len("bias")] + "weight":
                new_state[added] = value
    if hasattr(state, "_metadata"):
        new_state._metadata = type(state._metadata)(state._metadata)
    elif isinstance(new_state, collections.OrderedDict):
        new_state._metadata = collections.OrderedDict()
    if hasattr(new_state, "_metadata"):
        new_state._metadata[PATCH_METADATA_KEY] = record
    return new_state


def write_checkpoint(checkpoint: Checkpoint, patch, out: Path | None, force: bool = False,
                     in_place: bool = False, link: bool = False, inputs=()) -> list[str]:
    """Write the patched checkpoint to `out` (or over the input with in_place), atomically; `inputs` are other
    files the output must not replace. Returns notes."""
    if in_place == (out is not None):
        raise OptionError("give `out`, or `in_place` to rewrite the checkpoint itself", "out")
    if checkpoint.kind == "folder":
        return _write_folder(checkpoint, patch, out, force, in_place, link, inputs)
    target = checkpoint.path if in_place else Path(out)
    allowed = (".safetensors",) if checkpoint.kind == "safetensors" else TORCH_SUFFIXES
    if target.suffix.lower() not in allowed:
        raise OutputError(f"a patched {checkpoint.kind} checkpoint is written as {' or '.join(allowed)}", target)
    protected = [] if in_place else [checkpoint.path, *inputs]
    record = patch_record_path(target)
    if checkpoint.kind == "torch":  # refused before anything is written: the record must not replace an input
        check_output(record, True, [checkpoint.path, *inputs])
    changes = file_changes(checkpoint, patch).get(checkpoint.path, {})
    with atomic_path(target, force or in_place, protected, mode_of=checkpoint.path) as temporary:
        _write_file(checkpoint.files[checkpoint.path], temporary, changes, patch.record)
    if checkpoint.kind == "torch":  # after the checkpoint, which carries the record too: never a record alone
        write_text(record, json.dumps(patch.record, indent=2) + "\n", True, [checkpoint.path, *inputs])
    if checkpoint.kind == "torch":
        return [f"provenance written into the checkpoint and to {patch_record_path(target)}"]
    return []


def _write_folder(checkpoint: Checkpoint, patch, out: Path | None, force: bool, in_place: bool,
                  link: bool, inputs=()) -> list[str]:
    source = checkpoint.path
    changed = file_changes(checkpoint, patch)
    indexes = _indexes_with_bias(checkpoint, patch)
    config = source / "config.json"
    if in_place:
        with contextlib.ExitStack() as stack:  # every changed shard written before any is renamed into place
            for shard in sorted(changed):
                target = stack.enter_context(atomic_path(shard, force=True))
                _write_file(checkpoint.files[shard], target, changed[shard], patch.record)
        for index, text in indexes.items():
            write_text(index, text, force=True)
        if checkpoint.config is not None:
            write_text(config, _config_with_record(checkpoint.config, patch), force=True)
        write_text(source / PATCH_FILE, json.dumps(patch.record, indent=2) + "\n", force=True)
        return []
    out = Path(out)
    resolved = out.resolve()
    if resolved == source.resolve() or source.resolve() in resolved.parents:
        raise OutputError("is the input folder or inside it; choose another --out, or pass --in-place", out)
    for item in [source, *inputs]:
        if item is not None and resolved in Path(item).resolve().parents:
            raise OutputError(f"holds an input ({item}); lacal never writes over its inputs, choose another --out",
                              out)
    if out.exists() and not force:
        raise OutputError("already exists; pass --force to replace it", out)
    if not out.parent.is_dir():
        raise OutputError(f"folder {out.parent} does not exist", out)
    check_output_folder(out, force, _earlier_output(out, source))
    staging = stage_folder(out)
    notes = []
    try:
        for item in sorted(source.rglob("*")):
            relative = item.relative_to(source)
            target = staging / relative
            if item.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if item in changed:
                _write_file(checkpoint.files[item], target, changed[item], patch.record)
                shutil.copymode(item, target)  # a rewritten shard keeps its mode, like the copied ones
            elif item in indexes:
                target.write_text(indexes[item], encoding="utf-8")
            elif item == config and checkpoint.config is not None:
                target.write_text(_config_with_record(checkpoint.config, patch), encoding="utf-8")
            elif item.name == PATCH_FILE:
                continue
            elif link:
                try:
                    os.link(os.path.realpath(item), target)  # through symlinks, as in a Hugging Face cache
                except OSError as exc:
                    shutil.copy2(item, target)
                    notes.append(f"could not hard-link {item} ({exc.strerror}); copied it")
            else:
                shutil.copy2(item, target)
        (staging / PATCH_FILE).write_text(json.dumps(patch.record, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, (os.stat(out).st_mode & 0o7777) if out.is_dir() else 0o777 & ~_umask())
        _replace_folder(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write: {exc.strerror or exc}", out) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return notes


def _earlier_output(out: Path, source: Path) -> list[str]:
    """The files of an existing `out` that an earlier lacal patch of `source` wrote (none unless it carries a patch
    record), which --force may replace."""
    if not (out / PATCH_FILE).is_file():
        return []
    return [item.relative_to(source).as_posix() for item in source.rglob("*") if item.is_file()] + [PATCH_FILE]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_folder(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    backup = Path(tempfile.mkdtemp(prefix=temporary_prefix(out), suffix=".lacal-old", dir=out.parent))
    os.rmdir(backup)
    os.replace(out, backup)
    os.replace(staging, out)
    shutil.rmtree(backup, ignore_errors=True)


def _indexes_with_bias(checkpoint: Checkpoint, patch) -> dict[Path, str]:
    """The new text of each weight index whose set gains a bias (--add-bias on a sharded folder)."""
    texts = {}
    for weights in checkpoint.weights:
        add = patch.add if not weights.label else patch.copies.get(weights.label, ({}, {}))[1]
        if weights.index is None or not add:
            continue
        data = copy.deepcopy(weights.index_data)
        for name, bias in add.items():
            data["weight_map"][name] = weights.tensors[_weight_of(name)].file.name
            if isinstance(data.get("metadata"), dict) and "total_size" in data["metadata"]:
                data["metadata"]["total_size"] += bias.numel() * bias.element_size()
        texts[weights.index] = json.dumps(data, indent=2) + "\n"
    return texts


def _config_with_record(config: dict, patch) -> str:
    """config.json with the patch record under `lacal_patch`: transformers keeps keys it does not know through
    from_pretrained and save_pretrained, so the record survives a re-save that drops the safetensors metadata and
    lacal_patch.json."""
    return json.dumps({**config, PATCH_METADATA_KEY: patch.record}, indent=2) + "\n"

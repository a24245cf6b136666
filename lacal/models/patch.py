"""Writing a checkpoint whose classifier bias carries the adjustment: b' = b - tau * log(pi).

Everything else is kept: in a safetensors file the header entries, their order, the other tensors' bytes and the
file metadata are copied as they are, and only the bias bytes change; in a PyTorch file the loaded object is saved
again with only the bias replaced, in the main state dict and in every EMA copy beside it. Every head the model
averages gets the full offsets. Each patch records its provenance (tau, offsets, the calibration's sha256) so that
a second patch of the same checkpoint is caught.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoints import (PATCH_FILE, PATCH_METADATA_KEY, TORCH_SUFFIXES, Checkpoint, Head, is_safetensors,
                          plain_name, bias_name, patch_record_path, read_safetensors_header)
from ..errors import CheckpointError, MismatchError, OptionError, OutputError, VerificationError
from ..data.writers import atomic_path, check_output, check_output_folder, stage_folder, temporary_prefix, write_text

PATCH_FORMAT = "lacal-patch"
PATCH_VERSION = 1
TORCH_TO_SAFETENSORS = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}


@dataclass(frozen=True)
class Patch:
    """The new bias for `head` (in the head's dtype), how far dtype rounding moved it from b + offsets, and the
    provenance record written with it."""

    head: Head
    bias: object
    max_rounding_error: float
    added_bias: bool
    record: dict
    earlier: dict | None = None  # the record of a patch already in the checkpoint (patched again with force)
    weight: object = None  # the head's weight divided by a temperature, when there is one
    replace: dict = field(default_factory=dict)  # {tensor name: new tensor}, every head's bias (and scaled weight)
    add: dict = field(default_factory=dict)  # {bias name: new tensor} for heads that had no bias (--add-bias)
    copies: dict = field(default_factory=dict)  # {key of an EMA state dict in a PyTorch file: (replace, add)}


def make_patch(checkpoint: Checkpoint, head: Head | list[Head], offsets, tau: float,
               calibration_sha256: str | None = None, add_bias: bool = False, force: bool = False,
               scale: float = 1.0) -> Patch:
    """Compute the new head: bias b * scale + offsets, and weight W * scale when scale (1 / temperature) is not 1,
    so that the head computes (W x + b) * scale + offsets. `head` may be a list: every head the model averages,
    each given the full offsets (the first is the one `Patch.head` names). In a training checkpoint the EMA copies
    beside the state dict get the same change from their own bias. Refuse a head without a bias (unless add_bias;
    always for a Hugging Face architecture, which would drop an added bias) and an already patched checkpoint
    (unless force)."""
    import torch

    heads = [head] if isinstance(head, Head) else list(head)
    if checkpoint.patch is not None and not force:
        raise CheckpointError(f"already carries a lacal patch{describe_patch(checkpoint.patch)}; patching again "
                              "would add the offset twice; pass --force if that is really what you want",
                              checkpoint.path)
    offsets = np.asarray(offsets, dtype=np.float64)
    for layer in heads:
        if offsets.shape != (layer.num_classes,):
            raise MismatchError(f"head {layer.name!r} has {layer.num_classes} outputs but the calibration is for "
                                f"{offsets.shape[0]} classes", checkpoint.path)
        if layer.bias is None:
            _check_can_add_bias(checkpoint, layer, add_bias)
    replace, add, rounding = _new_heads(heads, checkpoint.tensor, offsets, scale)
    copies = {}
    if checkpoint.kind == "torch":
        for key, state in checkpoint.copies(checkpoint.path).items():
            changes = _copy_changes(checkpoint, key, state, heads, offsets, scale)
            if changes is not None:
                copies[key] = changes[:2]
                rounding = max(rounding, changes[2])
    every = [*replace.items(), *add.items(), *((n, t) for r, a in copies.values() for n, t in [*r.items(), *a.items()])]
    for name, tensor in every:
        dtype = str(tensor.dtype).replace("torch.", "")
        if not tensor.is_floating_point():
            raise CheckpointError(f"{name!r} is {dtype}, which cannot hold the fractional offsets; convert the head "
                                  "to a floating-point dtype first", checkpoint.path)
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"the patched {name!r} would hold values beyond the range of {dtype} (tau = "
                                  f"{tau:.4g}, scale {scale:.4g}); nothing was written", checkpoint.path)
    main = heads[0]
    bias = main.bias or bias_name(main.name)
    new = replace.get(bias, add.get(bias))
    record = {"format": PATCH_FORMAT, "version": PATCH_VERSION, "head": main.name, "bias": bias,
              "added_bias": main.bias is None, "tau": float(tau), "offsets": offsets.tolist(), "scale": scale,
              "calibration_sha256": calibration_sha256, "bias_dtype": str(new.dtype).replace("torch.", ""),
              "max_rounding_error": rounding, "heads": [layer.name for layer in heads],
              "copies": [key if isinstance(key, str) else "/".join(map(str, key)) for key in copies]}
    return Patch(main, new, rounding, main.bias is None, record, checkpoint.patch, replace.get(main.weight),
                 replace, add, copies)


def _check_can_add_bias(checkpoint: Checkpoint, head: Head, add_bias: bool) -> None:
    shape = list((head.num_classes, head.in_features))
    if checkpoint.is_hugging_face:
        raise CheckpointError(
            f"head {head.name!r} {shape} has no bias because {checkpoint.architecture()} builds it with bias=False, "
            "and the adjustment is a change of bias: transformers would drop an added bias as an unexpected key when "
            "loading, leaving the model unadjusted. Adjust the model's logits instead (`lacal apply LOGITS`, or "
            "Calibration.adjust in Python), give the loaded model a bias in memory with "
            "lacal.patch_module(model, calibration, add_bias=True), or add the offsets to an exported model",
            checkpoint.path)
    if not add_bias:
        raise CheckpointError(
            f"head {head.name!r} has a weight {shape} but no bias, and the adjustment is a change of bias; pass "
            "--add-bias to add one (the model's code must then build this layer with bias=True)", checkpoint.path)


def _new_heads(heads: list[Head], tensor, offsets: np.ndarray, scale: float, names=None) -> tuple[dict, dict, float]:
    """({name: new tensor} replacing biases and scaled weights, {name: new bias} for heads without one, the largest
    rounding error of the new biases). `tensor(name)` reads a tensor; `names` maps a head's tensor names to those of
    the state dict being patched (an EMA copy's)."""
    import torch

    names = names or {}
    replace, add, rounding = {}, {}, 0.0
    for layer in heads:
        weight_name = names.get(layer.weight, layer.weight)
        bias = names.get(layer.bias, layer.bias) if layer.bias else None
        if bias is None:
            old = torch.zeros(layer.num_classes, dtype=tensor(weight_name).dtype)
        else:
            old = tensor(bias)
        exact = old.double() * scale + torch.from_numpy(offsets)
        new = exact.to(old.dtype)
        rounding = max(rounding, float((new.double() - exact).abs().max()))
        if bias is None:
            add[bias_name(weight_name[: -len("weight")].rstrip("."))] = new
        else:
            replace[bias] = new
        if scale != 1.0:
            original = tensor(weight_name)
            replace[weight_name] = (original.double() * scale).to(original.dtype)
    return replace, add, rounding


def _copy_changes(checkpoint: Checkpoint, key: str, state: dict, heads: list[Head], offsets, scale):
    """The changes for an EMA copy of the model under `key`: the same heads, found by name without wrapper prefixes
    (torchvision's EMA adds `module.`, a DDP state dict has it and timm's EMA does not). None when the copy holds no
    such head (it is not a copy of this model)."""
    plain = {}
    for name in state:
        plain.setdefault(plain_name(str(name)), []).append(str(name))
    names = {}
    for layer in heads:
        found = plain.get(plain_name(layer.weight), [])
        if not found:
            if layer is heads[0]:
                return None
            raise CheckpointError(f"the state dict {key!r} beside the model has no {layer.weight!r}", checkpoint.path)
        if len(found) > 1 or tuple(state[found[0]].shape) != tuple(checkpoint.tensors[layer.weight].shape):
            raise CheckpointError(f"the state dict {key!r} beside the model holds {layer.weight!r} differently "
                                  "(another shape or several matches); lacal cannot tell whether it is a copy of the "
                                  "model to patch too", checkpoint.path)
        names[layer.weight] = found[0]
        if layer.bias:
            bias = plain.get(plain_name(layer.bias), [])
            if len(bias) != 1:
                raise CheckpointError(f"the state dict {key!r} beside the model has {layer.weight!r} but no bias for "
                                      "it", checkpoint.path)
            names[layer.bias] = bias[0]
    return _new_heads(heads, lambda name: state[name], offsets, scale, names)


def describe_patch(record: dict) -> str:
    tau = record.get("tau")
    return f" (tau = {tau:.4g})" if isinstance(tau, (int, float)) and not isinstance(tau, bool) else ""


def verify_patch(checkpoint: Checkpoint, patch: Patch, features, offsets, device="cpu") -> tuple[float, float]:
    """Run the original and the patched head on `features` (a LogitsSource of N x D) in the head's dtype and check
    that patched == original + offsets. Returns (max absolute difference, tolerance); raises VerificationError."""
    import torch
    import torch.nn.functional as F

    from ..engine.passes import iter_blocks

    head = patch.head
    if features.num_classes != head.in_features:
        raise MismatchError(f"features have {features.num_classes} columns but head {head.name!r} takes "
                            f"{head.in_features}", features.name)
    device = torch.device(device)
    weight = checkpoint.tensor(head.weight).to(device)
    weight = weight.reshape(weight.shape[0], -1)
    scaled = weight if patch.weight is None else patch.weight.to(device).reshape(weight.shape)
    scale = float(patch.record.get("scale", 1.0))
    old = (checkpoint.tensor(head.bias) if head.bias else torch.zeros_like(patch.bias)).to(device)
    new = patch.bias.to(device)
    shift = torch.as_tensor(np.asarray(offsets), dtype=torch.float64, device=device)
    if device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16):
        weight, scaled, old, new = weight.float(), scaled.float(), old.float(), new.float()  # CPU half is slow
    worst = largest = 0.0
    for _, block in iter_blocks(features, device):
        x = block.to(weight.dtype)
        expected = F.linear(x, weight, old).double() * scale + shift
        patched = F.linear(x, scaled, new).double()
        worst = max(worst, float((patched - expected).abs().max()))
        largest = max(largest, float(expected.abs().max()))
        if patch.weight is not None:  # a rescaled, re-rounded weight errs by up to eps * |W| |x|
            largest = max(largest, float(F.linear(x.abs(), weight.abs()).max()) * scale)
    eps = torch.finfo(getattr(torch, head.dtype)).eps
    tolerance = 4 * eps * (1 + largest) + patch.max_rounding_error
    if not worst <= tolerance:
        raise VerificationError(f"the patched head's logits differ from the adjusted logits by up to {worst:.3g} "
                                f"(tolerance {tolerance:.3g}); nothing was written", features.name)
    return worst, tolerance


# ------------------------------------------------------------------------------------------------------- writing


def _tensor_bytes(tensor) -> bytes:
    import torch

    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def write_safetensors(source: Path, target: Path, replace: dict, add: dict, metadata: dict) -> None:
    """Copy `source` to `target`, replacing the bytes of the tensors in `replace` (same dtype and shape), appending
    the tensors in `add`, and merging `metadata` into __metadata__. Everything else is copied unchanged."""
    header, data_start = read_safetensors_header(source)
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


def write_torch(checkpoint: Checkpoint, file: Path, target: Path, replace: dict, add: dict, record: dict,
                copies: dict | None = None) -> None:
    """Save the loaded object of `file` again to `target` with the tensors in `replace` swapped and those in `add`
    inserted right after their layer's weight, and likewise in the EMA copies (`copies`: {key: (replace, add)}).
    Every other key of a training checkpoint (optimizer, epoch, args, ...) is kept. The provenance `record` goes
    into the state dicts' _metadata (which load_state_dict ignores for names that are no module), and beside the
    state dict in a training checkpoint."""
    import torch

    obj, keys = checkpoint.torch_object(file)
    new_state = _changed_state(checkpoint.state_dict(file), replace, add, record)
    if keys:
        outer = type(obj)(obj)
        outer[keys[0]] = new_state
        for key, (copy_replace, copy_add) in (copies or {}).items():
            _put(outer, key, _changed_state(_get(obj, key), copy_replace, copy_add, record))
        outer[PATCH_METADATA_KEY] = record
        new_obj = outer
    else:
        new_obj = new_state
    try:
        torch.save(new_obj, target)
    except RuntimeError as exc:
        raise OSError(str(exc).splitlines()[0] if str(exc) else "torch.save failed") from None


def _get(obj: dict, key):
    """The value under a top-level key, or under a path of keys (a tuple: a copy inside a Lightning callback)."""
    for part in (key,) if isinstance(key, str) else key:
        obj = obj[part]
    return obj


def _put(outer: dict, key, value) -> None:
    """Set `value` under `key` (a path: the dicts along it are copied first, so the loaded object stays as read)."""
    path = (key,) if isinstance(key, str) else tuple(key)
    for part in path[:-1]:
        outer[part] = type(outer[part])(outer[part])
        outer = outer[part]
    outer[path[-1]] = value


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


def _weight_of(bias: str) -> str:
    return bias[: -len("bias")] + "weight"


def _write_one(checkpoint: Checkpoint, file: Path, target: Path, patch: Patch) -> None:
    """Write `file` with the patch's changes to the tensors it holds (a new bias goes beside the weight)."""
    replace = {name: tensor for name, tensor in patch.replace.items() if checkpoint.tensors[name].file == file}
    add = {name: tensor for name, tensor in patch.add.items() if checkpoint.tensors[_weight_of(name)].file == file}
    if is_safetensors(file):
        write_safetensors(file, target, replace, add, {PATCH_METADATA_KEY: json.dumps(patch.record)})
    else:
        write_torch(checkpoint, file, target, replace, add, patch.record, patch.copies)


def write_checkpoint(checkpoint: Checkpoint, patch: Patch, out: Path | None, force: bool = False,
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
    with atomic_path(target, force or in_place, protected) as temporary:
        _write_one(checkpoint, checkpoint.path, temporary, patch)
    if checkpoint.kind == "torch":  # after the checkpoint, which carries the record too: never a record alone
        write_text(record, json.dumps(patch.record, indent=2) + "\n", True, [checkpoint.path, *inputs])
    if checkpoint.kind == "torch":
        return [f"provenance written into the checkpoint and to {patch_record_path(target)}"]
    return []


def _changed_files(checkpoint: Checkpoint, patch: Patch) -> set[Path]:
    """The files the patch rewrites: those holding the bias (or, for a new bias, the weight) and, with a
    temperature, the weight."""
    return {checkpoint.tensors[name].file for name in patch.replace} | \
        {checkpoint.tensors[_weight_of(name)].file for name in patch.add}


def _write_folder(checkpoint: Checkpoint, patch: Patch, out: Path | None, force: bool, in_place: bool,
                  link: bool, inputs=()) -> list[str]:
    source = checkpoint.path
    changed = _changed_files(checkpoint, patch)
    index = checkpoint.index_file
    config = source / "config.json"
    if in_place:
        with contextlib.ExitStack() as stack:  # every changed shard written before any is renamed into place
            for shard in sorted(changed):
                _write_one(checkpoint, shard, stack.enter_context(atomic_path(shard, force=True)), patch)
        if index is not None and patch.add:
            write_text(index, _index_with_bias(index, checkpoint, patch), force=True)
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
                _write_one(checkpoint, item, target, patch)
                shutil.copymode(item, target)  # a rewritten shard keeps its mode, like the copied ones
            elif item == index and patch.add:
                target.write_text(_index_with_bias(index, checkpoint, patch), encoding="utf-8")
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


def _index_with_bias(index: Path, checkpoint: Checkpoint, patch: Patch) -> str:
    data = json.loads(index.read_text(encoding="utf-8"))
    for name, bias in patch.add.items():
        data["weight_map"][name] = checkpoint.tensors[_weight_of(name)].file.name
        if isinstance(data.get("metadata"), dict) and "total_size" in data["metadata"]:
            data["metadata"]["total_size"] += bias.numel() * bias.element_size()
    return json.dumps(data, indent=2) + "\n"


def _config_with_record(config: dict, patch: Patch) -> str:
    """config.json with the patch record under `lacal_patch`: transformers keeps keys it does not know through
    from_pretrained and save_pretrained, so the record survives a re-save that drops the safetensors metadata and
    lacal_patch.json."""
    return json.dumps({**config, PATCH_METADATA_KEY: patch.record}, indent=2) + "\n"

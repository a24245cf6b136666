"""Writing a checkpoint whose classifier bias carries the adjustment: b' = b - tau * log(pi).

Everything else is kept: in a safetensors file the header entries, their order, the other tensors' bytes and the
file metadata are copied as they are, and only the bias bytes change; in a PyTorch file the loaded object is saved
again with only the bias replaced. Each patch records its provenance (tau, offsets, the calibration's sha256) so that
a second patch of the same checkpoint is caught.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import (PATCH_FILE, PATCH_METADATA_KEY, Checkpoint, Head, _is_safetensors, bias_name,
                          patch_record_path, read_safetensors_header)
from .errors import CheckpointError, MismatchError, OptionError, OutputError, VerificationError
from .write import atomic_path, check_output, check_output_folder, stage_folder, temporary_prefix, write_text

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


def make_patch(checkpoint: Checkpoint, head: Head, offsets, tau: float, calibration_sha256: str | None = None,
               add_bias: bool = False, force: bool = False, scale: float = 1.0) -> Patch:
    """Compute the new head: bias b * scale + offsets, and weight W * scale when scale (1 / temperature) is not 1,
    so that the head computes (W x + b) * scale + offsets. Refuse a head without a bias (unless add_bias) and an
    already patched checkpoint (unless force)."""
    import torch

    if checkpoint.patch is not None and not force:
        raise CheckpointError(f"already carries a lacal patch{describe_patch(checkpoint.patch)}; patching again "
                              "would add the offset twice; pass --force if that is really what you want",
                              checkpoint.path)
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.shape != (head.num_classes,):
        raise MismatchError(f"head {head.name!r} has {head.num_classes} outputs but the calibration is for "
                            f"{offsets.shape[0]} classes", checkpoint.path)
    if head.bias is None:
        if not add_bias:
            raise CheckpointError(
                f"head {head.name!r} has a weight {list((head.num_classes, head.in_features))} but no bias, and the "
                "adjustment is a change of bias; pass --add-bias to add one (the model's code must then build this "
                "layer with bias=True)", checkpoint.path)
        old = torch.zeros(head.num_classes, dtype=getattr(torch, head.dtype))
    else:
        old = checkpoint.tensor(head.bias)
    if not old.is_floating_point():
        raise CheckpointError(f"the bias of head {head.name!r} is {str(old.dtype).replace('torch.', '')}, which "
                              "cannot hold the fractional offsets; convert the head to a floating-point dtype first",
                              checkpoint.path)
    exact = old.double() * scale + torch.from_numpy(offsets)
    new = exact.to(old.dtype)
    rounding = float((new.double() - exact).abs().max())
    weight = None
    if scale != 1.0:
        original = checkpoint.tensor(head.weight)
        weight = (original.double() * scale).to(original.dtype)
    if not bool(torch.isfinite(new).all()) or (weight is not None and not bool(torch.isfinite(weight).all())):
        raise CheckpointError(f"the patched head {head.name!r} would hold values beyond the range of "
                              f"{str(old.dtype).replace('torch.', '')} (tau = {tau:.4g}, scale {scale:.4g}); "
                              "nothing was written", checkpoint.path)
    record = {"format": PATCH_FORMAT, "version": PATCH_VERSION, "head": head.name,
              "bias": head.bias or bias_name(head.name), "added_bias": head.bias is None, "tau": float(tau),
              "offsets": offsets.tolist(), "scale": scale, "calibration_sha256": calibration_sha256,
              "bias_dtype": str(old.dtype).replace("torch.", ""), "max_rounding_error": rounding}
    return Patch(head, new, rounding, head.bias is None, record, checkpoint.patch, weight)


def describe_patch(record: dict) -> str:
    tau = record.get("tau")
    return f" (tau = {tau:.4g})" if isinstance(tau, (int, float)) and not isinstance(tau, bool) else ""


def verify_patch(checkpoint: Checkpoint, patch: Patch, features, offsets, device="cpu") -> tuple[float, float]:
    """Run the original and the patched head on `features` (a LogitsSource of N x D) in the head's dtype and check
    that patched == original + offsets. Returns (max absolute difference, tolerance); raises VerificationError."""
    import torch
    import torch.nn.functional as F

    from .scoring import iter_blocks

    head = patch.head
    if features.num_classes != head.in_features:
        raise VerificationError(f"features have {features.num_classes} columns but head {head.name!r} takes "
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


def write_torch(checkpoint: Checkpoint, file: Path, target: Path, replace: dict, add: dict, record: dict) -> None:
    """Save the loaded object of `file` again to `target` with the tensors in `replace` swapped and those in `add`
    inserted right after their layer's weight. The provenance `record` goes into the state dict's _metadata (which
    load_state_dict ignores for names that are no module), or beside the state dict in a training checkpoint."""
    import torch

    obj, keys = checkpoint.torch_object(file)
    state = checkpoint.state_dict(file)
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
    if keys:
        outer = type(obj)(obj)
        outer[keys[0]] = new_state
        outer[PATCH_METADATA_KEY] = record
        new_obj = outer
    else:
        new_obj = new_state
    try:
        torch.save(new_obj, target)
    except RuntimeError as exc:
        raise OSError(str(exc).splitlines()[0] if str(exc) else "torch.save failed") from None


def _changes(patch: Patch) -> tuple[dict, dict]:
    name = patch.record["bias"]
    replace, add = ({}, {name: patch.bias}) if patch.added_bias else ({name: patch.bias}, {})
    if patch.weight is not None:
        replace[patch.head.weight] = patch.weight
    return replace, add


def _write_one(checkpoint: Checkpoint, file: Path, target: Path, patch: Patch) -> None:
    """Write `file` with the patch's changes to the tensors it holds (a new bias goes beside the weight)."""
    replace, add = _changes(patch)
    replace = {name: tensor for name, tensor in replace.items() if checkpoint.tensors[name].file == file}
    add = add if checkpoint.tensors[patch.head.weight].file == file else {}
    if _is_safetensors(file):
        write_safetensors(file, target, replace, add, {PATCH_METADATA_KEY: json.dumps(patch.record)})
    else:
        write_torch(checkpoint, file, target, replace, add, patch.record)


def write_checkpoint(checkpoint: Checkpoint, patch: Patch, out: Path | None, force: bool = False,
                     in_place: bool = False, link: bool = False, inputs=()) -> list[str]:
    """Write the patched checkpoint to `out` (or over the input with in_place), atomically; `inputs` are other
    files the output must not replace. Returns notes."""
    if in_place == (out is not None):
        raise OptionError("give --out PATH, or --in-place to rewrite the checkpoint itself", "--out")
    if checkpoint.kind == "folder":
        return _write_folder(checkpoint, patch, out, force, in_place, link, inputs)
    target = checkpoint.path if in_place else Path(out)
    allowed = (".safetensors",) if checkpoint.kind == "safetensors" else (".pt", ".pth", ".bin")
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
    replace, add = _changes(patch)
    files = {checkpoint.tensors[name].file for name in replace}
    if add:
        files.add(checkpoint.tensors[patch.head.weight].file)
    return files


def _write_folder(checkpoint: Checkpoint, patch: Patch, out: Path | None, force: bool, in_place: bool,
                  link: bool, inputs=()) -> list[str]:
    source = checkpoint.path
    changed = _changed_files(checkpoint, patch)
    weight_shard = checkpoint.tensors[patch.head.weight].file
    index = checkpoint.index_file
    if in_place:
        with contextlib.ExitStack() as stack:  # every changed shard written before any is renamed into place
            for shard in sorted(changed):
                _write_one(checkpoint, shard, stack.enter_context(atomic_path(shard, force=True)), patch)
        if index is not None and patch.added_bias:
            write_text(index, _index_with_bias(index, patch, weight_shard), force=True)
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
            elif item == index and patch.added_bias:
                target.write_text(_index_with_bias(index, patch, weight_shard), encoding="utf-8")
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


def _index_with_bias(index: Path, patch: Patch, shard: Path) -> str:
    data = json.loads(index.read_text(encoding="utf-8"))
    data["weight_map"][patch.record["bias"]] = shard.name
    if isinstance(data.get("metadata"), dict) and "total_size" in data["metadata"]:
        data["metadata"]["total_size"] += patch.bias.numel() * patch.bias.element_size()
    return json.dumps(data, indent=2) + "\n"

"""TorchScript (torch.jit.save) and torch.export (.pt2) files: the classifier head's parameter carries the adjustment.

The head is found as in a checkpoint (a Linear or 1x1 convolution weight with one row per class, preferring the
usual names fc, head, classifier), among the module's parameters and buffers, or the exported program's state dict.
A frozen TorchScript module (torch.jit.freeze) has its weights inlined as constants of its code: there is no
parameter to rewrite, and it is refused. Nothing here unpickles Python objects: TorchScript archives are read by
TorchScript's own loader, and .pt2 archives are checked and loaded as lacal.models does for `lacal score`.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import Checkpoint, Head, TensorInfo, find_heads
from ..errors import CheckpointError, InputFileError, OptionError, OutputError, VerificationError
from ..data.writers import atomic_path

PATCH_EXTRA_FILE = "lacal_patch.json"


def archive_members(path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def is_torchscript(path) -> bool:
    """A torch.jit.save archive: a zip file holding code/ and constants.pkl (a state-dict .pt holds neither)."""
    names = archive_members(path)
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def is_export(path) -> bool:
    from .run import EXPORT_SUFFIXES

    return Path(path).suffix.lower() in EXPORT_SUFFIXES


def _extra_names(path: Path) -> list[str]:
    """The names of the extra files in a TorchScript or .pt2 archive (kept when the file is written again)."""
    return [name.split("/extra/", 1)[1] for name in archive_members(path) if "/extra/" in name]


class ModuleTensors(Checkpoint):
    """The parameters and buffers of a loaded module or program, seen as a checkpoint for head finding."""

    def __init__(self, path: Path, kind: str, state: dict, patch=None):
        tensors = {name: TensorInfo(name, tuple(t.shape), str(t.dtype).replace("torch.", ""), path, position)
                   for position, (name, t) in enumerate(state.items())}
        super().__init__(path, kind, tensors, patch=patch)
        self.state = state

    def tensor(self, name: str):
        return self.state[name].detach()


@dataclass
class ScriptFile:
    """A TorchScript module or an exported program, loaded; `tensors` are its patchable tensors by name."""

    path: Path
    kind: str  # "torchscript" or "export"
    program: object
    tensors: ModuleTensors
    extras: dict

    def find_head(self, num_classes: int | None = None, name: str | None = None) -> "Heads":
        if not self.tensors.tensors:
            if self.kind == "torchscript":
                raise CheckpointError("the TorchScript module has no parameters: it looks frozen (torch.jit.freeze "
                                      "inlines the weights as constants of its code, so there is no bias to "
                                      "rewrite); patch the module or its checkpoint before freezing", self.path)
            raise CheckpointError("the exported program has no parameters or buffers to patch (its weights are "
                                  "constants of the graph)", self.path)
        return Heads(tuple(find_heads(self.tensors, num_classes, name)))


@dataclass(frozen=True)
class Heads:
    """The layers to patch: one head, or every head the model averages (timm's distilled DeiT: `head` and
    `head_dist`), each of which gets the full offsets."""

    heads: tuple[Head, ...]

    @property
    def name(self) -> str:
        return " and ".join(head.name for head in self.heads)

    @property
    def num_classes(self) -> int:
        return self.heads[0].num_classes

    @property
    def dtype(self) -> str:
        return self.heads[0].dtype


def open_script(path, kind: str | None = None) -> ScriptFile:
    """Load a TorchScript file or a torch.export .pt2 archive (`kind` "torchscript" or "export"; by the suffix when
    None) with its extra files."""
    import warnings

    import torch

    from ..data.readers import check_readable
    from .run import check_export_archive, quiet_export_log, weights_only_everywhere

    path = check_readable(path)
    extras = {name: "" for name in _extra_names(path)}
    extras.setdefault(PATCH_EXTRA_FILE, "")
    kind = kind or ("export" if is_export(path) else "torchscript")
    if kind == "export":
        check_export_archive(path)
        try:
            with weights_only_everywhere(), quiet_export_log(), warnings.catch_warnings(), \
                    open(path, "rb") as handle:
                warnings.simplefilter("ignore")
                program = torch.export.load(handle, extra_files=extras)
        except Exception as exc:  # torch.export.load raises many kinds; none may escape as a traceback
            raise InputFileError(f"cannot load as a torch.export program: {_first_line(exc)}", path) from None
        state = dict(program.state_dict)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "switch to torch.export": the user's choice
                warnings.simplefilter("ignore", FutureWarning)
                program = torch.jit.load(str(path), map_location="cpu", _extra_files=extras)
        except (RuntimeError, ValueError) as exc:
            raise InputFileError(f"cannot load as a TorchScript model: {_first_line(exc)}", path) from None
        state = dict(program.named_parameters())
        state.update((name, tensor) for name, tensor in program.named_buffers() if name not in state)
    record = extras.pop(PATCH_EXTRA_FILE, "")
    record = record.decode("utf-8", "replace") if isinstance(record, bytes) else record
    patch = None
    if record:
        try:
            patch = json.loads(record)
        except (json.JSONDecodeError, RecursionError):
            patch = None
        patch = patch if isinstance(patch, dict) else {"unreadable": str(path)}
    return ScriptFile(path, kind, program, ModuleTensors(path, kind, state, patch), extras)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def make_script_patch(file: ScriptFile, heads: Heads, offsets, tau: float, scale: float = 1.0,
                      calibration_sha256: str | None = None, force: bool = False):
    """The new bias (and, with a temperature, weight) for the head, as lacal.patch.make_patch computes them for a
    checkpoint; a head without a bias is refused (the module's code has no bias to add)."""
    from ..version import __version__
    from .patch import make_patch

    bare = [head for head in heads.heads if head.bias is None]
    if bare:
        raise CheckpointError(f"head {bare[0].name!r} has no bias, and the module's code cannot be given one; export the "
                              "model from a checkpoint patched with `lacal apply --add-bias`, or as ONNX (where lacal "
                              "adds the offsets as a node)", file.path)
    patch = make_patch(file.tensors, list(heads.heads), offsets, tau, calibration_sha256, False, force, scale)
    patch.record.update({"lacal_version": __version__, "kind": file.kind, "offsets_sha256": hashlib.sha256(
        np.asarray(offsets, dtype="<f8").tobytes()).hexdigest()})
    return patch


def write_script(file: ScriptFile, patch, out, force: bool = False, in_place: bool = False, inputs=(),
                 verify_inputs=None, batch: int = 256):
    """Write the patched module or program to `out` (or over the input with in_place), atomically. Before the
    rename, the written file is loaded again and its head checked; with `verify_inputs` (a LogitsSource of model
    inputs) the original and the patched model are run on them and compared. Returns (rows, max difference,
    tolerance) of that comparison, or None."""
    import shutil
    import warnings

    import torch

    from .run import EXPORT_SUFFIXES, TORCHSCRIPT_SUFFIXES

    if in_place == (out is not None):
        raise OptionError("give `out`, or `in_place` to rewrite the model itself", "out")
    target = file.path if in_place else Path(out)
    allowed = EXPORT_SUFFIXES if file.kind == "export" else TORCHSCRIPT_SUFFIXES
    if target.suffix.lower() not in allowed:
        raise OutputError(f"a patched {'torch.export program' if file.kind == 'export' else 'TorchScript model'} "
                          f"is written as {' or '.join(allowed)}", target)
    changes = dict(patch.replace)  # every head's bias, and its weight with a temperature
    with torch.no_grad():
        for name, value in changes.items():
            file.tensors.state[name].copy_(value.reshape(file.tensors.state[name].shape))
    extras = dict(file.extras)
    extras[PATCH_EXTRA_FILE] = json.dumps(patch.record)
    result = None
    with atomic_path(target, force or in_place, [] if in_place else [file.path, *inputs],
                     mode_of=file.path) as temporary:
        # saved into memory, then written here: torch.jit.save aborts the whole process on a full disk, and a write of
        # our own fails with an OSError that says so
        buffer = io.BytesIO()
        if file.kind == "export":
            torch.export.save(file.program, buffer, extra_files=extras)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(file.program, buffer, _extra_files=extras)
        with open(temporary, "wb") as handle:
            handle.write(buffer.getbuffer())
        del buffer
        if in_place:
            shutil.copymode(file.path, temporary)
        written = open_script(temporary, file.kind)
        for name, value in changes.items():
            if not torch.equal(written.tensors.state[name].detach().reshape(value.shape), value):
                raise VerificationError(f"the written file does not hold the new {name!r}; nothing was written",
                                        target)
        if verify_inputs is not None:
            original = open_script(file.path)
            result = _compare(_callable(original), _callable(written), verify_inputs, patch, batch, target)
    return result


def _callable(file: ScriptFile):
    return file.program.module() if file.kind == "export" else file.program.eval()


def _compare(original, patched, source, patch, batch: int, name) -> tuple[int, float, float]:
    import torch

    from ..engine.passes import score_model

    offsets = torch.tensor(patch.record["offsets"], dtype=torch.float64)
    scale = float(patch.record.get("scale", 1.0))
    eps = torch.finfo(getattr(torch, patch.head.dtype)).eps
    worst = largest = 0.0
    rows = 0
    # one pass after the other: each scorer holds inference mode while it runs, and two interleaved generators
    # would leave it switched on for the caller
    originals = [block for _, block in score_model(original, source, "cpu", batch)]
    for before, (_, after) in zip(originals, score_model(patched, source, "cpu", batch)):
        if before.shape[1] != offsets.shape[0]:
            raise VerificationError(f"the model returns {before.shape[1]} columns but the head has "
                                    f"{offsets.shape[0]} classes; nothing was written", name)
        expected = before.double() * scale + offsets
        worst = max(worst, float((after.double() - expected).abs().max()))
        largest = max(largest, float(expected.abs().max()), float(before.abs().max()) * scale)
        rows += before.shape[0]
    tolerance = 8 * max(eps, torch.finfo(torch.float32).eps) * (1 + largest) + patch.max_rounding_error
    if not worst <= tolerance:
        raise VerificationError(f"the patched model's outputs differ from the adjusted outputs by up to {worst:.3g} "
                                f"(tolerance {tolerance:.3g}); nothing was written", name)
    return rows, worst, tolerance

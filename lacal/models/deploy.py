"""Patching the files models are served from: ONNX, TorchScript and torch.export programs, one entry point for each
step (open, find the head, patch and write) whatever the format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError, MissingDependencyError


def deployed_kind(path) -> str | None:
    """"onnx", "torchscript" or "export" for a served-model file `lacal apply` patches, else None."""
    from .onnx_patch import is_onnx
    from .script_patch import is_export, is_torchscript

    path = Path(path)
    if not path.is_file():
        return None
    if is_onnx(path):
        return "onnx"
    if is_export(path):
        return "export"
    return "torchscript" if is_torchscript(path) else None


@dataclass
class Deployed:
    """An opened model file and its format."""

    path: Path
    kind: str
    file: object

    @property
    def patch(self) -> dict | None:
        return self.file.patch if self.kind == "onnx" else self.file.tensors.patch

    def find_head(self, num_classes: int | None = None, name: str | None = None):
        """The head (an OnnxHead, or a checkpoints.Head); `name` is an output name for ONNX, a module for the
        others. Its .name and .num_classes say what was found."""
        if self.kind == "onnx":
            from .onnx_patch import find_onnx_head

            return find_onnx_head(self.file, num_classes, name)
        return self.file.find_head(num_classes, name)


@dataclass(frozen=True)
class DeployResult:
    """What a patch did: `added` says why a node was added rather than a bias rewritten (ONNX), `verified` holds
    (rows, max difference, tolerance, what was run) when the patched model was run, `notes` the rest."""

    head: object
    dtype: str
    earlier: dict | None
    added: str | None
    max_rounding_error: float
    verified: tuple | None
    notes: list = field(default_factory=list)


def open_deployed(path, kind: str) -> Deployed:
    if kind == "onnx":
        from .onnx_patch import open_onnx

        return Deployed(Path(path), kind, open_onnx(path))
    from .script_patch import open_script

    return Deployed(Path(path), kind, open_script(path))


def patch_deployed(model: Deployed, head, offsets, tau: float, scale: float = 1.0, calibration_sha256=None,
                   out=None, force: bool = False, in_place: bool = False, inputs=(), verify_inputs=None
                   ) -> DeployResult:
    """Patch the model so that its head gives logits * scale + offsets, check the result with the model's runtime
    and write it (atomically, nothing written when a check fails). `verify_inputs` are model inputs (a
    LogitsSource) to run the original and the patched model on; without them an ONNX model with a fixed input shape
    is run on a few random inputs."""
    if model.kind == "onnx":
        return _patch_onnx(model, head, offsets, tau, scale, calibration_sha256, out, force, in_place, inputs,
                           verify_inputs)
    from .script_patch import make_script_patch, write_script

    patch = make_script_patch(model.file, head, offsets, tau, scale, calibration_sha256, force)
    verified = write_script(model.file, patch, out, force, in_place, inputs, verify_inputs)
    if verified is not None:
        verified = (*verified, f"the {verify_inputs.num_samples} given inputs")
    return DeployResult(head, head.dtype, patch.earlier, None, patch.max_rounding_error, verified)


def _patch_onnx(model, head, offsets, tau, scale, calibration_sha256, out, force, in_place, inputs, verify_inputs):
    from .onnx_patch import (OnnxRunner, import_onnxruntime, input_batches, make_onnx_patch, random_inputs,
                             verify_onnx, write_onnx)

    patch = make_onnx_patch(model.file, head, offsets, tau, scale, calibration_sha256, force)
    verified, notes = [], []

    def check(written: Path) -> None:
        if verify_inputs is not None:
            import_onnxruntime(model.path)
            batches, what = input_batches(verify_inputs), f"the {verify_inputs.num_samples} given inputs"
        else:
            try:
                import_onnxruntime(model.path)
            except MissingDependencyError:
                notes.append("onnxruntime is not installed, so the patched model was not run")
                return
            try:
                sample = random_inputs(OnnxRunner(model.path, output=head.output))
            except InputFileError as exc:
                notes.append(f"the model was not run: {exc.problem}")
                return
            if sample is None:
                notes.append("the model's input shape is not fixed, so it was not run; pass --verify-features "
                             "INPUTS to run it on your inputs")
                return
            batches, what = [sample], f"{sample.shape[0]} random inputs"
        verified.append((*verify_onnx(model.path, written, head, offsets, scale, batches,
                                      patch.max_rounding_error), what))

    notes += write_onnx(model.file, patch, out, force, in_place, inputs, check)
    added = None
    if patch.added_node:
        added = head.why_add or "a temperature scales the logits too"
    return DeployResult(head, patch.record["dtype"], patch.earlier, added, patch.max_rounding_error,
                        verified[0] if verified else None, notes)

"""`lacal.patch_checkpoint`: a checkpoint or a served model file whose classifier bias carries the adjustment (what
`lacal apply CHECKPOINT` does): safetensors and PyTorch state dicts, training checkpoints with their EMA copies,
Hugging Face folders, ONNX, TorchScript and torch.export files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import OptionError
from .inputs import Notes, calibration_for, is_path, make_context, memory_bytes, paths_of, read_names
from .task_inputs import is_multilabel_calibration, task_calibration, task_for


@dataclass(frozen=True, eq=False)
class CheckpointPatch:
    """What `patch_checkpoint` wrote.

    Attributes:
        heads: the patched layers (or the ONNX output).
        num_classes: the head's width.
        tau: the calibration's tau.
        calibration: the `Calibration` applied.
        out: the file or folder written (the checkpoint itself when in place).
        kind: "checkpoint", or the served model's format ("onnx", "torchscript", "export").
        warnings: things the user must know (an earlier patch, an added bias, head notes).
        messages: what was done besides (copies patched, verification, folded temperature, rounding).
    """

    heads: tuple[str, ...]
    num_classes: int
    tau: float
    calibration: Any
    out: Path
    kind: str
    warnings: tuple[str, ...] = field(default=())
    messages: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "num_classes": self.num_classes, "tau": self.tau, "out": str(self.out),
                "kind": self.kind, "warnings": list(self.warnings), "messages": list(self.messages)}


def patch_checkpoint(checkpoint, calibration=None, *, out=None, head: Optional[str] = None, add_bias: bool = False,
                     in_place: bool = False, link: bool = False, verify_features=None, tau: Optional[float] = None,
                     train_labels=None, priors=None, class_names=None, label_column: Optional[str] = None,
                     smoothing: float = 0.0, target_priors: Any = "uniform", target_logits=None,
                     key: Optional[str] = None, device: str = "auto", memory_budget=None, force: bool = False,
                     calibration_file=None, context=None, multi_label: bool = False) -> CheckpointPatch:
    """Write a copy of a model whose classifier head gives the adjusted logits, as `lacal apply CHECKPOINT` does.

    Args:
        checkpoint: a .safetensors or .pt/.pth/.bin state dict, a training checkpoint (.pth.tar, a Lightning .ckpt;
            EMA and SWA copies are patched too), a Hugging Face model folder, an ONNX model, a TorchScript file or a
            torch.export program.
        calibration: a `fit` result, a `Calibration` or a calibration file; or None with `tau` and
            `train_labels`/`priors`.
        out: the patched file or folder; or `in_place=True` to rewrite the checkpoint (atomically).
        head: the classifier layer's name (an ONNX model: its logits output); found by shape and name when None.
        add_bias: give a head without a bias one (refused for Hugging Face folders).
        link: for a Hugging Face folder, hard-link the files that do not change.
        verify_features: features (N x D) checked through the patched head before writing; for a served model,
            model inputs run through the original and the patched model.
        force: replace an existing output; also patch a model that already carries a lacal patch.
        calibration_file: the file a `Calibration` object given as `calibration` came from (its sha256 goes into
            the patch record).
        tau, train_labels, priors, class_names, label_column, smoothing: as for `apply`.
        target_priors, target_logits, key, device, memory_budget, context: as for `apply`.
        multi_label: a multi-label head (one sigmoid per label): the offsets are -tau * log(pi / (1 - pi)) of the
            training positive rates; also taken when `calibration` or `priors` are a multi-label head's. A served
            model (ONNX, TorchScript, torch.export) takes a multi-label calibration file.

    Returns:
        A `CheckpointPatch` (the heads, tau, what was written, warnings and messages).

    Example:
        >>> lacal.patch_checkpoint("model.safetensors", "calibration.json", out="model-adjusted.safetensors")
    """
    from ..models.checkpoints import check_regular, sniff
    from ..models.deploy import deployed_kind

    context = make_context(device, context)
    if context.active:
        raise OptionError("patching a model file does not run under torchrun yet; run it in one process", "torchrun")
    budget = memory_bytes(memory_budget)
    task = task_for(multi_label, calibration, priors)
    if task.multi_label:
        calibration, calibration_file = _label_calibration(checkpoint, calibration, calibration_file, tau,
                                                           train_labels, priors, smoothing, label_column,
                                                           target_priors, target_logits, multi_label, context)
        tau = train_labels = priors = None
    if calibration is not None and not is_path(calibration):  # a fit result or a Calibration
        from ..core.conversions import as_calibration

        calibration = as_calibration(calibration, "calibration")
    fitted = None
    if calibration_file is not None:  # a Calibration object read from this file
        fitted, calibration = calibration, calibration_file
    args = (Path(checkpoint), None if out is None else Path(out), calibration, tau, train_labels, priors,
            class_names, label_column, smoothing, context.device, force, head, add_bias, in_place, link,
            verify_features, key, target_priors, target_logits, budget)
    check_regular(Path(checkpoint))  # a device, FIFO or socket is refused by name, never opened
    kind = deployed_kind(checkpoint)
    if kind is not None:
        return _patch_deployed(kind, *args, fitted=fitted)
    found, read = sniff(checkpoint, key)  # what it read to tell is opened, not read again
    if not found:
        from ..errors import InputFileError

        raise InputFileError("is not a checkpoint lacal can patch", checkpoint)
    return _patch_checkpoint(*args, fitted=fitted, read=read)


def _label_calibration(checkpoint, calibration, calibration_file, tau, train_labels, priors, smoothing, column,
                       target_priors, target_logits, multi_label, context):
    """(the multi-label `Calibration`, the file it came from): the one given, or one built from `tau` and the
    training labels or priors."""
    from ..core.tasks import MULTI_LABEL
    from ..models.deploy import deployed_kind

    uniform = is_path(target_priors) and str(target_priors).strip().lower() == "uniform"
    MULTI_LABEL.refuse(label_column=column, target_logits=target_logits is not None, target_priors=not uniform,
                       torchrun=context.active)
    if deployed_kind(checkpoint) is not None:
        if multi_label and not is_multilabel_calibration(calibration):
            raise OptionError("a multi-label ONNX, TorchScript or torch.export model is patched from the calibration "
                              "file of `lacal fit-tau --multi-label --out`; give it as `calibration`", "multi_label")
        return calibration, calibration_file
    fitted = task_calibration(MULTI_LABEL, calibration, tau, train_labels, priors, None, smoothing, None)
    return fitted, calibration_file if calibration_file is not None else _calibration_path(calibration)


def _calibration_name(calibration) -> str:
    return str(calibration) if is_path(calibration) else "calibration"


def _calibration_path(calibration):
    return calibration if is_path(calibration) else None


def _patch_checkpoint(path, out, calibration, tau, train_labels, priors, classes, label_column, smoothing, compute,
                      force, head, add_bias, in_place, link, verify_features, key, target, target_logits, budget,
                      fitted=None, read=None) -> CheckpointPatch:
    from ..models.checkpoints import find_heads, head_notes, open_checkpoint
    from ..data.readers import read_logits, sha256_file
    from ..models.patch import make_patch, verify_patch, write_checkpoint

    notes = Notes()
    if in_place and out is not None:
        raise OptionError("give `out` or `in_place`, not both", "in_place")
    if not in_place and out is None:
        raise OptionError("give `out` for the patched checkpoint, or `in_place` to rewrite it", "out")
    inputs = paths_of(calibration, train_labels, priors, classes, verify_features, target_logits)
    if out is not None and not path.is_dir():
        from ..data.writers import check_output

        check_output(out, force, [path, *inputs])
    model = open_checkpoint(path, read)
    if fitted is None and calibration is not None:
        fitted = calibration_for(calibration, tau, train_labels, priors, None, smoothing, None, label_column, True,
                                 target, target_logits, key, compute, budget, notes=notes)
    names = read_names(classes) if classes is not None else model.class_names
    if fitted is not None:  # a head's rows are classes in the model's order: the calibration must agree by name
        from ..data.readers import check_same_classes

        check_same_classes(names, fitted.class_names, str(calibration) if is_path(calibration) else "calibration",
                           given_by="`class_names`" if classes is not None else "the model's id2label")
    count = fitted.num_classes if fitted else (len(names) if names else None)
    if count is None and head is None and priors is not None:  # a binary or default-label model: ask the priors
        from ..core.conversions import as_priors

        count = as_priors(priors, "priors", smoothing=smoothing).num_classes
    heads = find_heads(model, count, head)
    layer = heads[0]
    if fitted is not None:
        fitted.check_num_classes(layer.num_classes, "checkpoint's head", _calibration_name(calibration))
    else:
        fitted = calibration_for(None, tau, train_labels, priors, layer.num_classes, smoothing, names, label_column,
                                 True, target, target_logits, key, compute, budget, notes=notes)
    for note in head_notes(model, heads):
        notes.warn(note)
    scale, shift = fitted.affine()
    where = _calibration_path(calibration)
    patch = make_patch(model, heads, shift, fitted.tau, sha256_file(where) if where is not None else None, add_bias,
                       force, scale)
    if patch.copies:
        notes.say(f"also patched the copies of the model under {', '.join(map(repr, patch.record['copies']))}")
    if patch.earlier is not None:
        from ..models.patch import describe_patch

        notes.warn(f"{path} already carries a lacal patch{describe_patch(patch.earlier)}; `force` patches it again, "
                   "so the offsets add up")
    if patch.added_bias:
        notes.warn(f"added a bias to {layer.name!r}; the model's code must build this layer with bias=True")
    if verify_features is not None:
        features = read_logits(verify_features, key, what="features")
        worst, tolerance = verify_patch(model, patch, features, shift, compute)
        notes.say(f"verified on {features.num_samples} samples: the patched head gives the adjusted logits "
                  f"(max |difference| {worst:.3g}, tolerance {tolerance:.3g})")
    if layer.dtype not in ("float32", "float64"):
        notes.say(f"the bias stays {layer.dtype}; rounding moved the offsets by at most "
                  f"{patch.max_rounding_error:.3g}")
    if scale != 1.0:
        notes.say(f"the temperature {fitted.temperature:.4g} is folded into the head: weight and bias are divided "
                  "by it")
    for note in write_checkpoint(model, patch, out, force, in_place, link, inputs):
        notes.say(note)
    if patch.earlier is None and model.kind != "folder":
        notes.say(f"no earlier lacal patch found in {path}; a patched model saved again from its state dict loses "
                  "the record, and then lacal cannot tell it was patched")
    return CheckpointPatch(tuple(h.name for h in heads), layer.num_classes, fitted.tau, fitted,
                           path if in_place else out, "checkpoint", tuple(notes.warnings), tuple(notes.messages))


def _patch_deployed(kind, path, out, calibration, tau, train_labels, priors, classes, label_column, smoothing,
                    compute, force, head, add_bias, in_place, link, verify_features, key, target, target_logits,
                    budget, fitted=None) -> CheckpointPatch:
    """Patch an ONNX, TorchScript or torch.export model file (lacal.deploy)."""
    from ..models.deploy import open_deployed, patch_deployed
    from ..data.readers import read_logits, sha256_file
    from ..models.patch import describe_patch
    from ..data.writers import check_output

    notes = Notes()
    for flag, given in (("add_bias", add_bias), ("link", link)):
        if given:
            raise OptionError(f"`{flag}` is for checkpoints, and {path} is a served model file", flag)
    if in_place == (out is not None):
        raise OptionError("give `out` for the patched model, or `in_place` to rewrite it", "out")
    inputs = paths_of(calibration, train_labels, priors, classes, verify_features, target_logits)
    if out is not None:
        check_output(out, force, [path, *inputs])
    model = open_deployed(path, kind)
    if fitted is None and calibration is not None:
        fitted = calibration_for(calibration, tau, train_labels, priors, None, smoothing, None, label_column, True,
                                 target, target_logits, key, compute, budget, notes=notes)
    names = read_names(classes) if classes is not None else None
    if fitted is not None:
        from ..data.readers import check_same_classes

        check_same_classes(names, fitted.class_names, str(calibration) if is_path(calibration) else "calibration")
    found = model.find_head(fitted.num_classes if fitted else (len(names) if names else None), head)
    if fitted is not None:
        fitted.check_num_classes(found.num_classes, "model's head", _calibration_name(calibration))
    else:
        fitted = calibration_for(None, tau, train_labels, priors, found.num_classes, smoothing, names, label_column,
                                 True, target, target_logits, key, compute, budget, notes=notes)
    scale, shift = fitted.affine()
    features = read_logits(verify_features, key, what="inputs") if verify_features is not None else None
    where = _calibration_path(calibration)
    result = patch_deployed(model, found, shift, fitted.tau, scale, sha256_file(where) if where is not None else None,
                            out, force, in_place, inputs, features)
    if result.earlier is not None:
        notes.warn(f"{path} already carried a lacal patch{describe_patch(result.earlier)}; `force` patched it "
                   "again, so the offsets add up")
    if result.added:
        notes.say(f"the offsets are added by a new node after {found.name!r}: {result.added}")
    if result.verified is not None:
        rows, worst, tolerance, what = result.verified
        notes.say(f"ran the original and the patched model on {what}: the outputs are the adjusted ones "
                  f"(max |difference| {worst:.3g}, tolerance {tolerance:.3g})")
    if result.dtype not in ("float32", "float64"):
        notes.say(f"the bias stays {result.dtype}; rounding moved the offsets by at most "
                  f"{result.max_rounding_error:.3g}")
    for note in result.notes:
        notes.say(note)
    return CheckpointPatch((found.name,), found.num_classes, fitted.tau, fitted, path if in_place else out, kind,
                           tuple(notes.warnings), tuple(notes.messages))

"""Computing the patch of an opened checkpoint: the classifier bias that carries the adjustment, b' = b - tau * log(pi)
(b * scale + offsets, with the weight scaled too when a temperature is folded in), for the model's state dict and for
every copy of the model beside it (EMA copies in a training checkpoint, the other format's files in a Hugging Face
folder). Every head the model averages gets the full offsets. Pure: tensors in (read through the `Checkpoint`), a
`Patch` out; patch_write.py writes it. Each patch records its provenance (tau, offsets, the calibration's sha256) so
that a second patch of the same checkpoint is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError, MismatchError, VerificationError
from .checkpoints import Checkpoint, Weights
from .heads import Head, bias_name, plain_name
from .patch_write import write_checkpoint

__all__ = ["PATCH_FORMAT", "PATCH_VERSION", "Patch", "describe_patch", "make_patch", "verify_patch",
           "write_checkpoint"]

PATCH_FORMAT = "lacal-patch"
PATCH_VERSION = 1


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
    copies: dict = field(default_factory=dict)  # {label of a copy of the model (Weights.label): (replace, add)}


def make_patch(checkpoint: Checkpoint, head: Head | list[Head], offsets, tau: float,
               calibration_sha256: str | None = None, add_bias: bool = False, force: bool = False,
               scale: float = 1.0) -> Patch:
    """Compute the new head: bias b * scale + offsets, and weight W * scale when scale (1 / temperature) is not 1,
    so that the head computes (W x + b) * scale + offsets. `head` may be a list: every head the model averages,
    each given the full offsets (the first is the one `Patch.head` names). Every copy of the model (EMA state dicts
    in a training checkpoint, the other format's files in a Hugging Face folder) gets the same change from its own
    bias; a copy that should hold the head and does not, or holds it in another shape, is refused. Refuse a head
    without a bias (unless add_bias; always for a Hugging Face architecture, which would drop an added bias) and an
    already patched checkpoint (unless force)."""
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
    for weights in checkpoint.copies:
        changes = _copy_changes(checkpoint, weights, heads, offsets, scale)
        if changes is not None:
            copies[weights.label] = changes[:2]
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
              "max_rounding_error": rounding, "heads": [layer.name for layer in heads], "copies": list(copies)}
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


def _copy_changes(checkpoint: Checkpoint, weights: Weights, heads: list[Head], offsets, scale):
    """The changes for a copy of the model: the same heads, found by name without wrapper prefixes (torchvision's
    EMA adds `module.`, a DDP state dict has it and timm's EMA does not). None when an optional copy holds no such
    head (it is not a copy of this model)."""
    where = (f"the state dict {weights.label!r} beside the model" if weights.optional else
             f"{weights.label} (another copy of the model in the folder, which lacal patches too)")
    plain = {}
    for name in weights.tensors:
        plain.setdefault(plain_name(str(name)), []).append(str(name))
    names = {}
    for layer in heads:
        found = plain.get(plain_name(layer.weight), [])
        if not found:
            if layer is heads[0] and weights.optional:
                return None
            raise CheckpointError(f"{where} has no {layer.weight!r}; lacal patches every copy of the head or none",
                                  checkpoint.path)
        if len(found) > 1 or tuple(weights.tensors[found[0]].shape) != tuple(checkpoint.tensors[layer.weight].shape):
            raise CheckpointError(f"{where} holds {layer.weight!r} differently (another shape or several matches); "
                                  "lacal cannot tell whether it is a copy of the model to patch too", checkpoint.path)
        names[layer.weight] = found[0]
        if layer.bias:
            bias = plain.get(plain_name(layer.bias), [])
            if len(bias) != 1:
                raise CheckpointError(f"{where} has {layer.weight!r} but no bias for it", checkpoint.path)
            names[layer.bias] = bias[0]
    return _new_heads(heads, lambda name: checkpoint.read(weights.tensors[name], weights.key), offsets, scale, names)


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

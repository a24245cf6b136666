"""Adjusting a `torch.nn.Module` held in memory: its classifier head's bias takes the calibration's offsets, so that
`module(x)` returns the adjusted (and, with a temperature, calibrated) logits with no change to the user's code.

The head is found the way checkpoint patching finds it (a Linear or 1x1 convolution, by usual name and by the
number of classes, with the heads a known architecture averages, and the same refusals), from the module's own state
dict. The patch is recorded on the module (`module.lacal_patch`), so
a second call is refused instead of adding the offsets twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, LacalError, OptionError, VerificationError

RECORD_ATTRIBUTE = "lacal_patch"
MODULE_PATH = Path("<module>")


@dataclass(frozen=True)
class PatchResult:
    """What `patch_module` changed.

    Attributes:
        heads: the names of the patched layers inside the module (`""` for a bare layer); two when the model averages
            two heads (timm's distilled DeiT: `head` and `head_dist`), each of which gets the full offsets.
        num_classes: the head's output width.
        tau: the calibration's tau.
        added_bias: whether the head had no bias and was given one.
        scale: 1 / temperature, folded into the head's weight and bias (1.0 without a temperature).
        max_rounding_error: how far the parameter dtype moved the new bias from b * scale + offsets.
        record: the provenance record stored on the module.
        warnings: notes for the user (an added bias, a low-precision bias, a patch applied again with force).
    """

    heads: tuple[str, ...]
    num_classes: int
    tau: float
    added_bias: bool
    scale: float
    max_rounding_error: float
    record: dict
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "num_classes": self.num_classes, "tau": self.tau, "added_bias": self.added_bias,
                "scale": self.scale, "max_rounding_error": self.max_rounding_error, "record": self.record,
                "warnings": list(self.warnings)}


def module_checkpoint(module):
    """The module's parameters and buffers as a `Checkpoint` that the head finder reads (shapes only)."""
    from .checkpoints import Checkpoint, TensorInfo

    tensors = {name: TensorInfo(name, tuple(t.shape), str(t.dtype).replace("torch.", ""), MODULE_PATH, position)
               for position, (name, t) in enumerate(module.state_dict(keep_vars=True).items())}
    return Checkpoint(MODULE_PATH, "module", tensors)


def _layer(module, name: str):
    import torch

    layer = module.get_submodule(name) if name else module
    if isinstance(layer, torch.nn.Linear):
        return layer
    if isinstance(layer, torch.nn.Conv2d) and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1:
        return layer
    raise CheckpointError(f"the head {name or '(the module itself)'!r} is a {type(layer).__name__}, not a Linear or "
                          "1x1 Conv2d layer whose bias lacal can change; if another layer gives the model's output, "
                          "name it with head=NAME, else adjust the logits with Calibration.adjust",
                          "module")


def patch_module(module, calibration, *, head: str | None = None, add_bias: bool = False, force: bool = False,
                 verify_inputs=None) -> PatchResult:
    """Change the classifier head of `module` in place so that `module(x)` returns the adjusted logits.

    The new bias is b * s + offsets and the new weight W * s, where (s, offsets) = `calibration.affine()`
    (s = 1 / temperature, 1.0 without a probability calibration). Runs under `torch.no_grad()` on the head's device
    and dtype.

    Args:
        module: the model (any `torch.nn.Module`, wrapped in DataParallel / DDP / torch.compile or not).
        calibration: a `fit(...)` result, a `lacal.Calibration` (`Calibration.load`) or a calibration file.
        head: the classifier's name inside the module (for example `"fc"` or `"head.fc"`); found by usual name and
            by the number of classes when not given.
        add_bias: give a head without a bias one (in memory this always works: the layer's forward uses it).
        force: patch a module that already carries a lacal patch (the offsets then add up).
        verify_inputs: optional inputs (a tensor, or a tuple of positional arguments) to run through the module
            before and after; the patched outputs must equal the original ones * s + offsets within the dtype's
            rounding, else the module is restored and `VerificationError` is raised. Use this when something other
            than a plain softmax may follow the head.

    Returns:
        A `PatchResult`; `module.lacal_patch` holds its record.

    Raises:
        CheckpointError: no head found, several candidates, a head without a bias (and not `add_bias`), or a module
            already patched (and not `force`).
        MismatchError: the head's width is not the calibration's number of classes.
        VerificationError: `verify_inputs` showed that the outputs are not the adjusted logits.

    Example:
        >>> fit = lacal.fit(val_logits, val_labels, priors)
        >>> lacal.patch_module(model, fit.calibration)
        >>> adjusted = model(images)          # logits - tau * log(pi)
    """
    import torch

    from .heads import bias_name, find_heads, head_notes
    from .patch import PATCH_FORMAT, PATCH_VERSION, describe_patch

    if not isinstance(module, torch.nn.Module):
        raise OptionError(f"expected a torch.nn.Module, got {type(module).__name__}", "module")
    from ..core.conversions import as_calibration

    calibration = as_calibration(calibration, "calibration")
    earlier = getattr(module, RECORD_ATTRIBUTE, None)
    warnings = []
    if earlier is not None:
        if not force:
            raise CheckpointError(f"already carries a lacal patch{describe_patch(earlier)}; patching again would add "
                                  "the offsets twice; pass force=True if that is really what you want", "module")
        warnings.append(f"the module already carried a lacal patch{describe_patch(earlier)}; the offsets add up")
    checkpoint = module_checkpoint(module)
    heads = find_heads(checkpoint, calibration.num_classes, head)
    calibration.check_num_classes(heads[0].num_classes, "module's head")
    layers = [_layer(module, found.name) for found in heads]
    bare = [found.name for found, layer in zip(heads, layers) if layer.bias is None]
    if bare and not add_bias:
        raise CheckpointError(f"head {bare[0]!r} has no bias, and the adjustment is a change of bias; pass "
                              "add_bias=True to give it one", "module")
    warnings += [note.replace(" (--verify-features checks the layer itself)", "; verify_inputs=x does")
                 for note in head_notes(checkpoint, heads)]
    scale, shift = calibration.affine()
    before = _outputs(module, verify_inputs) if verify_inputs is not None else None
    saved = [(layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone())
             for layer in layers]
    rounding = 0.0
    with torch.no_grad():
        for found, layer in zip(heads, layers):
            weight = layer.weight
            if layer.bias is None:
                layer.bias = torch.nn.Parameter(torch.zeros(found.num_classes, dtype=weight.dtype,
                                                            device=weight.device),
                                                requires_grad=weight.requires_grad)
                warnings.append(f"added a bias to {found.name!r}")
            exact = layer.bias.detach().double() * scale + torch.as_tensor(shift, dtype=torch.float64,
                                                                          device=weight.device)
            layer.bias.copy_(exact.to(layer.bias.dtype))
            rounding = max(rounding, float((layer.bias.detach().double() - exact).abs().max()))
            if scale != 1.0:
                weight.mul_(scale)
    dtype = layers[0].bias.dtype
    if dtype not in (torch.float32, torch.float64):
        warnings.append(f"the bias stays {str(dtype).replace('torch.', '')}; rounding moved the offsets by at most "
                        f"{rounding:.3g}")
    if before is not None:
        try:
            _verify(module, verify_inputs, before, scale, shift, rounding, layers[0].weight.dtype)
        except LacalError:
            with torch.no_grad():
                for layer, (weight, bias) in zip(layers, saved):
                    layer.weight.copy_(weight)
                    if bias is None:
                        layer.bias = None
                    else:
                        layer.bias.copy_(bias)
            raise
    names = [found.name for found in heads]
    record = {"format": PATCH_FORMAT, "version": PATCH_VERSION, "head": names[0], "heads": names,
              "bias": heads[0].bias or bias_name(names[0]), "added_bias": bool(bare), "tau": float(calibration.tau),
              "offsets": np.asarray(shift, dtype=np.float64).tolist(), "scale": scale, "calibration_sha256": None,
              "bias_dtype": str(dtype).replace("torch.", ""), "max_rounding_error": rounding}
    setattr(module, RECORD_ATTRIBUTE, record)
    return PatchResult(tuple(names), heads[0].num_classes, float(calibration.tau), bool(bare), scale, rounding,
                       record, tuple(warnings))


def _outputs(module, inputs):
    import torch

    arguments = inputs if isinstance(inputs, tuple) else (inputs,)
    training = module.training
    module.eval()  # no BatchNorm statistics updated, no dropout: the two runs must be comparable
    try:
        with torch.no_grad():
            output = module(*arguments)
    finally:
        module.train(training)
    logits = getattr(output, "logits", output)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise VerificationError(f"the module returned a {type(output).__name__}, not a tensor of logits; verify "
                                "by hand", "module")
    return logits.detach()


def _verify(module, inputs, before, scale, shift, rounding, dtype) -> None:
    import torch

    after = _outputs(module, inputs).double()
    expected = before.double() * scale + torch.as_tensor(shift, dtype=torch.float64, device=before.device)
    worst = float((after - expected).abs().max())
    tolerance = 8 * torch.finfo(dtype).eps * (1 + float(expected.abs().max())) + rounding
    if not worst <= tolerance:
        raise VerificationError(f"after patching, the module's outputs differ from the adjusted logits by up to "
                                f"{worst:.3g} (tolerance {tolerance:.3g}): something after the head (a nonlinearity, "
                                "a normalisation, another head) changes them; the module was restored", "module")

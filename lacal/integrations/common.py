"""What every framework integration shares: fitting tau on collected logits (in one process or across the ranks of a
job that is already running), the numbers each one logs, the classifier head of a module in memory, and the targets
of a batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OptionError

LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def fit_logits(logits, targets, priors, *, tau_range=(0.0, 4.0), metric: str = "balanced-error",
               smoothing: float = 0.0, class_names=None, context=None):
    """`lacal.fit` on logits and targets held in memory (arrays or tensors), nothing written. Under
    torch.distributed, `context` (see `distributed_context`) makes each rank's rows its share of the validation set,
    merged exactly as `lacal fit-tau` under torchrun merges them. Targets that are not integer class ids are refused.

    Returns:
        The `FitResult`.
    """
    from ..workflows import fit

    return fit(_numpy(logits), _numpy(targets), priors, tau_range=tau_range, metric=metric, smoothing=smoothing,
               class_names=class_names, record_inputs=False, device="cpu", context=context)


def check_fit_options(metric: str, tau_range, smoothing: float = 0.0) -> tuple[float, float]:
    """Refuse a bad `metric`, `tau_range` or `smoothing` when an integration is built, rather than after an epoch of
    training; returns the range as (low, high)."""
    from ..methods.search import METRICS, check_tau_range

    if metric not in METRICS:
        raise OptionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float, np.integer, np.floating)) \
            or not np.isfinite(smoothing) or smoothing < 0:
        raise OptionError(f"`smoothing` must be a finite number of at least 0, got {smoothing!r}", "smoothing")
    return check_tau_range(tau_range)


def fit_numbers(result, prefix: str = "") -> dict[str, float]:
    """The numbers an integration reports for a fit: tau, and the balanced and worst-class errors before (plain
    argmax) and after the adjustment, named `{prefix}tau`, `{prefix}balanced_error`,
    `{prefix}balanced_error_adjusted`, `{prefix}worst_class_error`, `{prefix}worst_class_error_adjusted`."""
    fitted = result.tau_fit
    return {f"{prefix}tau": float(fitted.tau),
            f"{prefix}balanced_error": float(fitted.before.balanced_error),
            f"{prefix}balanced_error_adjusted": float(fitted.after.balanced_error),
            f"{prefix}worst_class_error": float(fitted.before.worst_class_error),
            f"{prefix}worst_class_error_adjusted": float(fitted.after.worst_class_error)}


def distributed_context(local_rank: int = 0):
    """The lacal `Context` of a process group that the training framework has already started (Lightning's DDP, the
    Hugging Face Trainer under torchrun), or None in a single process."""
    import torch
    import torch.distributed as dist

    from ..engine.distributed import Context

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    backend = str(dist.get_backend()).lower()
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                   backend="nccl" if "nccl" in backend else "gloo", device=torch.device("cpu"))


def module_head(module, num_classes: int | None = None, name: str | None = None) -> tuple[str, Any]:
    """(name, layer) of the classifier head of a `torch.nn.Module` in memory, found as checkpoint patching finds it
    (a Linear or 1x1 convolution, by usual name and by the number of classes; `name` chooses it). A model whose
    logits average several heads is refused: no one layer's output is its logits."""
    from ..models.checkpoints import find_heads
    from ..models.module_patch import module_checkpoint

    heads = find_heads(module_checkpoint(module), num_classes, name)
    if len(heads) > 1:
        raise OptionError(f"the model averages {len(heads)} classifier heads ({', '.join(h.name for h in heads)}), "
                          "so no one layer's output is its logits", "head")
    head = heads[0]
    return head.name, (module.get_submodule(head.name) if head.name else module)


def batch_targets(batch, rows: int | None = None):
    """The class ids of a batch: its second item (`(inputs, targets)`), or its `labels` / `label` / `targets` /
    `target` / `y` entry; None when there is none. With `rows`, only a 1-D integer tensor of that length counts."""
    import torch

    found = None
    if isinstance(batch, dict):
        found = next((batch[key] for key in LABEL_KEYS if key in batch), None)
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        found = batch[1]
    if not isinstance(found, torch.Tensor) or found.ndim != 1 or found.is_floating_point() or found.is_complex():
        return None
    if rows is not None and found.shape[0] != rows:
        return None
    return found


def step_logits(outputs, rows: int | None = None):
    """Logits returned by a validation step: a 2-D float tensor, or the `logits` entry (or attribute) of what it
    returned; None when there are none (with `rows`, of that many rows)."""
    import torch

    found = outputs
    if isinstance(outputs, dict):
        found = outputs.get("logits")
    elif not isinstance(outputs, torch.Tensor):
        found = getattr(outputs, "logits", None)
    if not isinstance(found, torch.Tensor) or found.ndim != 2 or not found.is_floating_point():
        return None
    if rows is not None and found.shape[0] != rows:
        return None
    return found


def step_targets(outputs):
    """Targets a validation step returned in a dict (`labels`, `targets`, ...), or None."""
    return batch_targets(outputs) if isinstance(outputs, dict) else None


def check_tau(tau) -> str | float:
    """"auto", or a finite number."""
    if isinstance(tau, str):
        if tau != "auto":
            raise OptionError(f"`tau` must be \"auto\" or a number, got {tau!r}", "tau")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)) or not np.isfinite(tau):
        raise OptionError(f"`tau` must be \"auto\" or a finite number, got {tau!r}", "tau")
    return float(tau)


def _numpy(values) -> np.ndarray:
    """A numpy array of a tensor (bfloat16 and float16 as float32) or an array."""
    if hasattr(values, "detach"):
        import torch

        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype != torch.float64:
            values = values.float()
        values = values.numpy()
    return np.asarray(values)

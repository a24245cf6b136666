"""The logit-adjusted loss of Menon et al. (2021), for training: cross-entropy on logits + tau * log(pi).

Training with it builds the adjustment into the model, so its plain argmax already favours the balanced error; no
post-hoc step is needed (use tau = 1 for the Bayes-consistent choice).
"""

from __future__ import annotations

import numpy as np


def _log_priors(priors, device=None, dtype=None):
    import torch

    from ..core.offsets import as_priors_array

    return torch.as_tensor(np.log(as_priors_array(priors)), device=device, dtype=dtype)


def logit_adjusted_cross_entropy(logits, labels, priors, tau: float = 1.0, reduction: str = "mean",
                                 weight=None, label_smoothing: float = 0.0):
    """Cross-entropy of (logits + tau * log(pi)) against `labels`; `priors` are the training class priors (or
    counts, or a Priors). Arguments after tau are those of torch.nn.functional.cross_entropy."""
    import torch.nn.functional as F

    shift = _log_priors(priors, logits.device, logits.dtype)
    return F.cross_entropy(logits + tau * shift, labels, weight=weight, reduction=reduction,
                           label_smoothing=label_smoothing)


def _module_base():
    import torch

    return torch.nn.Module


class LogitAdjustedLoss(_module_base()):
    """torch.nn.Module form of `logit_adjusted_cross_entropy`; log(pi) is a buffer, so it moves with `.to(device)`."""

    def __init__(self, priors, tau: float = 1.0, reduction: str = "mean", weight=None, label_smoothing: float = 0.0):
        super().__init__()
        import torch

        self.tau = float(tau)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("log_priors", _log_priors(priors, dtype=torch.float64))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight))

    def forward(self, logits, labels):
        import torch.nn.functional as F

        weight = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits + self.tau * self.log_priors.to(logits.dtype), labels, weight=weight,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.log_priors.numel()}"

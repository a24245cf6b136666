"""A torchmetrics `Metric` that fits tau and gives the adjusted balanced error (`pip install lacal[torchmetrics]`).

    metric = LogitAdjustedError(train_counts)
    metric.update(logits, targets)          # in any loop, on any device, in any process
    metric.compute()                        # the balanced error at the fitted tau; metric.tau is tau

Its states (the logits and targets seen) declare their cross-process reduction (`cat`), so under DDP `compute`
fits on every process's samples, as torchmetrics' own metrics do; in Lightning, `self.log("val/la", metric)` works.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..errors import OptionError
from .common import fit_logits, fit_numbers

METRICS = ("balanced-error", "worst-class-error")


class LogitAdjustedError(Metric):
    """The balanced (or worst-class) error of argmax(logits - tau * log(pi)) at the tau that minimises it, fitted
    exactly on the logits and targets accumulated.

    Args:
        priors: the training class counts or priors (a vector, a `lacal.Priors`, or a priors file).
        metric: "balanced-error" or "worst-class-error": what tau minimises and what `compute` returns.
        tau_range: (low, high) searched for tau.
        **kwargs: torchmetrics' Metric options (`sync_on_compute`, `process_group`, ...).

    Attributes:
        tau: the tau of the last `compute` (a tensor; NaN before one).
        result: the `lacal.FitResult` of the last `compute`, with `.calibration`.
        values: the numbers of the last `compute` as a dict (`tau`, `balanced_error`, `balanced_error_adjusted`,
            `worst_class_error`, `worst_class_error_adjusted`), for `self.log_dict`.

    Example:
        >>> metric = LogitAdjustedError([500, 120, 30, 8])
        >>> metric.update(torch.randn(64, 4), torch.randint(0, 4, (64,)))
        >>> error = metric.compute()
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, priors: Any, *, metric: str = "balanced-error", tau_range=(0.0, 4.0), **kwargs):
        super().__init__(**kwargs)
        if metric not in METRICS:
            raise OptionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
        self.priors = priors
        self.metric = metric
        self.tau_range = tuple(tau_range)
        self.tau = torch.tensor(float("nan"))
        self.result = None
        self.values: dict[str, float] = {}
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: N x C logits and N class ids."""
        if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
            raise OptionError(f"expected N x C logits and N targets, got shapes {tuple(logits.shape)} and "
                              f"{tuple(targets.shape)}", "logits")
        self.logits.append(logits.detach().float() if logits.dtype != torch.float64 else logits.detach())
        self.targets.append(targets.detach().long())

    def compute(self) -> torch.Tensor:
        """Fit tau on everything accumulated (every process's, under DDP) and return the error at it."""
        logits, targets = dim_zero_cat(self.logits), dim_zero_cat(self.targets)
        self.result = fit_logits(logits, targets, self.priors, tau_range=self.tau_range, metric=self.metric)
        self.values = fit_numbers(self.result)
        self.tau = torch.tensor(self.values["tau"])
        name = "balanced_error_adjusted" if self.metric == "balanced-error" else "worst_class_error_adjusted"
        return torch.tensor(self.values[name], dtype=torch.float64)

"""A torchmetrics `Metric` that fits tau and gives the adjusted balanced error (`pip install lacal[torchmetrics]`).

    metric = LogitAdjustedError(train_counts)
    metric.update(logits, targets)          # in any loop, on any device, in any process
    metric.compute()                        # the balanced error at the fitted tau; metric.tau is tau

Its states (the logits and targets seen) declare their cross-process reduction (`cat`), so under DDP `compute`
fits on every process's samples, as torchmetrics' own metrics do; in Lightning, `self.log("val/la", metric)` works.
With `keep="intervals"` it keeps, instead of the C logits of each sample, the open tau-interval on which the sample
is classified right and its target (3 numbers a sample, whatever the number of classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..errors import OptionError
from .common import fit_logits, fit_numbers

METRICS = ("balanced-error", "worst-class-error")
KEEP = ("logits", "intervals")


class LogitAdjustedError(Metric):
    """The balanced (or worst-class) error of argmax(logits - tau * log(pi)) at the tau that minimises it, fitted
    exactly on the logits and targets accumulated.

    Args:
        priors: the training class counts or priors (a vector, a `lacal.Priors` or `count_priors` result, or a
            priors file).
        metric: "balanced-error" or "worst-class-error": what tau minimises and what `compute` returns.
        tau_range: (low, high) searched for tau.
        keep: "logits" (N x C floats), or "intervals": each sample's tau-interval of correct classification and
            its target (N x 3, for many classes); the fit is then `methods.fit_tau_intervals`, equal to `lacal.fit`
            except where the logits hold exact ties.
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

    def __init__(self, priors: Any, *, metric: str = "balanced-error", tau_range=(0.0, 4.0), keep: str = "logits",
                 **kwargs):
        super().__init__(**kwargs)
        if metric not in METRICS:
            raise OptionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
        if keep not in KEEP:
            raise OptionError(f"unknown keep {keep!r}; use one of {', '.join(KEEP)}", "keep")
        self.priors = priors
        self.keep = keep
        self._priors = _priors(priors) if keep == "intervals" else None
        self.metric = metric
        self.tau_range = tuple(tau_range)
        self.tau = torch.tensor(float("nan"), dtype=torch.float64)
        self.result = None
        self.values: dict[str, float] = {}
        if keep == "logits":
            self.add_state("logits", default=[], dist_reduce_fx="cat")
        else:
            self.add_state("lo", default=[], dist_reduce_fx="cat")
            self.add_state("hi", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: N x C logits and N class ids."""
        if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
            raise OptionError(f"expected N x C logits and N targets, got shapes {tuple(logits.shape)} and "
                              f"{tuple(targets.shape)}", "logits")
        targets = targets.detach().long()
        if self.keep == "logits":
            self.logits.append(logits.detach().float() if logits.dtype != torch.float64 else logits.detach())
        else:
            from ..engine.passes import interval_pass

            self._priors_check(logits.shape[1])
            stats = interval_pass(logits.detach(), targets, self._priors.log_priors, device=logits.device)
            self.lo.append(stats.lo)
            self.hi.append(stats.hi)
        self.targets.append(targets)

    def compute(self) -> torch.Tensor:
        """Fit tau on everything accumulated (every process's, under DDP) and return the error at it."""
        targets = dim_zero_cat(self.targets)
        if self.keep == "logits":
            self.result = fit_logits(dim_zero_cat(self.logits), targets, self.priors, tau_range=self.tau_range,
                                     metric=self.metric)
        else:
            self.result = self._fit_intervals(dim_zero_cat(self.lo), dim_zero_cat(self.hi), targets)
        self.values = fit_numbers(self.result)
        self.tau = torch.tensor(self.values["tau"], dtype=torch.float64)
        name = "balanced_error_adjusted" if self.metric == "balanced-error" else "worst_class_error_adjusted"
        return torch.tensor(self.values[name], dtype=torch.float64)

    def _priors_check(self, num_classes: int) -> None:
        if num_classes != self._priors.num_classes:
            raise OptionError(f"the logits have {num_classes} classes but the priors {self._priors.num_classes}",
                              "logits")

    def _fit_intervals(self, lo, hi, targets):
        from ..core.calibration import Calibration
        from ..methods import fit_tau_intervals
        from ..workflows import FitResult

        fitted = fit_tau_intervals(lo.cpu(), hi.cpu(), targets.cpu(), self._priors.num_classes, self.tau_range,
                                   self.metric)
        return FitResult(Calibration.from_fit(fitted, self._priors), fitted, None, None, None, None, "intervals")


def _priors(priors):
    """A `Priors` from a `Priors`, a `count_priors` result, a priors file, or a vector of counts or probabilities."""
    from ..core.conversions import as_priors

    return as_priors(priors)

"""The two tasks a head can be trained for, and the one table of the options each takes.

A single-label head (softmax: one class per sample) and a multi-label head (one sigmoid per label: an N x C 0/1 label
matrix) differ in a few places only: the offsets from the priors (-tau log pi against -tau log(pi / (1 - pi))), how a
sample's correctness depends on tau, the metrics and report rows, and what the calibration stores. A `Task` names
those places; `fit`, `apply`, `report`, `compare`, `count_priors` and the CLI take one and are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class Task:
    """What kind of head the logits come from.

    Attributes:
        name: "single-label" or "multi-label".
        multi_label: whether labels are an N x C 0/1 matrix (one sigmoid per label).
        metrics: the metrics tau can be fitted for (the first is the default).
        unit: what one output of the head is called in messages ("class" or "label"); `units` is the plural.
    """

    name: str
    multi_label: bool
    metrics: tuple[str, ...]
    unit: str
    units: str

    def offsets(self, priors, tau: float) -> np.ndarray:
        """The adjustment added to the logits: -tau log pi (single-label) or -tau log(pi / (1 - pi)) (multi-label).

        Args:
            priors: a `Priors` / `MultiLabelPriors`, or the vector pi.
            tau: the scale of the adjustment.

        Returns:
            The C offsets (float64).

        Example:
            >>> MULTI_LABEL.offsets(np.array([0.5, 0.1]), 1.0)
            array([-0.        ,  2.19722458])
        """
        if self.multi_label:
            from .positive_rates import multilabel_offsets

            return multilabel_offsets(priors, tau)
        from .offsets import offsets

        return offsets(priors, tau)

    def check_metric(self, metric: str) -> str:
        """`metric` if this task is fitted for it, else an `OptionError` naming `metric`."""
        if metric not in self.metrics:
            if self.multi_label:
                raise OptionError(f"multi-label heads are fitted for balanced-error or macro-f1, not {metric}",
                                  "metric")
            raise OptionError(f"unknown metric {metric!r}; use {' or '.join(self.metrics)}", "metric")
        return metric

    def refuse(self, **given) -> None:
        """Refuse the options this task does not take (by `OPTIONS`), given as parameter=truthy-when-given.

        `torchrun=True` says the call runs under torchrun, which `RUNS_UNDER_TORCHRUN` says whether the task's
        command may.

        Raises:
            OptionError: naming the first option given that this task does not take.

        Example:
            >>> MULTI_LABEL.refuse(calibrate=None, head="fc")
            Traceback (most recent call last):
            lacal.errors.exceptions.OptionError: head: `head` do(es) not apply to multi-label heads yet
        """
        names = [name for name, value in given.items() if value and name != "torchrun"
                 and self.name not in OPTIONS.get(name, TASK_NAMES)]
        if names:
            raise OptionError(f"{', '.join(f'`{name}`' for name in names)} do(es) not apply to {self.name} heads "
                              "yet", names[0])
        if given.get("torchrun") and self.multi_label:
            raise OptionError("multi-label commands do not run under torchrun yet; run them in one process",
                              "torchrun")


SINGLE_LABEL = Task("single-label", False, ("balanced-error", "worst-class-error"), "class", "classes")
MULTI_LABEL = Task("multi-label", True, ("balanced-error", "macro-f1"), "label", "labels")
TASK_NAMES = (SINGLE_LABEL.name, MULTI_LABEL.name)

# The options that only some tasks take: parameter -> the tasks that take it. Every other option applies to both.
# The library refuses by this table (`Task.refuse`); the CLI passes its flags under the same parameter names, and
# its error messages show them as flags.
OPTIONS = {
    "method": ("single-label",), "search": ("single-label",), "grid_size": ("single-label",),
    "target_priors": ("single-label",), "target_logits": ("single-label",), "calibrate": ("single-label",),
    "bias_l2": ("single-label",), "checkpoint": ("single-label",), "features": ("single-label",),
    "test_features": ("single-label",), "head": ("single-label",), "label_column": ("single-label",),
    "plot": ("single-label",), "bins": ("single-label",), "em": ("single-label",),
}


def task_of(multi_label=False, calibration=None) -> Task:
    """The task of a call: `multi_label`, or that of the `Calibration` given.

    Example:
        >>> task_of(True).name
        'multi-label'
    """
    return MULTI_LABEL if multi_label or getattr(calibration, "multi_label", False) else SINGLE_LABEL

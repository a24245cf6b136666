"""Scoring logits against labels in one call: `evaluate` (per-class counts of argmax(logits - tau * log(pi))),
`balanced_error` and `worst_class_error`. One pass of the engine (`scoring.score_pass`) over an array, a tensor or a
`LogitsSource`."""

from __future__ import annotations

import numpy as np

from ..core.metrics import ClassEvaluation


def evaluate(logits, labels, priors=None, tau: float = 0.0, *, offset=None, device="cpu",
             rows: int | None = None) -> ClassEvaluation:
    """Evaluate argmax(logits - tau * log(pi)) (or argmax(logits + offset)) against `labels`.

    `logits` is an N x C array, tensor or LogitsSource; with neither priors nor offset, the raw logits are scored.
    """
    from ..core.offsets import offsets
    from ..engine.passes import score_pass

    if offset is None:
        offset = np.zeros(_num_classes(logits)) if priors is None else offsets(priors, tau)
    return score_pass(logits, labels, [offset], device=device, rows=rows)[0]


def _num_classes(logits) -> int:
    return int(logits.shape[1])


def balanced_error(logits, labels, priors=None, tau: float = 0.0, **kwargs) -> float:
    """Mean over classes with samples of the per-class error of argmax(logits - tau * log(pi))."""
    return evaluate(logits, labels, priors, tau, **kwargs).balanced_error


def worst_class_error(logits, labels, priors=None, tau: float = 0.0, **kwargs) -> float:
    """Largest per-class error of argmax(logits - tau * log(pi)) over classes with samples."""
    return evaluate(logits, labels, priors, tau, **kwargs).worst_class_error

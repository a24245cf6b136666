"""Logit adjustment: f_y(x) - tau * log(pi_y)."""

from __future__ import annotations

import numpy as np

from ..errors import MismatchError, OptionError, PriorsError


def as_priors_array(priors) -> np.ndarray:
    """Positive priors or counts as float64 priors summing to 1: a vector, a tensor, a `Priors`, or a result holding
    one (`count_priors(...)`, `estimate_priors(...)`)."""
    values = getattr(priors, "priors", priors)
    values = getattr(values, "priors", values)  # a result holding a Priors
    values = np.asarray(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)) or values.min() <= 0:
        raise PriorsError("`priors` must be positive and finite; a zero prior has no logarithm", "priors")
    return values / values.sum()


def offsets(priors, tau: float, target_priors=None) -> np.ndarray:
    """The per-class offset -tau * log(pi) (+ log(q) toward target priors q) that logit adjustment adds to every
    row of logits, in float64.

    `priors` (and `target_priors`) are vectors of class priors or counts, or `Priors` objects; without target
    priors the target is uniform, whose log adds the same constant to every class and is left out.
    """
    shift = -float(tau) * np.log(as_priors_array(priors))
    return shift if target_priors is None else shift + np.log(as_priors_array(target_priors))


def adjust_logits(logits, priors=None, tau: float = 1.0, *, offset=None, scale: float = 1.0, target_priors=None):
    """Return logits - tau * log(pi) (+ log(q) with `target_priors` q), or logits * scale + `offset`; same shape and
    type (numpy in, numpy out; torch in, torch out) and dtype. The arithmetic runs in float32, or float64 for
    float64 input."""
    import torch

    if offset is None:
        if priors is None:
            raise OptionError("give `priors` (with `tau`) or `offset`", "priors")
        offset = offsets(priors, tau, target_priors)
    is_numpy = not isinstance(logits, torch.Tensor)
    tensor = torch.from_numpy(np.asarray(logits)) if is_numpy else logits
    if tensor.ndim != 2 or tensor.shape[1] != len(offset):
        raise MismatchError(f"logits of shape {tuple(tensor.shape)} do not match {len(offset)} class offsets",
                            "logits")
    compute = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    shift = torch.as_tensor(np.asarray(offset), dtype=compute, device=tensor.device)
    values = tensor.to(compute) if scale == 1.0 else tensor.to(compute) * scale
    result = (values + shift).to(tensor.dtype)
    return result.numpy() if is_numpy else result


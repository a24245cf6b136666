"""What an argument that means priors, a calibration or target priors may be, turned into the one object lacal works
with: one conversion per kind, so that whatever a call returns is accepted wherever what it holds is expected.

A workflow's result is recognised by what it holds (`.priors`, `.calibration`), not by its class, so
`fit(val_logits, val_labels, count_priors(train_labels))` works, as does `apply(logits, fit(...))`. Anything else
is a `LacalError` that names the parameter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MismatchError, OptionError
from .calibration import Calibration
from .positive_rates import MultiLabelPriors
from .priors import Priors, priors_from_vector

PRIORS_KINDS = (Priors, MultiLabelPriors)


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _is_vector(value) -> bool:
    """An array, a tensor, or a list or tuple of numbers (not a path, not an object holding something)."""
    return isinstance(value, (np.ndarray, list, tuple)) or hasattr(value, "detach") or (
        hasattr(value, "__array__") and not hasattr(value, "priors"))


def _vector(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def held(value, attribute: str, kinds: tuple):
    """`value` if it is one of `kinds`, or what it holds as `attribute` when that is (a workflow's result); else
    None."""
    if isinstance(value, kinds):
        return value
    inner = getattr(value, attribute, None)
    return inner if isinstance(inner, kinds) else None


def is_multi_label_file(path) -> bool:
    """Whether a JSON calibration or priors file is a multi-label head's (a bad file is reported when it is read)."""
    if not _is_path(path) or Path(path).suffix.lower() in (".npy", ".txt"):  # the formats of plain vectors
        return False
    from ..data.readers import check_readable, parse_json
    from ..errors import LacalError

    try:  # only a regular file is read (a device or FIFO would never end), and a key written twice is refused later
        data = parse_json(check_readable(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, LacalError):
        return False
    return isinstance(data, dict) and (data.get("multi_label") is True or "positives" in data)


def _described(value) -> str:
    return type(value).__name__


def as_priors(value, parameter: str = "priors", *, multi_label: bool = False, smoothing: float = 0.0,
              classes: list[str] | None = None):
    """The training priors an argument means.

    Args:
        value: a `Priors` (or, with `multi_label`, a `MultiLabelPriors`), a result holding one as `.priors`
            (`count_priors(...)`), a priors file, or (single-label) a vector of counts or probabilities: a numpy
            array, a torch tensor or a list.
        parameter: the argument's name, for the error.
        multi_label: priors of a multi-label head (positives per label out of a number of samples).
        smoothing, classes: for a file or a vector: added to every count; the class names.

    Returns:
        A `Priors`, or with `multi_label` a `MultiLabelPriors`.

    Raises:
        MismatchError: single-label priors where multi-label ones are expected, or the other way round.
        OptionError: anything else that is not priors (an estimate of target priors, a calibration, ...).

    Example:
        >>> as_priors(lacal.count_priors([0, 1, 1, 2])).counts
        array([1, 2, 1])
    """
    found = held(value, "priors", PRIORS_KINDS)
    if found is not None:
        if isinstance(found, MultiLabelPriors) != multi_label:
            raise MismatchError(f"holds {'multi-label' if not multi_label else 'single-label (softmax)'} priors, "
                                f"but {'a multi-label' if multi_label else 'a single-label'} head was asked for"
                                + ("" if multi_label else "; pass multi_label=True"), parameter)
        return found
    if _is_path(value):
        if multi_label:
            from .label_matrix import read_multilabel_priors

            return read_multilabel_priors(value, smoothing, classes)
        from .priors import read_priors

        return read_priors(value, smoothing, classes)
    if _is_vector(value):
        if multi_label:
            raise OptionError("multi-label priors are positives per label out of a number of samples, which a vector "
                              "does not say: give `count_priors(train_labels, multi_label=True)`, a MultiLabelPriors "
                              "or its file", parameter)
        values = _vector(value)
        if values.ndim != 1:
            raise OptionError(f"expected a vector of counts or probabilities, got shape {values.shape}", parameter)
        return priors_from_vector(values, smoothing, classes, name=parameter)
    hint = ""
    if hasattr(value, "priors") and hasattr(value, "train_priors"):
        hint = "; it is an estimate of target priors: pass it as `target_priors`"
    elif held(value, "calibration", (Calibration,)) is not None:
        hint = "; it holds a calibration, which apply, report and the patches take as `calibration`"
    raise OptionError(f"expected training priors (a count_priors result, a Priors, counts or probabilities, or a "
                      f"priors file), got {_described(value)}{hint}", parameter)


def as_calibration(value, parameter: str = "calibration") -> Calibration:
    """The `Calibration` an argument means: a `Calibration`, a result holding one as `.calibration` (`fit(...)`),
    or a calibration file.

    Args:
        value: what was given.
        parameter: the argument's name, for the error.

    Returns:
        The `Calibration` (single- or multi-label: the caller checks which it needs).

    Raises:
        OptionError: anything else (the error names `parameter`).

    Example:
        >>> as_calibration(lacal.fit(val_logits, val_labels, priors)).tau
    """
    found = held(value, "calibration", (Calibration,))
    if found is not None:
        return found
    if _is_path(value):
        return Calibration.load(value)
    hint = ""
    if hasattr(value, "tau_fit") and not hasattr(value, "calibration"):
        hint = "; it holds no calibration (tau-norm is fitted for comparison only)"
    elif held(value, "priors", PRIORS_KINDS) is not None:
        hint = "; it holds training priors: pass them as `priors`, with `tau`"
    raise OptionError(f"expected a calibration (a fit result, a Calibration or a calibration file), got "
                      f"{_described(value)}{hint}", parameter)


def as_target_priors(value, parameter: str = "target_priors") -> tuple[np.ndarray, dict]:
    """Target priors q given as a value, and a record of where they came from (stored in the calibration).

    "uniform" and "em" (estimated from target logits) are the workflow's to handle; this takes the rest.

    Args:
        value: an estimate (`estimate_priors(...)` or `methods.estimate_target_priors(...)`, anything holding q as
            an array `.priors`), priors (a `Priors` or a `count_priors` result, of the target's labels), a vector of
            probabilities or counts, or a priors file.
        parameter: the argument's name, for the error.

    Returns:
        (q summing to 1, its record: `kind` "em", "priors", "array" or "file", `path`, `sha256`, and how EM went).

    Raises:
        OptionError: anything else (the error names `parameter`).
    """
    found = held(value, "priors", (Priors,))
    if found is not None:
        source = found.source or {}
        return found.priors, {"kind": "priors", "path": source.get("path"), "sha256": source.get("sha256")}
    if _is_path(value):
        from ..data.readers import sha256_file
        from .priors import read_priors

        return read_priors(value).priors, {"kind": "file", "path": str(value), "sha256": sha256_file(value)}
    if _is_vector(value):
        return priors_from_vector(_vector(value), name=parameter).priors, {"kind": "array", "path": None,
                                                                             "sha256": None}
    estimate = getattr(value, "priors", None)
    how = getattr(value, "info", None) is not None or hasattr(value, "converged")  # how EM went: an estimate
    if estimate is not None and _is_vector(estimate) and how:
        q = priors_from_vector(_vector(estimate), name=parameter).priors
        info = getattr(value, "info", None)
        if not isinstance(info, dict):  # a methods.PriorEstimate: how EM went, no file
            info = {"kind": "em", "path": None, "sha256": None,
                    **{k: v for k, v in value.to_dict().items() if k != "priors"}}
        return q, dict(info)
    raise OptionError(f"expected target priors (\"uniform\", \"em\", an estimate_priors result, priors, a vector or "
                      f"a priors file), got {_described(value)}", parameter)

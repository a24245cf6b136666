"""Training label priors: counts from labels, priors from counts, and the priors file `lacal priors` writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputDataError, InputFileError, PriorsError
from ..data.readers import check_readable, check_same_classes, load_npy, parse_json

PRIORS_FORMAT = "lacal-priors"
PRIORS_VERSION = 1


@dataclass(frozen=True)
class Priors:
    """Class priors pi (float64, summing to 1) and, when known, the training counts they came from.

    `counts` are the raw counts (before smoothing); `smoothing` is the ALPHA added to each count to get `priors`.
    """

    priors: np.ndarray
    counts: np.ndarray | None = None
    smoothing: float = 0.0
    classes: list[str] | None = None
    source: dict | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return int(self.priors.shape[0])

    @property
    def log_priors(self) -> np.ndarray:
        return np.log(self.priors)

    def to_dict(self) -> dict:
        return {
            "format": PRIORS_FORMAT,
            "version": PRIORS_VERSION,
            "num_classes": self.num_classes,
            "counts": None if self.counts is None else [int(c) for c in self.counts],
            "smoothing": self.smoothing,
            "priors": [float(p) for p in self.priors],
            "classes": self.classes,
            "source": self.source,
        }


def _describe_classes(ids: np.ndarray, classes: list[str] | None) -> str:
    shown = [f"{i} ({classes[i]})" if classes else str(i) for i in ids[:10].tolist()]
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return ", ".join(shown) + more


MAX_CLASSES = 10 ** 8  # class counts of more would take gigabytes


def check_labels(labels: np.ndarray, num_classes: int, source: str | None = None) -> None:
    """Raise InputDataError if a label id is outside 0..num_classes-1."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max()) if labels.max() >= num_classes else int(labels.min())
        where = int(np.flatnonzero(labels == bad)[0])
        raise InputDataError(f"label {bad} (entry {where + 1}) is out of range for {num_classes} classes "
                             f"(ids 0..{num_classes - 1})", source)


def class_counts(labels, num_classes: int, source: str | None = None) -> np.ndarray:
    """How many times each class id 0..num_classes-1 occurs in `labels` (int64)."""
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64).ravel()
    if num_classes > MAX_CLASSES:
        raise InputDataError(f"{num_classes:,} classes (the largest label + 1, or `num_classes`) is more than lacal "
                             f"counts ({MAX_CLASSES:,}); check the labels", source)
    check_labels(labels, num_classes, source)
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def priors_from_counts(counts, smoothing: float = 0.0, classes: list[str] | None = None,
                       source: dict | None = None, name: str | None = None) -> Priors:
    """pi_y = (n_y + smoothing) / sum(n + smoothing). A class with zero count and no smoothing is a PriorsError,
    since log(0) has no value: the error names the classes."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    if smoothing < 0 or not np.isfinite(smoothing):
        raise PriorsError(f"smoothing must be a finite number >= 0, got {smoothing}", "--smoothing")
    if counts.size < 2:
        raise PriorsError(f"need counts for at least 2 classes, got {counts.size}", name)
    if not np.all(np.isfinite(counts)) or counts.min() < 0:
        raise PriorsError("counts must be finite and non-negative", name)
    if classes is not None and len(classes) != counts.size:
        raise PriorsError(f"{len(classes)} class names for {counts.size} counts", name)
    zero = np.flatnonzero(counts == 0)
    if zero.size and smoothing == 0:
        raise PriorsError(
            f"{zero.size} class(es) have no training samples: {_describe_classes(zero, classes)}; "
            "log(0) is undefined, so pass --smoothing ALPHA to add ALPHA to every count", name)
    smoothed = counts + smoothing
    integral = np.all(counts == np.round(counts))
    return Priors(priors=smoothed / smoothed.sum(),
                  counts=counts.astype(np.int64) if integral else counts,
                  smoothing=float(smoothing), classes=classes, source=source)


def priors_from_vector(values, smoothing: float = 0.0, classes: list[str] | None = None,
                       source: dict | None = None, name: str | None = None) -> Priors:
    """Priors from a vector that holds either whole-number counts or probabilities summing to 1."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        raise PriorsError(f"need values for at least 2 classes, got {values.size}", name)
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise PriorsError("priors must be finite and non-negative", name)
    if np.all(values == np.round(values)) and values.sum() > 1:
        return priors_from_counts(values, smoothing, classes, source, name)
    if abs(values.sum() - 1.0) > 1e-6:
        raise PriorsError(f"values are neither whole-number counts nor probabilities summing to 1 "
                          f"(they sum to {values.sum():.6g})", name)
    zero = np.flatnonzero(values == 0)
    if zero.size:
        raise PriorsError(f"{zero.size} class(es) have prior 0: {_describe_classes(zero, classes)}; log(0) is "
                          "undefined; give counts instead of probabilities and pass --smoothing ALPHA", name)
    if smoothing:
        raise PriorsError("`smoothing` adds to counts, but this file holds probabilities", name)
    if classes is not None and len(classes) != values.size:
        raise PriorsError(f"{len(classes)} class names for {values.size} priors", name)
    return Priors(priors=values / values.sum(), counts=None, smoothing=0.0, classes=classes, source=source)


def read_priors(path: str | os.PathLike, smoothing: float = 0.0, classes: list[str] | None = None) -> Priors:
    """Read a priors file: the JSON `lacal priors` writes, a JSON list, a .npy vector, or a .txt with one number per
    line. Each may hold counts or probabilities."""
    from ..data.readers import sha256_file

    path = check_readable(path)
    source = {"path": str(path), "sha256": sha256_file(path)}
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = parse_json(path.read_text(encoding="utf-8-sig"))
            if isinstance(data, dict):
                return _priors_from_json_object(data, path, smoothing, classes, source)
            values = _numbers(data, path, "a JSON list of numbers")
        elif suffix == ".npy":
            values = load_npy(path)
            if values.dtype.kind not in "iuf":
                raise PriorsError(f"has dtype {values.dtype}; expected numbers", path)
        elif suffix == ".txt":
            values = np.array([float(line) for line in path.read_text(encoding="utf-8-sig").split()], dtype=np.float64)
        else:
            raise InputFileError(f"unknown priors format {suffix or '(no suffix)'!r}; use .json, .npy or .txt", path)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError, EOFError, RecursionError) as exc:
        raise InputFileError(f"cannot read priors: {exc or 'the file is empty or cut short'}", path) from None
    if values.ndim != 1:
        raise PriorsError(f"expected a 1-D vector, got shape {values.shape}", path)
    return priors_from_vector(values, smoothing, classes, source, str(path))


def _numbers(data, path: Path, what: str) -> np.ndarray:
    """A list of JSON numbers (booleans are not numbers here) as float64."""
    if not isinstance(data, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        raise PriorsError(f"expected {what}", path)
    try:
        return np.array(data, dtype=np.float64)
    except OverflowError:
        raise PriorsError(f"holds a number too large for a float64; expected {what}", path) from None


def _priors_from_json_object(data: dict, path: Path, smoothing: float, classes, source) -> Priors:
    if data.get("format") != PRIORS_FORMAT:
        raise PriorsError("is a JSON object but not a lacal priors file; expected the output of `lacal priors` or a "
                          "JSON list of counts or probabilities", path)
    names = data.get("classes")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise PriorsError("\"classes\" must be a list of class names", path)
    stored = data.get("smoothing", 0.0)
    if isinstance(stored, bool) or not isinstance(stored, (int, float)):
        raise PriorsError("\"smoothing\" must be a number", path)
    check_same_classes(classes, names, path, "the priors file")
    classes = classes or names
    if data.get("counts") is not None:
        counts = _numbers(data["counts"], path, "\"counts\" to be a list of numbers")
        return priors_from_counts(counts, smoothing or float(stored), classes, source, str(path))
    if data.get("priors") is None:
        raise PriorsError("holds neither \"counts\" nor \"priors\"", path)
    values = _numbers(data["priors"], path, "\"priors\" to be a list of numbers")
    return priors_from_vector(values, smoothing, classes, source, str(path))


def priors_from_labels(labels, num_classes: int, smoothing: float = 0.0, classes: list[str] | None = None,
                       source: dict | None = None, name: str | None = None) -> Priors:
    """Count the training labels and turn the counts into priors."""
    return priors_from_counts(class_counts(labels, num_classes, name), smoothing, classes, source, name)


def check_num_classes(priors: Priors, num_classes: int, what: str, name: str | None) -> None:
    if priors.num_classes != num_classes:
        verb = "have" if what.endswith("logits") else "has"
        raise InputDataError(f"priors have {priors.num_classes} classes but {what} {verb} {num_classes}", name)


def read_train_labels(path: str | os.PathLike, num_classes: int, smoothing: float = 0.0,
                      classes: list[str] | None = None, column: str | None = None) -> Priors:
    """Priors from a training labels file (.npy, .txt, .csv) over `num_classes` classes."""
    from ..data.readers import read_labels, sha256_file

    path = Path(path)
    labels = read_labels(path, classes, column)
    source = {"path": str(path), "sha256": sha256_file(path)}
    return priors_from_labels(labels, num_classes, smoothing, classes, source, str(path))

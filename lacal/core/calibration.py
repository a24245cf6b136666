"""A fitted calibration: tau and the priors it adjusts by, saved as a versioned JSON file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputDataError, InputFileError, MismatchError
from ..data.readers import check_readable, parse_json

CALIBRATION_FORMAT = "lacal-calibration"
SCHEMA_VERSION = 2
MULTI_LABEL_VERSION = 3  # multi-label files: an older lacal must not read their priors as class priors
READABLE_VERSIONS = (1, 2, 3)


@dataclass(frozen=True, eq=False)
class Calibration:
    """tau and the training priors; `offsets` = -tau * log(pi) + log(q) is what adjustment adds to every row of
    logits (q, the target priors, is left out when uniform). A probability calibration adds a temperature and a
    bias, fitted on the (balanced) validation data: the calibrated logits are
    (logits - tau * log(pi)) / temperature + bias + log(q), the posterior under the target priors q, which `affine`
    gives as a scale and a per-class shift.

    `validation` holds the metrics measured when tau was fitted, `inputs` the path and sha256 of each input file.

    A multi-label calibration (`multi_label`) holds per-label positive rates pi_k in (0, 1) as `priors`, the
    training positives as `counts` out of `train_samples`, and offsets -tau * log(pi / (1 - pi)).
    """

    tau: float
    priors: np.ndarray
    counts: np.ndarray | None = None
    class_names: list[str] | None = None
    smoothing: float = 0.0
    tau_interval: tuple[float, float] | None = None
    metric: str | None = None
    search: str | None = None
    validation: dict | None = field(default=None, compare=False)
    inputs: dict | None = field(default=None, compare=False)
    target_priors: np.ndarray | None = None
    target: dict | None = field(default=None, compare=False)  # where q came from (a file, EM and its statistics)
    temperature: float = 1.0
    bias: np.ndarray | None = None
    probability_fit: dict | None = field(default=None, compare=False)
    multi_label: bool = False
    train_samples: int | None = None

    def __eq__(self, other) -> bool:
        """Equal when tau, priors, counts, names and fit details are (validation and input hashes aside)."""
        if not isinstance(other, Calibration):
            return NotImplemented
        ignore = ("validation", "inputs")
        mine = {k: v for k, v in self.to_dict().items() if k not in ignore}
        theirs = {k: v for k, v in other.to_dict().items() if k not in ignore}
        return mine == theirs

    __hash__ = None

    @property
    def num_classes(self) -> int:
        return int(self.priors.shape[0])

    @property
    def log_odds(self) -> np.ndarray:
        """A multi-label calibration's log(pi / (1 - pi)) per label, from the training counts when stored (so that
        a rate of exactly one half gives exactly 0); `offsets` is -tau times it."""
        from .positive_rates import log_odds, multilabel_priors

        if self.counts is not None and self.train_samples is not None:
            return multilabel_priors(self.counts, self.train_samples, self.smoothing).log_odds
        return log_odds(self.priors)

    @property
    def offsets(self) -> np.ndarray:
        if self.multi_label:
            return -self.tau * self.log_odds
        shift = -self.tau * np.log(self.priors)
        return shift if self.target_priors is None else shift + np.log(self.target_priors)

    def affine(self) -> tuple[float, np.ndarray]:
        """(scale, shift): calibrated logits = logits * scale + shift, the same for every sample."""
        scale = 1.0 / self.temperature
        if self.multi_label:
            return 1.0, self.offsets
        shift = -self.tau * np.log(self.priors) * scale
        if self.bias is not None:
            shift = shift + self.bias
        shift = shift if self.target_priors is None else shift + np.log(self.target_priors)
        if not (math.isfinite(scale) and scale > 0 and np.all(np.isfinite(shift))):
            raise InputDataError(f"tau = {self.tau:.4g}, temperature {self.temperature:.4g}"
                                 f"{'' if self.bias is None else ' and its bias'} give offsets that are not finite "
                                 "numbers; nothing was written")
        return scale, shift


    @classmethod
    def from_fit(cls, fit, priors, class_names=None, inputs=None, target_priors=None, target=None,
                 probability_fit=None) -> "Calibration":
        """Build from a fit and the priors it was fitted with: a `TauFit` and `Priors` (and, when used, the target
        priors and a `ProbabilityFit`), or a `MultiLabelFit` and `MultiLabelPriors` (a multi-label calibration)."""
        common = dict(tau=fit.tau, priors=np.asarray(priors.priors, dtype=np.float64),
                      class_names=class_names or priors.classes, smoothing=priors.smoothing,
                      tau_interval=fit.interval, metric=fit.metric, validation=fit.to_dict(), inputs=inputs)
        if hasattr(priors, "positives"):  # MultiLabelPriors: per-label positive rates
            return cls(**common, counts=priors.positives, search="exact", multi_label=True,
                       train_samples=int(priors.num_samples))
        return cls(**common, counts=priors.counts, search=fit.search,
                   target_priors=None if target_priors is None else np.asarray(target_priors), target=target,
                   temperature=1.0 if probability_fit is None else probability_fit.temperature,
                   bias=None if probability_fit is None else probability_fit.bias,
                   probability_fit=None if probability_fit is None else probability_fit.to_dict())

    def adjust(self, logits):
        """The calibrated logits, (logits - tau * log(pi)) / temperature + bias + log(q): same type, shape and dtype
        as given."""
        from .offsets import adjust_logits

        self.check_num_classes(int(logits.shape[1]), "logits")
        scale, shift = self.affine()
        return adjust_logits(logits, offset=shift, scale=scale)

    def check_num_classes(self, num_classes: int, what: str, name: str | None = None) -> None:
        if num_classes != self.num_classes:
            raise MismatchError(f"the calibration is for {self.num_classes} classes but the {what} have "
                                f"{num_classes}", name)

    def to_dict(self) -> dict:
        return {
            "format": CALIBRATION_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "tau": self.tau,
            "tau_interval": None if self.tau_interval is None else list(self.tau_interval),
            "metric": self.metric,
            "search": self.search,
            "num_classes": self.num_classes,
            "counts": None if self.counts is None else [int(c) for c in self.counts],
            "smoothing": self.smoothing,
            "priors": [float(p) for p in self.priors],
            "offsets": [float(o) for o in self.offsets],
            "target_priors": None if self.target_priors is None else [float(q) for q in self.target_priors],
            "target": self.target,
            "temperature": self.temperature,
            "bias": None if self.bias is None else [float(b) for b in self.bias],
            "probability_fit": self.probability_fit,
            "class_names": self.class_names,
            "validation": self.validation,
            "inputs": self.inputs,
        } if not self.multi_label else {
            "format": CALIBRATION_FORMAT, "schema_version": MULTI_LABEL_VERSION, "multi_label": True,
            "tau": self.tau, "tau_interval": None if self.tau_interval is None else list(self.tau_interval),
            "metric": self.metric, "search": self.search, "num_classes": self.num_classes,
            "train_samples": self.train_samples,
            "counts": None if self.counts is None else [int(c) for c in self.counts], "smoothing": self.smoothing,
            "priors": [float(p) for p in self.priors], "offsets": [float(o) for o in self.offsets],
            "class_names": self.class_names, "validation": self.validation, "inputs": self.inputs,
        }

    @classmethod
    def from_dict(cls, data: dict, name: str | None = None) -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise InputDataError("is not a lacal calibration file (no \"format\": \"lacal-calibration\")", name)
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise InputDataError(f"has schema version {version!r}; this lacal reads versions "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}", name)
        try:
            return cls._parse_multilabel(data) if data.get("multi_label") else cls._parse(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InputDataError(f"has an invalid calibration: {detail}", name) from None

    @classmethod
    def _parse(cls, data: dict) -> "Calibration":
        tau = _finite(data["tau"], "tau")
        priors = np.asarray(data["priors"], dtype=np.float64)
        if priors.ndim != 1 or priors.size < 2 or not np.all(np.isfinite(priors)) or not np.all(priors > 0) \
                or abs(priors.sum() - 1) > 1e-6:
            raise ValueError("\"priors\" must be at least 2 positive numbers summing to 1")
        names = data.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)
                                      and len(names) == priors.size):
            raise ValueError(f"\"class_names\" must be a list of {priors.size} names")
        counts = data.get("counts")
        if counts is not None:
            counts = np.asarray(counts, dtype=np.float64)
            if counts.shape != priors.shape or not np.all(counts == np.round(counts)) or counts.min() < 0:
                raise ValueError(f"\"counts\" must be {priors.size} whole numbers >= 0")
            counts = counts.astype(np.int64)
        interval = data.get("tau_interval")
        if interval is not None:
            if not isinstance(interval, list) or len(interval) != 2:
                raise ValueError("\"tau_interval\" must be a list [low, high]")
            interval = (float(interval[0]), float(interval[1]))
        target = data.get("target_priors")
        if target is not None:
            target = np.asarray(target, dtype=np.float64)
            if target.shape != priors.shape or not np.all(np.isfinite(target)) or not np.all(target > 0) \
                    or abs(target.sum() - 1) > 1e-6:
                raise ValueError(f"\"target_priors\" must be {priors.size} positive numbers summing to 1")
        temperature = _finite(data.get("temperature", 1.0), "temperature")
        if temperature <= 0:
            raise ValueError(f"\"temperature\" must be > 0, got {temperature}")
        bias = data.get("bias")
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float64)
            if bias.shape != priors.shape or not np.all(np.isfinite(bias)):
                raise ValueError(f"\"bias\" must be {priors.size} finite numbers")
        return cls(tau=tau, priors=priors, counts=counts, class_names=names,
                   smoothing=_finite(data.get("smoothing", 0.0), "smoothing"), tau_interval=interval,
                   metric=data.get("metric"), search=data.get("search"), validation=data.get("validation"),
                   inputs=data.get("inputs"), target_priors=target, target=data.get("target"),
                   temperature=temperature, bias=bias, probability_fit=data.get("probability_fit"))

    @classmethod
    def _parse_multilabel(cls, data: dict) -> "Calibration":
        priors = np.asarray(data["priors"], dtype=np.float64)
        if priors.ndim != 1 or priors.size < 1 or not np.all((priors > 0) & (priors < 1)):
            raise ValueError("\"priors\" of a multi-label calibration must be numbers strictly between 0 and 1")
        names = data.get("class_names")
        if names is not None and not (isinstance(names, list) and len(names) == priors.size
                                      and all(isinstance(n, str) for n in names)):
            raise ValueError(f"\"class_names\" must be a list of {priors.size} names")
        counts, samples = data.get("counts"), data.get("train_samples")
        if counts is not None:
            counts = np.asarray(counts, dtype=np.float64)
            if counts.shape != priors.shape or not np.all(counts == np.round(counts)) or counts.min() < 0:
                raise ValueError(f"\"counts\" must be {priors.size} whole numbers >= 0")
            counts = counts.astype(np.int64)
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
                                    or (counts is not None and counts.max() > samples)):
            raise ValueError("\"train_samples\" must be a whole number >= 1 and >= every count")
        interval = data.get("tau_interval")
        if interval is not None:
            if not isinstance(interval, list) or len(interval) != 2:
                raise ValueError("\"tau_interval\" must be a list [low, high]")
            interval = (float(interval[0]), float(interval[1]))
        return cls(tau=_finite(data["tau"], "tau"), priors=priors, counts=counts, class_names=names,
                   smoothing=_finite(data.get("smoothing", 0.0), "smoothing"), tau_interval=interval,
                   metric=data.get("metric"), search=data.get("search"), validation=data.get("validation"),
                   inputs=data.get("inputs"), multi_label=True, train_samples=samples)

    def save(self, path: str | os.PathLike, force: bool = False, inputs=()) -> None:
        """Write the calibration as JSON, atomically."""
        from ..data.writers import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", force=force, inputs=inputs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        path = check_readable(path)
        try:
            data = parse_json(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputFileError(f"is not a JSON calibration file: {exc or type(exc).__name__}", path) from None
        return cls.from_dict(data, str(path))


def _finite(value, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"\"{field_name}\" must be a finite number, got {value!r}")
    return float(value)

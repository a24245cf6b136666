"""Per-label positive rates of a multi-label (sigmoid) head and their log-odds: what the binary logit adjustment
subtracts, -tau * log(pi_k / (1 - pi_k)). Core values (numpy only), used by the calibration file and by the
multi-label search (`multilabel.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PriorsError


@dataclass(frozen=True)
class MultiLabelPriors:
    """Per-label training positive counts out of `num_samples` samples. pi_k = (positives_k + a) / (n + 2a) with
    a = `smoothing`, so that pi_k lies strictly between 0 and 1."""

    positives: np.ndarray
    num_samples: int
    smoothing: float = 0.0
    classes: list[str] | None = None
    source: dict | None = None

    @property
    def num_classes(self) -> int:
        return int(self.positives.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """The training positives per label (what a report groups labels by, as it groups classes by counts)."""
        return self.positives

    @property
    def priors(self) -> np.ndarray:
        return (self.positives + self.smoothing) / (self.num_samples + 2 * self.smoothing)

    @property
    def log_odds(self) -> np.ndarray:
        """log(pi / (1 - pi)), computed from the counts (exactly 0 where a label is positive half the time)."""
        a = self.smoothing
        return np.log(self.positives + a) - np.log(self.num_samples - self.positives + a)

    def to_dict(self) -> dict:
        return {"format": PRIORS_FORMAT, "version": 1, "multi_label": True, "num_classes": self.num_classes,
                "num_samples": int(self.num_samples), "positives": [int(p) for p in self.positives],
                "smoothing": self.smoothing, "priors": [float(p) for p in self.priors], "classes": self.classes,
                "source": self.source}


PRIORS_FORMAT = "lacal-multilabel-priors"


def _describe(ids, classes) -> str:
    shown = [f"{i} ({classes[i]})" if classes else str(i) for i in ids[:10].tolist()]
    return ", ".join(shown) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def multilabel_priors(positives, num_samples: int, smoothing: float = 0.0, classes=None, source=None,
                      name=None) -> MultiLabelPriors:
    """Priors from positive counts per label and the number of training samples. A label that is never positive
    (or always positive) has no finite log-odds: without `smoothing` that is a PriorsError naming the labels."""
    positives = np.asarray(positives, dtype=np.float64).ravel()
    if smoothing < 0 or not np.isfinite(smoothing):
        raise PriorsError(f"smoothing must be a finite number >= 0, got {smoothing}", "--smoothing")
    if positives.size < 1:
        raise PriorsError("need positive counts for at least 1 label", name)
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise PriorsError(f"the number of samples must be a whole number >= 1, got {num_samples!r}", name)
    if not np.all(np.isfinite(positives)) or positives.min() < 0 or np.any(positives != np.round(positives)):
        raise PriorsError("positive counts must be whole numbers >= 0", name)
    if positives.max() > num_samples:
        raise PriorsError(f"a label has {int(positives.max())} positives out of {num_samples} samples", name)
    if classes is not None and len(classes) != positives.size:
        raise PriorsError(f"{len(classes)} class names for {positives.size} labels", name)
    if smoothing == 0:
        for bad, what in ((positives == 0, "no positive"), (positives == num_samples, "only positive")):
            ids = np.flatnonzero(bad)
            if ids.size:
                raise PriorsError(f"{ids.size} label(s) have {what} training samples: {_describe(ids, classes)}; "
                                  "log(pi / (1 - pi)) is undefined, so pass --smoothing ALPHA (pi = (positives + "
                                  "ALPHA) / (samples + 2 ALPHA))", name)
    return MultiLabelPriors(positives.astype(np.int64), int(num_samples), float(smoothing), classes, source)


def multilabel_priors_from_labels(labels, smoothing: float = 0.0, classes=None, source=None,
                                  name=None) -> MultiLabelPriors:
    """Count the positives of an N x C 0/1 training label matrix."""
    labels = np.asarray(labels, dtype=bool)
    return multilabel_priors(labels.sum(0), labels.shape[0], smoothing, classes, source, name)


def log_odds(priors) -> np.ndarray:
    """log(pi / (1 - pi)) of a MultiLabelPriors, or of a vector of positive rates strictly between 0 and 1."""
    if isinstance(priors, MultiLabelPriors):
        return priors.log_odds
    values = np.asarray(priors, dtype=np.float64).ravel()
    if values.size == 0 or not np.all((values > 0) & (values < 1)):
        raise PriorsError("multi-label priors must lie strictly between 0 and 1", "priors")
    return np.log(values) - np.log1p(-values)


def multilabel_offsets(priors, tau: float) -> np.ndarray:
    """-tau * log(pi / (1 - pi)): what the binary logit adjustment adds to every row of sigmoid logits."""
    return -float(tau) * log_odds(priors)

"""Per-class errors, balanced error, worst-class error and accuracy, and the many/medium/few-shot groups.

Classes with no validation samples have no error: they are left out of the balanced and worst-class errors (the rule
scikit-learn's balanced accuracy follows) and listed in `classes_without_samples`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20
GROUPS = ("many", "medium", "few")


def macro_mean(values: np.ndarray, present: np.ndarray) -> float:
    """The mean of the per-class (or per-label) `values` that are not NaN; NaN when no class is `present`."""
    return float(np.nanmean(values)) if np.any(present) else float("nan")


class Counts:
    """Counts per class (or per label) held in dataclass fields, the first of which sets the number of classes: two
    are equal when every array is."""

    def __eq__(self, other) -> bool:
        return isinstance(other, type(self)) and all(
            np.array_equal(getattr(self, field.name), getattr(other, field.name)) for field in fields(self))

    __hash__ = None

    @property
    def num_classes(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])


@dataclass(frozen=True, eq=False)
class ClassEvaluation(Counts):
    """Per-class counts of validation samples (`support`) and of correct predictions (`correct`)."""

    support: np.ndarray
    correct: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.support.sum())

    @property
    def errors(self) -> np.ndarray:
        """Per-class error rate; NaN where a class has no samples."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.support > 0, 1.0 - self.correct / np.maximum(self.support, 1), np.nan)

    @property
    def classes_without_samples(self) -> list[int]:
        return np.flatnonzero(self.support == 0).tolist()

    @property
    def balanced_error(self) -> float:
        return macro_mean(self.errors, self.support)

    @property
    def worst_class_error(self) -> float:
        return float(np.nanmax(self.errors)) if self.support.any() else float("nan")

    @property
    def accuracy(self) -> float:
        return float(self.correct.sum() / self.support.sum()) if self.support.any() else float("nan")

    def metric(self, name: str) -> float:
        return {"balanced-error": self.balanced_error, "worst-class-error": self.worst_class_error}[name]

    def to_dict(self) -> dict:
        return {"balanced_error": self.balanced_error, "accuracy": self.accuracy,
                "worst_class_error": self.worst_class_error}

    def reduce(self, context) -> "ClassEvaluation":
        """The counts of every rank of a torchrun job, added up (itself in one process)."""
        return ClassEvaluation(context.sum(self.support), context.sum(self.correct))


def evaluate_predictions(predictions, labels, num_classes: int) -> ClassEvaluation:
    """Per-class counts from predicted and true class ids."""
    predictions = np.asarray(predictions).astype(np.int64).ravel()
    labels = np.asarray(labels).astype(np.int64).ravel()
    support = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    return ClassEvaluation(support=support[:num_classes], correct=correct[:num_classes])


def shot_groups(train_counts) -> np.ndarray:
    """'many' (> 100 training samples), 'medium' (20 to 100) or 'few' (< 20) for each class."""
    counts = np.asarray(train_counts)
    return np.where(counts > MANY_SHOT_ABOVE, "many", np.where(counts < FEW_SHOT_BELOW, "few", "medium"))


def group_errors(evaluation: ClassEvaluation, train_counts) -> dict[str, dict]:
    """For each shot group: how many classes it has, how many have validation samples, and their mean error."""
    groups = shot_groups(train_counts)
    errors = evaluation.errors
    result = {}
    for group in GROUPS:
        members = groups == group
        scored = members & (evaluation.support > 0)
        result[group] = {"classes": int(members.sum()), "classes_with_samples": int(scored.sum()),
                         "error": float(errors[scored].mean()) if scored.any() else None}
    return result


DEFAULT_BINS = 15


@dataclass(frozen=True, eq=False)
class ProbabilityMetrics:
    """Sums over samples of a softmax's quality, mergeable over blocks, and the metrics they give.

    ECE: equal-width bins of the top confidence (a confidence of exactly 1.0 falls in the last bin); each bin adds
    |sum of correctness - sum of confidence| / N, so an empty bin adds 0. Classwise ECE: the same for each class's
    probability against whether the label is that class, averaged over classes.
    """

    num_samples: int
    nll_sum: float
    brier_sum: float
    bin_count: np.ndarray  # [bins]
    bin_confidence: np.ndarray  # [bins] sums of top confidence
    bin_correct: np.ndarray  # [bins] sums of correctness
    class_gap: np.ndarray  # [classes, bins] sums of p_c - [y == c]

    @property
    def nll(self) -> float:
        return self.nll_sum / self.num_samples

    @property
    def brier(self) -> float:
        return self.brier_sum / self.num_samples

    @property
    def ece(self) -> float:
        return float(np.abs(self.bin_correct - self.bin_confidence).sum() / self.num_samples)

    @property
    def classwise_ece(self) -> float:
        return float(np.abs(self.class_gap).sum(1).mean() / self.num_samples)

    def to_dict(self) -> dict:
        return {"nll": self.nll, "brier": self.brier, "ece": self.ece, "classwise_ece": self.classwise_ece,
                "bins": int(self.bin_count.shape[0])}

    def reduce(self, context) -> "ProbabilityMetrics":
        """The sums of every rank of a torchrun job, added up (itself in one process)."""
        if not context.active:
            return self
        return ProbabilityMetrics(int(context.sum(np.array([self.num_samples]))[0]),
                                  float(context.sum(np.array([self.nll_sum]))[0]),
                                  float(context.sum(np.array([self.brier_sum]))[0]), context.sum(self.bin_count),
                                  context.sum(self.bin_confidence), context.sum(self.bin_correct),
                                  context.sum(self.class_gap))

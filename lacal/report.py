"""The per-class picture before and after adjustment, as data (rendering lives in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import ClassEvaluation, ProbabilityMetrics, group_errors

SORT_KEYS = ("class", "error", "count")


@dataclass(frozen=True)
class Report:
    """Evaluations of the raw logits (`baseline`) and of the adjusted ones (`adjusted`, None when no tau was
    given), with the training counts (for shot groups) and class names when known."""

    baseline: ClassEvaluation
    adjusted: ClassEvaluation | None = None
    train_counts: np.ndarray | None = None
    class_names: list[str] | None = None
    tau: float | None = None
    baseline_quality: ProbabilityMetrics | None = None
    adjusted_quality: ProbabilityMetrics | None = None
    target_priors: np.ndarray | None = None
    temperature: float | None = None

    @property
    def main(self) -> ClassEvaluation:
        return self.adjusted if self.adjusted is not None else self.baseline

    def order(self, sort: str = "class") -> np.ndarray:
        """Class ids in display order: by id, by error after (worst first), or by training count (largest first)."""
        ids = np.arange(self.baseline.num_classes)
        if sort == "error":
            errors = np.nan_to_num(self.main.errors, nan=-1.0)
            return ids[np.lexsort((ids, -errors))]
        if sort == "count":
            counts = self.train_counts if self.train_counts is not None else self.main.support
            return ids[np.lexsort((ids, -np.asarray(counts)))]
        return ids

    def groups(self, evaluation: ClassEvaluation) -> dict | None:
        return None if self.train_counts is None else group_errors(evaluation, self.train_counts)

    def _section(self, evaluation: ClassEvaluation, quality: ProbabilityMetrics | None = None) -> dict:
        errors = evaluation.errors
        names = self.class_names
        counts = self.train_counts
        return {
            **evaluation.to_dict(),
            **({} if quality is None else quality.to_dict()),
            "num_samples": evaluation.num_samples,
            "per_class": [
                {"class": c, "name": names[c] if names else None,
                 "train_count": None if counts is None else int(counts[c]),
                 "support": int(evaluation.support[c]),
                 "error": None if np.isnan(errors[c]) else float(errors[c])}
                for c in range(evaluation.num_classes)],
            "groups": self.groups(evaluation),
        }

    def to_dict(self) -> dict:
        adjusted = self.adjusted is not None
        result = self._section(self.main, self.adjusted_quality if adjusted else self.baseline_quality)
        result["tau"] = self.tau
        result["temperature"] = self.temperature
        result["target_priors"] = None if self.target_priors is None else [float(q) for q in self.target_priors]
        result["num_classes"] = self.main.num_classes
        result["classes_without_samples"] = self.main.classes_without_samples
        result["baseline"] = self._section(self.baseline, self.baseline_quality)
        return result


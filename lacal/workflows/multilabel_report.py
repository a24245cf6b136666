"""The per-label picture of a multi-label head before and after adjustment, and the methods side by side, as data
(rendering lives in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.metrics import GROUPS, shot_groups
from ..methods.multilabel import MultiLabelEvaluation


def _mean(values: np.ndarray, members: np.ndarray):
    chosen = values[members & ~np.isnan(values)]
    return float(chosen.mean()) if chosen.size else None


@dataclass(frozen=True)
class MultiLabelReport:
    """Evaluations of the raw logits (`baseline`) and of the adjusted ones (`adjusted`, None without a tau), with
    the training positives per label (for many / medium / few groups) and names when known."""

    baseline: MultiLabelEvaluation
    adjusted: MultiLabelEvaluation | None = None
    train_positives: np.ndarray | None = None
    class_names: list[str] | None = None
    tau: float | None = None

    @property
    def main(self) -> MultiLabelEvaluation:
        return self.adjusted if self.adjusted is not None else self.baseline

    def order(self, sort: str = "class") -> np.ndarray:
        """Label ids in display order: by id, by balanced error after (worst first), or by training positives."""
        ids = np.arange(self.baseline.num_classes)
        if sort == "error":
            return ids[np.lexsort((ids, -np.nan_to_num(self.main.balanced_errors, nan=-1.0)))]
        if sort == "count":
            counts = self.train_positives if self.train_positives is not None else self.main.positives
            return ids[np.lexsort((ids, -np.asarray(counts)))]
        return ids

    def groups(self, evaluation: MultiLabelEvaluation) -> dict | None:
        """Per group (by training positives: many > 100, few < 20): labels, scored labels, macro balanced error."""
        if self.train_positives is None:
            return None
        names = shot_groups(self.train_positives)
        return {group: {"labels": int((names == group).sum()),
                        "labels_with_samples": int(((names == group) & evaluation.scored).sum()),
                        "balanced_error": _mean(evaluation.balanced_errors, names == group)}
                for group in GROUPS}

    def _section(self, evaluation: MultiLabelEvaluation) -> dict:
        fnr, fpr, errors = (evaluation.false_negative_rates, evaluation.false_positive_rates,
                            evaluation.balanced_errors)
        names, counts = self.class_names, self.train_positives

        def number(values, k):
            return None if np.isnan(values[k]) else float(values[k])

        return {**evaluation.to_dict(), "num_samples": evaluation.num_samples,
                "per_label": [{"label": k, "name": names[k] if names else None,
                               "train_positives": None if counts is None else int(counts[k]),
                               "positives": int(evaluation.positives[k]), "fnr": number(fnr, k),
                               "fpr": number(fpr, k), "balanced_error": number(errors, k)}
                              for k in range(evaluation.num_classes)],
                "groups": self.groups(evaluation)}

    def to_dict(self) -> dict:
        result = {"multi_label": True, **self._section(self.main), "tau": self.tau,
                  "num_classes": self.main.num_classes, "labels_without_samples": self.main.labels_without_samples,
                  "baseline": self._section(self.baseline)}
        return result


@dataclass(frozen=True, eq=False)
class MultiLabelMethod:
    method: str
    tau: float | None
    evaluation: MultiLabelEvaluation

    def to_dict(self, train_positives=None) -> dict:
        result = {"method": self.method, "tau": self.tau, **self.evaluation.to_dict()}
        names = shot_groups(train_positives) if train_positives is not None else None
        for group in GROUPS:
            result[group] = None if names is None else _mean(self.evaluation.balanced_errors, names == group)
        return result


def compare_multilabel(val_logits, val_labels, priors, eval_logits=None, eval_labels=None, metric="balanced-error",
                       device="cpu", memory_budget: int | None = None, progress=None) -> list[MultiLabelMethod]:
    """Fitted on the validation data, measured on the evaluation data (the validation data when none is given): no
    adjustment, the shared tau at 1 and fitted, and a threshold per label fitted on the validation data."""
    from ..methods.multilabel import evaluate_multilabel, fit_label_thresholds, fit_multilabel_tau, multilabel_offsets

    fit = fit_multilabel_tau(val_logits, val_labels, priors, metric=metric, device=device,
                             memory_budget=memory_budget, progress=progress)
    thresholds = fit_label_thresholds(val_logits, val_labels)
    eval_logits = val_logits if eval_logits is None else eval_logits
    eval_labels = val_labels if eval_labels is None else eval_labels
    shifts = [np.zeros(len(thresholds)), multilabel_offsets(priors, 1.0), multilabel_offsets(priors, fit.tau),
              -thresholds]
    evaluations = evaluate_multilabel(eval_logits, eval_labels, shifts, device, memory_budget=memory_budget)
    return [MultiLabelMethod("no adjustment", None, evaluations[0]),
            MultiLabelMethod("shared tau = 1", 1.0, evaluations[1]),
            MultiLabelMethod("shared tau, fitted", fit.tau, evaluations[2]),
            MultiLabelMethod("a threshold per label, fitted", None, evaluations[3])]

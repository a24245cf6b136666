"""The multi-label task's report rows (per-label rates and errors, groups by training positives) and its methods side
by side, as data: what `Report` and `Comparison` hold for a multi-label head (rendering lives in the CLI)."""

from __future__ import annotations

import numpy as np

from ..core.metrics import GROUPS, shot_groups
from ..methods.comparison import MethodResult
from ..methods.multilabel import MultiLabelEvaluation


def _mean(values: np.ndarray, members: np.ndarray):
    chosen = values[members & ~np.isnan(values)]
    return float(chosen.mean()) if chosen.size else None


def label_groups(evaluation: MultiLabelEvaluation, train_positives) -> dict | None:
    """Per group (by training positives: many > 100, few < 20): labels, scored labels, macro balanced error."""
    if train_positives is None:
        return None
    names = shot_groups(train_positives)
    return {group: {"labels": int((names == group).sum()),
                    "labels_with_samples": int(((names == group) & evaluation.scored).sum()),
                    "balanced_error": _mean(evaluation.balanced_errors, names == group)}
            for group in GROUPS}


def label_section(evaluation: MultiLabelEvaluation, names, train_positives) -> dict:
    """A multi-label report's figures of one evaluation: the macro and micro numbers, a row per label, the groups."""
    def number(values, k):
        return None if np.isnan(values[k]) else float(values[k])

    fnr, fpr, errors = evaluation.false_negative_rates, evaluation.false_positive_rates, evaluation.balanced_errors
    return {**evaluation.to_dict(), "num_samples": evaluation.num_samples,
            "per_label": [{"label": k, "name": names[k] if names else None,
                           "train_positives": None if train_positives is None else int(train_positives[k]),
                           "positives": int(evaluation.positives[k]), "fnr": number(fnr, k),
                           "fpr": number(fpr, k), "balanced_error": number(errors, k)}
                          for k in range(evaluation.num_classes)],
            "groups": label_groups(evaluation, train_positives)}


class MultiLabelMethod(MethodResult):
    """A multi-label method's row: the macro and micro figures, and each group's macro balanced error."""

    def group_errors(self, train_counts) -> dict:
        names = shot_groups(train_counts)
        return {group: _mean(self.evaluation.balanced_errors, names == group) for group in GROUPS}


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

"""Post-hoc methods side by side on the same data (`lacal report --compare`).

Every method is fitted on the validation data and measured on the evaluation data (the test split when one is
given, else the validation data itself): plain ERM, logit adjustment at tau = 1 and at the fitted tau,
tau-normalisation when the head's weights and features are known, and logit adjustment followed by the bias
calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.metrics import GROUPS, ClassEvaluation, group_errors


@dataclass(frozen=True, eq=False)
class MethodResult:
    method: str
    tau: float | None
    evaluation: ClassEvaluation

    def to_dict(self, train_counts=None) -> dict:
        """The method's row: its tau, the evaluation's figures, and the error of each shot group (None without
        training counts)."""
        result = {"method": self.method, "tau": self.tau, **self.evaluation.to_dict()}
        errors = self.group_errors(train_counts) if train_counts is not None else {}
        for group in GROUPS:
            result[group] = errors.get(group)
        return result

    def group_errors(self, train_counts) -> dict:
        """{group: the mean error of its classes with samples, or None}."""
        return {group: values["error"] for group, values in group_errors(self.evaluation, train_counts).items()}


def compare_methods(val_logits, val_labels, priors, eval_logits=None, eval_labels=None, head=None,
                    device="cpu", memory_budget: int | None = None, bias_l2: float | None = None,
                    progress=None) -> list[MethodResult]:
    """`head`: (weight, validation features, evaluation features) to add tau-normalisation, else None."""
    from ..core.offsets import offsets
    from .probability import DEFAULT_BIAS_L2, fit_bias
    from ..engine.passes import head_logits, score_pass
    from .search import fit_tau
    from .taunorm import fit_tau_norm, normalised_weight

    eval_logits = val_logits if eval_logits is None else eval_logits
    eval_labels = val_labels if eval_labels is None else eval_labels
    fit = fit_tau(val_logits, val_labels, priors, device=device, memory_budget=memory_budget, progress=progress)
    bias = fit_bias(val_logits, val_labels, offsets(priors, fit.tau), bias_l2 or DEFAULT_BIAS_L2, device=device,
                    memory_budget=memory_budget)
    shifts = [np.zeros(len(bias.bias)), offsets(priors, 1.0), offsets(priors, fit.tau),
              offsets(priors, fit.tau) + bias.temperature * bias.bias]
    evaluations = score_pass(eval_logits, eval_labels, shifts, device, memory_budget=memory_budget)
    results = [MethodResult("ERM", None, evaluations[0]),
               MethodResult("logit adjustment, tau = 1", 1.0, evaluations[1]),
               MethodResult("logit adjustment, fitted tau", fit.tau, evaluations[2])]
    if head is not None:
        weight, val_features, eval_features = head
        norm = fit_tau_norm(val_features, val_labels, weight, device=device, memory_budget=memory_budget)
        scores = head_logits(eval_features, normalised_weight(weight, norm.tau), None, device)
        normed = score_pass(scores, eval_labels, [np.zeros(len(bias.bias))], device, memory_budget=memory_budget)
        results.append(MethodResult("tau-normalisation", norm.tau, normed[0]))
    results.append(MethodResult("logit adjustment + bias calibration", fit.tau, evaluations[3]))
    return results

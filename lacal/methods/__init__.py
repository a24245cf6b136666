"""The fitting methods: the exact tau search, probability calibration (temperature, bias), label shift (EM target
priors), tau-normalisation, the logit-adjusted loss, method comparison, and the multi-label shared-tau search."""

from .comparison import MethodResult, compare_methods
from .evaluation import balanced_error, evaluate, worst_class_error
from .label_shift import PriorEstimate, estimate_target_priors
from .losses import LogitAdjustedLoss, logit_adjusted_cross_entropy
from .multilabel import (MultiLabelEvaluation, MultiLabelFit, evaluate_multilabel, fit_label_thresholds,
                         fit_multilabel_tau)
from .probability import ProbabilityFit, fit_bias, fit_temperature
from .search import TauFit, fit_tau, fit_tau_intervals
from .taunorm import TauNormFit, fit_tau_norm, tau_norm_logits

__all__ = ["LogitAdjustedLoss", "MethodResult", "MultiLabelEvaluation", "MultiLabelFit", "PriorEstimate",
           "ProbabilityFit", "TauFit", "TauNormFit", "balanced_error", "compare_methods", "estimate_target_priors",
           "evaluate", "evaluate_multilabel", "fit_bias", "fit_label_thresholds", "fit_multilabel_tau",
           "fit_tau", "fit_tau_intervals", "fit_tau_norm", "fit_temperature", "logit_adjusted_cross_entropy",
           "tau_norm_logits", "worst_class_error"]

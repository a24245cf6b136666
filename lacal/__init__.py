"""lacal: post-hoc logit adjustment for classifiers trained on long-tailed data.

Predict argmax_y f_y(x) - tau * log(pi_y), where pi is the training label prior and tau is fitted on validation data
(Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021).

    >>> import lacal
    >>> result = lacal.fit(val_logits, val_labels, train_labels=train_labels, out="calibration.json")
    >>> adjusted = lacal.apply(test_logits, result.calibration)
    >>> lacal.report(test_logits, test_labels, result.calibration).to_dict()["balanced_error"]

Each command of the CLI is one function here (`count_priors`, `estimate_priors`, `fit`, `apply`, `patch_checkpoint`,
`report`, `compare`, `score`), returning a frozen result whose `to_dict()` is that command's `--json`.

The names below are imported on first use, so `import lacal` (and `lacal --help`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "LacalError": "errors", "InputFileError": "errors", "InputDataError": "errors", "PriorsError": "errors",
    "OptionError": "errors", "MismatchError": "errors", "OutputError": "errors",
    "read_logits": "load", "read_labels": "load", "read_classes": "load", "LogitsSource": "load",
    "Priors": "priors", "class_counts": "priors", "priors_from_counts": "priors", "priors_from_labels": "priors",
    "read_priors": "priors",
    "offsets": "adjust", "adjust_logits": "adjust",
    "ClassEvaluation": "metrics", "evaluate": "evaluation", "evaluate_predictions": "metrics",
    "balanced_error": "evaluation", "worst_class_error": "evaluation", "shot_groups": "metrics",
    "group_errors": "metrics",
    "TauFit": "search", "fit_tau": "search",
    "Calibration": "calibration",
    "PriorEstimate": "label_shift", "estimate_target_priors": "label_shift",
    "ProbabilityFit": "probability", "fit_temperature": "probability", "fit_bias": "probability",
    "ProbabilityMetrics": "metrics",
    "logit_adjusted_cross_entropy": "losses", "LogitAdjustedLoss": "losses",
    "TauNormFit": "taunorm", "fit_tau_norm": "taunorm", "tau_norm_logits": "taunorm",
    "MethodResult": "comparison", "compare_methods": "comparison",
    "Report": "workflows", "count_priors": "workflows", "estimate_priors": "workflows", "fit": "workflows",
    "apply": "workflows", "patch_checkpoint": "workflows", "report": "workflows", "compare": "workflows",
    "score": "workflows", "FitResult": "workflows", "ApplyResult": "workflows", "CheckpointPatch": "workflows",
    "Comparison": "workflows", "PriorsResult": "workflows", "EstimateResult": "workflows",
    "ScoreResult": "workflows", "TauNormResult": "workflows", "MultiLabelFitResult": "workflows",
    "MultiLabelReportResult": "workflows", "MultiLabelComparison": "workflows", "MultiLabelPriorsResult": "workflows",
    "MultiLabelApplyResult": "workflows",
    "resolve_device": "device",
    "patch_module": "module_patch", "PatchResult": "module_patch",
    "MultiLabelPriors": "multilabel", "multilabel_priors": "multilabel", "multilabel_priors_from_labels": "multilabel",
    "multilabel_offsets": "multilabel", "MultiLabelEvaluation": "multilabel", "evaluate_multilabel": "multilabel",
    "MultiLabelFit": "multilabel", "fit_multilabel_tau": "multilabel", "fit_label_thresholds": "multilabel",
    "read_label_matrix": "multilabel_data", "read_multilabel_priors": "multilabel_data",
    "MultiLabelReport": "multilabel_report", "compare_multilabel": "multilabel_report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lacal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .adjust import adjust_logits, offsets
    from .probability import ProbabilityFit, fit_bias, fit_temperature
    from .calibration import Calibration
    from .device import resolve_device
    from .errors import (InputDataError, InputFileError, LacalError, MismatchError, OptionError, OutputError,
                         PriorsError)
    from .load import LogitsSource, read_classes, read_labels, read_logits
    from .comparison import MethodResult, compare_methods
    from .losses import LogitAdjustedLoss, logit_adjusted_cross_entropy
    from .taunorm import TauNormFit, fit_tau_norm, tau_norm_logits
    from .module_patch import PatchResult, patch_module
    from .evaluation import balanced_error, evaluate, worst_class_error
    from .metrics import ClassEvaluation, ProbabilityMetrics, evaluate_predictions, group_errors, shot_groups
    from .priors import Priors, class_counts, priors_from_counts, priors_from_labels, read_priors
    from .workflows import (ApplyResult, CheckpointPatch, Comparison, EstimateResult, FitResult,
                            MultiLabelApplyResult, MultiLabelComparison, MultiLabelFitResult,
                            MultiLabelPriorsResult, MultiLabelReportResult, PriorsResult, Report, ScoreResult,
                            TauNormResult, apply, compare, count_priors, estimate_priors, fit, patch_checkpoint,
                            report, score)
    from .search import TauFit, fit_tau
    from .label_shift import PriorEstimate, estimate_target_priors
    from .multilabel import (MultiLabelEvaluation, MultiLabelFit, MultiLabelPriors, evaluate_multilabel,
                             fit_label_thresholds, fit_multilabel_tau, multilabel_offsets, multilabel_priors,
                             multilabel_priors_from_labels)
    from .multilabel_data import read_label_matrix, read_multilabel_priors
    from .multilabel_report import MultiLabelReport, compare_multilabel

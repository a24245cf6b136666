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
    "LacalError": "errors.exceptions", "InputFileError": "errors.exceptions", "InputDataError": "errors.exceptions", "PriorsError": "errors.exceptions",
    "OptionError": "errors.exceptions", "MismatchError": "errors.exceptions", "OutputError": "errors.exceptions",
    "read_logits": "data.readers", "read_labels": "data.readers", "read_classes": "data.readers", "LogitsSource": "data.readers",
    "Priors": "core.priors", "class_counts": "core.priors", "priors_from_counts": "core.priors", "priors_from_labels": "core.priors",
    "read_priors": "core.priors",
    "offsets": "core.offsets", "adjust_logits": "core.offsets",
    "ClassEvaluation": "core.metrics", "evaluate": "methods.evaluation", "evaluate_predictions": "core.metrics",
    "balanced_error": "methods.evaluation", "worst_class_error": "methods.evaluation", "shot_groups": "core.metrics",
    "group_errors": "core.metrics",
    "TauFit": "methods.search", "fit_tau": "methods.search",
    "Calibration": "core.calibration",
    "PriorEstimate": "methods.label_shift", "estimate_target_priors": "methods.label_shift",
    "ProbabilityFit": "methods.probability", "fit_temperature": "methods.probability", "fit_bias": "methods.probability",
    "ProbabilityMetrics": "core.metrics",
    "logit_adjusted_cross_entropy": "methods.losses", "LogitAdjustedLoss": "methods.losses",
    "TauNormFit": "methods.taunorm", "fit_tau_norm": "methods.taunorm", "tau_norm_logits": "methods.taunorm",
    "MethodResult": "methods.comparison", "compare_methods": "methods.comparison",
    "Report": "workflows", "count_priors": "workflows", "estimate_priors": "workflows", "fit": "workflows",
    "apply": "workflows", "patch_checkpoint": "workflows", "report": "workflows", "compare": "workflows",
    "score": "workflows", "FitResult": "workflows", "ApplyResult": "workflows", "CheckpointPatch": "workflows",
    "Comparison": "workflows", "PriorsResult": "workflows", "EstimateResult": "workflows",
    "ScoreResult": "workflows", "TauNormResult": "workflows", "MultiLabelFitResult": "workflows",
    "MultiLabelReportResult": "workflows", "MultiLabelComparison": "workflows", "MultiLabelPriorsResult": "workflows",
    "MultiLabelApplyResult": "workflows",
    "resolve_device": "engine.device",
    "patch_module": "models.module_patch", "PatchResult": "models.module_patch",
    "MultiLabelPriors": "methods.multilabel", "multilabel_priors": "methods.multilabel", "multilabel_priors_from_labels": "methods.multilabel",
    "multilabel_offsets": "methods.multilabel", "MultiLabelEvaluation": "methods.multilabel", "evaluate_multilabel": "methods.multilabel",
    "MultiLabelFit": "methods.multilabel", "fit_multilabel_tau": "methods.multilabel", "fit_label_thresholds": "methods.multilabel",
    "read_label_matrix": "core.label_matrix", "read_multilabel_priors": "core.label_matrix",
    "MultiLabelReport": "workflows.multilabel_report", "compare_multilabel": "workflows.multilabel_report",
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
    from .core.offsets import adjust_logits, offsets
    from .methods.probability import ProbabilityFit, fit_bias, fit_temperature
    from .core.calibration import Calibration
    from .engine.device import resolve_device
    from .errors import (InputDataError, InputFileError, LacalError, MismatchError, OptionError, OutputError,
                         PriorsError)
    from .data.readers import LogitsSource, read_classes, read_labels, read_logits
    from .methods.comparison import MethodResult, compare_methods
    from .methods.losses import LogitAdjustedLoss, logit_adjusted_cross_entropy
    from .methods.taunorm import TauNormFit, fit_tau_norm, tau_norm_logits
    from .models.module_patch import PatchResult, patch_module
    from .methods.evaluation import balanced_error, evaluate, worst_class_error
    from .core.metrics import ClassEvaluation, ProbabilityMetrics, evaluate_predictions, group_errors, shot_groups
    from .core.priors import Priors, class_counts, priors_from_counts, priors_from_labels, read_priors
    from .workflows import (ApplyResult, CheckpointPatch, Comparison, EstimateResult, FitResult,
                            MultiLabelApplyResult, MultiLabelComparison, MultiLabelFitResult,
                            MultiLabelPriorsResult, MultiLabelReportResult, PriorsResult, Report, ScoreResult,
                            TauNormResult, apply, compare, count_priors, estimate_priors, fit, patch_checkpoint,
                            report, score)
    from .methods.search import TauFit, fit_tau
    from .methods.label_shift import PriorEstimate, estimate_target_priors
    from .methods.multilabel import (MultiLabelEvaluation, MultiLabelFit, MultiLabelPriors, evaluate_multilabel,
                             fit_label_thresholds, fit_multilabel_tau, multilabel_offsets, multilabel_priors,
                             multilabel_priors_from_labels)
    from .core.label_matrix import read_label_matrix, read_multilabel_priors
    from .workflows.multilabel_report import MultiLabelReport, compare_multilabel

"""lacal: post-hoc logit adjustment for classifiers trained on long-tailed data.

Predict argmax_y f_y(x) - tau * log(pi_y), where pi is the training label prior and tau is fitted on validation data
(Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021).

    >>> import lacal
    >>> priors = lacal.count_priors(train_labels)
    >>> result = lacal.fit(val_logits, val_labels, priors, out="calibration.json")
    >>> adjusted = lacal.apply(test_logits, result)
    >>> lacal.report(test_logits, test_labels, result).to_dict()["balanced_error"]

Here are the workflow functions (one per command of the CLI: `count_priors`, `estimate_priors`, `fit`, `apply`,
`patch_checkpoint`, `patch_module`, `report`, `compare`, `score`), their frozen results (each `to_dict()` is that
command's `--json`), `Calibration`, `Priors`, `LogitsSource` and the errors. The building blocks live in their layer:
`lacal.data` (readers, writers), `lacal.core` (priors, offsets, metrics), `lacal.engine` (block passes),
`lacal.methods` (the tau search, temperature and bias, label shift, tau-norm, the loss), `lacal.models` (checkpoints,
patching).

Names are imported on first use, so `import lacal` (and `lacal --help`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "count_priors": "workflows", "estimate_priors": "workflows", "fit": "workflows", "apply": "workflows",
    "patch_checkpoint": "workflows", "patch_module": "models", "report": "workflows", "compare": "workflows",
    "score": "workflows",
    "PriorsResult": "workflows", "EstimateResult": "workflows", "FitResult": "workflows",
    "TauNormResult": "workflows", "ApplyResult": "workflows", "CheckpointPatch": "workflows",
    "PatchResult": "models", "Report": "workflows", "Comparison": "workflows", "ScoreResult": "workflows",
    "Calibration": "core", "Priors": "core", "LogitsSource": "data",
    "LacalError": "errors",
}

_LAYERS = ("errors", "data", "core", "engine", "methods", "models", "workflows", "cli")

# Names that lacal 0.1 exported at the top level, and where they live now (CHANGELOG.md lists them too).
_MOVED = {
    **{name: "errors" for name in ("InputFileError", "InputDataError", "PriorsError", "OptionError",
                                   "MismatchError", "OutputError", "CheckpointError", "VerificationError",
                                   "MissingDependencyError")},
    **{name: "data" for name in ("read_logits", "read_labels", "read_classes")},
    **{name: "core" for name in ("class_counts", "priors_from_counts", "priors_from_labels", "read_priors",
                                 "offsets", "adjust_logits", "ClassEvaluation", "evaluate_predictions",
                                 "shot_groups", "group_errors", "ProbabilityMetrics", "MultiLabelPriors",
                                 "multilabel_priors", "multilabel_priors_from_labels", "multilabel_offsets",
                                 "read_label_matrix", "read_multilabel_priors")},
    **{name: "engine" for name in ("resolve_device",)},
    **{name: "methods" for name in ("TauFit", "fit_tau", "evaluate", "balanced_error", "worst_class_error",
                                    "PriorEstimate", "estimate_target_priors", "ProbabilityFit", "fit_temperature",
                                    "fit_bias", "logit_adjusted_cross_entropy", "LogitAdjustedLoss", "TauNormFit",
                                    "fit_tau_norm", "tau_norm_logits", "MethodResult", "compare_methods",
                                    "MultiLabelEvaluation", "evaluate_multilabel", "MultiLabelFit",
                                    "fit_multilabel_tau", "fit_label_thresholds")},
}

# Names that lacal 0.1 exported and that are gone: one type or function now serves both tasks (CHANGELOG.md).
_REPLACED = {
    "MultiLabelFitResult": "lacal.FitResult (`.task` says multi-label)",
    "MultiLabelApplyResult": "lacal.ApplyResult (`.num_classes` is the number of labels)",
    "MultiLabelReportResult": "lacal.Report (its fields directly, not `.report`)",
    "MultiLabelReport": "lacal.Report",
    "MultiLabelComparison": "lacal.Comparison",
    "MultiLabelPriorsResult": "lacal.PriorsResult",
    "compare_multilabel": "lacal.compare(..., multi_label=True)",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _LAYERS:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        if name in _MOVED:
            raise AttributeError(f"lacal.{name} moved to lacal.{_MOVED[name]}.{name} in lacal 0.2 "
                                 f"(see CHANGELOG.md)")
        if name in _REPLACED:
            raise AttributeError(f"lacal.{name} is gone in lacal 0.2: use {_REPLACED[name]} (see CHANGELOG.md)")
        raise AttributeError(f"module 'lacal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .core import Calibration, Priors
    from .data import LogitsSource
    from .errors import LacalError
    from .models import PatchResult, patch_module
    from .workflows import (ApplyResult, CheckpointPatch, Comparison, EstimateResult, FitResult, PriorsResult,
                            Report, ScoreResult, TauNormResult, apply, compare, count_priors, estimate_priors, fit,
                            patch_checkpoint, report, score)

"""The numbers lacal is about: training priors, the offsets `-tau * log(pi)`, per-class metric values, the fitted
`Calibration` with its JSON file, and the two tasks (single- and multi-label) with the options each takes. Plain numpy,
no device work."""

from .calibration import Calibration
from .conversions import as_calibration, as_priors, as_target_priors
from .label_matrix import read_label_matrix, read_multilabel_priors
from .metrics import ClassEvaluation, ProbabilityMetrics, evaluate_predictions, group_errors, shot_groups
from .offsets import adjust_logits, offsets
from .positive_rates import MultiLabelPriors, multilabel_offsets, multilabel_priors, multilabel_priors_from_labels
from .priors import Priors, class_counts, priors_from_counts, priors_from_labels, read_priors
from .tasks import MULTI_LABEL, OPTIONS, SINGLE_LABEL, Task

__all__ = ["as_calibration", "as_priors", "as_target_priors", "MULTI_LABEL", "OPTIONS", "SINGLE_LABEL", "Calibration", "ClassEvaluation", "MultiLabelPriors", "Priors",
           "ProbabilityMetrics", "Task", "adjust_logits",
           "class_counts", "evaluate_predictions", "group_errors", "multilabel_offsets", "multilabel_priors",
           "multilabel_priors_from_labels", "offsets", "priors_from_counts", "priors_from_labels",
           "read_label_matrix", "read_multilabel_priors", "read_priors", "shot_groups"]

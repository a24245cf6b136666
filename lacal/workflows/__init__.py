"""One function per command, each returning a frozen result whose `to_dict()` is the command's `--json`."""

from .apply import ApplyResult, apply
from .checkpoint import CheckpointPatch, patch_checkpoint
from .fit import FitResult, TauNormResult, fit
from .priors import EstimateResult, PriorsResult, count_priors, estimate_priors
from .report import Comparison, Report, compare, report
from .score import ScoreResult, score

__all__ = ["ApplyResult", "CheckpointPatch", "Comparison", "EstimateResult", "FitResult", "PriorsResult", "Report",
           "ScoreResult", "TauNormResult", "apply", "compare", "count_priors", "estimate_priors", "fit",
           "patch_checkpoint", "report", "score"]

"""Multi-label heads (one sigmoid per label): `fit`, `apply`, `report`, `compare` and `count_priors` with
`multi_label=True` land here (what the commands do with `--multi-label`). Labels are N x C 0/1 matrices (an array, or
a .npy, .csv or .txt file), priors per-label positive rates pi_k, and the adjustment f - tau * log(pi / (1 - pi))."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import InputDataError, MismatchError, OptionError
from .inputs import Notes, is_path, make_context, memory_bytes, open_logits, output_check, path_list, paths_of, \
    progress_bar, provenance, title
from .inputs import calibration_for as _softmax_calibration_for
from .inputs import class_names as class_names_for

METRICS = ("balanced-error", "macro-f1")


@dataclass(frozen=True, eq=False)
class MultiLabelFitResult:
    """A shared tau fitted for a multi-label head.

    Attributes:
        calibration: the multi-label `Calibration` to save, apply or patch with.
        tau_fit: the `MultiLabelFit` (tau, its interval, the validation numbers before, at tau = 1 and after).
        name: what the logits were (a file, or shards).
        out: the calibration file written, or None.
        warnings: what the user should know (no prints).
    """

    calibration: Any
    tau_fit: Any
    name: str
    out: Optional[Path] = None
    warnings: tuple[str, ...] = field(default=())
    intervals: Any = None  # a methods.bootstrap_multilabel.MultiLabelBootstrap, with `bootstrap`

    @property
    def tau(self) -> float:
        return self.tau_fit.tau

    def to_dict(self) -> dict:
        """Exactly `lacal fit-tau --multi-label --json`."""
        result = self.tau_fit.to_dict()
        if self.intervals is not None:
            result.update(self.intervals.to_dict())
        return result


@dataclass(frozen=True, eq=False)
class MultiLabelApplyResult:
    """What `apply_multi_label` wrote (the fields of `ApplyResult`, and `labels`).

    Attributes:
        out: the file written.
        rows: samples written.
        tau: the calibration's tau.
        predictions: whether predictions (CSV) rather than logits were written.
        labels: the number of labels.
        warnings: notes for the user.
    """

    out: Path
    rows: int
    tau: float
    predictions: bool
    labels: int
    warnings: tuple[str, ...] = field(default=())
    per_shard: bool = False

    def to_dict(self) -> dict:
        return {"out": str(self.out), "rows": self.rows, "tau": self.tau, "per_shard": self.per_shard,
                "predictions": self.predictions, "labels": self.labels, "warnings": list(self.warnings)}


@dataclass(frozen=True, eq=False)
class MultiLabelReportResult:
    """Per-label errors before (and after) the adjustment.

    Attributes:
        report: the `MultiLabelReport` (baseline, adjusted, training positives, names, tau).
        name: what the logits were.
        warnings: what the user should know.
    """

    report: Any
    name: str
    warnings: tuple[str, ...] = field(default=())
    intervals: Any = None  # a methods.bootstrap_multilabel.MultiLabelBootstrap, with `bootstrap`

    def to_dict(self) -> dict:
        """Exactly `lacal report --multi-label --json`."""
        result = self.report.to_dict()
        if self.intervals is not None:
            result.update(self.intervals.to_dict())
        return result


@dataclass(frozen=True, eq=False)
class MultiLabelComparison:
    """Post-hoc methods for a multi-label head, fitted on `fitted_on` and measured on `measured_on`.

    Attributes:
        methods: the `MultiLabelMethod`s (ERM, adjustment at tau = 1 and fitted, per-label thresholds).
        train_positives: the training positives per label (for the many/medium/few groups).
        fitted_on, measured_on: the data's names.
        warnings: what the user should know.
    """

    methods: tuple
    train_positives: np.ndarray
    fitted_on: str
    measured_on: str
    warnings: tuple[str, ...] = field(default=())

    def rows(self) -> list[dict]:
        return [method.to_dict(self.train_positives) for method in self.methods]

    def to_dict(self) -> dict:
        """Exactly `lacal report --multi-label --compare --json`."""
        return {"multi_label": True, "fitted_on": self.fitted_on, "measured_on": self.measured_on,
                "methods": self.rows()}


@dataclass(frozen=True, eq=False)
class MultiLabelPriorsResult:
    """Per-label positive rates counted from a training label matrix.

    Attributes:
        priors: the `MultiLabelPriors` (positives, rates, log-odds).
        name: what was counted.
        out: the priors file written, or None.
    """

    priors: Any
    name: str
    out: Optional[Path] = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """Exactly `lacal priors --multi-label --json`."""
        return self.priors.to_dict()


def label_matrix(data, source, names=None, context=None) -> np.ndarray:
    """The N x C bool label matrix of `source`'s rows: an array, or a file (under torchrun, this rank's rows)."""
    from ..core.label_matrix import read_label_matrix

    if not is_path(data):
        matrix = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
        if matrix.ndim != 2 or matrix.dtype.kind not in "biuf" or not np.all((matrix == 0) | (matrix == 1)):
            raise InputDataError(f"multi-label labels must be an N x C 0/1 matrix, got shape {matrix.shape}",
                                 "labels")
        if matrix.shape != (source.num_samples, source.num_classes):
            raise MismatchError(f"labels have shape {matrix.shape} but the logits are {source.num_samples} x "
                                f"{source.num_classes}", "labels")
        return matrix.astype(bool)
    share = getattr(source, "share", None)
    if share is None:
        labels = read_label_matrix(data, source.num_classes, names)
        if labels.shape[0] != source.num_samples:
            raise InputDataError(f"holds {labels.shape[0]} label rows but {source.name} has {source.num_samples} "
                                 "rows", data)
        return labels
    failure = labels = None
    try:
        labels = read_label_matrix(data, source.num_classes, names)
        if labels.shape[0] != share.total_rows:
            raise InputDataError(f"holds {labels.shape[0]} label rows but the logits shards have {share.total_rows} "
                                 "rows", data)
        labels = labels[share.offset:share.offset + source.num_samples]
    except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
        failure = exc
    context.agree(failure)
    return labels


def training_priors(train_labels=None, priors=None, num_classes: Optional[int] = None, smoothing: float = 0.0,
                    names=None):
    """`MultiLabelPriors` from training labels (a matrix or a file), a priors file, or a `MultiLabelPriors`."""
    from ..core.label_matrix import open_multilabel_priors
    from ..core.positive_rates import MultiLabelPriors, multilabel_priors_from_labels

    if train_labels is not None and priors is not None:
        raise OptionError("give `train_labels` or `priors`, not both", "priors")
    if isinstance(priors, MultiLabelPriors):
        if num_classes is not None and priors.num_classes != num_classes:
            raise MismatchError(f"priors have {priors.num_classes} labels but the logits have {num_classes}",
                                "priors")
        return priors
    if train_labels is not None and not is_path(train_labels):
        matrix = np.asarray(train_labels)
        if matrix.ndim != 2 or not np.all((matrix == 0) | (matrix == 1)):
            raise InputDataError(f"multi-label training labels must be an N x C 0/1 matrix, got shape "
                                 f"{matrix.shape}", "train_labels")
        if num_classes is not None and matrix.shape[1] != num_classes:
            raise MismatchError(f"training labels have {matrix.shape[1]} labels but the logits have {num_classes}",
                                "train_labels")
        return multilabel_priors_from_labels(matrix, smoothing, names, None, "train_labels")
    return open_multilabel_priors(train_labels, priors, num_classes, smoothing, names)


def multilabel_calibration(calibration=None, tau: Optional[float] = None, train_labels=None, priors=None,
                           num_classes: Optional[int] = None, smoothing: float = 0.0, names=None,
                           required: bool = True):
    """A multi-label `Calibration`: the one given (or its file, which must be multi-label), or one built from `tau`
    and the training priors."""
    import math

    from ..core.calibration import Calibration

    if calibration is not None or tau is None:  # the file, or nothing: as for a softmax head
        loaded = _softmax_calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, None,
                                          required)
        if loaded is not None and not loaded.multi_label:
            raise MismatchError("is a single-label (softmax) calibration, but --multi-label was given",
                                calibration if is_path(calibration) else "calibration")
        return loaded
    if not math.isfinite(tau):
        raise OptionError(f"tau must be a finite number, got {tau}", "tau")
    prior = training_priors(train_labels, priors, num_classes, smoothing, names)
    return Calibration(tau=tau, priors=prior.priors, counts=prior.positives, class_names=names or prior.classes,
                       smoothing=prior.smoothing, multi_label=True, train_samples=prior.num_samples)


def _missing(evaluation, where: str) -> list[str]:
    missing = evaluation.labels_without_samples
    if not missing:
        return []
    return [f"{len(missing)} label(s) lack positive or negative {where} and are left out of the macro figures: "
            f"{missing[:20]}{' ...' if len(missing) > 20 else ''}"]


def _logits(data, key, context, notes):
    paths = path_list(data)
    if len(paths) > 1:
        return open_logits(paths, key, context, notes=notes)
    return open_logits(data, key, context, notes=notes)


# -------------------------------------------------------------------------------------------------------- fit


def fit_multi_label(val_logits, val_labels, priors=None, *, train_labels=None,
                    tau_range: Optional[Sequence[float]] = None, metric: str = "balanced-error", class_names=None,
                    smoothing: float = 0.0, key: Optional[str] = None, device: str = "auto", memory_budget=None,
                    out=None, force: bool = False, record_inputs: bool = True, progress: Optional[Callable] = None,
                    context=None, bootstrap: Optional[int] = None, seed: int = 0,
                    level: float = 0.95) -> MultiLabelFitResult:
    """Fit one tau shared by every label of a multi-label head, as `lacal fit-tau --multi-label` does.

    Args:
        val_logits: N x C validation logits (an array, a tensor, a `LogitsSource`, a file, a folder or glob of
            shards, or a list of files).
        val_labels: the N x C 0/1 label matrix (an array, or a .npy, .csv or .txt file).
        priors: the training positive rates: a `MultiLabelPriors` or a multi-label priors file.
        train_labels: instead of `priors`, the N_train x C training label matrix (an array or a file).
        tau_range: (lo, hi) to search; default (0, 4).
        metric: "balanced-error" (macro balanced error, lowest) or "macro-f1" (highest).
        class_names, smoothing, key, device, memory_budget, out, force, record_inputs, progress, context: as for
            `lacal.fit`.
        bootstrap, seed, level: intervals from this many replicates (samples drawn with replacement; tau refitted
            for the balanced error, held fixed for macro-F1), as in `methods.bootstrap_multilabel`.

    Returns:
        A `MultiLabelFitResult`: `.calibration`, `.tau`, `.warnings`; `.to_dict()` is
        `lacal fit-tau --multi-label --json`.

    Example:
        >>> result = lacal.fit(val_logits, val_labels, train_labels=train_matrix, multi_label=True)
        >>> adjusted = lacal.apply(test_logits, result.calibration)
    """
    from ..core.calibration import Calibration
    from ..methods.multilabel import fit_multilabel_tau
    from ..methods.search import check_tau_range

    if metric not in METRICS:
        raise OptionError(f"multi-label heads are fitted for balanced-error or macro-f1, not {metric}", "metric")
    low_high = check_tau_range(tau_range if tau_range is not None else (0.0, 4.0))
    budget = memory_bytes(memory_budget)
    context = make_context(device, context)
    notes = Notes()
    given = (val_logits, val_labels, train_labels, priors, class_names)
    output_check(out, force, *given)
    source = _logits(val_logits, key, context, notes)
    names = class_names_for(class_names, source.num_classes)
    labels = label_matrix(val_labels, source, names, context)
    prior = training_priors(train_labels, priors, source.num_classes, smoothing, names)
    names = names or prior.classes
    with progress_bar(progress, source.num_samples, "fit-tau") as step:
        tau_fit = fit_multilabel_tau(source, labels, prior, low_high, metric, context.device, progress=step,
                                     memory_budget=budget, context=context)
    inputs = provenance(val_logits, val_labels, train_labels, priors, class_names) if record_inputs else None
    calibration = Calibration.from_multilabel_fit(tau_fit, prior, names, inputs)
    if out is not None and context.leader:
        calibration.save(out, force, paths_of(*given))
    notes.warnings.extend(_missing(tau_fit.before, "validation samples"))
    intervals = None if bootstrap is None else _intervals(source, labels, prior, tau_fit.tau, low_high, bootstrap,
                                                          seed, level, metric == "balanced-error", context)
    return MultiLabelFitResult(calibration, tau_fit, title(source), None if out is None else Path(out),
                               tuple(notes.warnings), intervals)


def _log_odds(calibration) -> np.ndarray:
    """log(pi / (1 - pi)) exactly as `Calibration.offsets` computes it (so that -tau times it is the offset)."""
    from ..core.positive_rates import log_odds, multilabel_priors

    if calibration.counts is not None and calibration.train_samples is not None:
        return multilabel_priors(calibration.counts, calibration.train_samples, calibration.smoothing).log_odds
    return log_odds(calibration.priors)


def _intervals(source, labels, prior, tau, tau_range, replicates, seed, level, refit, context):
    from ..methods.bootstrap_multilabel import bootstrap_multilabel
    from ..methods.multilabel import log_odds

    logits = source.rows(0, source.num_samples).cpu().numpy()
    return bootstrap_multilabel(logits, labels, log_odds(prior), tau, tau_range, replicates, seed, level, refit,
                                context)


# -------------------------------------------------------------------------------------------------------- apply


def apply_multi_label(logits, calibration=None, out=None, *, tau: Optional[float] = None, train_labels=None,
                      priors=None, top_k: int = 1, class_names=None, smoothing: float = 0.0,
                      key: Optional[str] = None, device: str = "auto", memory_budget=None, force: bool = False,
                      progress: Optional[Callable] = None):
    """Adjust a multi-label head's logits: f - tau * log(pi / (1 - pi)), as `lacal apply --multi-label` does.

    Args:
        logits: N x C logits: an array, a tensor, a `LogitsSource`, or a file.
        calibration: a multi-label `Calibration` or its file; or None with `tau` and `train_labels`/`priors`.
        out: None to get the adjusted array back (same type, shape and dtype); a file (.npy, .npz, .safetensors,
            .pt: adjusted logits; .csv: the predicted labels, those with adjusted logit > 0).
        tau, train_labels, priors, smoothing: a calibration built here instead of one given.
        top_k: for predictions, also list the K labels with the highest adjusted logits.
        class_names, key, device, memory_budget, force, progress: as for `lacal.apply`.

    Returns:
        The adjusted array or tensor (with `out=None`), else a `MultiLabelApplyResult`.

    Example:
        >>> adjusted = lacal.apply(test_logits, "multilabel_calibration.json")
    """
    from ..core.label_matrix import write_multilabel_predictions
    from ..engine.passes import iter_adjusted
    from ..data.writers import PREDICTION_SUFFIXES, write_logits

    budget = memory_bytes(memory_budget)
    context = make_context(device)
    notes = Notes()
    if out is None:
        if path_list(logits):
            raise OptionError("give `out` for the adjusted logits or predictions of a file", "out")
        import torch

        source = open_logits(logits, key)
        names = class_names_for(class_names, source.num_classes)
        fitted = multilabel_calibration(calibration, tau, train_labels, priors, source.num_classes, smoothing, names)
        blocks = [block for _, block in iter_adjusted(source, fitted.offsets, context.device, memory_budget=budget)]
        adjusted = torch.cat(blocks)
        if isinstance(logits, torch.Tensor):
            return adjusted.to(logits.device)
        return adjusted.numpy() if isinstance(logits, np.ndarray) else adjusted
    out = Path(out)
    if out.suffix == "":
        raise OptionError("multi-label apply writes one file yet; give `out` FILE", "out")
    inputs = paths_of(logits, calibration, train_labels, priors, class_names)
    output_check(out, force, *inputs)
    source = open_logits(logits, key, notes=notes)
    names = class_names_for(class_names, source.num_classes)
    fitted = multilabel_calibration(calibration, tau, train_labels, priors, source.num_classes, smoothing, names)
    names = names or fitted.class_names
    predictions = out.suffix.lower() in PREDICTION_SUFFIXES
    if predictions and top_k > source.num_classes:
        raise OptionError(f"`top_k` {top_k} is more than the {source.num_classes} labels", "top_k")
    with progress_bar(progress, source.num_samples, "apply") as step:
        blocks = iter_adjusted(source, fitted.offsets, context.device, keep_dtype=not predictions, progress=step,
                               memory_budget=budget)
        if predictions:
            write_multilabel_predictions(out, blocks, names, top_k, force, inputs)
        else:
            for note in write_logits(out, blocks, source.shape, source.dtype_name, force, inputs):
                notes.warn(note)
    return MultiLabelApplyResult(out, source.num_samples, fitted.tau, predictions, source.num_classes,
                                 tuple(notes.warnings))


# -------------------------------------------------------------------------------------------------------- report


def report_multi_label(logits, labels, calibration=None, *, tau: Optional[float] = None, train_labels=None,
                       priors=None, class_names=None, smoothing: float = 0.0, key: Optional[str] = None,
                       device: str = "auto", memory_budget=None, progress: Optional[Callable] = None,
                       context=None, bootstrap: Optional[int] = None, seed: int = 0,
                       level: float = 0.95) -> MultiLabelReportResult:
    """Per-label false negative and positive rates and balanced errors, before and (with a calibration or `tau`)
    after the adjustment, as `lacal report --multi-label` does.

    Args:
        logits: N x C logits (an array, a tensor, a `LogitsSource`, a file, shards, or a list of files).
        labels: the N x C 0/1 label matrix (an array or a file).
        calibration: a multi-label `Calibration` or its file; or `tau` with `train_labels`/`priors`; or neither
            (the raw logits only).
        tau, train_labels, priors, smoothing: as for `apply_multi_label`; the training positives also group the
            labels into many/medium/few.
        class_names, key, device, memory_budget, progress, context: as for `lacal.report`.
        bootstrap, seed, level: intervals of the macro figures from this many replicates (samples drawn with
            replacement, the adjustment held fixed).

    Returns:
        A `MultiLabelReportResult`; `.to_dict()` is `lacal report --multi-label --json`.

    Example:
        >>> lacal.report(test_logits, test_matrix, calibration, multi_label=True).to_dict()["adjusted"]
    """
    from ..methods.multilabel import evaluate_multilabel
    from .multilabel_report import MultiLabelReport

    budget = memory_bytes(memory_budget)
    context = make_context(device, context)
    notes = Notes()
    source = _logits(logits, key, context, notes)
    names = class_names_for(class_names, source.num_classes)
    matrix = label_matrix(labels, source, names, context)
    fitted = multilabel_calibration(calibration, tau, train_labels, priors, source.num_classes, smoothing, names,
                                    False)
    counts = fitted.counts if fitted is not None else None
    if fitted is None and (train_labels is not None or priors is not None):
        counts = training_priors(train_labels, priors, source.num_classes, smoothing, names).positives
    names = names or (fitted.class_names if fitted is not None else None)
    offsets = [np.zeros(source.num_classes)] + ([fitted.offsets] if fitted is not None else [])
    with progress_bar(progress, source.num_samples, "report") as step:
        evaluations = evaluate_multilabel(source, matrix, offsets, context.device, progress=step,
                                          memory_budget=budget, context=context)
    result = MultiLabelReport(evaluations[0], evaluations[1] if fitted is not None else None, counts, names,
                              None if fitted is None else fitted.tau)
    if counts is None:
        notes.warn("no training positives given (`train_labels`, or `priors` or `calibration`), so labels are not "
                   "grouped into many/medium/few")
    notes.warnings.extend(_missing(result.main, f"samples in {source.name}"))
    intervals = None
    if bootstrap is not None:
        from ..methods.bootstrap_multilabel import bootstrap_multilabel

        logits = source.rows(0, source.num_samples).cpu().numpy()
        ratios = np.zeros(source.num_classes) if fitted is None else _log_odds(fitted)
        intervals = bootstrap_multilabel(logits, matrix, ratios, 0.0 if fitted is None else fitted.tau, (0.0, 4.0),
                                         bootstrap, seed, level, refit=False, context=context)
    return MultiLabelReportResult(result, title(source), tuple(notes.warnings), intervals)


def compare_multi_label(val_logits, val_labels, priors=None, *, train_labels=None, test_logits=None,
                        test_labels=None, metric: str = "balanced-error", class_names=None, smoothing: float = 0.0,
                        key: Optional[str] = None, device: str = "auto", memory_budget=None,
                        progress: Optional[Callable] = None) -> MultiLabelComparison:
    """Post-hoc methods for a multi-label head, fitted on validation data and measured on test data (or the same
    data), as `lacal report --multi-label --compare` does.

    Args:
        val_logits, val_labels: the validation logits and N x C label matrix.
        priors, train_labels, smoothing: the training positive rates (see `fit_multi_label`).
        test_logits, test_labels: measure every method here (both or neither).
        metric: what the shared tau is fitted for ("balanced-error" or "macro-f1").
        class_names, key, device, memory_budget, progress: as for `lacal.compare`.

    Returns:
        A `MultiLabelComparison`; `.to_dict()` is `lacal report --multi-label --compare --json`.

    Example:
        >>> lacal.compare(val_logits, val_matrix, train_labels=train_matrix, test_logits=test_logits,
        ...               test_labels=test_matrix, multi_label=True).rows()
    """
    from .multilabel_report import compare_multilabel

    if metric not in METRICS:
        raise OptionError(f"multi-label heads are fitted for balanced-error or macro-f1, not {metric}", "metric")
    budget = memory_bytes(memory_budget)
    context = make_context(device)
    notes = Notes()
    source = _logits(val_logits, key, None, notes)
    names = class_names_for(class_names, source.num_classes)
    labels = label_matrix(val_labels, source, names)
    prior = training_priors(train_labels, priors, source.num_classes, smoothing, names)
    if (test_logits is None) != (test_labels is None):
        raise OptionError("give `test_labels` together with `test_logits`", "test_labels")
    evaluation_source = evaluation_labels = None
    if test_logits is not None:
        evaluation_source = _logits(test_logits, key, None, notes)
        if evaluation_source.num_classes != source.num_classes:
            raise MismatchError(f"has {evaluation_source.num_classes} labels but the validation logits have "
                                f"{source.num_classes}", test_logits if is_path(test_logits) else "test_logits")
        evaluation_labels = label_matrix(test_labels, evaluation_source, names)
    with progress_bar(progress, source.num_samples, "compare") as step:
        methods = compare_multilabel(source, labels, prior, evaluation_source, evaluation_labels, metric,
                                     context.device, budget, step)
    if evaluation_source is None:
        notes.warn("every method was fitted and measured on the same data; give `test_logits` and `test_labels` "
                   "for an honest comparison (per-label thresholds look best on the data they were fitted on)")
    measured = evaluation_source.name if evaluation_source is not None else source.name
    return MultiLabelComparison(tuple(methods), prior.positives, source.name, measured, tuple(notes.warnings))


# -------------------------------------------------------------------------------------------------------- priors


def count_multi_label_priors(train_labels, *, num_classes: Optional[int] = None, class_names=None,
                             smoothing: float = 0.0, out=None, force: bool = False) -> MultiLabelPriorsResult:
    """Per-label positive rates of a training label matrix, as `lacal priors --multi-label` does.

    Args:
        train_labels: the N x C 0/1 training label matrix (an array, or a .npy, .csv or .txt file).
        num_classes: the number of labels (checked; bounds the ids of a .txt file of id lists).
        class_names: label names (a list or a classes file).
        smoothing: added to every positive count.
        out: write the priors file (JSON) here; force: replace it.

    Returns:
        A `MultiLabelPriorsResult`; `.to_dict()` is `lacal priors --multi-label --json`.

    Example:
        >>> lacal.count_priors("train_labels.npy", multi_label=True, out="priors.json").priors.log_odds
    """
    import json

    from ..data.readers import sha256_file
    from ..core.label_matrix import read_label_matrix
    from ..core.positive_rates import multilabel_priors_from_labels
    from ..data.writers import write_text
    from .inputs import read_names

    names = read_names(class_names) if class_names is not None else None
    inputs = paths_of(train_labels, class_names)
    output_check(out, force, *inputs)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise MismatchError(f"lists {len(names)} label names but `num_classes` is {num_classes}",
                            class_names if is_path(class_names) else "class_names")
    if is_path(train_labels):
        matrix = read_label_matrix(train_labels, num_classes or (len(names) if names else None), names)
        source, name = {"path": str(train_labels), "sha256": sha256_file(train_labels)}, str(train_labels)
    else:
        matrix = np.asarray(train_labels)
        if matrix.ndim != 2 or not np.all((matrix == 0) | (matrix == 1)):
            raise InputDataError(f"multi-label training labels must be an N x C 0/1 matrix, got shape "
                                 f"{matrix.shape}", "train_labels")
        source, name = None, "train_labels"
    prior = multilabel_priors_from_labels(matrix, smoothing, names, source, name)
    if out is not None:
        write_text(out, json.dumps(prior.to_dict(), indent=2) + "\n", force, inputs)
    return MultiLabelPriorsResult(prior, name, None if out is None else Path(out))


def refuse_options(**given) -> None:
    """The options of a softmax head that a multi-label one does not take (given: a truthy value)."""
    names = [name for name, value in given.items() if value]
    if names:
        raise OptionError(f"{', '.join(f'`{name}`' for name in names)} do(es) not apply to multi-label heads yet",
                          names[0])

"""`lacal.fit`: tau on validation logits, with target priors, a probability calibration and the calibration file
(what `lacal fit-tau` does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.tasks import SINGLE_LABEL, Task
from ..errors import OptionError
from .inputs import Columns, Notes, logits_input, make_context, memory_bytes, open_labels, output_check, paths_of, \
    progress_bar, provenance, read_names, title
from .inputs import class_names as class_names_for
from .inputs import target_priors as target_priors_for
from .task_inputs import missing_labels, search_tau, task_for, task_labels, task_priors


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted tau and everything measured on the way.

    Attributes:
        calibration: the `Calibration` to save, apply or patch with.
        tau_fit: the `TauFit` (tau, its optimal interval, the validation numbers before, at tau = 1 and after), or
            for a multi-label head the `MultiLabelFit`.
        target_priors: q (None for a balanced target); `target` says where it came from.
        probability: the temperature or bias fit (`ProbabilityFit`), or None.
        calibrated: the validation evaluation with the fitted bias (None without one).
        name: what the logits were (a file, or shards).
        out: the calibration file written, or None.
        warnings: what the user should know (no prints).
        task: the `Task` fitted for (`SINGLE_LABEL` or `MULTI_LABEL`).
        intervals: with `bootstrap`, `folds` or `tau_rule`, a `methods.bootstrap.FitIntervals` (bootstrap
            intervals, the cross-fitted estimate, the tau rule; for a multi-label head a
            `methods.bootstrap_multilabel.MultiLabelBootstrap`); else None.
    """

    calibration: Any
    tau_fit: Any
    target_priors: Optional[np.ndarray]
    target: Optional[dict]
    probability: Any
    calibrated: Any
    name: str
    out: Optional[Path] = None
    warnings: tuple[str, ...] = field(default=())
    task: Task = SINGLE_LABEL
    intervals: Any = None

    @property
    def tau(self) -> float:
        return self.tau_fit.tau

    def to_dict(self) -> dict:
        """Exactly `lacal fit-tau --json` (with `--multi-label` for a multi-label task)."""
        result = self.tau_fit.to_dict()
        if self.intervals is not None:
            result.update(self.intervals.to_dict())
        if self.task.multi_label:
            return result
        q = self.target_priors
        result["target_priors"] = None if q is None else {**(self.target or {}), "priors": [float(v) for v in q]}
        result["calibration"] = None if self.probability is None else self.probability.to_dict()
        if self.calibrated is not None:
            for name, value in self.calibrated.to_dict().items():
                result[f"{name}_calibrated"] = value
        return result


@dataclass(frozen=True, eq=False)
class TauNormResult:
    """tau-normalisation of a checkpoint's head (`fit(..., method="tau-norm")`), fitted for comparison."""

    tau_fit: Any
    head: str
    name: str
    grid_size: int
    tau_range: tuple[float, float]
    metric: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def tau(self) -> float:
        return self.tau_fit.tau

    def to_dict(self) -> dict:
        """Exactly `lacal fit-tau --method tau-norm --json`."""
        return self.tau_fit.to_dict()


def fit(val_logits=None, val_labels=None, priors=None, *, train_labels=None, tau_range: Optional[Sequence[float]] = None,
        search: str = "exact", metric: str = "balanced-error", grid_size: Optional[int] = None,
        target_priors: Any = "uniform", target_logits=None, calibrate: Optional[str] = None, bias_l2: float = 1e-2,
        method: str = "logit-adjustment", checkpoint=None, features=None, head: Optional[str] = None,
        class_names=None, label_column: Optional[str] = None, smoothing: float = 0.0, key: Optional[str] = None,
        device: str = "auto", memory_budget=None, out=None, force: bool = False, record_inputs: bool = True,
        progress: Optional[Callable] = None, context=None, multi_label: bool = False,
        bootstrap: Optional[int] = None, seed: int = 0, level: float = 0.95, folds: Optional[int] = None,
        tau_rule: str = "min") -> FitResult:
    """Fit tau for argmax f(x) - tau * log(pi) on validation data, as `lacal fit-tau` does.

    Args:
        val_logits: N x C validation logits: a numpy array, a torch tensor, a `LogitsSource`, a file, a folder or
            glob of shards, or a list of files. None with `checkpoint` and `features`.
        val_labels: N class ids: an array, a tensor or a labels file (.npy, .txt, .csv).
        priors: the training priors: a `Priors`, a priors file, or a vector of counts or probabilities.
        train_labels: instead of `priors`, the training labels (an array or a file).
        tau_range: (lo, hi) to search; (0, 4), or (0, 2) for tau-norm.
        search: "exact" (a true minimiser) or "grid".
        metric: "balanced-error" or "worst-class-error".
        grid_size: points of the grid search (401; 21 for tau-norm).
        target_priors: "uniform", "em" (estimated from `target_logits`), a priors file or a vector q.
        target_logits: unlabeled target logits for `target_priors="em"`.
        calibrate: None, "temperature" or "bias": then calibrate the adjusted logits' probabilities.
        bias_l2: the L2 weight of the bias calibration.
        method: "logit-adjustment", or "tau-norm" (needs `checkpoint` and `features`).
        checkpoint, features, head: logits = features @ W.T + b by the checkpoint's head.
        class_names: class names (a list or a classes file); labels files may then hold names.
        label_column: the column of a CSV labels file.
        smoothing: added to every training count.
        key: the array's name inside a file holding several.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        memory_budget: working memory per pass (bytes, or "512MB"); default 2GiB.
        out: write the calibration file here.
        force: replace an existing `out`.
        record_inputs: store the input files' paths and sha256 in the calibration.
        progress: `progress(total, description)`, a context manager yielding a callable(done); None is silent.
        context: a `distributed.Context` (a torchrun rank); default: one process on `device`.
        multi_label: a multi-label head (one sigmoid per label): `val_labels` and `train_labels` are N x C 0/1
            matrices (arrays, or .npy, .csv or .txt files), `priors` a `MultiLabelPriors` or multi-label priors file,
            `metric` "balanced-error" or "macro-f1" (highest); the options `core.tasks.OPTIONS` marks single-label
            are refused.
        bootstrap: this many stratified bootstrap replicates (each an exact refit of tau) for intervals of tau,
            the balanced error before and after, their change, the shot groups and every class (see the
            intervals guide); None for none. A multi-label head resamples samples, for its macro figures.
        seed: the resampling's seed (the intervals are a function of it and the data alone).
        level: the intervals' level, in (0, 1).
        folds: K, for a K-fold cross-fitted estimate of the balanced error at the fitted tau on new data.
        tau_rule: "min" (the exact minimiser) or "one-se" (among the taus within one bootstrap standard error
            of the minimum, the one nearest tau = 1).

    Returns:
        A `FitResult`: `.calibration`, `.tau`, `.task`, `.warnings`; `.to_dict()` is `lacal fit-tau --json` (with
        `multi_label`, `lacal fit-tau --multi-label --json`).

    Example:
        >>> result = lacal.fit(val_logits, val_labels, train_labels=train_labels, target_priors="em",
        ...                    target_logits=test_logits, calibrate="bias")
        >>> adjusted = lacal.apply(test_logits, result.calibration)
    """
    from ..methods.search import check_tau_range

    task = task_for(multi_label, priors=priors)
    assess = bootstrap is not None or folds is not None or tau_rule != "min"
    from ..methods.bootstrap import check_options

    check_options(bootstrap, level, seed, folds, tau_rule, None)  # a bad level or seed is refused even when unused
    if assess:
        if method != "logit-adjustment" or (task.multi_label and (folds is not None or tau_rule != "min")):
            given = [name for name, value in (("bootstrap", bootstrap is not None and method != "logit-adjustment"),
                                              ("folds", folds is not None), ("tau_rule", tau_rule != "min")) if value]
            raise OptionError("`bootstrap`, `folds` and `tau_rule` go with logit adjustment (and only `bootstrap` "
                              "with `multi_label`)", given[0])
    uniform = isinstance(target_priors, str) and target_priors.strip().lower() == "uniform"
    task.refuse(method=method != "logit-adjustment", search=search != "exact", grid_size=grid_size,
                target_priors=not uniform, target_logits=target_logits is not None, calibrate=calibrate,
                bias_l2=bias_l2 != 1e-2, checkpoint=checkpoint is not None, features=features is not None, head=head,
                label_column=label_column)
    if task.multi_label:
        task.check_metric(metric)
    notes = Notes()
    tau_norm = method == "tau-norm"
    if method not in ("logit-adjustment", "tau-norm"):
        raise OptionError(f"unknown method {method!r}; use logit-adjustment or tau-norm", "method")
    low_high = check_tau_range(tau_range if tau_range is not None else ((0.0, 2.0) if tau_norm else (0.0, 4.0)))
    grid_size = grid_size or (21 if tau_norm else 401)
    budget = memory_bytes(memory_budget)
    context = make_context(device, context)
    compute = context.device
    if tau_norm:
        if context.active:
            raise OptionError("`method` tau-norm does not run under torchrun yet; run it in one process", "torchrun")
        return _fit_tau_norm(val_logits, val_labels, checkpoint, features, head, key, class_names, label_column,
                             low_high, grid_size, metric, compute, budget, progress, out, calibrate, target_priors,
                             target_logits, train_labels, priors, smoothing)
    given = (val_logits, val_labels, train_labels, priors, checkpoint, features, class_names, target_logits)
    output_check(out, force, *given)
    source, val_labels, known_names = logits_input(val_logits, val_labels, checkpoint, features, head, key,
                                                   class_names, compute, True, context, notes)
    names = class_names_for(class_names, source.num_classes) or known_names
    labels = task_labels(task, val_labels, source, names, label_column, context)
    prior = task_priors(task, train_labels, priors, source.num_classes, smoothing, names, label_column)
    names = names or prior.classes
    q, target_info = target_priors_for(target_priors, target_logits, prior, source.num_classes, key, compute, budget,
                                       progress, context, notes)
    with progress_bar(progress, source.num_samples, "fit-tau") as step:
        tau_fit = search_tau(task, source, labels, prior, low_high, search, metric, grid_size, compute, step, budget,
                             context, keep_intervals=assess and not task.multi_label)
    intervals = None
    if assess and task.multi_label:
        intervals = _label_intervals(source, labels, prior, tau_fit.tau, low_high, bootstrap, seed, level,
                                     metric == "balanced-error", context)
    elif assess:
        from ..methods.bootstrap import assess_fit

        tau_fit, intervals = assess_fit(source, tau_fit, prior, replicates=bootstrap, seed=seed, level=level,
                                        folds=folds, tau_rule=tau_rule, train_counts=prior.counts, device=compute,
                                        context=context)
        for warning in intervals.warnings:
            notes.warn(warning)
    probability = calibrated = None
    if calibrate is not None:
        probability, calibrated = _calibrate(calibrate, source, labels, prior, tau_fit.tau, bias_l2, compute, budget,
                                             context, notes)
    from ..core.calibration import Calibration

    inputs = provenance(val_logits, val_labels, train_labels, priors, class_names, checkpoint, features,
                        target_logits) if record_inputs else None
    calibration = Calibration.from_fit(tau_fit, prior, names, inputs, q, target_info, probability)
    if getattr(intervals, "tau_rule", "min") != "min":  # the file says which rule chose tau, and the minimiser
        from dataclasses import replace

        calibration = replace(calibration, validation={**calibration.validation, "tau_rule": intervals.tau_rule,
                                                       "tau_min": intervals.tau_min})
    if out is not None and context.leader:
        calibration.save(out, force, paths_of(*given))
    if task.multi_label:
        notes.warnings.extend(missing_labels(tau_fit.before, "validation samples"))
    return FitResult(calibration, tau_fit, q, target_info, probability, calibrated, title(source),
                     None if out is None else Path(out), tuple(notes.warnings), task, intervals)


def _label_intervals(source, labels, prior, tau, tau_range, replicates, seed, level, refit, context):
    """A multi-label head's bootstrap: samples (rows) resampled; tau refitted for the macro balanced error."""
    from ..methods.bootstrap_multilabel import bootstrap_multilabel

    logits = source.rows(0, source.num_samples).cpu().numpy()
    return bootstrap_multilabel(logits, labels, prior.log_odds, tau, tau_range, replicates, seed, level, refit,
                                context)


def _calibrate(method, source, labels, prior, tau, bias_l2, compute, budget, context, notes):
    """The probability fit on the adjusted logits, and (for a bias, which moves predictions) the evaluation with
    it."""
    from ..core.offsets import offsets
    from ..methods.probability import fit_probabilities
    from ..engine.passes import score_pass

    probability = fit_probabilities(method, source, labels, offsets(prior, tau), bias_l2, device=compute,
                                    memory_budget=budget, context=context)
    if not probability.converged:
        notes.warn(f"the {method} fit {probability.message}")
    if not probability.moved:
        notes.warn(f"the {method} fit did not move: T = {probability.temperature:.4g}"
                   + ("" if probability.bias is None else ", bias within 1e-3 of 0")
                   + "; the adjusted logits were already calibrated on this validation set")
    if probability.bias is None:
        return probability, None
    shift = offsets(prior, tau) + probability.temperature * probability.bias
    return probability, score_pass(source, labels, [shift], compute, memory_budget=budget)[0].reduce(context)


def _fit_tau_norm(val_logits, val_labels, checkpoint, features, head, key, classes, column, low_high, grid_size,
                  metric, compute, budget, progress, out, calibrate, target, target_logits, train_labels, priors,
                  smoothing) -> TauNormResult:
    from ..models.checkpoints import find_head, open_checkpoint
    from ..data.readers import read_logits
    from ..methods.taunorm import fit_tau_norm

    if checkpoint is None or features is None:
        raise OptionError("tau-norm rescales the head's weight rows, so it needs `checkpoint` and `features`",
                          "method")
    uniform = isinstance(target, str) and target.strip().lower() == "uniform"
    if out is not None or calibrate is not None or not uniform or target_logits:
        raise OptionError("`out`, `calibrate` and `target_priors` go with `method` logit-adjustment; tau-norm is "
                          "fitted here for comparison (see also report --compare)", "method")
    if train_labels is not None or priors is not None or smoothing:
        raise OptionError("tau-norm uses no training priors; leave out `train_labels`, `priors` and `smoothing`",
                          "method")
    if val_logits is not None:
        raise OptionError("with `checkpoint` and `features`, give only the labels", "arguments")
    model = open_checkpoint(checkpoint)
    names = read_names(classes) if classes is not None else model.class_names
    layer = find_head(model, len(names) if names else None, head)
    source = read_logits(features, key, what="features")
    labels = open_labels(val_labels, Columns(source.num_samples, layer.num_classes, source.name), names, column)
    with progress_bar(progress, source.num_samples, "fit-tau") as step:
        tau_fit = fit_tau_norm(source, labels, model.tensor(layer.weight), low_high, grid_size, metric, compute,
                               progress=step, memory_budget=budget)
    return TauNormResult(tau_fit, layer.name, f"{features} through {checkpoint}", grid_size, low_high, metric)

"""`lacal.report` and `lacal.compare`: the per-class picture before and after adjustment, and post-hoc methods side by
side, as data (what `lacal report` and `lacal report --compare` do; rendering lives in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core.tasks import SINGLE_LABEL, Task
from ..errors import MismatchError, OptionError
from ..core.metrics import ClassEvaluation, ProbabilityMetrics, group_errors
from .inputs import Notes, check_width, is_path, logits_input, make_context, memory_bytes, open_logits, open_priors, \
    paths_of, progress_bar, title
from .inputs import class_names as class_names_for
from .task_inputs import missing_labels, task_calibration, task_for, task_labels, task_priors

SORT_KEYS = ("class", "error", "count")


@dataclass(frozen=True)
class Report:
    """Evaluations of the raw logits (`baseline`) and of the adjusted ones (`adjusted`, None when no tau was
    given), with the training counts (for shot groups) and class names when known. For a multi-label `task` the
    evaluations are `MultiLabelEvaluation`s, `train_counts` the training positives per label, and there are no
    probability metrics."""

    baseline: ClassEvaluation
    adjusted: ClassEvaluation | None = None
    train_counts: np.ndarray | None = None
    class_names: list[str] | None = None
    tau: float | None = None
    baseline_quality: ProbabilityMetrics | None = None
    adjusted_quality: ProbabilityMetrics | None = None
    target_priors: np.ndarray | None = None
    temperature: float | None = None
    name: str | None = None
    plot: Path | None = None
    warnings: tuple[str, ...] = field(default=())
    task: Task = SINGLE_LABEL
    intervals: Any = None  # with `bootstrap`: a methods.bootstrap.TauBootstrap (multi-label: MultiLabelBootstrap)

    @property
    def main(self) -> ClassEvaluation:
        return self.adjusted if self.adjusted is not None else self.baseline

    def order(self, sort: str = "class") -> np.ndarray:
        """Class ids in display order: by id, by error after (worst first), or by training count (largest first)."""
        ids = np.arange(self.baseline.num_classes)
        if sort == "error":
            errors = np.nan_to_num(self.main.errors, nan=-1.0)
            return ids[np.lexsort((ids, -errors))]
        if sort == "count":
            counts = self.train_counts if self.train_counts is not None else self.main.support
            return ids[np.lexsort((ids, -np.asarray(counts)))]
        return ids

    def groups(self, evaluation: ClassEvaluation) -> dict | None:
        if self.task.multi_label:
            from .multilabel_rows import label_groups

            return label_groups(evaluation, self.train_counts)
        return None if self.train_counts is None else group_errors(evaluation, self.train_counts)

    def _section(self, evaluation: ClassEvaluation, quality: ProbabilityMetrics | None = None) -> dict:
        if self.task.multi_label:
            from .multilabel_rows import label_section

            return label_section(evaluation, self.class_names, self.train_counts)
        errors = evaluation.errors
        names = self.class_names
        counts = self.train_counts
        return {
            **evaluation.to_dict(),
            **({} if quality is None else quality.to_dict()),
            "num_samples": evaluation.num_samples,
            "per_class": [
                {"class": c, "name": names[c] if names else None,
                 "train_count": None if counts is None else int(counts[c]),
                 "support": int(evaluation.support[c]),
                 "error": None if np.isnan(errors[c]) else float(errors[c])}
                for c in range(evaluation.num_classes)],
            "groups": self.groups(evaluation),
        }

    def to_dict(self) -> dict:
        """Exactly `lacal report --json` (`lacal report --multi-label --json` for a multi-label task)."""
        if self.task.multi_label:
            result = {"multi_label": True, **self._section(self.main), "tau": self.tau,
                      "num_classes": self.main.num_classes,
                      "labels_without_samples": self.main.labels_without_samples,
                      "baseline": self._section(self.baseline)}
            if self.intervals is not None:
                result.update(self.intervals.to_dict())
            return result
        adjusted = self.adjusted is not None
        result = self._section(self.main, self.adjusted_quality if adjusted else self.baseline_quality)
        result["tau"] = self.tau
        result["temperature"] = self.temperature
        result["target_priors"] = None if self.target_priors is None else [float(q) for q in self.target_priors]
        result["num_classes"] = self.main.num_classes
        result["classes_without_samples"] = self.main.classes_without_samples
        result["baseline"] = self._section(self.baseline, self.baseline_quality)
        if self.intervals is not None:
            result.update(self.intervals.to_dict())
        return result



def report(logits=None, labels=None, calibration=None, *, tau: Optional[float] = None, train_labels=None,
           priors=None, target_priors: Any = "uniform", target_logits=None, bins: int = 15, checkpoint=None,
           features=None, head: Optional[str] = None, class_names=None, label_column: Optional[str] = None,
           smoothing: float = 0.0, key: Optional[str] = None, device: str = "auto", memory_budget=None, plot=None,
           force: bool = False, progress: Optional[Callable] = None, context=None,
           multi_label: bool = False, bootstrap: Optional[int] = None, seed: int = 0,
           level: float = 0.95) -> Report:
    """Per-class errors before and after adjustment, with shot groups, NLL, Brier score, ECE and classwise ECE, as
    `lacal report` does.

    Args:
        logits: N x C logits (an array, a tensor, a `LogitsSource`, a file, a folder or glob of shards, or a list of
            files); None with `checkpoint` and `features`.
        labels: N class ids (an array, a tensor or a labels file).
        calibration: the adjustment to report: a `fit` result, a `Calibration` or a calibration file; or None with
            `tau` and `train_labels`/`priors`; or neither, for the raw logits only.
        train_labels, priors: the training priors (for `tau`, or only for the shot groups): labels, or anything
            `fit` takes as `priors`; the training counts come from them (or from the calibration).
        target_priors, target_logits: target priors with `tau` (a calibration carries its own).
        bins: equal-width confidence bins of the ECE.
        checkpoint, features, head, class_names, label_column, smoothing, key, device, memory_budget: as for `fit`.
        progress, context: as for `fit`.
        plot: also draw the three panels into this PNG (needs matplotlib); `force` replaces it.
        multi_label: a multi-label head: `labels` is an N x C 0/1 matrix, the report is per label (false negative
            and positive rates, balanced error) and macro / micro; also taken when `calibration` is a multi-label
            `Calibration`.

        bootstrap: this many stratified bootstrap replicates for intervals of the balanced error before and
            after, their change, the shot groups and every class (`Report.intervals`; see the intervals guide); a
            multi-label head resamples samples, for its macro figures.
        seed, level: the resampling's seed and the intervals' level, in (0, 1).

    Returns:
        A `Report`: `.baseline` and `.adjusted` evaluations, `.task`; `.to_dict()` is `lacal report --json` (with
        `multi_label`, `lacal report --multi-label --json`).

    Example:
        >>> lacal.report(test_logits, test_labels, calibration).to_dict()["balanced_error"]
    """
    task = task_for(multi_label, calibration, priors)
    from ..methods.bootstrap import check_options

    check_options(bootstrap, level, seed, None, "min", None)  # a bad level or seed is refused even when unused
    uniform = is_path(target_priors) and str(target_priors).strip().lower() == "uniform"
    task.refuse(checkpoint=checkpoint is not None, features=features is not None, head=head, plot=plot,
                label_column=label_column, target_priors=not uniform, target_logits=target_logits is not None,
                bins=bins != 15)
    notes = Notes()
    budget = memory_bytes(memory_budget)
    context = make_context(device, context)
    compute = context.device
    if plot is not None:
        from .plot import check_plotting
        from ..data.writers import check_output

        if Path(plot).suffix.lower() != ".png":
            raise OptionError(f"plots are written as PNG; give a FILE.png, got {Path(plot).name}", "plot")
        check_plotting()
        check_output(plot, force, paths_of(logits, labels, calibration, train_labels, priors, checkpoint, features))
    source, labels_data, known_names = logits_input(logits, labels, checkpoint, features, head, key, class_names,
                                                    compute, calibration is not None or tau is not None, context,
                                                    notes)
    given = class_names_for(class_names, source.num_classes)
    names = given or known_names
    if calibration is None and tau is None and (not uniform or target_logits is not None):
        raise OptionError("`target_priors` goes with `tau` (a calibration file carries its own)", "target_priors")
    fitted = task_calibration(task, calibration, tau, train_labels, priors, source.num_classes, smoothing, names,
                              label_column, False, target_priors, target_logits, key, compute, budget, context, notes,
                              "`class_names`" if given else "the checkpoint's id2label")
    names = names or (fitted.class_names if fitted is not None else None)  # named labels map through these
    values = task_labels(task, labels_data, source, names, label_column, context)
    counts = fitted.counts if fitted is not None else None
    if fitted is None and (train_labels is not None or priors is not None):
        counts = task_priors(task, train_labels, priors, source.num_classes, smoothing, names, label_column).counts
    affines = [(1.0, np.zeros(source.num_classes))] + ([fitted.affine()] if fitted is not None else [])
    with progress_bar(progress, (1 if task.multi_label else 2) * source.num_samples, "report") as step:
        evaluations, quality, hits = _evaluate(task, source, values, affines, bins, compute, budget, step, context,
                                               keep_hits=bootstrap is not None)
    result = Report(baseline=evaluations[0], adjusted=evaluations[1] if fitted is not None else None,
                    train_counts=counts, class_names=names, tau=None if fitted is None else fitted.tau,
                    baseline_quality=quality[0], adjusted_quality=quality[1] if fitted is not None else None,
                    target_priors=None if fitted is None else fitted.target_priors,
                    temperature=None if fitted is None else fitted.temperature, name=title(source),
                    plot=None if plot is None else Path(plot), warnings=tuple(notes.warnings), task=task)
    if bootstrap is not None:
        intervals = (_label_intervals(source, values, fitted, bootstrap, seed, level, context) if task.multi_label
                     else _intervals(source, values, hits, bootstrap, seed, level, counts, fitted, compute, budget,
                                     context))
        result = replace(result, intervals=intervals)
    if task.multi_label:
        if counts is None:
            notes.warn("no training positives given (`train_labels`, or `priors` or `calibration`), so labels are "
                       "not grouped into many/medium/few")
        notes.warnings.extend(missing_labels(result.main, f"samples in {source.name}"))
        result = replace(result, warnings=tuple(notes.warnings))
    if plot is not None:
        _plot(result, plot, source, values, fitted, train_labels, priors, smoothing, names, label_column, compute,
              budget, context, force, paths_of(logits, labels, calibration, train_labels, priors))
    return result


def _evaluate(task, source, values, affines, bins, compute, budget, step, context, keep_hits=False):
    """The evaluations of the logits under each (scale, shift), reduced over the ranks, and (single-label) the
    probability metrics; a multi-label head's evaluations only (and None for the metrics). With `keep_hits`
    (single-label), also each sample's correctness under each (for the bootstrap), from the same pass; else None."""
    from ..engine.passes import count_hits, hit_pass, probability_pass, score_pass

    if task.multi_label:
        from ..methods.multilabel import evaluate_multilabel

        evaluations = evaluate_multilabel(source, values, [shift for _, shift in affines], compute, progress=step,
                                          memory_budget=budget, context=context)
        return evaluations, [None] * len(affines), None
    # argmax(f * scale + shift) = argmax(f + shift / scale), as scale = 1 / temperature > 0
    offsets = [shift / scale for scale, shift in affines]
    failure = hits = None
    try:
        if keep_hits:
            hits = hit_pass(source, values, offsets, compute, progress=step, memory_budget=budget)
            evaluations = count_hits(hits, values, source.num_classes)
        else:
            evaluations = score_pass(source, values, offsets, device=compute, progress=step, memory_budget=budget)
        quality = probability_pass(source, values, affines, bins, compute, memory_budget=budget,
                                   progress=lambda done: step(source.num_samples + done))
    except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
        failure = exc
    context.agree(failure)
    return ([evaluation.reduce(context) for evaluation in evaluations],
            [metrics.reduce(context) for metrics in quality], hits)


def _intervals(source, labels, hits, replicates, seed, level, counts, fitted, compute, budget, context):
    """Bootstrap intervals of the report's numbers: each sample's correctness before and after (`hits`, from the
    report's own pass; before twice without an adjustment), resampled; with an adjustment, also where tau falls
    when refitted (balanced target, exact search) on the same replicates."""
    from ..core.offsets import as_priors_array
    from ..methods.bootstrap import bootstrap_fit, bootstrap_fixed, sample_intervals
    from ..methods.search import fit_tau

    hits = hits if hits.shape[1] == 2 else hits[:, [0, 0]]
    boot = bootstrap_fixed(hits, np.asarray(labels), source.num_classes, replicates, seed, level,
                           train_counts=counts, context=context)
    if fitted is None:
        return boot
    refit = fit_tau(source, labels, fitted.priors, device=compute, memory_budget=budget, context=context,
                    keep_intervals=True)
    intervals = sample_intervals(source, refit.intervals, np.log(as_priors_array(fitted.priors)), [0.0, 1.0, 4.0],
                                 compute, context)
    tau_ci = bootstrap_fit(intervals, refit.tau, (0.0, 4.0), replicates, seed, level, context=context).tau_ci
    return replace(boot, refit_tau_ci=tau_ci)


def _label_intervals(source, matrix, fitted, replicates, seed, level, context):
    """A multi-label report's intervals of the macro figures: samples resampled, the adjustment held fixed."""
    from ..methods.bootstrap_multilabel import bootstrap_multilabel

    ratios = np.zeros(source.num_classes) if fitted is None else fitted.log_odds
    logits = source.rows(0, source.num_samples).cpu().numpy()
    return bootstrap_multilabel(logits, matrix, ratios, 0.0 if fitted is None else fitted.tau, (0.0, 4.0),
                                replicates, seed, level, refit=False, context=context)


def _plot(result, plot, source, values, fitted, train_labels, priors, smoothing, names, column, compute, budget,
          context, force, inputs) -> None:
    from .plot import plot_report
    from ..methods.search import fit_tau

    curve = band = tau_interval = None
    prior_values = fitted.priors if fitted is not None else (
        open_priors(train_labels, priors, source.num_classes, smoothing, names, column)
        if train_labels is not None or priors is not None else None)
    if prior_values is not None:
        boot = result.intervals
        grid = fit_tau(source, values, prior_values, (0.0, 4.0), search="grid", grid_size=401, device=compute,
                       memory_budget=budget, context=context, keep_intervals=boot is not None)
        curve = (grid.grid_taus, grid.grid_values)
        if boot is not None:  # the band of the curve, and where tau would fall when refitted on these samples
            band, tau_interval = _plot_intervals(source, grid, prior_values, boot, compute, context)
    if context.leader:
        plot_report(plot, result, curve, result.tau, f"lacal report: {result.name}", force, inputs, band=band,
                    tau_interval=tau_interval)


def _plot_intervals(source, grid, prior_values, boot, compute, context):
    from ..core.offsets import as_priors_array
    from ..methods.bootstrap import curve_band, sample_intervals

    intervals = sample_intervals(source, grid.intervals, np.log(as_priors_array(prior_values)), [0.0, 1.0, 4.0],
                                 compute, context)
    band = curve_band(intervals, grid.grid_taus, (0.0, 4.0), boot.replicates, boot.seed, boot.level)
    return band, boot.refit_tau_ci


@dataclass(frozen=True, eq=False)
class Comparison:
    """Post-hoc methods fitted on the validation data and measured on the test data (or the validation data).

    Attributes:
        methods: a `MethodResult` per method (ERM, logit adjustment at tau = 1 and fitted, tau-normalisation with a
            checkpoint, adjustment plus the bias calibration).
        train_counts: the training counts (for the shot groups).
        fitted_on, measured_on: the names of the data.
        warnings: for example, methods measured on the data they were fitted on.
        task: the `Task` compared for (a multi-label head's methods: no adjustment, a shared tau at 1 and fitted, a
            threshold per label; `train_counts` are then the training positives per label).
    """

    methods: tuple
    train_counts: Any
    fitted_on: str
    measured_on: str
    warnings: tuple[str, ...] = field(default=())
    task: Task = SINGLE_LABEL

    def to_dict(self) -> dict:
        """Exactly `lacal report --compare --json` (with `--multi-label`, marked `multi_label`)."""
        marked = {"multi_label": True} if self.task.multi_label else {}
        return {**marked, "fitted_on": self.fitted_on, "measured_on": self.measured_on, "methods": self.rows()}

    def rows(self) -> list[dict]:
        return [r.to_dict(self.train_counts) for r in self.methods]


def compare(val_logits=None, val_labels=None, priors=None, *, train_labels=None, test_logits=None, test_labels=None,
            checkpoint=None, features=None, test_features=None, head: Optional[str] = None, class_names=None,
            label_column: Optional[str] = None, smoothing: float = 0.0, key: Optional[str] = None,
            device: str = "auto", memory_budget=None, progress: Optional[Callable] = None,
            context=None, metric: str = "balanced-error", multi_label: bool = False) -> Comparison:
    """Post-hoc methods side by side, as `lacal report --compare` does: each fitted on the validation data and
    measured on the test data when given (else on the validation data itself).

    Args:
        val_logits, val_labels: the validation data (None logits with `checkpoint` and `features`).
        priors, train_labels: the training priors (as for `fit`).
        test_logits, test_labels: the test split to measure on; with a checkpoint, `test_features` instead.
        checkpoint, features, head: the head's weights and features, which add tau-normalisation.
        class_names, label_column, smoothing, key, device, memory_budget, progress, context: as for `fit`.
        metric: with `multi_label`, what the shared tau is fitted for ("balanced-error" or "macro-f1").
        multi_label: a multi-label head: N x C 0/1 label matrices; the methods are no adjustment, a shared tau at 1
            and fitted, and a threshold per label.

    Returns:
        A `Comparison`; `.to_dict()` is `lacal report --compare --json` (with `multi_label`,
        `lacal report --multi-label --compare --json`).

    Example:
        >>> lacal.compare(val_logits, val_labels, priors, test_logits=test_logits, test_labels=test_labels)
    """
    task = task_for(multi_label, priors=priors)
    task.refuse(checkpoint=checkpoint is not None, features=features is not None,
                test_features=test_features is not None, head=head, label_column=label_column,
                torchrun=context is not None and context.active)
    if task.multi_label:
        task.check_metric(metric)
    elif metric != "balanced-error":
        raise OptionError("`metric` goes with `multi_label`", "metric")
    notes = Notes()
    budget = memory_bytes(memory_budget)
    context = make_context(device, context)
    compute = context.device
    if context.active:
        raise OptionError("report --compare does not run under torchrun yet; run it in one process", "torchrun")
    source, labels, known_names = logits_input(val_logits, val_labels, checkpoint, features, head, key, class_names,
                                               compute, False, context, notes)
    given = class_names_for(class_names, source.num_classes)
    names = given or known_names
    values = task_labels(task, labels, source, names, label_column)
    prior = task_priors(task, train_labels, priors, source.num_classes, smoothing, names, label_column)
    evaluation_source = evaluation_labels = head_data = None
    if checkpoint is not None:
        from ..models.checkpoints import find_head, open_checkpoint
        from ..data.readers import read_logits
        from ..engine.passes import head_logits

        if test_logits is not None:
            raise OptionError("with `checkpoint`, give the test split as `test_features`", "test_logits")
        model = open_checkpoint(checkpoint)
        layer = find_head(model, source.num_classes, head)
        weight = model.tensor(layer.weight)
        bias = model.tensor(layer.bias) if layer.bias else None
        val_features = read_logits(features, key, what="features")
        eval_features = read_logits(test_features, key, what="features") if test_features else val_features
        for given in (val_features, eval_features):
            check_width(given, weight)
        if test_features is not None:
            evaluation_source = head_logits(eval_features, weight, bias, compute, f"{test_features} through "
                                                                                  f"{checkpoint}")
        head_data = (weight, val_features, eval_features)
    elif test_features is not None:
        raise OptionError("`test_features` needs `checkpoint` and `features`", "test_features")
    elif test_logits is not None:
        evaluation_source = open_logits(test_logits, key, notes=notes)
        if evaluation_source.num_classes != source.num_classes:
            raise MismatchError(f"has {evaluation_source.num_classes} {task.units} but the validation logits have "
                                f"{source.num_classes}", test_logits if is_path(test_logits) else "test_logits")
    if (evaluation_source is None) != (test_labels is None):
        raise OptionError("give `test_labels` together with `test_logits` (or `test_features`)", "test_labels")
    if evaluation_source is not None:
        evaluation_labels = task_labels(task, test_labels, evaluation_source, names, label_column)
    with progress_bar(progress, source.num_samples, "compare") as step:
        if task.multi_label:
            from .multilabel_rows import compare_multilabel

            results = compare_multilabel(source, values, prior, evaluation_source, evaluation_labels, metric,
                                         compute, budget, step)
        else:
            from ..methods.comparison import compare_methods

            results = compare_methods(source, values, prior, evaluation_source, evaluation_labels, head_data,
                                      compute, budget, progress=step)
    if evaluation_source is None:
        notes.warn("every method was fitted and measured on the same data; give `test_logits` and `test_labels` for "
                   "an honest comparison" + (" (per-label thresholds look best on the data they were fitted on)"
                                             if task.multi_label else ""))
    measured = evaluation_source.name if evaluation_source is not None else source.name
    return Comparison(tuple(results), prior.counts, source.name, measured, tuple(notes.warnings), task)

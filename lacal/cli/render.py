"""How the CLI shows results: rich tables on stdout, warnings and notes on stderr. Nothing here computes."""

from __future__ import annotations

import json
import sys

import typer

from ..errors import shown, shown_line


# How the library's parameter names read on the command line: a library error names `tau_range`, the user sees
# --tau-range.
FLAGS = {
    "tau_range": "--tau-range", "search": "--search", "grid_size": "--grid-size", "metric": "--metric",
    "train_labels": "--train-labels", "priors": "--priors", "train_priors": "--priors", "smoothing": "--smoothing",
    "target_priors": "--target-priors", "target_logits": "--target-logits", "calibrate": "--calibrate",
    "bias_l2": "--bias-l2", "method": "--method", "calibration": "--calibration", "tau": "--tau",
    "checkpoint": "--checkpoint", "features": "--features", "head": "--head", "class_names": "--classes",
    "label_column": "--label-column", "key": "--key", "device": "--device", "memory_budget": "--memory-budget",
    "out": "--out", "force": "--force", "top_k": "--top-k", "format": "--format", "in_place": "--in-place",
    "add_bias": "--add-bias", "link": "--link", "verify_features": "--verify-features", "bins": "--bins",
    "plot": "--plot", "test_logits": "--test-logits", "test_labels": "--test-labels",
    "test_features": "--test-features", "num_classes": "--num-classes", "em_tolerance": "--em-tolerance",
    "tolerance": "--em-tolerance", "max_iterations": "--em-max-iter", "batch_size": "--batch-size", "amp": "--amp",
    "compare": "--compare", "em": "--em", "bootstrap": "--bootstrap", "seed": "--seed", "level": "--level",
    "folds": "--folds", "tau_rule": "--tau-rule", "multi_label": "--multi-label",
}


def flagged(text: str) -> str:
    """A library message with its `parameter` names written as the CLI's flags."""
    import re

    return re.sub(r"`(\w+)`", lambda match: FLAGS.get(match.group(1), match.group(0)), text)


def line(text: str) -> None:
    """One line on stderr, through the display rule (control characters escaped, a very long line cut)."""
    typer.echo(shown_line(text), err=True)


def warn(message: str) -> None:
    line(f"lacal: warning: {flagged(message)}")


def say(message: str) -> None:
    line(f"lacal: {flagged(message)}")


def notes(result) -> None:
    """A result's warnings, then its other messages, on stderr."""
    for message in getattr(result, "warnings", ()):
        warn(message)
    for message in getattr(result, "messages", ()):
        say(message)


class Progress:
    """A progress bar on stderr with samples per second, shown once a pass has taken more than a second."""

    DELAY = 1.0

    def __init__(self, total: int, description: str, quiet: bool):
        import time

        self.total, self.description, self.quiet = total, description, quiet
        self.started = time.monotonic()
        self.bar = self.task = None

    def __call__(self, done: int) -> None:
        import time

        if self.quiet:
            return
        if self.bar is None:
            if time.monotonic() - self.started < self.DELAY:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, \
                TimeRemainingColumn
            from rich.text import Text

            class Rate(ProgressColumn):
                def render(self, task):
                    return Text(f"{task.speed or 0:,.0f} samples/s")

            self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(), Rate(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(shown(self.description), total=self.total)
        self.bar.update(self.task, completed=done)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def patched(result) -> None:
    """A patched checkpoint or model file: its notes, then what was patched and written."""
    notes(result)
    heads = " and ".join(repr(h) for h in result.heads)  # say() escapes what repr leaves
    say(f"patched {heads} ({result.num_classes} classes, tau = {result.tau:.4f}) and wrote {result.out}")


class StdoutFailed(Exception):
    """Standard output could not be written (`error`: the OSError): a closed pipe, a full disk."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class Stdout:
    """Standard output (whatever `sys.stdout` is when written), with a failed write raised as StdoutFailed, so that
    the CLI can tell it from a failure to read an input."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except OSError as exc:
            raise StdoutFailed(exc) from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise StdoutFailed(exc) from None

    def __getattr__(self, name):
        return getattr(sys.stdout, name)


def print_json(result) -> None:
    """The result's `to_dict()` as one line of JSON on stdout: the raw values, exactly (JSON escapes control
    characters itself)."""
    out = Stdout()
    out.write(json.dumps(result.to_dict()) + "\n")
    out.flush()


def console():
    """The console for tables on stdout: markup and emoji codes off, so that names from files print as they are
    (`[/b]`, `[link=...]`, `:smile:`); the names themselves pass through `shown`."""
    from rich.console import Console

    return Console(file=Stdout(), highlight=False, markup=False, emoji=False)


def bold_lead(lead: str, rest: str):
    """A line whose first words are bold (markup is off, so no `[bold]`)."""
    from rich.text import Text

    return Text.assemble((lead, "bold"), rest)


def percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}%"


def priors_table(result, names) -> None:
    from rich.table import Table

    if result.task.multi_label:
        return _label_priors_table(result)
    priors = result.priors
    table = Table(title=f"Priors from {shown(result.name)} ({result.num_labels} labels, {priors.num_classes} classes)")
    for column in ("class", "name", "count", "prior"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for c in range(priors.num_classes):
        table.add_row(str(c), shown(names[c]) if names else "", str(int(priors.counts[c])), f"{priors.priors[c]:.6f}")
    console().print(table)


def estimate_table(result) -> None:
    from rich.table import Table

    info, q, prior = result.info, result.priors, result.train_priors
    out = console()
    out.print(f"EM on {shown(result.name)}: {info['iterations']} iterations, "
              f"{'converged' if info['converged'] else 'NOT converged'} (last change {info['last_change']:.2g}), "
              f"log-likelihood {info['log_likelihood']:.6g}")
    table = Table(title="estimated target priors")
    for column_name in ("class", "name", "training prior", "target prior", "ratio"):
        table.add_column(column_name, justify="left" if column_name == "name" else "right")
    labels = result.class_names
    for c in range(len(q)):
        table.add_row(str(c), shown(labels[c]) if labels else "", f"{prior.priors[c]:.5f}", f"{q[c]:.5f}",
                      f"{q[c] / prior.priors[c]:.3g}")
    out.print(table)


def tau_norm_table(result) -> None:
    from rich.table import Table

    fit = result.tau_fit
    out = console()
    low, high = result.tau_range
    out.print(bold_lead(f"tau = {fit.tau:.4f}", f"  tau-normalisation of {shown(repr(result.head))}: the best of "
              f"{result.grid_size} values in [{low:g}, {high:g}] for the lowest {result.metric.replace('-', ' ')}"))
    table = Table(title=f"{shown(result.name)}: {fit.before.num_samples} samples, {fit.before.num_classes} classes")
    table.add_column("validation")
    for header in ("tau=0 (no bias)", f"after (tau={fit.tau:.3f})"):
        table.add_column(header, justify="right")
    for label, attribute in (("balanced error", "balanced_error"), ("worst-class error", "worst_class_error"),
                             ("accuracy", "accuracy")):
        table.add_row(label, *(percent(getattr(e, attribute)) for e in (fit.before, fit.after)))
    out.print(table)


def fit_tables(result) -> None:
    if result.task.multi_label:
        return _label_fit_tables(result)
    fit, target_info, probability, calibrated = result.tau_fit, result.target, result.probability, result.calibrated
    out = console()
    if target_info is not None:
        where = shown(target_info["path"])
        how = (f"EM on {where}: {target_info['iterations']} iterations, "
               f"{'converged' if target_info['converged'] else 'not converged'}, log-likelihood "
               f"{target_info['log_likelihood']:.6g}" if target_info["kind"] == "em" else f"from {where}")
        out.print(f"target priors q {how}; stored for apply and report, which predict argmax f - tau * log(pi) "
                  "+ log(q). Tau and the validation numbers below are for a balanced target")
    out.print(bold_lead(f"tau = {fit.tau:.4f}", f"  {fit.search} search over [{fit.tau_range[0]:g}, "
              f"{fit.tau_range[1]:g}] for the lowest {fit.metric.replace('-', ' ')}"))
    metric = fit.metric.replace("-", " ")
    rule = result.intervals
    if rule is not None and rule.tau_rule == "one-se" and fit.tau != rule.tau_min:  # the interval is the rule's run
        out.print(f"every tau in ({fit.interval[0]:.4f}, {fit.interval[1]:.4f}) is within one bootstrap standard "
                  f"error of the lowest {metric}")
    elif fit.interval[0] == fit.interval[1]:
        out.print(f"only the single point tau = {fit.tau:g} reaches this {metric} (exact ties in the logits)")
    elif fit.search == "exact":
        out.print(f"the same {metric} for every tau in ({fit.interval[0]:.4f}, {fit.interval[1]:.4f})")
    else:
        out.print(f"grid points in [{fit.interval[0]:.4f}, {fit.interval[1]:.4f}] share this value")
    _validation_table(out, result, (("balanced error", "balanced_error"),
                                     ("worst-class error", "worst_class_error"), ("accuracy", "accuracy")))
    if probability is not None:
        loss = "NLL" if probability.method == "temperature" else "class-balanced cross-entropy"
        out.print(f"{probability.method} calibration: T = {probability.temperature:.4f}"
                  + ("" if probability.bias is None else
                     f", bias in [{probability.bias.min():.3f}, {probability.bias.max():.3f}]")
                  + f"; validation {loss} {probability.loss_before:.4f} -> {probability.loss_after:.4f} "
                  f"({probability.iterations} iterations, {'converged' if probability.converged else 'not converged'})")
        if calibrated is not None:
            out.print(f"with the bias: balanced error {percent(calibrated.balanced_error)}, worst-class error "
                      f"{percent(calibrated.worst_class_error)}, accuracy {percent(calibrated.accuracy)}")
    if fit.before.classes_without_samples:
        warn(f"{len(fit.before.classes_without_samples)} class(es) have no validation samples and are left out of "
             f"the errors: {fit.before.classes_without_samples[:20]}")


def _summary_table(adjusted: bool):
    """The report's summary table: a column of values, or before and after."""
    from rich.table import Table

    summary = Table(title="summary" + (" (before -> after)" if adjusted else ""))
    summary.add_column("")
    summary.add_column("before" if adjusted else "value", justify="right")
    if adjusted:
        summary.add_column("after", justify="right")
    return summary


def _validation_table(out, result, figures) -> None:
    """A fit's validation figures (label, attribute) before (tau = 0), at tau = 1 and after."""
    from rich.table import Table

    fit = result.tau_fit
    table = Table(title=f"{shown(result.name)}: {fit.num_samples} samples, {fit.num_classes} {result.task.units}")
    table.add_column("validation")
    for header in ("before (tau=0)", "tau=1", f"after (tau={fit.tau:.3f})"):
        table.add_column(header, justify="right")
    for label, attribute in figures:
        table.add_row(label, *(percent(getattr(e, attribute)) for e in (fit.before, fit.at_one, fit.after)))
    out.print(table)


def comparison_table(result) -> None:
    from rich.table import Table

    if result.task.multi_label:
        return _label_comparison_table(result)
    table = Table(title=f"post-hoc methods fitted on {shown(result.fitted_on)}, measured on "
                        f"{shown(result.measured_on)}")
    for column_name in ("method", "tau", "balanced error", "accuracy", "worst-class error", "many", "medium",
                        "few"):
        table.add_column(column_name, justify="left" if column_name == "method" else "right")
    for row in result.rows():
        table.add_row(row["method"], "-" if row["tau"] is None else f"{row['tau']:.3f}",
                      *(percent(row[k]) for k in ("balanced_error", "accuracy", "worst_class_error", "many",
                                                  "medium", "few")))
    console().print(table)


def report_tables(report, sort: str, limit=None) -> None:
    import numpy as np
    from rich.table import Table

    from ..core.metrics import GROUPS, shot_groups

    if report.task.multi_label:
        return _label_report_tables(report, sort, limit)
    out = console()
    name = shown(report.name)
    adjusted = report.adjusted is not None
    after = report.main
    before_errors, after_errors = report.baseline.errors, after.errors
    groups = shot_groups(report.train_counts) if report.train_counts is not None else None
    title = f"{name}: per-class error" + (f", tau = {report.tau:.4f}" if adjusted else " (no adjustment given)")
    table = Table(title=title)
    named = report.class_names is not None
    columns = (["class"] + (["name"] if named else []) + ["train", "group", "support"]
               + (["before", "after", "change (pts)"] if adjusted else ["error"]))
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "group") else "right")
    order = report.order(sort)
    for c in order[:limit]:
        row = [str(c)] + ([shown(report.class_names[c])] if named else []) + [
               "-" if report.train_counts is None else str(int(report.train_counts[c])),
               "-" if groups is None else str(groups[c]), str(int(after.support[c])),
               percent(None if np.isnan(before_errors[c]) else before_errors[c])]
        if adjusted:
            change = after_errors[c] - before_errors[c]
            row += [percent(None if np.isnan(after_errors[c]) else after_errors[c]),
                    "-" if np.isnan(change) else f"{100 * change:+.2f}"]
        table.add_row(*row)
    if limit is not None and limit < len(order):
        table.caption = f"first {limit} of {len(order)} classes (--limit)"
    out.print(table)
    summary = _summary_table(adjusted)
    rows = [("accuracy", "accuracy"), ("balanced error", "balanced_error"),
            ("worst-class error", "worst_class_error")]
    for label, attribute in rows:
        values = [getattr(report.baseline, attribute)] + ([getattr(after, attribute)] if adjusted else [])
        summary.add_row(label, *map(percent, values))
    if report.baseline_quality is not None:
        qualities = [report.baseline_quality] + ([report.adjusted_quality] if adjusted else [])
        bins = int(report.baseline_quality.bin_count.shape[0])
        for label, attribute, in_percent in (("NLL", "nll", False), ("Brier score", "brier", False),
                                             (f"ECE ({bins} bins)", "ece", True),
                                             ("classwise ECE", "classwise_ece", True)):
            numbers = [getattr(quality, attribute) for quality in qualities]
            summary.add_row(label, *(percent(n) if in_percent else f"{n:.4f}" for n in numbers))
    if groups is not None:
        before_groups = report.groups(report.baseline)
        after_groups = report.groups(after)
        for group in GROUPS:
            size = before_groups[group]["classes"]
            label = f"{group}-shot error ({size} classes)"
            values = [before_groups[group]["error"]] + ([after_groups[group]["error"]] if adjusted else [])
            summary.add_row(label, *map(percent, values))
    out.print(summary)
    if groups is None:
        warn("no training counts given (--train-labels, or counts in --priors or --calibration), so classes are not "
             "grouped into many/medium/few-shot")
    missing = after.classes_without_samples
    if missing:
        warn(f"{len(missing)} class(es) have no samples in {name} and are left out of the balanced and worst-class "
             f"errors: {missing[:20]}{' ...' if len(missing) > 20 else ''}")


# The tables of a multi-label head (one sigmoid per label): per-label rates and macro / micro figures.

LABEL_FIGURES = (("macro balanced error", "balanced_error"), ("macro-F1", "macro_f1"),
                 ("micro balanced error", "micro_balanced_error"), ("micro-F1", "micro_f1"))


def _label_fit_tables(result) -> None:
    """`fit-tau --multi-label`: tau, its interval, and the validation figures before, at tau = 1 and after."""
    fit, out = result.tau_fit, console()
    metric = "macro balanced error" if fit.metric == "balanced-error" else "macro-F1 (highest)"
    out.print(bold_lead(f"tau = {fit.tau:.4f}", f"  exact search over [{fit.tau_range[0]:g}, "
                        f"{fit.tau_range[1]:g}] for the {'lowest ' if fit.metric == 'balanced-error' else ''}"
                        f"{metric}, one tau shared by every label"))
    if fit.interval[0] == fit.interval[1]:
        out.print(f"only the single point tau = {fit.tau:g} reaches this value (flips meet there)")
    else:
        digits = 4 if fit.interval[1] - fit.interval[0] >= 1e-3 else 7
        out.print(f"the same value for every tau in ({fit.interval[0]:.{digits}f}, {fit.interval[1]:.{digits}f})")
    _validation_table(out, result, LABEL_FIGURES)


def _label_report_tables(report, sort: str, limit=None) -> None:
    """`report --multi-label`: per-label rates and errors, then the summary."""
    from rich.table import Table

    from ..core.metrics import GROUPS, shot_groups

    name, out = shown(report.name), console()
    adjusted = report.adjusted is not None
    before, after = report.baseline, report.main
    groups = shot_groups(report.train_counts) if report.train_counts is not None else None
    table = Table(title=f"{name}: per-label errors" + (f", tau = {report.tau:.4f}" if adjusted else
                                                       " (no adjustment given)"))
    named = report.class_names is not None
    columns = (["label"] + (["name"] if named else []) + ["train", "group", "support", "FNR", "FPR"]
               + (["before", "after"] if adjusted else ["balanced error"]))
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "group") else "right")
    fnr, fpr = after.false_negative_rates, after.false_positive_rates
    order = report.order(sort)
    for k in order[:limit]:
        row = [str(k)] + ([shown(report.class_names[k])] if named else []) + [
            "-" if report.train_counts is None else str(int(report.train_counts[k])),
            "-" if groups is None else str(groups[k]), str(int(after.positives[k])),
            percent(fnr[k]), percent(fpr[k]), percent(before.balanced_errors[k])]
        if adjusted:
            row.append(percent(after.balanced_errors[k]))
        table.add_row(*row)
    if limit is not None and limit < len(order):
        table.caption = f"first {limit} of {len(order)} labels (--limit); FNR and FPR " + \
            ("after" if adjusted else "of the raw logits")
    else:
        table.caption = "support: positive samples; FNR and FPR " + ("after" if adjusted else "of the raw logits")
    out.print(table)
    summary = _summary_table(adjusted)
    evaluations = [before] + ([after] if adjusted else [])
    for label, attribute in LABEL_FIGURES:
        summary.add_row(label, *(percent(getattr(e, attribute)) for e in evaluations))
    if groups is not None:
        per_group = [report.groups(e) for e in evaluations]
        for group in GROUPS:
            summary.add_row(f"{group} balanced error ({per_group[0][group]['labels']} labels)",
                            *(percent(g[group]["balanced_error"]) for g in per_group))
    out.print(summary)


def _label_comparison_table(result) -> None:
    """`report --multi-label --compare`: one row per method."""
    from rich.table import Table

    table = Table(title=f"multi-label methods fitted on {shown(result.fitted_on)}, measured on "
                        f"{shown(result.measured_on)}")
    columns = ("method", "tau", "macro balanced error", "macro-F1", "micro-F1", "many", "medium", "few")
    for column_name in columns:
        table.add_column(column_name, justify="left" if column_name == "method" else "right")
    for row in result.rows():
        table.add_row(row["method"], "-" if row["tau"] is None else f"{row['tau']:.3f}",
                      *(percent(row[k]) for k in ("balanced_error", "macro_f1", "micro_f1", "many", "medium",
                                                   "few")))
    table.caption = "many / medium / few: macro balanced error of labels with > 100, 20 to 100, < 20 training positives"
    console().print(table)


def _label_priors_table(result) -> None:
    """`priors --multi-label`: positives, rate and log-odds per label."""
    from rich.table import Table

    prior, names = result.priors, result.priors.classes
    table = Table(title=f"Multi-label priors from {shown(result.name)} ({prior.num_samples} samples, "
                        f"{prior.num_classes} labels)")
    for column in ("label", "name", "positives", "prior", "log(pi / (1 - pi))"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for k in range(prior.num_classes):
        table.add_row(str(k), shown(names[k]) if names else "", str(int(prior.positives[k])),
                      f"{prior.priors[k]:.6f}", f"{prior.log_odds[k]:.4f}")
    console().print(table)


def with_interval(value, interval, points: bool = False) -> str:
    """'16.95% (15.1-18.9)': a value and its interval, in percent (or in points, signed, for a change)."""
    if points:
        text = "-" if value is None or value != value else f"{100 * value:+.2f}"
        return text if interval is None else f"{text} ({100 * interval[0]:+.1f} to {100 * interval[1]:+.1f})"
    text = percent(value)
    return text if interval is None else f"{text} ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})"


def _interval_rows(table, boot, before, after, train_counts) -> None:
    """The balanced error, its change and the shot groups, with their intervals."""
    from ..core.metrics import GROUPS, group_errors

    table.add_row("balanced error", with_interval(before.balanced_error, boot.ci("balanced_error", "before")),
                  with_interval(after.balanced_error, boot.ci("balanced_error", "after")),
                  with_interval(after.balanced_error - before.balanced_error,
                                boot.ci("balanced_error", "change"), points=True))
    if train_counts is not None and boot.has_groups:
        groups_before, groups_after = group_errors(before, train_counts), group_errors(after, train_counts)
        for group in GROUPS:
            table.add_row(f"{group}-shot error ({groups_before[group]['classes']} classes)",
                          with_interval(groups_before[group]["error"], boot.group_ci(group, "before")),
                          with_interval(groups_after[group]["error"], boot.group_ci(group, "after")), "")


def fit_intervals(result) -> None:
    """What --bootstrap, --folds and --tau-rule add to fit-tau's tables."""
    from rich.table import Table

    intervals, fit = result.intervals, result.tau_fit
    out = console()
    if intervals.tau_rule == "one-se":
        out.print(f"tau rule one-se: tau = {fit.tau:.4f}, the tau nearest 1 within one bootstrap standard error "
                  f"of the minimum (the exact minimiser is {intervals.tau_min:.4f})")
    crossed = intervals.cross_fit
    out.print(f"balanced error at tau: {percent(intervals.in_sample)} in-sample"
              + ("" if crossed is None else f", {percent(crossed.balanced_error)} cross-fitted ({crossed.folds} "
                                            "folds; what to expect on new data)"))
    boot = intervals.bootstrap
    if boot is None:
        return
    level = f"{100 * boot.level:g}%"
    table = Table(title=f"{level} intervals: {boot.replicates} {'stratified ' if boot.stratified else ''}bootstrap "
                        f"replicates, seed {boot.seed}")
    table.add_column("validation")
    for header in ("before (tau=0)", f"after (tau={fit.tau:.3f})", "change (pts)"):
        table.add_column(header, justify="right")
    tau_ci = boot.tau_ci
    table.add_row("tau", "", f"{fit.tau:.3f}" + ("" if tau_ci is None else f" ({tau_ci[0]:.3f}-{tau_ci[1]:.3f})"),
                  "")
    _interval_rows(table, boot, fit.before, fit.after, result.calibration.counts)
    table.caption = ("errors after are corrected for the optimism of choosing tau on these samples; per-class "
                     "intervals (Wilson) are in --json; the worst-class error has none (see the intervals guide)")
    out.print(table)


def report_intervals(report) -> None:
    """What --bootstrap adds to report's tables."""
    from rich.table import Table

    boot = report.intervals
    adjusted = report.adjusted if report.adjusted is not None else report.baseline
    table = Table(title=f"{100 * boot.level:g}% intervals: {boot.replicates} "
                        f"{'stratified ' if boot.stratified else ''}bootstrap replicates, seed {boot.seed}")
    table.add_column("")
    for header in ("before", "after" + ("" if report.tau is None else f" (tau={report.tau:.3f})"), "change (pts)"):
        table.add_column(header, justify="right")
    if boot.refit_tau_ci is not None:
        low, high = boot.refit_tau_ci
        table.add_row("tau refitted on these samples", "", f"({low:.3f}-{high:.3f})", "")
    _interval_rows(table, boot, report.baseline, adjusted, report.train_counts)
    table.caption = ("the adjustment is taken as fixed (fitted on other data); per-class intervals (Wilson) are in "
                     "--json")
    console().print(table)


def multilabel_intervals(boot, before, after) -> None:
    """What --bootstrap adds to the multi-label tables: the macro figures with their intervals."""
    from rich.table import Table

    table = Table(title=f"{100 * boot.level:g}% intervals: {boot.replicates} bootstrap replicates (samples), seed "
                        f"{boot.seed}")
    table.add_column("")
    for header in ("before (tau=0)", f"after (tau={boot.tau:.3f})", "change (pts)"):
        table.add_column(header, justify="right")
    if boot.refitted and boot.tau_ci is not None:
        table.add_row("tau", "", f"{boot.tau:.3f} ({boot.tau_ci[0]:.3f}-{boot.tau_ci[1]:.3f})", "")
    for label, metric in (("macro balanced error", "balanced_error"), ("macro-F1", "macro_f1")):
        first, second = getattr(before, metric), getattr(after, metric)
        table.add_row(label, with_interval(first, boot.ci(metric, "before")),
                      with_interval(second, boot.ci(metric, "after")),
                      with_interval(second - first, boot.ci(metric, "change"), points=True))
    table.caption = "per-label intervals are in --json"
    console().print(table)

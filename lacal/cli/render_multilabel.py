"""The multi-label commands' tables (`--multi-label`): rendering only, the numbers come from
`lacal.workflows.multilabel`."""

from __future__ import annotations

from ..errors import shown
from .render import bold_lead as _bold_lead
from .render import console as _console
from .render import percent as _percent


def fit_tables(result) -> None:
    """`fit-tau --multi-label`: tau, its interval, and the validation figures before, at tau = 1 and after."""
    from rich.table import Table

    fit, name, console = result.tau_fit, shown(result.name), _console()
    metric = "macro balanced error" if fit.metric == "balanced-error" else "macro-F1 (highest)"
    console.print(_bold_lead(f"tau = {fit.tau:.4f}", f"  exact search over [{fit.tau_range[0]:g}, "
                             f"{fit.tau_range[1]:g}] for the {'lowest ' if fit.metric == 'balanced-error' else ''}"
                             f"{metric}, one tau shared by every label"))
    if fit.interval[0] == fit.interval[1]:
        console.print(f"only the single point tau = {fit.tau:g} reaches this value (flips meet there)")
    else:
        digits = 4 if fit.interval[1] - fit.interval[0] >= 1e-3 else 7
        console.print(f"the same value for every tau in ({fit.interval[0]:.{digits}f}, {fit.interval[1]:.{digits}f})")
    table = Table(title=f"{name}: {fit.num_samples} samples, {fit.num_classes} labels")
    table.add_column("validation")
    for header in ("before (tau=0)", "tau=1", f"after (tau={fit.tau:.3f})"):
        table.add_column(header, justify="right")
    for label, attribute in (("macro balanced error", "balanced_error"), ("macro-F1", "macro_f1"),
                             ("micro balanced error", "micro_balanced_error"), ("micro-F1", "micro_f1")):
        table.add_row(label, *(_percent(getattr(e, attribute)) for e in (fit.before, fit.at_one, fit.after)))
    console.print(table)


def report_tables(result, sort: str, limit=None) -> None:
    """`report --multi-label`: per-label rates and errors, then the summary."""
    from rich.table import Table

    from ..core.metrics import GROUPS, shot_groups

    report, name, console = result.report, shown(result.name), _console()
    adjusted = report.adjusted is not None
    before, after = report.baseline, report.main
    groups = shot_groups(report.train_positives) if report.train_positives is not None else None
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
            "-" if report.train_positives is None else str(int(report.train_positives[k])),
            "-" if groups is None else str(groups[k]), str(int(after.positives[k])),
            _percent(fnr[k]), _percent(fpr[k]), _percent(before.balanced_errors[k])]
        if adjusted:
            row.append(_percent(after.balanced_errors[k]))
        table.add_row(*row)
    if limit is not None and limit < len(order):
        table.caption = f"first {limit} of {len(order)} labels (--limit); FNR and FPR " + \
            ("after" if adjusted else "of the raw logits")
    else:
        table.caption = "support: positive samples; FNR and FPR " + ("after" if adjusted else "of the raw logits")
    console.print(table)
    summary = Table(title="summary" + (" (before -> after)" if adjusted else ""))
    summary.add_column("")
    summary.add_column("before" if adjusted else "value", justify="right")
    if adjusted:
        summary.add_column("after", justify="right")
    evaluations = [before] + ([after] if adjusted else [])
    for label, attribute in (("macro balanced error", "balanced_error"), ("macro-F1", "macro_f1"),
                             ("micro balanced error", "micro_balanced_error"), ("micro-F1", "micro_f1")):
        summary.add_row(label, *(_percent(getattr(e, attribute)) for e in evaluations))
    if groups is not None:
        per_group = [report.groups(e) for e in evaluations]
        for group in GROUPS:
            summary.add_row(f"{group} balanced error ({per_group[0][group]['labels']} labels)",
                            *(_percent(g[group]["balanced_error"]) for g in per_group))
    console.print(summary)


def comparison_table(result) -> None:
    """`report --multi-label --compare`: one row per method."""
    from rich.table import Table

    table = Table(title=f"multi-label methods fitted on {shown(result.fitted_on)}, measured on "
                        f"{shown(result.measured_on)}")
    columns = ("method", "tau", "macro balanced error", "macro-F1", "micro-F1", "many", "medium", "few")
    for column_name in columns:
        table.add_column(column_name, justify="left" if column_name == "method" else "right")
    for row in result.rows():
        table.add_row(row["method"], "-" if row["tau"] is None else f"{row['tau']:.3f}",
                      *(_percent(row[k]) for k in ("balanced_error", "macro_f1", "micro_f1", "many", "medium",
                                                   "few")))
    table.caption = "many / medium / few: macro balanced error of labels with > 100, 20 to 100, < 20 training positives"
    _console().print(table)


def priors_table(result) -> None:
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
    _console().print(table)

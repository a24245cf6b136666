"""The multi-label side of `fit-tau`, `apply`, `report` and `priors` (`--multi-label`, or a labels file that is an
N x C 0/1 matrix): options in, one library call, rendering out. `cli.py` hands over to these functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from .errors import MismatchError, OptionError


def wanted(flag: bool, labels_path, what: str = "labels") -> bool:
    """Whether to run multi-label: `--multi-label`, or a labels file that can only be multi-label (said in a note)."""
    from .multilabel_data import label_matrix_kind

    if flag:
        return True
    kind = label_matrix_kind(labels_path) if labels_path is not None else None
    if kind is not None:
        typer.echo(f"lacal: note: {labels_path} is {kind}, so the {what} are read as multi-label (one sigmoid "
                   "output per label); pass --multi-label to say so and silence this note", err=True)
    return kind is not None


def refuse(options: dict, context=None) -> None:
    """Options that do not apply to a multi-label head (given: a truthy value)."""
    given = [flag for flag, value in options.items() if value]
    if given:
        raise OptionError(f"{', '.join(given)} do(es) not apply to multi-label heads yet", given[0])
    if context is not None and context.active:
        raise OptionError("multi-label commands do not run under torchrun yet; run them in one process", "torchrun")


def _names(classes, num_classes: int):
    from .workflows.inputs import class_names

    return class_names(classes, num_classes)


def _open_logits(paths, key, context=None):
    """Logits files, a folder or glob of shards (this rank's share under torchrun), their notes shown as warnings."""
    from .cli_render import warn
    from .workflows.inputs import Notes, open_logits

    notes = Notes()
    paths = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    source = open_logits(paths[0] if len(paths) == 1 else paths, key, context, notes=notes)
    for note in notes.warnings:
        warn(note)
    return source


def _labels(path, source, names, context=None):
    """The N x C label matrix of `source`'s rows (under torchrun, this rank's rows of the whole file)."""
    from .errors import InputDataError
    from .multilabel_data import read_label_matrix

    share = source.share
    if share is None:
        labels = read_label_matrix(path, source.num_classes, names)
        if labels.shape[0] != source.num_samples:
            raise InputDataError(f"holds {labels.shape[0]} label rows but {source.name} has {source.num_samples} "
                                 "rows", path)
        return labels
    failure = labels = None
    try:
        labels = read_label_matrix(path, source.num_classes, names)
        if labels.shape[0] != share.total_rows:
            raise InputDataError(f"holds {labels.shape[0]} label rows but the logits shards have {share.total_rows} "
                                 "rows", path)
        labels = labels[share.offset:share.offset + source.num_samples]
    except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
        failure = exc
    context.agree(failure)
    return labels


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}%"


# -------------------------------------------------------------------------------------------------------- fit-tau


def fit_tau(inputs, train_labels, priors, tau_range, metric: str, out, json_out, classes, smoothing, key, device,
            force, budget, quiet, context=None) -> None:
    from .calibration import Calibration
    from .cli_render import Progress as _Progress
    from .cli_render import console as _stdout_console
    from .cli_render import warn as _warn
    from .multilabel import fit_multilabel_tau
    from .workflows.inputs import provenance as _inputs
    from .multilabel_data import open_multilabel_priors
    from .write import check_output

    if metric not in ("balanced-error", "macro-f1"):
        raise OptionError(f"multi-label heads are fitted for balanced-error or macro-f1, not {metric}", "--metric")
    if len(inputs) < 2:
        raise OptionError(f"expected the logits and the labels files, got {len(inputs)} path(s)", "arguments")
    if out is not None:
        check_output(out, force, [*inputs, train_labels, priors, classes])
    source = _open_logits(inputs[:-1], key, context)
    names = _names(classes, source.num_classes)
    labels = _labels(inputs[-1], source, names, context)
    prior = open_multilabel_priors(train_labels, priors, source.num_classes, smoothing, names)
    names = names or prior.classes
    with _Progress(source.num_samples, "fit-tau", quiet or json_out) as progress:
        fit = fit_multilabel_tau(source, labels, prior, tau_range, metric, device, progress=progress,
                                 memory_budget=budget, context=context)
    if out is not None and (context is None or context.leader):
        calibration = Calibration.from_multilabel_fit(fit, prior, names,
                                                      _inputs(*inputs, train_labels, priors, classes))
        calibration.save(out, force, [*inputs, train_labels, priors, classes])
        typer.echo(f"lacal: wrote {out}", err=True)
    if json_out:
        typer.echo(json.dumps(fit.to_dict()))
    else:
        render_fit(fit, source.title, _stdout_console())
    if fit.before.labels_without_samples:
        missing = fit.before.labels_without_samples
        _warn(f"{len(missing)} label(s) lack positive or negative validation samples and are left out of the macro "
              f"figures: {missing[:20]}{' ...' if len(missing) > 20 else ''}")


def render_fit(fit, name, console) -> None:
    from rich.table import Table

    metric = "macro balanced error" if fit.metric == "balanced-error" else "macro-F1 (highest)"
    console.print(f"[bold]tau = {fit.tau:.4f}[/bold]  exact search over [{fit.tau_range[0]:g}, "
                  f"{fit.tau_range[1]:g}] for the {'lowest ' if fit.metric == 'balanced-error' else ''}{metric}, "
                  "one tau shared by every label")
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


# ---------------------------------------------------------------------------------------------------------- apply


def calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, required=True):
    """A multi-label Calibration: from a calibration file (which must be multi-label), or from --tau and the
    training priors."""
    import math

    from .calibration import Calibration
    from .multilabel_data import open_multilabel_priors
    from .workflows.inputs import calibration_for as _calibration_for

    if calibration is not None or tau is None:  # the file, or nothing: as for a softmax head
        loaded = _calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, None,
                                  required)
        if loaded is not None and not loaded.multi_label:
            raise MismatchError("is a single-label (softmax) calibration, but --multi-label was given", calibration)
        return loaded
    if not math.isfinite(tau):
        raise OptionError(f"tau must be a finite number, got {tau}", "--tau")
    prior = open_multilabel_priors(train_labels, priors, num_classes, smoothing, names)
    return Calibration(tau=tau, priors=prior.priors, counts=prior.positives, class_names=names or prior.classes,
                       smoothing=prior.smoothing, multi_label=True, train_samples=prior.num_samples)


def is_multilabel_calibration(path) -> bool:
    """Whether a calibration file given to apply or report is multi-label (a bad file is reported later)."""
    if path is None:
        return False
    try:
        return bool(json.loads(Path(path).read_text(encoding="utf-8")).get("multi_label"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def apply(source_path, out, calibration, tau, train_labels, priors, top_k, classes, smoothing, key, device, force,
          budget, quiet, checkpoint_options) -> None:
    """Adjusted logits f - tau * log(pi / (1 - pi)), a CSV of predicted labels, or a patched checkpoint."""
    from .checkpoints import is_checkpoint
    from .cli_render import Progress as _Progress
    from .multilabel_data import write_multilabel_predictions
    from .scoring import iter_adjusted
    from .write import PREDICTION_SUFFIXES, check_output, write_logits

    if is_checkpoint(source_path, key):
        from .cli_render import patched
        from .workflows.checkpoint import patch_checkpoint

        fitted = calibration_for(calibration, tau, train_labels, priors, None, smoothing, None)
        patched(patch_checkpoint(source_path, fitted, calibration_file=calibration, out=out,
                                 head=checkpoint_options["--head"], add_bias=checkpoint_options["--add-bias"],
                                 in_place=checkpoint_options["--in-place"], link=checkpoint_options["--link"],
                                 verify_features=checkpoint_options["--verify-features"], class_names=classes,
                                 smoothing=smoothing, key=key, device=device, memory_budget=budget, force=force))
        return
    for flag, given in checkpoint_options.items():
        if given:
            raise OptionError(f"{source_path} is a logits file, and {flag} is for checkpoints", flag)
    if out is None:
        raise OptionError("give --out FILE for the adjusted logits or predictions", "--out")
    if out.suffix == "":
        raise OptionError("multi-label apply writes one file yet; give --out FILE", "--out")
    inputs = [source_path, calibration, train_labels, priors, classes]
    check_output(out, force, inputs)
    source = _open_logits(source_path, key)
    names = _names(classes, source.num_classes)
    fitted = calibration_for(calibration, tau, train_labels, priors, source.num_classes, smoothing, names)
    names = names or fitted.class_names
    predictions = out.suffix.lower() in PREDICTION_SUFFIXES
    if predictions and top_k > source.num_classes:
        raise OptionError(f"--top-k {top_k} is more than the {source.num_classes} labels", "--top-k")
    with _Progress(source.num_samples, "apply", quiet) as progress:
        blocks = iter_adjusted(source, fitted.offsets, device, keep_dtype=not predictions, progress=progress,
                               memory_budget=budget)
        if predictions:
            write_multilabel_predictions(out, blocks, names, top_k, force, inputs)
        else:
            for note in write_logits(out, blocks, source.shape, source.dtype_name, force, inputs):
                typer.echo(f"lacal: warning: {note}", err=True)
    typer.echo(f"lacal: wrote {out} ({source.num_samples} samples, {source.num_classes} labels, tau = "
               f"{fitted.tau:.4f})", err=True)


# --------------------------------------------------------------------------------------------------------- report


def report(inputs, calibration, tau, train_labels, priors, sort, limit, json_out, classes, smoothing, key, device,
           budget, quiet, compare, test_logits, test_labels, metric, context=None) -> None:
    from .cli_render import Progress as _Progress
    from .cli_render import console as _stdout_console
    from .cli_render import warn as _warn
    from .multilabel import evaluate_multilabel
    from .multilabel_data import open_multilabel_priors
    from .multilabel_report import MultiLabelReport

    if len(inputs) < 2:
        raise OptionError(f"expected the logits and the labels files, got {len(inputs)} path(s)", "arguments")
    source = _open_logits(inputs[:-1], key, context)
    names = _names(classes, source.num_classes)
    labels = _labels(inputs[-1], source, names, context)
    if compare:
        _compare(source, labels, names, calibration, tau, train_labels, priors, smoothing, test_logits, test_labels,
                 key, device, budget, json_out, quiet, metric)
        return
    if test_logits or test_labels:
        raise OptionError("--test-logits and --test-labels go with --compare", "--compare")
    fitted = calibration_for(calibration, tau, train_labels, priors, source.num_classes, smoothing, names, False)
    counts = fitted.counts if fitted is not None else None
    if fitted is None and (train_labels is not None or priors is not None):
        counts = open_multilabel_priors(train_labels, priors, source.num_classes, smoothing, names).positives
    names = names or (fitted.class_names if fitted is not None else None)
    offsets = [np.zeros(source.num_classes)] + ([fitted.offsets] if fitted is not None else [])
    with _Progress(source.num_samples, "report", quiet or json_out) as progress:
        evaluations = evaluate_multilabel(source, labels, offsets, device, progress=progress, memory_budget=budget,
                                          context=context)
    result = MultiLabelReport(evaluations[0], evaluations[1] if fitted is not None else None, counts, names,
                              None if fitted is None else fitted.tau)
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    else:
        render_report(result, sort, source.title, limit, _stdout_console())
    if counts is None:
        _warn("no training positives given (--train-labels, or --priors or --calibration), so labels are not "
              "grouped into many/medium/few")
    missing = result.main.labels_without_samples
    if missing:
        _warn(f"{len(missing)} label(s) lack positive or negative samples in {source.name} and are left out of the "
              f"macro figures: {missing[:20]}{' ...' if len(missing) > 20 else ''}")


def render_report(report, sort: str, name, limit, console) -> None:
    from rich.table import Table

    from .metrics import GROUPS, shot_groups

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
        row = [str(k)] + ([report.class_names[k]] if named else []) + [
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


def _compare(source, labels, names, calibration, tau, train_labels, priors, smoothing, test_logits, test_labels,
             key, device, budget, json_out, quiet, metric) -> None:
    from rich.table import Table

    from .cli_render import Progress as _Progress
    from .cli_render import console as _stdout_console
    from .cli_render import warn as _warn
    from .multilabel_data import open_multilabel_priors
    from .multilabel_report import compare_multilabel

    if calibration is not None or tau is not None:
        raise OptionError("--compare fits every method itself; give the training priors (--train-labels or "
                          "--priors), not --calibration or --tau", "--compare")
    prior = open_multilabel_priors(train_labels, priors, source.num_classes, smoothing, names)
    if (test_logits is None) != (test_labels is None):
        raise OptionError("give --test-labels together with --test-logits", "--test-labels")
    evaluation_source = evaluation_labels = None
    if test_logits is not None:
        evaluation_source = _open_logits(test_logits, key)
        if evaluation_source.num_classes != source.num_classes:
            raise MismatchError(f"has {evaluation_source.num_classes} labels but the validation logits have "
                                f"{source.num_classes}", test_logits)
        evaluation_labels = _labels(test_labels, evaluation_source, names)
    with _Progress(source.num_samples, "compare", quiet or json_out) as progress:
        results = compare_multilabel(source, labels, prior, evaluation_source, evaluation_labels, metric, device,
                                     budget, progress)
    measured = evaluation_source.name if evaluation_source is not None else source.name
    if json_out:
        typer.echo(json.dumps({"multi_label": True, "fitted_on": source.name, "measured_on": measured,
                               "methods": [r.to_dict(prior.positives) for r in results]}))
        return
    table = Table(title=f"multi-label methods fitted on {source.name}, measured on {measured}")
    columns = ("method", "tau", "macro balanced error", "macro-F1", "micro-F1", "many", "medium", "few")
    for column_name in columns:
        table.add_column(column_name, justify="left" if column_name == "method" else "right")
    for result in results:
        row = result.to_dict(prior.positives)
        table.add_row(row["method"], "-" if row["tau"] is None else f"{row['tau']:.3f}",
                      *(_percent(row[k]) for k in ("balanced_error", "macro_f1", "micro_f1", "many", "medium",
                                                   "few")))
    table.caption = "many / medium / few: macro balanced error of labels with > 100, 20 to 100, < 20 training positives"
    _stdout_console().print(table)
    if evaluation_source is None:
        _warn("every method was fitted and measured on the same data; give --test-logits and --test-labels for "
              "an honest comparison (per-label thresholds look best on the data they were fitted on)")


# --------------------------------------------------------------------------------------------------------- priors


def priors(train_labels, out, num_classes, classes, smoothing, json_out, force) -> None:
    from rich.table import Table

    from .cli_render import console as _stdout_console
    from .load import read_classes, sha256_file
    from .multilabel import multilabel_priors_from_labels
    from .multilabel_data import read_label_matrix
    from .write import check_output, write_text

    names = read_classes(classes) if classes is not None else None
    if out is not None:
        check_output(out, force, [train_labels, classes])
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise MismatchError(f"lists {len(names)} label names but --num-classes is {num_classes}", classes)
    matrix = read_label_matrix(train_labels, num_classes or (len(names) if names else None), names)
    prior = multilabel_priors_from_labels(matrix, smoothing, names, {"path": str(train_labels),
                                                                     "sha256": sha256_file(train_labels)},
                                          str(train_labels))
    if out is not None:
        write_text(out, json.dumps(prior.to_dict(), indent=2) + "\n", force, [train_labels, classes])
        typer.echo(f"lacal: wrote {out}", err=True)
    if json_out:
        typer.echo(json.dumps(prior.to_dict()))
    elif out is None:
        table = Table(title=f"Multi-label priors from {train_labels} ({prior.num_samples} samples, "
                            f"{prior.num_classes} labels)")
        for column in ("label", "name", "positives", "prior", "log(pi / (1 - pi))"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for k in range(prior.num_classes):
            table.add_row(str(k), names[k] if names else "", str(int(prior.positives[k])),
                          f"{prior.priors[k]:.6f}", f"{prior.log_odds[k]:.4f}")
        _stdout_console().print(table)

"""The `lacal` command line: a thin shell over the library. Results go to stdout, warnings and errors to stderr.

torch and the numeric modules are imported inside the commands, so `lacal --help` stays quick.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import EXIT_CODES, CheckpointError, LacalError, OptionError

EXIT_CODE_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."

app = typer.Typer(
    name="lacal",
    help="Post-hoc logit adjustment for classifiers trained on long-tailed data: predict argmax_y f_y(x) - tau * "
         "log(pi_y), with pi the training label prior and tau fitted on validation data. Start with `lacal demo`.",
    epilog=EXIT_CODE_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Search(str, Enum):
    exact = "exact"
    grid = "grid"


class Metric(str, Enum):
    balanced_error = "balanced-error"
    worst_class_error = "worst-class-error"
    macro_f1 = "macro-f1"


class Method(str, Enum):
    logit_adjustment = "logit-adjustment"
    tau_norm = "tau-norm"


class Calibrate(str, Enum):
    temperature = "temperature"
    bias = "bias"


class SortBy(str, Enum):
    class_ = "class"
    error = "error"
    count = "count"


# -------------------------------------------------------------------------------------------------- shared options

DeviceOpt = Annotated[str, typer.Option("--device", help="Where to compute: auto (CUDA when present), cpu, cuda, "
                                                         "cuda:N or mps.")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Array or tensor name inside a .npz, .safetensors or "
                                                             ".pt file that holds several.")]
ClassesOpt = Annotated[Optional[Path], typer.Option("--classes", help="Class names in id order: one per line, or a "
                                                                      "JSON list. Labels may then be names.")]
LabelColumnOpt = Annotated[Optional[str], typer.Option("--label-column", help="Column of a CSV labels file: a header "
                                                                              "name or a 0-based index.")]
TrainLabelsOpt = Annotated[Optional[Path], typer.Option("--train-labels", help="Training labels (.npy, .txt, .csv); "
                                                                               "their class frequencies are pi.")]
PriorsOpt = Annotated[Optional[Path], typer.Option("--priors", help="Priors file: the JSON `lacal priors` writes, or "
                                                                    "a vector of counts or probabilities (.json list,"
                                                                    " .npy, .txt).")]
SmoothingOpt = Annotated[float, typer.Option("--smoothing", min=0.0, help="Add ALPHA to every training count (needed "
                                                                           "when a class has no training samples).",
                                             metavar="ALPHA")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
TargetOpt = Annotated[str, typer.Option("--target-priors", help="The class priors to adjust toward: uniform (balanced "
                                        "error), a priors file (like --priors), or em: estimated from "
                                        "--target-logits by EM (label shift).", metavar="uniform|FILE|em")]
TargetLogitsOpt = Annotated[Optional[Path], typer.Option("--target-logits", help="Unlabeled logits of the target "
                                                         "data, for --target-priors em.")]
BudgetOpt = Annotated[str, typer.Option("--memory-budget", help="Working memory for a pass over the logits (for "
                                        "example 512MB or 4GB); data larger than this is streamed in blocks.",
                                        metavar="SIZE")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
MultiLabelOpt = Annotated[bool, typer.Option("--multi-label", help="A multi-label (sigmoid) head: labels are an N x C "
                                             "0/1 matrix (.npy, a CSV of 0/1 columns) or a .txt of comma-separated "
                                             "label ids per line, and every label k is adjusted by -tau * log(pi_k / "
                                             "(1 - pi_k)) with one shared tau. Found by itself when the labels file "
                                             "can only be multi-label.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="With --features, in place of a logits "
                                                       "file: a checkpoint (.safetensors, .pt/.pth/.bin or a Hugging "
                                                       "Face folder) whose classifier head turns the features into "
                                                       "logits.")]
FeaturesOpt = Annotated[Optional[Path], typer.Option("--features", help="Penultimate-layer features (N x D) for "
                                                     "--checkpoint, in any of the logits formats.")]
HeadOpt = Annotated[Optional[str], typer.Option("--head", help="The classifier layer's name in the checkpoint (for "
                                                "example fc or head.fc); for an ONNX model, the name of its logits "
                                                "output. Found by shape and usual names when omitted.",
                                                metavar="NAME")]


def _handled(command):
    """Turn a LacalError (or another rank's failure under torchrun) into one line on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .distributed import RankFailed

        try:
            return command(*args, **kwargs)
        except LacalError as error:
            rank = f"rank {_TORCHRUN.rank}: " if _TORCHRUN is not None and _TORCHRUN.active else ""
            typer.echo(f"lacal: error: {rank}{error.message}", err=True)
            raise typer.Exit(error.exit_code) from None
        except RankFailed as failure:
            typer.echo(f"lacal: error: rank {failure.rank}: {failure.message}", err=True)
            raise typer.Exit(failure.exit_code) from None

    return wrapper


_TORCHRUN = None  # the process group, once joined (only under torchrun)


def _context(device: str):
    """The distributed.Context for this command: a single process, or this rank of a torchrun job (joined once;
    ranks other than 0 print nothing)."""
    global _TORCHRUN
    from .distributed import Context, join, launched_by_torchrun

    if not launched_by_torchrun():
        from .device import resolve_device

        return Context(device=resolve_device(device))
    if _TORCHRUN is None:
        import atexit
        import os

        _TORCHRUN = join(device)
        atexit.register(_TORCHRUN.close)
        if not _TORCHRUN.leader:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    return _TORCHRUN


def _not_under_torchrun(context, what: str) -> None:
    if context.active:
        raise OptionError(f"{what} does not run under torchrun yet; run it in one process", "torchrun")


class _Share:
    """Which shards of the whole input this rank holds, and where its rows start."""

    def __init__(self, indices, total_shards: int, offset: int, total_rows: int):
        self.indices, self.total_shards, self.offset, self.total_rows = indices, total_shards, offset, total_rows


def _warn(message: str) -> None:
    typer.echo(f"lacal: warning: {message}", err=True)


def _stdout_console():
    from rich.console import Console

    return Console(highlight=False)


def _parse_range(text: str) -> tuple[float, float]:
    from .search import check_tau_range

    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise OptionError(f"expected LO,HI (two numbers and a comma), got {text!r}", "--tau-range")
    try:
        values = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise OptionError(f"expected LO,HI (two numbers and a comma), got {text!r}", "--tau-range") from None
    return check_tau_range(values)


def _open_logits(paths, key: Optional[str], context=None, what: str = "logits"):
    """One logits file, folder or glob of shards; or several files read one after another. Under torchrun, this
    rank's contiguous share of all the shards."""
    from .load import concat_sources, read_logits

    paths = [paths] if isinstance(paths, Path) else list(paths)
    if context is not None and context.active:
        return _open_share(paths, key, context, what)
    sources = [read_logits(path, key, what) for path in paths]
    source = sources[0] if len(sources) == 1 else concat_sources(sources, f"{paths[0]} (+{len(paths) - 1} more)")
    for note in source.notes:
        _warn(note)
    return source


def _open_share(paths, key, context, what):
    from .distributed import my_share
    from .errors import InputDataError
    from .load import concat_sources, read_logits, shard_paths

    failure = source = None
    try:
        files = [shard for path in paths for shard in shard_paths(path)]
        share = my_share(len(files), context)
        if len(share) == 0:
            raise OptionError(f"{len(files)} shard file(s) for {context.world} ranks: every rank needs at least "
                              "one; split the data into more shards", "torchrun")
        parts = [read_logits(files[k], key, what) for k in share]
        source = parts[0] if len(parts) == 1 else concat_sources(parts, f"{files[share[0]]} (+{len(parts) - 1})")
    except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
        failure = exc
    context.agree(failure)
    shapes = context.gather((source.num_samples, (tuple(source.shape[1:]), source.dtype_name)))
    if len({shape for _, shape in shapes}) > 1:
        context.agree(InputDataError("shards must match, but their shapes and dtypes differ across ranks: "
                                     f"{sorted({s for _, s in shapes})}", str(paths[0])))
    offset = sum(rows for rows, _ in shapes[:context.rank])
    source.share = _Share(list(share), len(files), offset, sum(rows for rows, _ in shapes))
    source.title = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
    for note in source.notes:
        _warn(note)
    return source


SIZE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12, "k": 1 << 10,
              "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "tib": 1 << 40}


def _parse_size(text: str) -> int:
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) * SIZE_UNITS[unit] < 10 ** 6:
        raise OptionError(f"expected a size of at least 1MB such as 512MB or 4GB, got {text!r}", "--memory-budget")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


class _Progress:
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

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), Rate(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        self.bar.update(self.task, completed=done)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _open_labels(path: Path, source, classes, column):
    from .load import read_labels

    share = getattr(source, "share", None)
    if share is not None:
        context = _TORCHRUN
        failure = labels = None
        try:
            share.num_classes = source.num_classes
            labels = _share_labels(path, share, source.num_samples, classes, column)
            _check_labels(labels, source, path)
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
        context.agree(failure)
        return labels
    labels = read_labels(path, classes, column)
    _check_labels(labels, source, path)
    return labels


def _check_labels(labels, source, path):
    from .errors import InputDataError
    from .priors import check_labels

    if labels.shape[0] != source.num_samples:
        raise InputDataError(f"holds {labels.shape[0]} labels but {source.name} has {source.num_samples} rows", path)
    check_labels(labels, source.num_classes, str(path))
    return labels


def _share_labels(path, share, rows: int, classes, column):
    """This rank's labels: its shards of a labels folder or glob with as many shards as the logits, else its rows
    of one labels file."""
    import numpy as np

    from .errors import InputDataError
    from .load import read_labels, shard_paths

    from .priors import check_labels

    files = shard_paths(path, (".npy", ".txt", ".csv"))
    if len(files) == share.total_shards and len(files) > 1:
        parts = []
        for k in share.indices:
            part = read_labels(files[k], classes, column)
            check_labels(part, share.num_classes, str(files[k]))  # entry numbers within that shard
            parts.append(part)
        return np.concatenate(parts)
    labels = read_labels(path, classes, column)
    if labels.shape[0] != share.total_rows:
        raise InputDataError(f"holds {labels.shape[0]} labels but the logits shards have {share.total_rows} rows",
                             path)
    check_labels(labels, share.num_classes, str(path))  # entry numbers within the whole file
    return labels[share.offset:share.offset + rows]


def _class_names(classes_path: Optional[Path], num_classes: int):
    from .errors import MismatchError
    from .load import read_classes

    if classes_path is None:
        return None
    names = read_classes(classes_path)
    if len(names) != num_classes:
        raise MismatchError(f"lists {len(names)} class names but the logits have {num_classes} classes", classes_path)
    return names


def _open_priors(train_labels, priors_path, num_classes, smoothing, classes, column=None, required=True):
    from .priors import check_num_classes, read_priors, read_train_labels

    if train_labels is not None and priors_path is not None:
        raise OptionError("give --train-labels or --priors, not both", "--priors")
    if train_labels is not None:
        return read_train_labels(train_labels, num_classes, smoothing, classes, column)
    if priors_path is not None:
        priors = read_priors(priors_path, smoothing, classes)
        check_num_classes(priors, num_classes, "the logits", str(priors_path))
        return priors
    if required:
        raise OptionError("the training priors are needed: give --train-labels FILE or --priors FILE",
                          "--train-labels")
    return None


def _inputs(*paths) -> dict:
    from .load import sha256_file

    return {Path(p).name or str(p): {"path": str(p), "sha256": sha256_file(p) if Path(p).is_file() else None}
            for p in paths if p is not None}


def _logits_input(inputs: list[Path], checkpoint, features, head, key, classes, device, adjusting: bool,
                  context=None):
    """The logits source and the labels path: from LOGITS LABELS, or from LABELS with --checkpoint and --features
    (logits = features @ W.T + b by the checkpoint's head). Also returns class names the checkpoint knows.
    `adjusting`: the command will adjust these logits, so a checkpoint patched already deserves a warning."""
    if (checkpoint is None) != (features is None):
        raise OptionError("--checkpoint and --features go together", "--checkpoint" if checkpoint is None
                          else "--features")
    if checkpoint is None:
        if len(inputs) < 2:
            raise OptionError(f"expected the logits and the labels files, got {len(inputs)} path(s); or give only "
                              "the labels with --checkpoint and --features", "arguments")
        return _open_logits(inputs[:-1], key, context), inputs[-1], None
    from .checkpoints import find_heads, open_checkpoint
    from .load import read_classes
    from .scoring import head_logits

    if len(inputs) != 1:
        raise OptionError(f"with --checkpoint and --features, give only the labels file, got {len(inputs)} paths",
                          "arguments")  # more would be logits shards
    model = open_checkpoint(checkpoint)
    if model.patch is not None and adjusting:
        _warn(f"{checkpoint} already carries a lacal patch (tau = {model.patch.get('tau')}), so its logits are "
              "adjusted already; use the original checkpoint")
    names = read_classes(classes) if classes is not None else model.class_names
    layers = find_heads(model, len(names) if names else None, head)
    if len(layers) > 1:
        raise CheckpointError(f"the model averages {' and '.join(repr(h.name) for h in layers)}, which read "
                              "different features; give the model's logits instead of --checkpoint and --features",
                              checkpoint)
    layer = layers[0]
    features_source = _open_logits([features], key, context, what="features")
    source = head_logits(features_source, model.tensor(layer.weight), model.tensor(layer.bias) if layer.bias else None,
                         device, f"{features} through {checkpoint} ({layer.name})")
    source.share = getattr(features_source, "share", None)
    return source, inputs[0], model.class_names


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}%"


# --------------------------------------------------------------------------------------------------------- priors


@app.command("priors")
@_handled
def priors_command(
    train_labels: Annotated[Optional[Path], typer.Argument(help="Training labels: .npy, .txt (one per line) or "
                                                                ".csv.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the counts and priors as JSON here.")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=2, help="Number of classes (default: "
                                                       "from --classes, else the largest label + 1). Give it so that "
                                                       "a class missing from the labels is caught.")] = None,
    classes: ClassesOpt = None,
    label_column: LabelColumnOpt = None,
    smoothing: SmoothingOpt = 0.0,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    em: Annotated[Optional[Path], typer.Option("--em", help="Instead: estimate the class priors of unlabeled target "
                                                            "data by EM from the model's logits on it (label "
                                                            "shift), given the training priors (--train-labels or "
                                                            "--priors).", metavar="UNLABELED_LOGITS")] = None,
    train_labels_option: Annotated[Optional[Path], typer.Option("--train-labels", help="With --em: the training "
                                                                                       "labels.")] = None,
    priors_option: Annotated[Optional[Path], typer.Option("--priors", help="With --em: the training priors "
                                                                           "file.")] = None,
    tolerance: Annotated[float, typer.Option("--em-tolerance", min=0.0, help="With --em: stop when no prior moves "
                                                                             "more than this.")] = 1e-8,
    max_iterations: Annotated[int, typer.Option("--em-max-iter", min=1, help="With --em: the iteration "
                                                                            "cap.")] = 1000,
    key: KeyOpt = None,
    device: DeviceOpt = "auto",
    multi_label: MultiLabelOpt = False,
):
    """Count training labels and write the class priors pi (for --priors); or, with --em, estimate target priors q
    (for --target-priors). With --multi-label, the positives per label and the number of samples."""
    from . import multilabel_cli
    from .errors import MismatchError
    from .load import read_classes, read_labels, sha256_file
    from .priors import priors_from_labels

    if em is None and multilabel_cli.wanted(multi_label, train_labels, "training labels"):
        multilabel_cli.refuse({"--label-column": label_column, "--train-labels": train_labels_option,
                               "--priors": priors_option})
        multilabel_cli.priors(train_labels, out, num_classes, classes, smoothing, json_out, force)
        return
    names = read_classes(classes) if classes is not None else None
    if em is not None:
        _priors_by_em(em, train_labels or train_labels_option, priors_option, names, label_column, smoothing, out,
                      force, json_out, tolerance, max_iterations, key, device)
        return
    if train_labels is None:
        raise OptionError("give the training labels file (or --em UNLABELED_LOGITS with --train-labels or "
                          "--priors)", "arguments")
    if out is not None:
        from .write import check_output

        check_output(out, force, [train_labels, classes])
    labels = read_labels(train_labels, names, label_column)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise MismatchError(f"lists {len(names)} class names but --num-classes is {num_classes}", classes)
    count = num_classes or (len(names) if names else int(labels.max()) + 1)
    priors = priors_from_labels(labels, count, smoothing, names,
                                {"path": str(train_labels), "sha256": sha256_file(train_labels)}, str(train_labels))
    if out is not None:
        from .write import write_text

        write_text(out, json.dumps(priors.to_dict(), indent=2) + "\n", force, [train_labels, classes])
        typer.echo(f"lacal: wrote {out}", err=True)
    if json_out:
        typer.echo(json.dumps(priors.to_dict()))
    elif out is None:
        from rich.table import Table

        table = Table(title=f"Priors from {train_labels} ({labels.shape[0]} labels, {count} classes)")
        for column in ("class", "name", "count", "prior"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for c in range(count):
            table.add_row(str(c), names[c] if names else "", str(int(priors.counts[c])), f"{priors.priors[c]:.6f}")
        _stdout_console().print(table)


def _priors_by_em(em, train_labels, priors, names, column, smoothing, out, force, json_out, tolerance,
                  max_iterations, key, device):
    from rich.table import Table

    from .priors import Priors

    context = _context(device)
    compute = context.device
    if out is not None:
        from .write import check_output

        check_output(out, force, [em, train_labels, priors])
    classes = _open_logits(em, key, context).num_classes
    prior = _open_priors(train_labels, priors, classes, smoothing, names, column)
    q, info = _estimate(em, prior, classes, key, compute, None, json_out, tolerance, max_iterations, context)
    if out is not None and context.leader:
        from .write import write_text

        record = Priors(priors=q, classes=names or prior.classes, source=info).to_dict()
        write_text(out, json.dumps(record, indent=2) + "\n", force, [em, train_labels, priors])
        typer.echo(f"lacal: wrote {out}", err=True)
    if json_out:
        typer.echo(json.dumps({"priors": [float(v) for v in q], **{k: v for k, v in info.items() if k != "kind"}}))
        return
    console = _stdout_console()
    console.print(f"EM on {em}: {info['iterations']} iterations, {'converged' if info['converged'] else 'NOT converged'}"
                  f" (last change {info['last_change']:.2g}), log-likelihood {info['log_likelihood']:.6g}")
    table = Table(title="estimated target priors")
    for column_name in ("class", "name", "training prior", "target prior", "ratio"):
        table.add_column(column_name, justify="left" if column_name == "name" else "right")
    labels = names or prior.classes
    for c in range(classes):
        table.add_row(str(c), labels[c] if labels else "", f"{prior.priors[c]:.5f}", f"{q[c]:.5f}",
                      f"{q[c] / prior.priors[c]:.3g}")
    console.print(table)


# -------------------------------------------------------------------------------------------------------- fit-tau


@app.command("fit-tau")
@_handled
def fit_tau_command(
    inputs: Annotated[list[Path], typer.Argument(help="VAL_LOGITS VAL_LABELS: validation logits (N x C: .npy, .npz, "
                                                      ".safetensors, .pt/.pth or .csv) and labels (N: .npy, .txt or "
                                                      ".csv). Only VAL_LABELS with --checkpoint and --features.",
                                                 metavar="[VAL_LOGITS] VAL_LABELS", show_default=False)],
    train_labels: TrainLabelsOpt = None,
    priors: PriorsOpt = None,
    tau_range: Annotated[Optional[str], typer.Option("--tau-range", help="Search tau in LO,HI (default 0,4; 0,2 "
                                                                         "for tau-norm).", metavar="LO,HI")] = None,
    search: Annotated[Search, typer.Option("--search", help="exact: a true minimiser over the whole range; grid: the "
                                                            "best of --grid-size evenly spaced values.")
                      ] = Search.exact,
    grid_size: Annotated[Optional[int], typer.Option("--grid-size", min=2, max=10_000,
                                                     help="Grid points for --search grid (default 401; 21 for "
                                                          "tau-norm, whose search is a grid).")] = None,
    metric: Annotated[Metric, typer.Option("--metric", help="What tau minimises on the validation set (macro-f1, "
                                                            "maximised, is for --multi-label).")
                      ] = Metric.balanced_error,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write a calibration file (JSON) for `lacal apply`.")
                   ] = None,
    json_out: JsonOpt = False,
    classes: ClassesOpt = None,
    label_column: LabelColumnOpt = None,
    smoothing: SmoothingOpt = 0.0,
    key: KeyOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    checkpoint: CheckpointOpt = None,
    features: FeaturesOpt = None,
    head: HeadOpt = None,
    memory_budget: BudgetOpt = "2GiB",
    quiet: QuietOpt = False,
    target_priors: TargetOpt = "uniform",
    target_logits: TargetLogitsOpt = None,
    calibrate: Annotated[Optional[Calibrate], typer.Option(
        "--calibrate", help="Then calibrate the probabilities of the adjusted logits: temperature (T minimising the "
                            "validation NLL; keeps every prediction) or bias (a per-class bias and T minimising the "
                            "class-balanced cross-entropy, convex in the bias for fixed T, with an L2 penalty "
                            "--bias-l2).")] = None,
    bias_l2: Annotated[float, typer.Option("--bias-l2", min=0.0, help="The L2 weight of --calibrate bias: the "
                                                                      "penalty is l2 / 2 * mean(bias^2).")] = 1e-2,
    method: Annotated[Method, typer.Option("--method", help="logit-adjustment (f - tau * log(pi)), or tau-norm "
                                                            "(w_y . phi / ||w_y||^tau, bias dropped; Kang et al. "
                                                            "2020), which needs --checkpoint and --features.")
                      ] = None,
    multi_label: MultiLabelOpt = False,
):
    """Find the tau that minimises the validation balanced error of argmax f(x) - tau * log(pi).

    VAL_LOGITS may be a folder or a quoted glob of shards, or several files (all paths but the last)."""
    from .calibration import Calibration
    from .search import fit_tau

    method = method or Method.logit_adjustment
    tau_norm = method == Method.tau_norm
    low_high = _parse_range(tau_range or ("0,2" if tau_norm else "0,4"))
    grid_size = grid_size or (21 if tau_norm else 401)
    budget = _parse_size(memory_budget)
    context = _context(device)
    compute = context.device
    from . import multilabel_cli

    if multilabel_cli.wanted(multi_label, inputs[-1] if checkpoint is None and inputs else None):
        multilabel_cli.refuse({"--checkpoint": checkpoint, "--features": features, "--method": tau_norm,
                               "--search grid": search == Search.grid, "--calibrate": calibrate,
                               "--label-column": label_column, "--target-logits": target_logits,
                               "--target-priors": target_priors.strip().lower() != "uniform"})
        multilabel_cli.fit_tau(inputs, train_labels, priors, low_high, metric.value, out, json_out, classes,
                               smoothing, key, compute, force, budget, quiet, context)
        return
    if tau_norm:
        _not_under_torchrun(context, "--method tau-norm")
        _fit_tau_norm(inputs, checkpoint, features, head, key, classes, label_column, low_high, grid_size,
                      metric.value, compute, budget, json_out, quiet, out, calibrate, target_priors, target_logits,
                      train_labels, priors, smoothing)
        return
    if out is not None:
        from .write import check_output

        check_output(out, force, [*inputs, train_labels, priors, checkpoint, features, classes, target_logits])
    source, val_labels, known_names = _logits_input(inputs, checkpoint, features, head, key, classes, compute, True,
                                                    context)
    names = _class_names(classes, source.num_classes) or known_names
    labels = _open_labels(val_labels, source, names, label_column)
    prior = _open_priors(train_labels, priors, source.num_classes, smoothing, names, label_column)
    names = names or prior.classes
    q, target_info = _target_priors(target_priors, target_logits, prior, source.num_classes, key, compute, budget,
                                    quiet or json_out, context)
    with _Progress(source.num_samples, "fit-tau", quiet or json_out) as progress:
        fit = fit_tau(source, labels, prior, low_high, search.value, metric.value, grid_size, compute,
                      progress=progress, memory_budget=budget, context=context)
    probability = None
    if calibrate is not None:
        from .adjust import offsets
        from .calibrate import fit_probabilities

        probability = fit_probabilities(calibrate.value, source, labels, offsets(prior, fit.tau), bias_l2,
                                        device=compute, memory_budget=budget, context=context)
        if not probability.converged:
            _warn(f"the {calibrate.value} fit {probability.message}")
        if not probability.moved:
            _warn(f"the {calibrate.value} fit did not move: T = {probability.temperature:.4g}"
                  + ("" if probability.bias is None else ", bias within 1e-3 of 0")
                  + "; the adjusted logits were already calibrated on this validation set")
    result = fit.to_dict()
    result["target_priors"] = None if q is None else {**(target_info or {}), "priors": [float(v) for v in q]}
    result["calibration"] = None if probability is None else probability.to_dict()
    calibrated = None
    if probability is not None and probability.bias is not None:  # a bias moves predictions: score them
        from .adjust import offsets
        from .metrics import ClassEvaluation
        from .scoring import score_pass

        shift = offsets(prior, fit.tau) + probability.temperature * probability.bias
        stats = score_pass(source, labels, [shift], compute, memory_budget=budget)
        calibrated = ClassEvaluation(context.sum(stats.support), context.sum(stats.correct[0]))
        for name_, value in calibrated.to_dict().items():
            result[f"{name_}_calibrated"] = value
    if out is not None and context.leader:
        calibration = Calibration.from_fit(fit, prior, names, _inputs(*inputs, train_labels, priors, classes,
                                                                      checkpoint, features, target_logits),
                                           q, target_info, probability)
        calibration.save(out, force, [*inputs, train_labels, priors, checkpoint, features, classes, target_logits])
        typer.echo(f"lacal: wrote {out}", err=True)
    if json_out:
        typer.echo(json.dumps(result))
        return
    _render_fit(fit, getattr(source, "title", source.name), target_info, probability, calibrated)


def _fit_tau_norm(inputs, checkpoint, features, head, key, classes, column, low_high, grid_size, metric, compute,
                  budget, json_out, quiet, out, calibrate, target_priors, target_logits, train_labels, priors,
                  smoothing) -> None:
    from rich.table import Table

    from .checkpoints import find_head, open_checkpoint
    from .load import read_logits, read_classes
    from .taunorm import fit_tau_norm

    if checkpoint is None or features is None:
        raise OptionError("tau-norm rescales the head's weight rows, so it needs --checkpoint and --features",
                          "--method")
    if out is not None or calibrate is not None or target_priors.strip().lower() != "uniform" or target_logits:
        raise OptionError("--out, --calibrate and --target-priors go with --method logit-adjustment; tau-norm is "
                          "fitted here for comparison (see also report --compare)", "--method")
    if train_labels is not None or priors is not None or smoothing:
        raise OptionError("tau-norm uses no training priors; leave out --train-labels, --priors and --smoothing",
                          "--method")
    if len(inputs) != 1:
        raise OptionError(f"with --checkpoint and --features, give only the labels file, got {len(inputs)} paths",
                          "arguments")
    model = open_checkpoint(checkpoint)
    names = read_classes(classes) if classes is not None else model.class_names
    layer = find_head(model, len(names) if names else None, head)
    source = read_logits(features, key, what="features")
    labels = _open_labels(inputs[0], _Columns(source.num_samples, layer.num_classes, source.name), names, column)
    with _Progress(source.num_samples, "fit-tau", quiet or json_out) as progress:
        fit = fit_tau_norm(source, labels, model.tensor(layer.weight), low_high, grid_size, metric, compute,
                           progress=progress, memory_budget=budget)
    if json_out:
        typer.echo(json.dumps(fit.to_dict()))
        return
    console = _stdout_console()
    console.print(f"[bold]tau = {fit.tau:.4f}[/bold]  tau-normalisation of {layer.name!r}: the best of {grid_size} "
                  f"values in [{low_high[0]:g}, {low_high[1]:g}] for the lowest {metric.replace('-', ' ')}")
    table = Table(title=f"{features} through {checkpoint}: {fit.before.num_samples} samples, "
                        f"{fit.before.num_classes} classes")
    table.add_column("validation")
    for header in ("tau=0 (no bias)", f"after (tau={fit.tau:.3f})"):
        table.add_column(header, justify="right")
    for label, attribute in (("balanced error", "balanced_error"), ("worst-class error", "worst_class_error"),
                             ("accuracy", "accuracy")):
        table.add_row(label, *(_percent(getattr(e, attribute)) for e in (fit.before, fit.after)))
    console.print(table)


class _Columns:
    """The shape facts `_open_labels` checks labels against."""

    def __init__(self, num_samples: int, num_classes: int, name: str):
        self.num_samples, self.num_classes, self.name = num_samples, num_classes, name


def _render_fit(fit, name, target_info=None, probability=None, calibrated=None) -> None:
    from rich.table import Table

    console = _stdout_console()
    if target_info is not None:
        where = target_info["path"]
        how = (f"EM on {where}: {target_info['iterations']} iterations, "
               f"{'converged' if target_info['converged'] else 'not converged'}, log-likelihood "
               f"{target_info['log_likelihood']:.6g}" if target_info["kind"] == "em" else f"from {where}")
        console.print(f"target priors q {how}; stored for apply and report, which predict argmax f - tau * log(pi) "
                      "+ log(q). Tau and the validation numbers below are for a balanced target")
    console.print(f"[bold]tau = {fit.tau:.4f}[/bold]  {fit.search} search over [{fit.tau_range[0]:g}, "
                  f"{fit.tau_range[1]:g}] for the lowest {fit.metric.replace('-', ' ')}")
    metric = fit.metric.replace("-", " ")
    if fit.interval[0] == fit.interval[1]:
        console.print(f"only the single point tau = {fit.tau:g} reaches this {metric} (exact ties in the logits)")
    elif fit.search == "exact":
        console.print(f"the same {metric} for every tau in ({fit.interval[0]:.4f}, {fit.interval[1]:.4f})")
    else:
        console.print(f"grid points in [{fit.interval[0]:.4f}, {fit.interval[1]:.4f}] share this value")
    table = Table(title=f"{name}: {fit.num_samples} samples, {fit.num_classes} classes")
    table.add_column("validation")
    for header in ("before (tau=0)", "tau=1", f"after (tau={fit.tau:.3f})"):
        table.add_column(header, justify="right")
    for label, attribute in (("balanced error", "balanced_error"), ("worst-class error", "worst_class_error"),
                             ("accuracy", "accuracy")):
        table.add_row(label, *(_percent(getattr(e, attribute)) for e in (fit.before, fit.at_one, fit.after)))
    console.print(table)
    if probability is not None:
        loss = "NLL" if probability.method == "temperature" else "class-balanced cross-entropy"
        console.print(f"{probability.method} calibration: T = {probability.temperature:.4f}"
                      + ("" if probability.bias is None else
                         f", bias in [{probability.bias.min():.3f}, {probability.bias.max():.3f}]")
                      + f"; validation {loss} {probability.loss_before:.4f} -> {probability.loss_after:.4f} "
                      f"({probability.iterations} iterations, {'converged' if probability.converged else 'not converged'})")
        if calibrated is not None:
            console.print(f"with the bias: balanced error {_percent(calibrated.balanced_error)}, worst-class error "
                          f"{_percent(calibrated.worst_class_error)}, accuracy {_percent(calibrated.accuracy)}")
    if fit.before.classes_without_samples:
        _warn(f"{len(fit.before.classes_without_samples)} class(es) have no validation samples and are left out of "
              f"the errors: {fit.before.classes_without_samples[:20]}")


# ---------------------------------------------------------------------------------------------------------- apply


def _target_priors(spec: str, target_logits, prior, num_classes: int, key, device, budget, quiet: bool = True,
                   context=None):
    """(q or None for uniform, a record of where q came from) for --target-priors / --target-logits."""
    from .load import sha256_file

    if spec.strip().lower() == "uniform":
        if target_logits is not None:
            raise OptionError("--target-logits is for --target-priors em", "--target-logits")
        return None, None
    if spec.strip().lower() == "em":
        if target_logits is None:
            raise OptionError("--target-priors em estimates the target priors from unlabeled logits: give "
                              "--target-logits FILE", "--target-priors")
        return _estimate(target_logits, prior, num_classes, key, device, budget, quiet, context=context)
    if target_logits is not None:
        raise OptionError("--target-logits is for --target-priors em", "--target-logits")
    from .priors import check_num_classes, read_priors

    target = read_priors(spec)
    check_num_classes(target, num_classes, "the logits", spec)
    return target.priors, {"kind": "file", "path": spec, "sha256": sha256_file(spec)}


def _estimate(target_logits, prior, num_classes, key, device, budget, quiet: bool, tolerance=None,
              max_iterations=None, context=None):
    from .errors import MismatchError
    from .load import sha256_file
    from .shift import DEFAULT_MAX_ITERATIONS, DEFAULT_TOLERANCE, estimate_target_priors

    source = _open_logits(target_logits, key, context)
    if source.num_classes != num_classes:
        raise MismatchError(f"has {source.num_classes} classes but the priors have {num_classes}", target_logits)
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if not tolerance > 0:
        raise OptionError(f"the EM tolerance must be > 0, got {tolerance}", "--em-tolerance")
    with _Progress(max_iterations or DEFAULT_MAX_ITERATIONS, "EM", quiet) as progress:
        estimate = estimate_target_priors(source, prior.priors, tolerance,
                                          max_iterations or DEFAULT_MAX_ITERATIONS, device, memory_budget=budget,
                                          progress=progress, context=context)
    if estimate.floored:
        _warn(f"EM drove {len(estimate.floored)} class(es) to a prior of 0 (the model never predicts them on "
              f"{target_logits}): {estimate.floored[:20]}; their prior is set to {estimate.floor:g} so that log(q) "
              "stays finite, which rules them out in practice")
    if not estimate.converged:
        _warn(f"EM on {target_logits} did not converge in {estimate.iterations} iterations (last change "
              f"{estimate.change:.2g}, tolerance {estimate.tolerance:g}); the priors are the last iterate")
    info = {"kind": "em", "path": str(target_logits),
            "sha256": sha256_file(target_logits) if Path(target_logits).is_file() else None,
            **{k: v for k, v in estimate.to_dict().items() if k != "priors"}}
    return estimate.priors, info


def _calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, column, required=True,
                     target="uniform", target_logits=None, key=None, device="cpu", budget=None, context=None):
    from .calibration import Calibration

    if calibration is not None:
        if tau is not None or train_labels is not None or priors is not None:
            raise OptionError("give --calibration, or --tau with --train-labels/--priors, not both", "--calibration")
        if target.strip().lower() != "uniform" or target_logits is not None:
            raise OptionError("the calibration file carries its target priors; --target-priors goes with --tau",
                              "--target-priors")
        loaded = Calibration.load(calibration)
        if num_classes is not None:
            loaded.check_num_classes(num_classes, "logits", str(calibration))
        return loaded
    if tau is None:
        if required:
            raise OptionError("give --calibration FILE, or --tau T with --train-labels FILE or --priors FILE",
                              "--calibration")
        return None
    if not math.isfinite(tau):
        raise OptionError(f"tau must be a finite number, got {tau}", "--tau")
    prior = _open_priors(train_labels, priors, num_classes, smoothing, names, column)
    q, info = _target_priors(target, target_logits, prior, prior.num_classes, key, device, budget, True, context)
    return Calibration(tau=tau, priors=prior.priors, counts=prior.counts, class_names=names or prior.classes,
                       smoothing=prior.smoothing, target_priors=q, target=info)


@app.command("apply")
@_handled
def apply_command(
    source_path: Annotated[Path, typer.Argument(
        help="Logits (.npy, .npz, .safetensors, .pt/.pth, .csv), or a checkpoint to patch: a .safetensors or "
             ".pt/.pth/.bin state dict with several tensors, a training checkpoint (.pth.tar, with its EMA copies), "
             "a Hugging Face model folder, an ONNX model (.onnx), a TorchScript file (torch.jit.save) or a "
             "torch.export program (.pt2).",
        metavar="LOGITS_OR_CHECKPOINT", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Logits output: .npy, .npz, .safetensors or .pt (adjusted logits, same shape and dtype) or "
                      ".csv (predictions). Checkpoint output: a file of the input's kind, or a folder.")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="A calibration file from `lacal "
                                                                              "fit-tau --out`.")] = None,
    tau: Annotated[Optional[float], typer.Option("--tau", help="Use this tau (with --train-labels or --priors) "
                                                               "instead of a calibration file.")] = None,
    train_labels: TrainLabelsOpt = None,
    priors: PriorsOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="For .csv output: also list the classes ranked 2..K.")
                     ] = 1,
    classes: ClassesOpt = None,
    label_column: LabelColumnOpt = None,
    smoothing: SmoothingOpt = 0.0,
    key: KeyOpt = None,
    device: DeviceOpt = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output; for a checkpoint, also patch "
                                                        "one that already carries a lacal patch.")] = False,
    head: HeadOpt = None,
    add_bias: Annotated[bool, typer.Option("--add-bias", help="Give a head without a bias one (the model's code must "
                                                              "then build that layer with bias=True; refused for a "
                                                              "Hugging Face folder, whose loader would drop it).")
                        ] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite the checkpoint itself (atomically) instead "
                                                              "of writing --out.")] = False,
    link: Annotated[bool, typer.Option("--link", help="For a Hugging Face folder: hard-link the files that do not "
                                                      "change instead of copying them.")] = False,
    verify_features: Annotated[Optional[Path], typer.Option(
        "--verify-features", help="Features (N x D) to check, before writing, that the patched head gives the "
                                  "adjusted logits; for an ONNX, TorchScript or .pt2 model, model inputs to run "
                                  "the original and the patched model on.")] = None,
    memory_budget: BudgetOpt = "2GiB",
    quiet: QuietOpt = False,
    target_priors: TargetOpt = "uniform",
    target_logits: TargetLogitsOpt = None,
    shard_format: Annotated[str, typer.Option("--format", help="With --out FOLDER (needed under torchrun): the format "
                                                               "of the output written for each input shard: npy, "
                                                               "npz, safetensors, pt or csv.")] = "npy",
    multi_label: MultiLabelOpt = False,
):
    """Write adjusted logits f - tau * log(pi), a CSV of adjusted predictions, or a checkpoint whose classifier bias
    carries the adjustment. A calibration file's target priors, temperature and bias are applied too. With --out
    FOLDER (a path without a suffix), one output per input shard and an index.json."""
    from . import multilabel_cli
    from .checkpoints import is_checkpoint
    from .deploy import deployed_kind

    context = _context(device)
    compute = context.device
    kind = deployed_kind(source_path)
    if kind is not None:
        _not_under_torchrun(context, "patching a model file")
        if multi_label and (calibration is None or not multilabel_cli.is_multilabel_calibration(calibration)):
            raise OptionError("a multi-label ONNX, TorchScript or torch.export model is patched from the calibration "
                              "file of `lacal fit-tau --multi-label --out`; give it with --calibration",
                              "--multi-label")
        _apply_deployed(kind, source_path, out, calibration, tau, train_labels, priors, classes, label_column,
                        smoothing, compute, force, head, add_bias, in_place, link, verify_features, key,
                        target_priors, target_logits, _parse_size(memory_budget))
        return
    if multi_label or multilabel_cli.is_multilabel_calibration(calibration):
        multilabel_cli.refuse({"--label-column": label_column, "--target-logits": target_logits,
                               "--target-priors": target_priors.strip().lower() != "uniform"}, context)
        multilabel_cli.apply(source_path, out, calibration, tau, train_labels, priors, top_k, classes, smoothing, key,
                             compute, force, _parse_size(memory_budget), quiet,
                             {"--head": head, "--add-bias": add_bias, "--in-place": in_place, "--link": link,
                              "--verify-features": verify_features})
        return
    if is_checkpoint(source_path, key):
        _not_under_torchrun(context, "patching a checkpoint")
        _apply_checkpoint(source_path, out, calibration, tau, train_labels, priors, classes, label_column, smoothing,
                          compute, force, head, add_bias, in_place, link, verify_features, key, target_priors,
                          target_logits, _parse_size(memory_budget))
        return
    if out is None:
        raise OptionError("give --out FILE for the adjusted logits or predictions", "--out")
    for flag, given in (("--in-place", in_place), ("--add-bias", add_bias), ("--link", link), ("--head", head),
                        ("--verify-features", verify_features)):
        if given:
            raise OptionError(f"{source_path} is a logits file, and {flag} is for checkpoints", flag)
    if out.suffix == "" or context.active:
        if shard_format not in SHARD_FORMATS:
            raise OptionError(f"unknown format {shard_format!r}; use one of {', '.join(SHARD_FORMATS)}", "--format")
        if out.suffix:
            raise OptionError("under torchrun, apply writes one output per input shard: give --out FOLDER",
                              "--out")
        _apply_shards(context, source_path, out, shard_format, calibration, tau, train_labels, priors, top_k,
                      classes, label_column, smoothing, key, force, _parse_size(memory_budget), target_priors,
                      target_logits)
        return
    _apply_logits(source_path, out, calibration, tau, train_labels, priors, top_k, classes, label_column, smoothing,
                  key, compute, force, _parse_size(memory_budget), quiet, target_priors, target_logits)


def _apply_shards(context, source_path, out, shard_format, calibration, tau, train_labels, priors, top_k, classes,
                  label_column, smoothing, key, force, budget, target, target_logits):
    from .load import read_logits, shard_paths
    from .scoring import iter_adjusted
    from .write import write_logits, write_predictions

    inputs = [source_path, calibration, train_labels, priors, classes, target_logits]
    first = read_logits(shard_paths(source_path)[0], key)
    names = _class_names(classes, first.num_classes)
    fitted = _calibration_for(calibration, tau, train_labels, priors, first.num_classes, smoothing, names,
                              label_column, True, target, target_logits, key, context.device, budget, context)
    names = names or fitted.class_names
    scale, shift = fitted.affine()
    predictions = shard_format == "csv"
    if predictions and top_k > first.num_classes:
        raise OptionError(f"--top-k {top_k} is more than the {first.num_classes} classes", "--top-k")

    def write_one(shard, target_path):
        source = read_logits(shard, key)
        fitted.check_num_classes(source.num_classes, "logits", str(shard))
        blocks = iter_adjusted(source, shift, context.device, keep_dtype=not predictions, memory_budget=budget,
                               scale=scale)
        if predictions:
            write_predictions(target_path, blocks, names, top_k, force, inputs)
        else:
            for note in write_logits(target_path, blocks, source.shape, source.dtype_name, force, inputs):
                _warn(note)
        return source.num_samples

    rows = _shard_outputs(context, [source_path], out, f".{shard_format}", force, inputs, write_one)
    typer.echo(f"lacal: wrote {out}/ ({rows} samples, tau = {fitted.tau:.4f}, one file per shard and "
               "index.json)", err=True)


def _apply_logits(logits, out, calibration, tau, train_labels, priors, top_k, classes, label_column, smoothing, key,
                  compute, force, budget, quiet, target="uniform", target_logits=None):
    from .scoring import iter_adjusted
    from .write import PREDICTION_SUFFIXES, check_output, write_logits, write_predictions

    inputs = [logits, calibration, train_labels, priors, classes, target_logits]
    check_output(out, force, inputs)
    source = _open_logits(logits, key)
    names = _class_names(classes, source.num_classes)
    fitted = _calibration_for(calibration, tau, train_labels, priors, source.num_classes, smoothing, names,
                              label_column, True, target, target_logits, key, compute, budget)
    scale, shift = fitted.affine()
    names = names or fitted.class_names
    predictions = out.suffix.lower() in PREDICTION_SUFFIXES
    if predictions and top_k > source.num_classes:
        raise OptionError(f"--top-k {top_k} is more than the {source.num_classes} classes", "--top-k")
    with _Progress(source.num_samples, "apply", quiet) as progress:
        blocks = iter_adjusted(source, shift, compute, keep_dtype=not predictions, progress=progress,
                               memory_budget=budget, scale=scale)
        if predictions:
            write_predictions(out, blocks, names, top_k, force, inputs)
        else:
            for note in write_logits(out, blocks, source.shape, source.dtype_name, force, inputs):
                _warn(note)
    typer.echo(f"lacal: wrote {out} ({source.num_samples} samples, tau = {fitted.tau:.4f})", err=True)


def _apply_checkpoint(path, out, calibration, tau, train_labels, priors, classes, label_column, smoothing, compute,
                      force, head, add_bias, in_place, link, verify_features, key, target="uniform",
                      target_logits=None, budget=None, fitted=None):
    from .checkpoints import find_heads, head_notes, open_checkpoint
    from .load import read_classes, read_logits, sha256_file
    from .patch import make_patch, verify_patch, write_checkpoint

    if in_place and out is not None:
        raise OptionError("give --out PATH or --in-place, not both", "--in-place")
    if not in_place and out is None:
        raise OptionError("give --out PATH for the patched checkpoint, or --in-place to rewrite it", "--out")
    if out is not None and not path.is_dir():
        from .write import check_output

        check_output(out, force, [path, calibration, train_labels, priors, classes, verify_features])
    model = open_checkpoint(path)
    if fitted is None and calibration is not None:
        fitted = _calibration_for(calibration, tau, train_labels, priors, None, smoothing, None, label_column, True,
                                  target, target_logits, key, compute, budget)
    names = read_classes(classes) if classes is not None else model.class_names
    count = fitted.num_classes if fitted else (len(names) if names else None)
    if count is None and head is None and priors is not None:  # a binary or default-label model: ask the priors
        from .priors import read_priors

        count = read_priors(priors, smoothing).num_classes
    heads = find_heads(model, count, head)
    layer = heads[0]
    if fitted is not None:
        fitted.check_num_classes(layer.num_classes, "checkpoint's head", str(calibration))
    else:
        fitted = _calibration_for(None, tau, train_labels, priors, layer.num_classes, smoothing, names, label_column,
                                  True, target, target_logits, key, compute, budget)
    for note in head_notes(model, heads):
        _warn(note)
    scale, shift = fitted.affine()
    patch = make_patch(model, heads, shift, fitted.tau,
                       sha256_file(calibration) if calibration is not None else None, add_bias, force, scale)
    if patch.copies:
        typer.echo(f"lacal: also patched the copies of the model under {', '.join(map(repr, patch.copies))}",
                   err=True)
    if patch.earlier is not None:
        from .patch import describe_patch

        _warn(f"{path} already carries a lacal patch{describe_patch(patch.earlier)}; --force patches it again, so "
              "the offsets add up")
    if patch.added_bias:
        _warn(f"added a bias to {layer.name!r}; the model's code must build this layer with bias=True")
    if verify_features is not None:
        features = read_logits(verify_features, key, what="features")
        worst, tolerance = verify_patch(model, patch, features, shift, compute)
        typer.echo(f"lacal: verified on {features.num_samples} samples: the patched head gives the adjusted logits "
                   f"(max |difference| {worst:.3g}, tolerance {tolerance:.3g})", err=True)
    if layer.dtype not in ("float32", "float64"):
        typer.echo(f"lacal: the bias stays {layer.dtype}; rounding moved the offsets by at most "
                   f"{patch.max_rounding_error:.3g}", err=True)
    if scale != 1.0:
        typer.echo(f"lacal: the temperature {fitted.temperature:.4g} is folded into the head: weight and bias are "
                   "divided by it", err=True)
    inputs = [calibration, train_labels, priors, classes, verify_features, target_logits]
    for note in write_checkpoint(model, patch, out, force, in_place, link, inputs):
        typer.echo(f"lacal: {note}", err=True)
    if patch.earlier is None and model.kind != "folder":
        typer.echo(f"lacal: no earlier lacal patch found in {path}; a patched model saved again from its state dict "
                   "loses the record, and then lacal cannot tell it was patched", err=True)
    typer.echo(f"lacal: patched {' and '.join(repr(h.name) for h in heads)} ({layer.num_classes} classes, tau = "
               f"{fitted.tau:.4f}) and wrote {path if in_place else out}", err=True)


def _apply_deployed(kind, path, out, calibration, tau, train_labels, priors, classes, label_column, smoothing,
                    compute, force, head, add_bias, in_place, link, verify_features, key, target, target_logits,
                    budget):
    """Patch an ONNX, TorchScript or torch.export model file (lacal.deploy)."""
    from .deploy import open_deployed, patch_deployed
    from .load import read_classes, read_logits, sha256_file
    from .patch import describe_patch
    from .write import check_output

    for flag, given in (("--add-bias", add_bias), ("--link", link)):
        if given:
            raise OptionError(f"{flag} is for checkpoints, and {path} is a served model file", flag)
    if in_place == (out is not None):
        raise OptionError("give --out PATH for the patched model, or --in-place to rewrite it", "--out")
    inputs = [calibration, train_labels, priors, classes, verify_features, target_logits]
    if out is not None:
        check_output(out, force, [path, *inputs])
    model = open_deployed(path, kind)
    fitted = None
    if calibration is not None:
        fitted = _calibration_for(calibration, tau, train_labels, priors, None, smoothing, None, label_column, True,
                                  target, target_logits, key, compute, budget)
    names = read_classes(classes) if classes is not None else None
    found = model.find_head(fitted.num_classes if fitted else (len(names) if names else None), head)
    if fitted is not None:
        fitted.check_num_classes(found.num_classes, "model's head", str(calibration))
    else:
        fitted = _calibration_for(None, tau, train_labels, priors, found.num_classes, smoothing, names, label_column,
                                  True, target, target_logits, key, compute, budget)
    scale, shift = fitted.affine()
    features = read_logits(verify_features, key, what="inputs") if verify_features is not None else None
    result = patch_deployed(model, found, shift, fitted.tau, scale,
                            sha256_file(calibration) if calibration is not None else None, out, force, in_place,
                            inputs, features)
    if result.earlier is not None:
        _warn(f"{path} already carried a lacal patch{describe_patch(result.earlier)}; --force patched it again, so "
              "the offsets add up")
    if result.added:
        typer.echo(f"lacal: the offsets are added by a new node after {found.name!r}: {result.added}", err=True)
    if result.verified is not None:
        rows, worst, tolerance, what = result.verified
        typer.echo(f"lacal: ran the original and the patched model on {what}: the outputs are the adjusted ones "
                   f"(max |difference| {worst:.3g}, tolerance {tolerance:.3g})", err=True)
    if result.dtype not in ("float32", "float64"):
        typer.echo(f"lacal: the bias stays {result.dtype}; rounding moved the offsets by at most "
                   f"{result.max_rounding_error:.3g}", err=True)
    for note in result.notes:
        typer.echo(f"lacal: {note}", err=True)
    typer.echo(f"lacal: patched {found.name!r} ({found.num_classes} classes, tau = {fitted.tau:.4f}) and wrote "
               f"{path if in_place else out}", err=True)


# --------------------------------------------------------------------------------------------------------- report


@app.command("report")
@_handled
def report_command(
    inputs: Annotated[list[Path], typer.Argument(help="LOGITS LABELS: logits (N x C: .npy, .npz, .safetensors, "
                                                      ".pt/.pth or .csv) and labels (N: .npy, .txt or .csv). Only "
                                                      "LABELS with --checkpoint and --features.",
                                                 metavar="[LOGITS] LABELS", show_default=False)],
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Report the adjustment of this "
                                                                              "calibration file.")] = None,
    tau: Annotated[Optional[float], typer.Option("--tau", help="Report the adjustment with this tau (needs "
                                                               "--train-labels or --priors).")] = None,
    train_labels: TrainLabelsOpt = None,
    priors: PriorsOpt = None,
    sort: Annotated[SortBy, typer.Option("--sort", help="Order of the per-class rows: class id, error after "
                                                        "(worst first), or training count (largest first).")
                    ] = SortBy.class_,
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="Show only the first N rows of the "
                                                                        "per-class table (the summary covers all).")
                     ] = None,
    json_out: JsonOpt = False,
    classes: ClassesOpt = None,
    label_column: LabelColumnOpt = None,
    smoothing: SmoothingOpt = 0.0,
    key: KeyOpt = None,
    device: DeviceOpt = "auto",
    checkpoint: CheckpointOpt = None,
    features: FeaturesOpt = None,
    head: HeadOpt = None,
    memory_budget: BudgetOpt = "2GiB",
    quiet: QuietOpt = False,
    target_priors: TargetOpt = "uniform",
    target_logits: TargetLogitsOpt = None,
    bins: Annotated[int, typer.Option("--bins", min=1, max=10_000, help="Equal-width confidence bins of the ECE "
                                                                        "and classwise ECE.")] = 15,
    compare: Annotated[bool, typer.Option("--compare", help="Instead: one table of post-hoc methods fitted on these "
                                                            "(validation) logits: ERM, logit adjustment at tau = 1 "
                                                            "and fitted, tau-normalisation (with --checkpoint and "
                                                            "--features), and adjustment plus the bias calibration. "
                                                            "Needs --train-labels or --priors.")] = False,
    test_logits: Annotated[Optional[Path], typer.Option("--test-logits", help="With --compare: measure every method "
                                                                              "on these logits (with --test-labels) "
                                                                              "instead of the validation data.")
                           ] = None,
    test_labels: Annotated[Optional[Path], typer.Option("--test-labels", help="Labels of --test-logits or "
                                                                              "--test-features.")] = None,
    test_features: Annotated[Optional[Path], typer.Option("--test-features", help="With --compare, --checkpoint and "
                                                                                  "--features: the test split's "
                                                                                  "features.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw per-class error against training count, "
                                                                "balanced error against tau, and a reliability "
                                                                "diagram into this PNG (needs matplotlib: pip "
                                                                "install 'lacal[plot]').", metavar="FILE.png")
                    ] = None,
    force: ForceOpt = False,
    multi_label: MultiLabelOpt = False,
    metric: Annotated[Metric, typer.Option("--metric", help="With --multi-label --compare: what the shared tau is "
                                                            "fitted for (balanced-error or macro-f1).")
                      ] = Metric.balanced_error,
):
    """Per-class errors before and after adjustment, grouped into many/medium/few-shot classes, with NLL, Brier
    score, ECE and classwise ECE.

    LOGITS may be a folder or a quoted glob of shards, or several files (all paths but the last)."""
    import numpy as np

    from .metrics import ClassEvaluation
    from .report import Report
    from .scoring import score_pass

    budget = _parse_size(memory_budget)
    context = _context(device)
    compute = context.device
    from . import multilabel_cli

    if multilabel_cli.wanted(multi_label or multilabel_cli.is_multilabel_calibration(calibration),
                             inputs[-1] if checkpoint is None and inputs else None):
        multilabel_cli.refuse({"--checkpoint": checkpoint, "--features": features, "--plot": plot,
                               "--test-features": test_features, "--label-column": label_column,
                               "--target-logits": target_logits, "--bins": bins != 15,
                               "--target-priors": target_priors.strip().lower() != "uniform"},
                              context if compare else None)
        multilabel_cli.report(inputs, calibration, tau, train_labels, priors, sort.value, limit, json_out, classes,
                              smoothing, key, compute, budget, quiet, compare, test_logits, test_labels, metric.value,
                              context)
        return
    if metric != Metric.balanced_error:
        raise OptionError("--metric goes with --multi-label --compare", "--metric")
    if compare:
        _not_under_torchrun(context, "report --compare")
    if plot is not None:
        from .plot import check_plotting
        from .write import check_output

        if compare:
            raise OptionError("--plot draws the report of one adjustment; leave out --compare", "--plot")
        if plot.suffix.lower() != ".png":
            raise OptionError(f"plots are written as PNG; give a FILE.png, got {plot.name}", "--plot")
        check_plotting()
        check_output(plot, force, [*inputs, calibration, train_labels, priors, checkpoint, features])
    if not compare and (test_logits or test_labels or test_features):
        raise OptionError("--test-logits, --test-labels and --test-features go with --compare", "--compare")
    source, labels, known_names = _logits_input(inputs, checkpoint, features, head, key, classes, compute,
                                                calibration is not None or tau is not None, context)
    if compare:
        ignored = [flag for flag, given in (("--target-priors", target_priors.strip().lower() != "uniform"),
                                            ("--target-logits", target_logits is not None),
                                            ("--sort", sort.value != "class"), ("--limit", limit is not None),
                                            ("--bins", bins != 15)) if given]
        if ignored:
            raise OptionError(f"{', '.join(ignored)} do(es) not apply to --compare", "--compare")
        _compare(source, labels, known_names, classes, label_column, calibration, tau, train_labels, priors,
                 smoothing, checkpoint, features, head, test_logits, test_labels, test_features, key, compute,
                 budget, json_out, quiet)
        return
    names = _class_names(classes, source.num_classes) or known_names
    values = _open_labels(labels, source, names, label_column)
    if calibration is None and tau is None and (target_priors.strip().lower() != "uniform"
                                                 or target_logits is not None):
        raise OptionError("--target-priors goes with --tau (a calibration file carries its own)", "--target-priors")
    fitted = _calibration_for(calibration, tau, train_labels, priors, source.num_classes, smoothing, names,
                              label_column, False, target_priors, target_logits, key, compute, budget, context)
    counts = fitted.counts if fitted is not None else None
    if fitted is None and (train_labels is not None or priors is not None):
        counts = _open_priors(train_labels, priors, source.num_classes, smoothing, names, label_column).counts
    names = names or (fitted.class_names if fitted is not None else None)
    from .scoring import probability_pass

    affines = [(1.0, np.zeros(source.num_classes))] + ([fitted.affine()] if fitted is not None else [])
    # argmax(f * scale + shift) = argmax(f + shift / scale), as scale = 1 / temperature > 0
    offsets = [shift / scale for scale, shift in affines]
    with _Progress(2 * source.num_samples, "report", quiet or json_out) as progress:
        failure = None
        try:
            stats = score_pass(source, values, offsets, device=compute, progress=progress, memory_budget=budget)
            quality = probability_pass(source, values, affines, bins, compute, memory_budget=budget,
                                       progress=lambda done: progress(source.num_samples + done))
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
        context.agree(failure)
        if context.active:
            stats, quality = _summed(context, stats, quality)
    report = Report(baseline=ClassEvaluation(stats.support, stats.correct[0]),
                    adjusted=ClassEvaluation(stats.support, stats.correct[1]) if fitted is not None else None,
                    train_counts=counts, class_names=names, tau=None if fitted is None else fitted.tau,
                    baseline_quality=quality[0], adjusted_quality=quality[1] if fitted is not None else None,
                    target_priors=None if fitted is None else fitted.target_priors,
                    temperature=None if fitted is None else fitted.temperature)
    if plot is not None:
        from .plot import plot_report
        from .search import fit_tau

        curve = None
        prior_values = fitted.priors if fitted is not None else (
            _open_priors(train_labels, priors, source.num_classes, smoothing, names, label_column)
            if train_labels is not None or priors is not None else None)
        if prior_values is not None:
            grid = fit_tau(source, values, prior_values, (0.0, 4.0), search="grid", grid_size=401, device=compute,
                           memory_budget=budget, context=context)
            curve = (grid.grid_taus, grid.grid_values)
        if context.leader:
            plot_report(plot, report, curve, report.tau, f"lacal report: {getattr(source, 'title', source.name)}", force,
                        [*inputs, calibration, train_labels, priors])
            typer.echo(f"lacal: wrote {plot}", err=True)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    _render_report(report, sort.value, getattr(source, "title", source.name), limit)


SHARD_FORMATS = ("npy", "npz", "safetensors", "pt", "csv")


def _shard_outputs(context, paths, out: Path, suffix: str, force: bool, inputs, write_one) -> int:
    """One output per input shard in the folder `out` (named after the shards), and `index.json` listing them in
    order (written by rank 0 once every rank is done), so the folder reads back as one array. Under torchrun each
    rank writes its own shards. `write_one(shard, target)` writes one and returns its rows. The folder is written
    as a hidden sibling and swapped in at the end, so a failure leaves `out` as it was."""
    from .distributed import my_share
    from .load import SHARD_INDEX, SHARD_INDEX_FORMAT, files_lacal_wrote, shard_paths
    from .write import check_output_folder, discard_folder, remove_stale, replace_folder, stage_folder, write_text

    files = [shard for path in paths for shard in shard_paths(path)]
    stems = [f.stem for f in files]
    names = [f"{stem}{suffix}" for stem in stems] if len(set(stems)) == len(stems) else \
        [f"shard-{k:05d}{suffix}" for k in range(len(files))]
    failure = staging = None
    if context.leader:
        try:
            if out.parent.is_dir():
                remove_stale(out)  # first, so that an old folder a killed run moved aside is back
            check_output_folder(out, force, files_lacal_wrote(out), inputs)
            staging = stage_folder(out)
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
    try:
        context.agree(failure)
        staging = Path(context.gather(str(staging) if staging else None)[0])
        share = my_share(len(files), context) if context.active else range(len(files))
        written, failure = [], None
        try:
            for k in share:
                written.append((k, names[k], write_one(files[k], staging / names[k]), str(files[k])))
        except Exception as exc:  # noqa: BLE001
            failure = exc
        context.agree(failure)
        everything = sorted(entry for part in context.gather(written) for entry in part)
        total = sum(rows for _, _, rows, _ in everything)
        if context.leader:
            index = {"format": SHARD_INDEX_FORMAT, "version": 1, "rows": total,
                     "shards": [{"file": name, "rows": rows, "source": source}
                                for _, name, rows, source in everything]}
            write_text(staging / SHARD_INDEX, json.dumps(index, indent=2) + "\n")
            replace_folder(staging, out, force)
    except BaseException:
        if context.leader:
            discard_folder(staging)
        raise
    return total


def _summed(context, stats, quality):
    """Pass statistics of every rank, added up."""
    import numpy as np

    from .metrics import ProbabilityMetrics
    from .scoring import PassStats

    stats = PassStats(context.sum(stats.support), context.sum(stats.correct))
    quality = [ProbabilityMetrics(int(context.sum(np.array([q.num_samples]))[0]),
                                  float(context.sum(np.array([q.nll_sum]))[0]),
                                  float(context.sum(np.array([q.brier_sum]))[0]), context.sum(q.bin_count),
                                  context.sum(q.bin_confidence), context.sum(q.bin_correct), context.sum(q.class_gap))
               for q in quality]
    return stats, quality


def _compare(source, labels, known_names, classes, column, calibration, tau, train_labels, priors, smoothing,
             checkpoint, features, head, test_logits, test_labels, test_features, key, compute, budget, json_out,
             quiet) -> None:
    from rich.table import Table

    from .compare import compare_methods

    names = _class_names(classes, source.num_classes) or known_names
    values = _open_labels(labels, source, names, column)
    if calibration is not None or tau is not None:
        raise OptionError("--compare fits every method itself; give the training priors (--train-labels or "
                          "--priors), not --calibration or --tau", "--compare")
    prior = _open_priors(train_labels, priors, source.num_classes, smoothing, names, column)
    evaluation_source, evaluation_labels = None, None
    head_data = None
    if checkpoint is not None:
        from .checkpoints import find_head, open_checkpoint
        from .load import read_logits
        from .scoring import head_logits

        if test_logits is not None:
            raise OptionError("with --checkpoint, give the test split as --test-features", "--test-logits")
        model = open_checkpoint(checkpoint)
        layer = find_head(model, source.num_classes, head)
        weight = model.tensor(layer.weight)
        bias = model.tensor(layer.bias) if layer.bias else None
        val_features = read_logits(features, key, what="features")
        eval_features = read_logits(test_features, key, what="features") if test_features else val_features
        if test_features is not None:
            evaluation_source = head_logits(eval_features, weight, bias, compute, f"{test_features} through "
                                                                                 f"{checkpoint}")
        head_data = (weight, val_features, eval_features)
    elif test_features is not None:
        raise OptionError("--test-features needs --checkpoint and --features", "--test-features")
    elif test_logits is not None:
        evaluation_source = _open_logits(test_logits, key)
        if evaluation_source.num_classes != source.num_classes:
            from .errors import MismatchError

            raise MismatchError(f"has {evaluation_source.num_classes} classes but the validation logits have "
                                f"{source.num_classes}", test_logits)
    if (evaluation_source is None) != (test_labels is None):
        raise OptionError("give --test-labels together with --test-logits (or --test-features)", "--test-labels")
    if evaluation_source is not None:
        evaluation_labels = _open_labels(test_labels, evaluation_source, names, column)
    with _Progress(source.num_samples, "compare", quiet or json_out) as progress:
        results = compare_methods(source, values, prior, evaluation_source, evaluation_labels, head_data, compute,
                                  budget, progress=progress)
    measured = evaluation_source.name if evaluation_source is not None else source.name
    if json_out:
        typer.echo(json.dumps({"fitted_on": source.name, "measured_on": measured,
                               "methods": [r.to_dict(prior.counts) for r in results]}))
        return
    table = Table(title=f"post-hoc methods fitted on {source.name}, measured on {measured}")
    for column_name in ("method", "tau", "balanced error", "accuracy", "worst-class error", "many", "medium",
                        "few"):
        table.add_column(column_name, justify="left" if column_name == "method" else "right")
    for result in results:
        row = result.to_dict(prior.counts)
        table.add_row(row["method"], "-" if row["tau"] is None else f"{row['tau']:.3f}",
                      *(_percent(row[k]) for k in ("balanced_error", "accuracy", "worst_class_error", "many",
                                                   "medium", "few")))
    _stdout_console().print(table)
    if evaluation_source is None:
        _warn("every method was fitted and measured on the same data; give --test-logits and --test-labels for "
              "an honest comparison")


def _render_report(report, sort: str, name, limit: Optional[int] = None) -> None:
    import numpy as np
    from rich.table import Table

    from .metrics import GROUPS, shot_groups

    console = _stdout_console()
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
        row = [str(c)] + ([report.class_names[c]] if named else []) + [
               "-" if report.train_counts is None else str(int(report.train_counts[c])),
               "-" if groups is None else str(groups[c]), str(int(after.support[c])),
               _percent(None if np.isnan(before_errors[c]) else before_errors[c])]
        if adjusted:
            change = after_errors[c] - before_errors[c]
            row += [_percent(None if np.isnan(after_errors[c]) else after_errors[c]),
                    "-" if np.isnan(change) else f"{100 * change:+.2f}"]
        table.add_row(*row)
    if limit is not None and limit < len(order):
        table.caption = f"first {limit} of {len(order)} classes (--limit)"
    console.print(table)
    summary = Table(title="summary" + (" (before -> after)" if adjusted else ""))
    summary.add_column("")
    summary.add_column("before" if adjusted else "value", justify="right")
    if adjusted:
        summary.add_column("after", justify="right")
    rows = [("accuracy", "accuracy"), ("balanced error", "balanced_error"),
            ("worst-class error", "worst_class_error")]
    for label, attribute in rows:
        values = [getattr(report.baseline, attribute)] + ([getattr(after, attribute)] if adjusted else [])
        summary.add_row(label, *map(_percent, values))
    if report.baseline_quality is not None:
        qualities = [report.baseline_quality] + ([report.adjusted_quality] if adjusted else [])
        bins = int(report.baseline_quality.bin_count.shape[0])
        for label, attribute, percent in (("NLL", "nll", False), ("Brier score", "brier", False),
                                          (f"ECE ({bins} bins)", "ece", True),
                                          ("classwise ECE", "classwise_ece", True)):
            numbers = [getattr(quality, attribute) for quality in qualities]
            summary.add_row(label, *(_percent(n) if percent else f"{n:.4f}" for n in numbers))
    if groups is not None:
        before_groups = report.groups(report.baseline)
        after_groups = report.groups(after)
        for group in GROUPS:
            size = before_groups[group]["classes"]
            label = f"{group}-shot error ({size} classes)"
            values = [before_groups[group]["error"]] + ([after_groups[group]["error"]] if adjusted else [])
            summary.add_row(label, *map(_percent, values))
    console.print(summary)
    if groups is None:
        _warn("no training counts given (--train-labels, or counts in --priors or --calibration), so classes are not "
              "grouped into many/medium/few-shot")
    missing = after.classes_without_samples
    if missing:
        _warn(f"{len(missing)} class(es) have no samples in {name} and are left out of the balanced and worst-class "
              f"errors: {missing[:20]}{' ...' if len(missing) > 20 else ''}")


# ---------------------------------------------------------------------------------------------------------- score


class Amp(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"


@app.command("score")
@_handled
def score_command(
    model: Annotated[Path, typer.Argument(help="A TorchScript model (.pt, .pth, .ts; torch.jit.script(m).save), a "
                                               "torch.export program (.pt2; torch.export.save) or an ONNX model "
                                               "(.onnx, run by onnxruntime: CUDA when its provider is present).",
                                          show_default=False)],
    inputs: Annotated[Path, typer.Argument(help="Model inputs, samples first: .npy (read in blocks), .safetensors, "
                                                ".pt, .npz, or a folder or quoted glob of shards.",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Where the logits go: .npy (written as they come, so outputs "
                                                    "larger than memory work), .npz, .safetensors or .pt.",
                                      show_default=False)],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per forward pass.")] = 256,
    amp: Annotated[Optional[Amp], typer.Option("--amp", help="Run the model under autocast to bfloat16 or float16 "
                                                             "(logits are stored as float32).")] = None,
    key: KeyOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    shard_format: Annotated[str, typer.Option("--format", help="With --out FOLDER: the format of each shard's logits: "
                                                               "npy, npz, safetensors or pt.")] = "npy",
):
    """Run a model over inputs in batches and write its logits, for fit-tau, apply and report. With --out FOLDER
    (a path without a suffix; needed under torchrun), one logits file per input shard and an index.json."""
    import itertools

    from .load import read_logits
    from .models import load_model
    from .scoring import score_model
    from .write import LOGITS_SUFFIXES, check_output, write_logits

    context = _context(device)
    compute = context.device
    per_shard = out.suffix == ""
    if context.active and not per_shard:
        raise OptionError("under torchrun, score writes one output per input shard: give --out FOLDER", "--out")
    if per_shard and shard_format not in SHARD_FORMATS[:-1]:
        raise OptionError(f"logits are written as {', '.join(SHARD_FORMATS[:-1])}; got --format {shard_format}",
                          "--format")
    if not per_shard and out.suffix.lower() not in LOGITS_SUFFIXES:
        raise OptionError(f"logits are written as {', '.join(LOGITS_SUFFIXES)}; got {out.name}", "--out")
    if not per_shard:
        check_output(out, force, [model, inputs])
    if model.suffix.lower() == ".onnx":
        from .onnx_patch import OnnxRunner

        if amp is not None:
            raise OptionError("--amp is for PyTorch models; an ONNX model runs in the precision it was saved in",
                              "--amp")
        network, compute = OnnxRunner(model, compute), "cpu"  # onnxruntime takes numpy batches on the CPU
        if network.probabilities:
            _warn(f"{model}: output {network.output!r} comes from a Softmax: these are probabilities, while fit-tau, "
                  "apply and report expect logits (patch the model with `lacal apply` instead; the offsets go "
                  "before its Softmax)")
    else:
        network = load_model(model)

    def write_one(shard, target, progress=None, source=None):
        source = source or read_logits(shard, key, what="inputs")
        blocks = score_model(network, source, compute, batch_size, amp.value if amp else None, progress)
        first = next(blocks)  # the first batch tells the number of classes
        shape = (source.num_samples, first[1].shape[1])
        write_logits(target, itertools.chain([first], blocks), shape, "float32", force, [model, inputs])
        return shape

    if per_shard:
        rows = _shard_outputs(context, [inputs], out, f".{shard_format}", force, [model, inputs],
                              lambda shard, target: write_one(shard, target)[0])
        typer.echo(f"lacal: wrote {out}/ ({rows} samples, one logits file per shard and index.json)", err=True)
        return
    source = read_logits(inputs, key, what="inputs")
    with _Progress(source.num_samples, "score", quiet) as progress:
        shape = write_one(inputs, out, progress, source)
    typer.echo(f"lacal: wrote {out} ({shape[0]} x {shape[1]} logits)", err=True)


# ----------------------------------------------------------------------------------------------------------- demo


@app.command("demo")
@_handled
def demo_command(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the demo's files.")] = Path("lacal-demo"),
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the synthetic problem.")] = 0,
    force: ForceOpt = False,
):
    """Build a seeded long-tailed problem, train a classifier on it, then run fit-tau, apply and report."""
    from .demo import DEMO_FILES, run_demo

    from .errors import OutputError

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the demo folder: {exc.strerror or exc}", directory) from None
    clashes = [name for name in DEMO_FILES if (directory / name).exists()]
    if clashes and not force:
        raise OutputError(f"already holds {', '.join(clashes)}; pass --force to replace them, or choose another "
                          f"--dir", directory)
    run_demo(directory, seed, echo=typer.echo, invoke=_invoke)


def _invoke(arguments: list[str]) -> None:
    """Run a lacal command in this process, as a user would type it."""
    typer.echo("\n$ lacal " + " ".join(arguments))
    code = app(arguments, standalone_mode=False)
    if code:
        raise typer.Exit(code)


def main() -> None:
    from .write import cleanup_on_signals

    cleanup_on_signals()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

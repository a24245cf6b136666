"""The `lacal` command line: a thin shell over the library. Results go to stdout, warnings and errors to stderr.

torch and the numeric modules are imported inside the commands, so `lacal --help` stays quick.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .render import FLAGS, Progress, StdoutFailed, flagged, line
from ..errors import EXIT_CODES, STDOUT_CLOSED, InputFileError, LacalError, OptionError, OutputError, shown_line

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



def _print_version(value: bool) -> None:
    if value:
        from ..version import __version__

        typer.echo(f"lacal {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print lacal's version and exit.")] = False,
) -> None:
    """Post-hoc logit adjustment for classifiers trained on long-tailed data."""


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
BootstrapOpt = Annotated[Optional[int], typer.Option(
    "--bootstrap", help="Also give intervals from N stratified bootstrap replicates of the validation samples (each "
                        "an exact refit of tau, no re-scoring of the logits): tau, the balanced error before and "
                        "after, their change, the shot groups and, in --json, every class. 1000 is usual.",
    metavar="N", show_default=False)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling and the cross-fitting folds "
                                                    "(the intervals depend only on it and the data, not on the "
                                                    "number of torchrun ranks).")]
LevelOpt = Annotated[float, typer.Option("--level", help="Level of the intervals, between 0 and 1.")]
ReportBootstrapOpt = Annotated[Optional[int], typer.Option(
    "--bootstrap", help="Also give intervals from N stratified bootstrap replicates of the samples, the adjustment "
                        "held fixed: the balanced error before and after, their change, the shot groups and, in "
                        "--json, every class; and where tau would fall if refitted on them. 1000 is usual.",
    metavar="N", show_default=False)]
ReportSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling (the intervals depend "
                                                          "only on it and the data, not on the number of torchrun "
                                                          "ranks).")]
HeadOpt = Annotated[Optional[str], typer.Option("--head", help="The classifier layer's name in the checkpoint (for "
                                                "example fc or head.fc); for an ONNX model, the name of its logits "
                                                "output. Found by shape and usual names when omitted.",
                                                metavar="NAME")]


def _message(error) -> str:
    source = FLAGS.get(error.source, error.source) if isinstance(error, OptionError) else error.source
    problem = flagged(error.problem)
    return problem if source is None else f"{source}: {problem}"


class _Process:
    """This process's place in a torchrun job, joined once by the first command that asks (the CLI's only state;
    the library gets the context as an argument)."""

    def __init__(self):
        self.torchrun = None

    def context(self, device: str):
        """The distributed.Context for a command: a single process, or this rank of a torchrun job (ranks other than
        0 print nothing)."""
        from ..engine.distributed import Context, join, launched_by_torchrun

        if not launched_by_torchrun():
            from ..engine.device import resolve_device

            return Context(device=resolve_device(device))
        if self.torchrun is None:
            import atexit

            self.torchrun = join(device)
            atexit.register(self.torchrun.close)
            if not self.torchrun.leader:
                sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
        return self.torchrun

    def rank_prefix(self) -> str:
        return f"rank {self.torchrun.rank}: " if self.torchrun is not None and self.torchrun.active else ""


PROCESS = _Process()


def _handled(command):
    """Turn a LacalError (or another rank's failure under torchrun) into one line on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ..engine.distributed import RankFailed

        try:
            return command(*args, **kwargs)
        except LacalError as error:
            line(f"lacal: error: {PROCESS.rank_prefix()}{_message(error)}")
            raise typer.Exit(error.exit_code) from None
        except RankFailed as failure:
            head, _, rest = failure.message.partition(": ")
            message = f"{FLAGS[head]}: {rest}" if head in FLAGS and rest else failure.message
            line(f"lacal: error: rank {failure.rank}: {flagged(message)}")
            raise typer.Exit(failure.exit_code) from None
        except OSError as exc:
            if exc.errno not in (errno.ENAMETOOLONG, errno.ELOOP) or exc.filename is None:
                raise
            # a name the system cannot take, met where a reader or writer did not look first: still one line
            out, name = kwargs.get("out"), os.fsdecode(exc.filename)
            code = OutputError.exit_code if out is not None and (name.startswith(str(out)) or str(out).startswith(
                name)) else InputFileError.exit_code
            line(f"lacal: error: {PROCESS.rank_prefix()}{os.fsdecode(exc.filename)}: {exc.strerror}")
            raise typer.Exit(code) from None
        except StdoutFailed as failure:
            _silence_stdout()
            if failure.error.errno == errno.EPIPE:  # the reader went away (`| head`): quiet, as other Unix tools
                raise typer.Exit(STDOUT_CLOSED) from None
            line(f"lacal: error: standard output: cannot write: {failure.error.strerror or failure.error}")
            raise typer.Exit(OutputError.exit_code) from None

    return wrapper


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that the flush at exit does not fail a second time."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _parse_range(text: Optional[str]):
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise OptionError(f"expected LO,HI (two numbers and a comma), got {text!r}", "--tau-range")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise OptionError(f"expected LO,HI (two numbers and a comma), got {text!r}", "--tau-range") from None


def _data_arguments(inputs: list[Path], checkpoint, features, needs_logits: bool = True):
    """(logits, labels) from the positional paths: LOGITS... LABELS, or only LABELS with --checkpoint and
    --features."""
    if checkpoint is None and features is None and needs_logits:
        if len(inputs) < 2:
            raise OptionError(f"expected the logits and the labels files, got {len(inputs)} path(s); or give only "
                              "the labels with --checkpoint and --features", "arguments")
        return (inputs[0] if len(inputs) == 2 else inputs[:-1]), inputs[-1]
    if checkpoint is not None and features is not None and len(inputs) != 1:
        raise OptionError(f"with --checkpoint and --features, give only the labels file, got {len(inputs)} paths",
                          "arguments")  # more would be logits shards
    return None, inputs[-1]


_Progress = Progress  # the progress bar on stderr (cli_render)


def _bar(quiet: bool):
    """The progress factory the workflows take: a bar on stderr unless quiet."""
    return functools.partial(_Progress, quiet=quiet)


def _wrote(path, what: str = "") -> None:
    line(f"lacal: wrote {path}{what}")


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
    from . import render as show
    from .task_choice import wanted
    from ..core.tasks import MULTI_LABEL
    from ..workflows import count_priors, estimate_priors

    multi = multi_label or (em is None and wanted(multi_label, train_labels, "training labels",
                                                             label_column=label_column))
    if multi:  # --train-labels and --priors are the priors of --em
        MULTI_LABEL.refuse(em=em is not None or train_labels_option is not None or priors_option is not None)
    if em is not None:
        result = estimate_priors(em, priors_option, train_labels=train_labels or train_labels_option,
                                 class_names=classes, label_column=label_column, smoothing=smoothing,
                                 tolerance=tolerance, max_iterations=max_iterations, key=key,
                                 context=PROCESS.context(device), out=out, force=force, progress=_bar(True))
    elif train_labels is None:
        raise OptionError("give the training labels file (or --em UNLABELED_LOGITS with --train-labels or "
                          "--priors)", "arguments")
    else:
        result = count_priors(train_labels, num_classes=num_classes, smoothing=smoothing, class_names=classes,
                              label_column=label_column, out=out, force=force, multi_label=multi)
    show.notes(result)
    if result.out is not None:
        _wrote(result.out)
    if json_out:
        show.print_json(result)
    elif em is not None:
        show.estimate_table(result)
    elif out is None:
        show.priors_table(result, result.priors.classes)


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
    bootstrap: BootstrapOpt = None,
    seed: SeedOpt = 0,
    level: LevelOpt = 0.95,
    folds: Annotated[Optional[int], typer.Option(
        "--folds", help="Also estimate the balanced error the fitted tau will give on new data by K-fold "
                        "cross-fitting (stratified: tau fitted on K-1 folds, scored on the held-out one). K is at "
                        "most the smallest class's number of validation samples.", metavar="K",
        show_default=False)] = None,
    tau_rule: Annotated[str, typer.Option(
        "--tau-rule", help="min: the exact minimiser. one-se: among the taus whose balanced error is within one "
                           "bootstrap standard error of the minimum, the one nearest tau = 1 (measured: better only "
                           "when the best tau is near 1; see the intervals guide).", metavar="min|one-se")] = "min",
):
    """Find the tau that minimises the validation balanced error of argmax f(x) - tau * log(pi).

    VAL_LOGITS may be a folder or a quoted glob of shards, or several files (all paths but the last)."""
    from . import render as show
    from .task_choice import wanted
    from ..workflows import fit

    multi = wanted(multi_label, inputs[-1] if checkpoint is None and inputs else None, label_column=label_column)
    logits, labels = _data_arguments(inputs, checkpoint, features, method != Method.tau_norm)
    result = fit(logits, labels, priors, train_labels=train_labels, tau_range=_parse_range(tau_range),
                 search=search.value, metric=metric.value, grid_size=grid_size, target_priors=target_priors,
                 target_logits=target_logits, calibrate=calibrate.value if calibrate else None, bias_l2=bias_l2,
                 method=(method or Method.logit_adjustment).value, checkpoint=checkpoint, features=features,
                 head=head, class_names=classes, label_column=label_column, smoothing=smoothing, key=key,
                 memory_budget=memory_budget, out=out, force=force, record_inputs=out is not None,
                 progress=_bar(quiet or json_out), context=PROCESS.context(device), multi_label=multi,
                 bootstrap=bootstrap, seed=seed, level=level, folds=folds, tau_rule=tau_rule)
    show.notes(result)
    if getattr(result, "out", None) is not None:
        _wrote(result.out)
    if json_out:
        show.print_json(result)
    elif method == Method.tau_norm:
        show.tau_norm_table(result)
    else:
        show.fit_tables(result)
        if result.intervals is not None and result.task.multi_label:
            show.multilabel_intervals(result.intervals, result.tau_fit.before, result.tau_fit.after)
        elif result.intervals is not None:
            show.fit_intervals(result)


# ---------------------------------------------------------------------------------------------------------- apply


@app.command("apply")
@_handled
def apply_command(
    source_path: Annotated[Path, typer.Argument(
        help="Logits (.npy, .npz, .safetensors, .pt/.pth, .csv), or a checkpoint to patch: a .safetensors or "
             ".pt/.pth/.bin state dict with several tensors, a training checkpoint (.pth.tar, with its EMA copies), "
             "a PyTorch Lightning .ckpt (with its EMA / SWA copies), "
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
    from . import render as show
    from ..models.checkpoints import is_checkpoint
    from ..models.deploy import deployed_kind
    from ..workflows import apply, patch_checkpoint
    from ..workflows.task_inputs import is_multilabel_calibration

    context = PROCESS.context(device)
    options = dict(tau=tau, train_labels=train_labels, priors=priors, class_names=classes, label_column=label_column,
                   smoothing=smoothing, target_priors=target_priors, target_logits=target_logits, key=key,
                   memory_budget=memory_budget, force=force, context=context)
    from .task_choice import wanted

    # multi-label with the flag, a multi-label calibration, or training labels that can only be a label matrix
    multi = (multi_label or is_multilabel_calibration(calibration)
             or (calibration is None and wanted(False, train_labels, "training labels", label_column=label_column)))
    if deployed_kind(source_path) is not None or is_checkpoint(source_path, key):
        result = patch_checkpoint(source_path, calibration, out=out, head=head, add_bias=add_bias, in_place=in_place,
                                  link=link, verify_features=verify_features, multi_label=multi, **options)
        show.patched(result)
        return
    if out is None:
        raise OptionError("give --out FILE for the adjusted logits or predictions", "--out")
    for flag, given in (("--in-place", in_place), ("--add-bias", add_bias), ("--link", link), ("--head", head),
                        ("--verify-features", verify_features)):
        if given:
            raise OptionError(f"{source_path} is a logits file, and {flag} is for checkpoints", flag)
    result = apply(source_path, calibration, out, top_k=top_k, format=shard_format, progress=_bar(quiet),
                   multi_label=multi, **options)
    show.notes(result)
    if result.per_shard:
        _wrote(f"{result.out}/", f" ({result.rows} samples, tau = {result.tau:.4f}, one file per shard and "
                                 "index.json)")
    else:
        labels = f"{result.num_classes} labels, " if result.task.multi_label else ""
        _wrote(result.out, f" ({result.rows} samples, {labels}tau = {result.tau:.4f})")


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
    bootstrap: ReportBootstrapOpt = None,
    seed: ReportSeedOpt = 0,
    level: LevelOpt = 0.95,
):
    """Per-class errors before and after adjustment, grouped into many/medium/few-shot classes, with NLL, Brier
    score, ECE and classwise ECE.

    LOGITS may be a folder or a quoted glob of shards, or several files (all paths but the last)."""
    from . import render as show
    from .task_choice import wanted
    from ..workflows import compare as compare_methods, report
    from ..workflows.task_inputs import is_multilabel_calibration

    context = PROCESS.context(device)
    multi = wanted(multi_label or is_multilabel_calibration(calibration),
                   inputs[-1] if checkpoint is None and inputs else None, label_column=label_column)
    if metric != Metric.balanced_error and not (multi and compare):
        raise OptionError("--metric goes with --multi-label --compare", "--metric")
    logits, labels = _data_arguments(inputs, checkpoint, features)
    if compare:
        _refuse_with_compare(plot, calibration, tau, target_priors, target_logits, sort, limit, bins)
        if bootstrap is not None:
            raise OptionError("--bootstrap gives intervals for one adjustment; leave out --compare", "--bootstrap")
        result = compare_methods(logits, labels, priors, train_labels=train_labels, test_logits=test_logits,
                                 test_labels=test_labels, checkpoint=checkpoint, features=features,
                                 test_features=test_features, head=head, class_names=classes,
                                 label_column=label_column, smoothing=smoothing, key=key, memory_budget=memory_budget,
                                 progress=_bar(quiet or json_out), context=context, metric=metric.value,
                                 multi_label=multi)
        show.notes(result)
        show.print_json(result) if json_out else show.comparison_table(result)
        return
    if test_logits or test_labels or test_features:
        raise OptionError("--test-logits, --test-labels and --test-features go with --compare", "--compare")
    result = report(logits, labels, calibration, tau=tau, train_labels=train_labels, priors=priors,
                    target_priors=target_priors, target_logits=target_logits, bins=bins, checkpoint=checkpoint,
                    features=features, head=head, class_names=classes, label_column=label_column,
                    smoothing=smoothing, key=key, memory_budget=memory_budget, plot=plot, force=force,
                    progress=_bar(quiet or json_out), context=context, multi_label=multi, bootstrap=bootstrap,
                    seed=seed, level=level)
    show.notes(result)
    if result.plot is not None and context.leader:
        _wrote(result.plot)
    show.print_json(result) if json_out else show.report_tables(result, sort.value, limit)
    if not json_out and result.intervals is not None and result.task.multi_label:
        show.multilabel_intervals(result.intervals, result.baseline, result.main)
    elif not json_out and result.intervals is not None:
        show.report_intervals(result)


def _refuse_with_compare(plot, calibration, tau, target_priors, target_logits, sort, limit, bins) -> None:
    """The report options that mean nothing to --compare."""
    if plot is not None:
        raise OptionError("--plot draws the report of one adjustment; leave out --compare", "--plot")
    if calibration is not None or tau is not None:
        raise OptionError("--compare fits every method itself; give the training priors (--train-labels or "
                          "--priors), not --calibration or --tau", "--compare")
    ignored = [flag for flag, given in (("--target-priors", target_priors.strip().lower() != "uniform"),
                                        ("--target-logits", target_logits is not None),
                                        ("--sort", sort.value != "class"), ("--limit", limit is not None),
                                        ("--bins", bins != 15)) if given]
    if ignored:
        raise OptionError(f"{', '.join(ignored)} do(es) not apply to --compare", "--compare")


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
    from . import render as show
    from ..workflows import score

    result = score(model, inputs, out, batch_size=batch_size, amp=amp.value if amp else None, key=key,
                   format=shard_format, force=force, progress=_bar(quiet), context=PROCESS.context(device))
    show.notes(result)
    if result.per_shard:
        _wrote(f"{result.out}/", f" ({result.rows} samples, one logits file per shard and index.json)")
    else:
        _wrote(result.out, f" ({result.rows} x {result.num_classes} logits)")


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

    from ..errors import OutputError

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the demo folder: {exc.strerror or exc}", directory) from None
    clashes = [name for name in DEMO_FILES if (directory / name).exists()]
    if clashes and not force:
        raise OutputError(f"already holds {', '.join(clashes)}; pass --force to replace them, or choose another "
                          f"--dir", directory)
    run_demo(directory, seed, echo=lambda text: typer.echo(shown_line(text)), invoke=_invoke)


def _invoke(arguments: list[str]) -> None:
    """Run a lacal command in this process, as a user would type it."""
    typer.echo("\n$ lacal " + shown_line(" ".join(arguments)))
    code = app(arguments, standalone_mode=False)
    if code:
        raise typer.Exit(code)


def main() -> None:
    from ..data.writers import cleanup_on_signals

    cleanup_on_signals()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""`lacal.apply`: adjusted logits or predictions, in memory, to a file (streamed) or to one file per shard with an
index (what `lacal apply LOGITS` does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core.tasks import SINGLE_LABEL, Task
from ..errors import OptionError
from .inputs import Notes, calibration_for, is_path, make_context, memory_bytes, open_logits, output_check, path_list, \
    paths_of, progress_bar
from .inputs import class_names as class_names_for
from .shards import SHARD_FORMATS
from .task_inputs import task_calibration, task_for


@dataclass(frozen=True, eq=False)
class ApplyResult:
    """What `apply` wrote.

    Attributes:
        out: the file, or the folder of per-shard outputs (with index.json).
        rows: samples written.
        tau: the calibration's tau.
        per_shard: whether `out` is a folder of per-shard outputs.
        predictions: whether predictions (CSV) rather than logits were written.
        warnings: notes for the user (a bfloat16 array stored as float32, logits that look like probabilities).
        num_classes: the logits' classes (labels, for a multi-label head).
        task: the `Task` of the calibration applied.
    """

    out: Path
    rows: int
    tau: float
    per_shard: bool
    predictions: bool
    warnings: tuple[str, ...] = field(default=())
    num_classes: Optional[int] = None
    task: Task = SINGLE_LABEL

    def to_dict(self) -> dict:
        """Exactly `lacal apply --json` (multi-label: with the number of labels)."""
        labels = {"labels": self.num_classes} if self.task.multi_label else {}
        return {"out": str(self.out), "rows": self.rows, "tau": self.tau, "per_shard": self.per_shard,
                "predictions": self.predictions, **labels, "warnings": list(self.warnings)}


def apply(logits, calibration=None, out=None, *, tau: Optional[float] = None, train_labels=None, priors=None,
          top_k: int = 1, class_names=None, label_column: Optional[str] = None, smoothing: float = 0.0,
          target_priors: Any = "uniform", target_logits=None, key: Optional[str] = None, device: str = "auto",
          memory_budget=None, format: str = "npy", force: bool = False, progress: Optional[Callable] = None,
          context=None, multi_label: bool = False):
    """Adjust logits by a calibration: (logits - tau * log(pi)) / T + bias + log(q), as `lacal apply` does.

    Args:
        logits: N x C logits: a numpy array, a torch tensor, a `LogitsSource`, a file, or a folder or glob of shards.
        calibration: a `Calibration` or a calibration file; or None with `tau` and `train_labels`/`priors`.
        out: None to get the adjusted array back (an array or tensor in, the same type out: same shape and dtype;
            a `LogitsSource` in, a CPU tensor out);
            a file (.npy, .npz, .safetensors, .pt: adjusted logits; .csv: predictions), written as the rows come;
            or a folder (a path without a suffix): one output per input shard, in `format`, and index.json.
        tau, train_labels, priors, smoothing, target_priors, target_logits: a calibration built here instead of one
            given (see `fit`).
        top_k: for predictions, also list the classes ranked 2..K.
        class_names: class names for the predictions (a list or a classes file).
        format: with a folder `out`: npy, npz, safetensors, pt or csv.
        force: replace an existing output.
        key, device, memory_budget, progress, context: as for `fit`.
        multi_label: a multi-label head: f - tau * log(pi / (1 - pi)), one file out (.csv: the labels with adjusted
            logit > 0, and the top K by sigmoid); also taken when `calibration` is a multi-label `Calibration`.

    Returns:
        The adjusted array or tensor (with `out=None`), else an `ApplyResult`.

    Example:
        >>> adjusted = lacal.apply(test_logits, calibration)              # a tensor in, a tensor out
        >>> lacal.apply("test_shards/", calibration, out="adjusted/")     # one file per shard and index.json
    """
    task = task_for(multi_label, calibration, priors)
    uniform = isinstance(target_priors, str) and target_priors.strip().lower() == "uniform"
    task.refuse(label_column=label_column, target_priors=not uniform, target_logits=target_logits is not None,
                torchrun=context is not None and context.active)
    notes = Notes()
    budget = memory_bytes(memory_budget)
    context = make_context(device, context)
    if out is None:
        if path_list(logits):
            raise OptionError("give `out` for the adjusted logits or predictions of a file", "out")
        return _in_memory(task, logits, calibration, tau, train_labels, priors, class_names, label_column, smoothing,
                          target_priors, target_logits, key, context, budget)
    out = Path(out)
    if task.multi_label and out.suffix == "":
        raise OptionError("multi-label apply writes one file yet; give `out` FILE", "out")
    if out.suffix == "" or context.active:
        if format not in SHARD_FORMATS:
            raise OptionError(f"unknown format {format!r}; use one of {', '.join(SHARD_FORMATS)}", "format")
        if out.suffix:
            raise OptionError("under torchrun, apply writes one output per input shard: give `out` FOLDER", "out")
        return _apply_shards(context, logits, out, format, calibration, tau, train_labels, priors, top_k,
                             class_names, label_column, smoothing, key, force, budget, target_priors, target_logits,
                             notes)
    return _apply_file(task, logits, out, calibration, tau, train_labels, priors, top_k, class_names, label_column,
                       smoothing, key, context, force, budget, progress, target_priors, target_logits, notes)


def _in_memory(task, logits, calibration, tau, train_labels, priors, classes, column, smoothing, target, target_logits,
               key, context, budget):
    """The adjusted logits as the type given: what the CLI would write for them, kept in memory."""
    import torch

    from ..engine.passes import iter_adjusted

    source = open_logits(logits, key)
    names = class_names_for(classes, source.num_classes)
    fitted = task_calibration(task, calibration, tau, train_labels, priors, source.num_classes, smoothing, names,
                              column, True, target, target_logits, key, context.device, budget, context)
    scale, shift = fitted.affine()
    blocks = [block for _, block in iter_adjusted(source, shift, context.device, memory_budget=budget, scale=scale)]
    adjusted = torch.cat(blocks)
    if isinstance(logits, torch.Tensor):
        return adjusted.to(logits.device)
    if isinstance(logits, np.ndarray):
        return adjusted.numpy()
    return adjusted


def _apply_file(task, logits, out, calibration, tau, train_labels, priors, top_k, classes, column, smoothing, key,
                context, force, budget, progress, target, target_logits, notes) -> ApplyResult:
    from ..engine.passes import iter_adjusted
    from ..data.writers import PREDICTION_SUFFIXES, write_logits, write_predictions

    inputs = paths_of(logits, calibration, train_labels, priors, classes, target_logits)
    output_check(out, force, *inputs)
    source = open_logits(logits, key, notes=notes)
    names = class_names_for(classes, source.num_classes)
    fitted = task_calibration(task, calibration, tau, train_labels, priors, source.num_classes, smoothing, names,
                              column, True, target, target_logits, key, context.device, budget, notes=notes)
    scale, shift = fitted.affine()
    names = names or fitted.class_names
    predictions = out.suffix.lower() in PREDICTION_SUFFIXES
    if predictions and top_k > source.num_classes:
        raise OptionError(f"`top_k` {top_k} is more than the {source.num_classes} {task.units}", "top_k")
    from ..core.label_matrix import write_multilabel_predictions

    # a multi-label CSV lists the labels with adjusted logit > 0 and the top K by sigmoid; a softmax one the top K
    write_rows = write_multilabel_predictions if task.multi_label else write_predictions
    with progress_bar(progress, source.num_samples, "apply") as step:
        blocks = iter_adjusted(source, shift, context.device, keep_dtype=not predictions, progress=step,
                               memory_budget=budget, scale=scale)
        if predictions:
            write_rows(out, blocks, names, top_k, force, inputs)
        else:
            for note in write_logits(out, blocks, source.shape, source.dtype_name, force, inputs):
                notes.warn(note)
    return ApplyResult(out, source.num_samples, fitted.tau, False, predictions, tuple(notes.warnings),
                       source.num_classes, task)


def _apply_shards(context, logits, out, shard_format, calibration, tau, train_labels, priors, top_k, classes, column,
                  smoothing, key, force, budget, target, target_logits, notes) -> ApplyResult:
    from ..data.readers import read_logits, shard_paths
    from ..engine.passes import iter_adjusted
    from ..data.writers import write_logits, write_predictions
    from .shards import write_shards

    if not is_path(logits):
        raise OptionError("per-shard output needs input shards: give `logits` as a folder or glob", "out")
    inputs = paths_of(logits, calibration, train_labels, priors, classes, target_logits)
    first = read_logits(shard_paths(logits)[0], key)
    names = class_names_for(classes, first.num_classes)
    fitted = calibration_for(calibration, tau, train_labels, priors, first.num_classes, smoothing, names, column,
                             True, target, target_logits, key, context.device, budget, context, notes)
    names = names or fitted.class_names
    scale, shift = fitted.affine()
    predictions = shard_format == "csv"
    if predictions and top_k > first.num_classes:
        raise OptionError(f"`top_k` {top_k} is more than the {first.num_classes} classes", "top_k")

    def write_one(shard, target_path):
        source = read_logits(shard, key)
        fitted.check_num_classes(source.num_classes, "logits", str(shard))
        blocks = iter_adjusted(source, shift, context.device, keep_dtype=not predictions, memory_budget=budget,
                               scale=scale)
        if predictions:
            write_predictions(target_path, blocks, names, top_k, force, inputs)
        else:
            for note in write_logits(target_path, blocks, source.shape, source.dtype_name, force, inputs):
                notes.warn(note)
        return source.num_samples

    rows = write_shards(context, [logits], out, f".{shard_format}", force, inputs, write_one)
    return ApplyResult(out, rows, fitted.tau, True, predictions, tuple(notes.warnings))

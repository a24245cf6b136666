"""What every workflow does with its data arguments: open logits (an array, a tensor, a `LogitsSource`, a path, a
folder or glob of shards, or several paths), labels, class names and priors; under torchrun, this rank's share of the
shards; the provenance record of the input files; the target priors and the calibration a command applies.

Warnings found on the way are collected in a `Notes`, which the workflow hands back inside its result.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InputDataError, MismatchError, OptionError

PathLike = (str, os.PathLike)


class Notes:
    """Warnings and messages gathered while a workflow runs, for its result (the CLI prints them on stderr)."""

    def __init__(self):
        self.warnings: list[str] = []
        self.messages: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def say(self, text: str) -> None:
        self.messages.append(text)


@contextlib.contextmanager
def _silent(total: int, description: str):
    yield lambda done: None


def progress_bar(progress, total: int, description: str):
    """`progress(total, description)` is a context manager that yields a callable taking the number done (the CLI's
    progress bar); None shows nothing."""
    return (progress or _silent)(total, description)


def make_context(device="auto", context=None):
    """The distributed.Context to run in: the one given (a torchrun rank), else one process on `device`."""
    if context is not None:
        return context
    from ..engine.device import resolve_device
    from ..engine.distributed import Context

    return Context(device=resolve_device(device) if isinstance(device, str) or device is None else device)


def is_path(value) -> bool:
    return isinstance(value, PathLike)


def path_list(value) -> list[Path]:
    """The paths among a data argument: a path, or a list of paths; nothing for an array or a tensor."""
    if is_path(value):
        return [Path(value)]
    if isinstance(value, (list, tuple)) and value and all(is_path(v) for v in value):
        return [Path(v) for v in value]
    return []


def provenance(*values) -> dict:
    """{file name: {path, sha256}} of every path among `values` (arrays and None are skipped)."""
    from ..data.readers import sha256_file

    record = {}
    for value in values:
        for p in path_list(value):
            record[p.name or str(p)] = {"path": str(p), "sha256": sha256_file(p) if p.is_file() else None}
    return record


class Share:
    """Which shards of the whole input this rank holds, and where its rows start."""

    def __init__(self, indices, total_shards: int, offset: int, total_rows: int):
        self.indices, self.total_shards, self.offset, self.total_rows = indices, total_shards, offset, total_rows


def open_logits(data, key=None, context=None, what: str = "logits", notes: Notes | None = None):
    """A LogitsSource for an array, a tensor, a LogitsSource, a file, a folder or glob of shards, or several paths
    read one after another. Under torchrun, this rank's contiguous share of all the shards."""
    from ..data.readers import LogitsSource, concat_sources, read_logits, source_from_array

    if isinstance(data, LogitsSource):
        source = data
    elif not path_list(data):
        source = source_from_array(data, what=what)
    else:
        paths = path_list(data)
        if context is not None and context.active:
            source = _open_share(paths, key, context, what)
        else:
            sources = [read_logits(path, key, what) for path in paths]
            source = sources[0] if len(sources) == 1 else concat_sources(sources,
                                                                         f"{paths[0]} (+{len(paths) - 1} more)")
    if notes is not None:
        for note in source.notes:
            notes.warn(note)
    return source


def _open_share(paths, key, context, what):
    from ..engine.distributed import my_share
    from ..data.readers import concat_sources, read_logits, shard_paths

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
    source.share = Share(list(share), len(files), offset, sum(rows for rows, _ in shapes))
    source.title = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
    return source


def title(source) -> str:
    return source.title


class Columns:
    """The shape facts `open_labels` checks labels against."""

    def __init__(self, num_samples: int, num_classes: int, name: str):
        self.num_samples, self.num_classes, self.name = num_samples, num_classes, name
        self.share = None


def open_labels(data, source, classes=None, column=None, context=None) -> np.ndarray:
    """Labels for the rows of `source`: an array or tensor, or a labels file (under torchrun, this rank's share)."""
    from ..data.readers import read_labels

    if not is_path(data):
        labels = label_array(data)
        _check_labels(labels, source, "labels")
        return labels
    share = source.share
    if share is not None:
        failure = labels = None
        try:
            share.num_classes = source.num_classes
            labels = _share_labels(data, share, source.num_samples, classes, column)
            _check_labels(labels, source, data)
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
        context.agree(failure)
        return labels
    labels = read_labels(data, classes, column)
    _check_labels(labels, source, data)
    return labels


def label_array(data) -> np.ndarray:
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    labels = np.asarray(data)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputDataError(f"labels must be a 1-D array of integer class ids, got shape {labels.shape} of "
                             f"{labels.dtype}", "labels")
    return labels.astype(np.int64)


def _check_labels(labels, source, path):
    from ..core.priors import check_labels

    if labels.shape[0] != source.num_samples:
        raise InputDataError(f"holds {labels.shape[0]} labels but {source.name} has {source.num_samples} rows", path)
    check_labels(labels, source.num_classes, str(path))
    return labels


def _share_labels(path, share, rows: int, classes, column):
    """This rank's labels: its shards of a labels folder or glob with as many shards as the logits, else its rows
    of one labels file."""
    from ..data.readers import read_labels, shard_paths
    from ..core.priors import check_labels

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


def read_names(classes) -> list[str] | None:
    """Class names: None, a list of names, or a classes file."""
    from ..data.readers import read_classes

    if classes is None:
        return None
    return read_classes(classes) if is_path(classes) else [str(c) for c in classes]


def class_names(classes, num_classes: int):
    """The class names for `num_classes` classes (None when none were given)."""
    if classes is None:
        return None
    names = read_names(classes)
    if len(names) != num_classes:
        raise MismatchError(f"lists {len(names)} class names but the logits have {num_classes} classes",
                            classes if is_path(classes) else "class_names")
    return names


def multi_label_given(calibration=None, priors=None) -> bool:
    """Whether a calibration or priors (objects, results holding them, or JSON files) are a multi-label head's."""
    from ..core.calibration import Calibration
    from ..core.conversions import held, is_multi_label_file
    from ..core.positive_rates import MultiLabelPriors

    found = held(calibration, "calibration", (Calibration,))
    return ((found is not None and found.multi_label) or held(priors, "priors", (MultiLabelPriors,)) is not None
            or is_multi_label_file(calibration) or is_multi_label_file(priors))


def open_priors(train_labels, priors, num_classes, smoothing, classes, column=None, required=True,
                parameter: str = "priors"):
    """The training priors: from training labels (a file or an array), or whatever `core.conversions.as_priors`
    takes as `priors` (a `count_priors` result, a `Priors`, a priors file, counts or probabilities)."""
    from ..core.conversions import PRIORS_KINDS, as_priors, held
    from ..core.priors import check_num_classes, priors_from_labels, read_train_labels

    if train_labels is not None and priors is not None:
        raise OptionError(f"give `train_labels` or `{parameter}`, not both", parameter)
    if train_labels is not None:
        if held(train_labels, "priors", PRIORS_KINDS) is not None:
            raise OptionError(f"holds priors, not labels: pass it as `{parameter}`", "train_labels")
        if is_path(train_labels):
            return read_train_labels(train_labels, num_classes, smoothing, classes, column)
        return priors_from_labels(label_array(train_labels), num_classes, smoothing, classes)
    if priors is not None:
        found = as_priors(priors, parameter, smoothing=smoothing, classes=classes)
        check_num_classes(found, num_classes, "the logits", str(priors) if is_path(priors) else parameter)
        return found
    if required:
        raise OptionError(f"the training priors are needed: give `train_labels` FILE or `{parameter}` FILE",
                          "train_labels")
    return None


def target_priors(spec, target_logits, prior, num_classes: int, key, device, budget, progress=None, context=None,
                  notes: Notes | None = None):
    """(q or None for uniform, a record of where q came from) for target_priors / target_logits: "uniform", "em"
    (estimated from target_logits), or whatever `core.conversions.as_target_priors` takes (an `estimate_priors`
    result, priors, a vector, a priors file)."""
    from ..core.conversions import as_target_priors

    word = str(spec).strip().lower() if is_path(spec) else None
    if word == "uniform":
        if target_logits is not None:
            raise OptionError("`target_logits` is for `target_priors` em", "target_logits")
        return None, None
    if word == "em":
        if target_logits is None:
            raise OptionError("`target_priors` em estimates the target priors from unlabeled logits: give "
                              "`target_logits`", "target_priors")
        return estimate(target_logits, prior, num_classes, key, device, budget, progress, context=context,
                        notes=notes)
    if target_logits is not None:
        raise OptionError("`target_logits` is for `target_priors` em", "target_logits")
    q, record = as_target_priors(spec, "target_priors")
    if q.shape != (num_classes,) and is_path(spec):  # as for a training priors file
        raise InputDataError(f"priors have {q.size} classes but the logits have {num_classes}", spec)
    if q.shape != (num_classes,):
        raise MismatchError(f"has {q.size} classes but the logits have {num_classes}", "target_priors")
    return q, record


def estimate(target_logits, prior, num_classes, key, device, budget, progress=None, tolerance=None,
             max_iterations=None, context=None, notes: Notes | None = None):
    """EM target priors of unlabeled logits: (q, a record of the estimate)."""
    from ..data.readers import sha256_file
    from ..methods.label_shift import DEFAULT_MAX_ITERATIONS, DEFAULT_TOLERANCE, estimate_target_priors

    source = open_logits(target_logits, key, context, notes=notes)
    where = target_logits if is_path(target_logits) else source.name
    if source.num_classes != num_classes:
        raise MismatchError(f"has {source.num_classes} classes but the priors have {num_classes}", where)
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if not tolerance > 0:
        raise OptionError(f"the EM tolerance must be > 0, got {tolerance}", "em_tolerance")
    iterations = max_iterations or DEFAULT_MAX_ITERATIONS
    with progress_bar(progress, iterations, "EM") as step:
        found = estimate_target_priors(source, prior.priors, tolerance, iterations, device, memory_budget=budget,
                                       progress=step, context=context)
    if notes is not None and found.floored:
        notes.warn(f"EM drove {len(found.floored)} class(es) to a prior of 0 (the model never predicts them on "
                   f"{where}): {found.floored[:20]}; their prior is set to {found.floor:g} so that log(q) stays "
                   "finite, which rules them out in practice")
    if notes is not None and not found.converged:
        notes.warn(f"EM on {where} did not converge in {found.iterations} iterations (last change "
                   f"{found.change:.2g}, tolerance {found.tolerance:g}); the priors are the last iterate")
    info = {"kind": "em", "path": str(where),
            "sha256": sha256_file(target_logits) if is_path(target_logits) and Path(target_logits).is_file()
            else None,
            **{k: v for k, v in found.to_dict().items() if k != "priors"}}
    return found.priors, info


def calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, column, required=True,
                    target="uniform", target_logits=None, key=None, device="cpu", budget=None, context=None,
                    notes: Notes | None = None, names_from: str = "`class_names`"):
    """The calibration to apply: what `core.conversions.as_calibration` takes (a `fit` result, a `Calibration`, a
    calibration file), or one built from `tau` and the training priors. A calibration whose class names disagree
    with `names` (given by `names_from`) is refused."""
    from ..core.calibration import Calibration
    from ..core.conversions import as_calibration
    from ..data.readers import check_same_classes

    if calibration is not None:
        if tau is not None or train_labels is not None or priors is not None:
            raise OptionError("give `calibration`, or `tau` with `train_labels`/`priors`, not both", "calibration")
        if not is_path(target) or str(target).strip().lower() != "uniform" or target_logits is not None:
            raise OptionError("the calibration file carries its target priors; `target_priors` goes with `tau`",
                              "target_priors")
        loaded = as_calibration(calibration, "calibration")
        if num_classes is not None:
            loaded.check_num_classes(num_classes, "logits", str(calibration) if is_path(calibration) else None)
        check_same_classes(names, loaded.class_names, str(calibration) if is_path(calibration) else "calibration",
                           given_by=names_from)
        return loaded
    if tau is None:
        if required:
            raise OptionError("give `calibration`, or `tau` with `train_labels` or `priors`", "calibration")
        return None
    if not math.isfinite(tau):
        raise OptionError(f"tau must be a finite number, got {tau}", "tau")
    prior = open_priors(train_labels, priors, num_classes, smoothing, names, column)
    q, info = target_priors(target, target_logits, prior, prior.num_classes, key, device, budget, None, context,
                            notes)
    return Calibration(tau=tau, priors=prior.priors, counts=prior.counts, class_names=names or prior.classes,
                       smoothing=prior.smoothing, target_priors=q, target=info)


def check_width(features, weight) -> None:
    """Features must be as wide as the head's input: a MismatchError (the same exit code wherever it is found)."""
    width = int(weight.reshape(weight.shape[0], -1).shape[1])
    if features.num_classes != width:
        raise MismatchError(f"features have {features.num_classes} columns but the head takes {width}", features.name)


def logits_input(logits, labels, checkpoint, features, head, key, classes, device, adjusting: bool, context=None,
                 notes: Notes | None = None):
    """The logits source and the labels: from logits, or with checkpoint and features (logits = features @ W.T + b
    by the checkpoint's head). Also returns class names the checkpoint knows. `adjusting`: the workflow will adjust
    these logits, so a checkpoint patched already deserves a warning."""
    if (checkpoint is None) != (features is None):
        raise OptionError("`checkpoint` and `features` go together", "checkpoint" if checkpoint is None else "features")
    if checkpoint is None:
        if logits is None:
            raise OptionError("expected the logits and the labels, or only the labels with `checkpoint` and `features`",
                              "arguments")
        return open_logits(logits, key, context, notes=notes), labels, None
    from ..models.checkpoints import find_heads, open_checkpoint
    from ..engine.passes import head_logits

    if logits is not None:
        raise OptionError("with `checkpoint` and `features`, give only the labels", "arguments")
    model = open_checkpoint(checkpoint)
    if model.patch is not None and adjusting and notes is not None:
        notes.warn(f"{checkpoint} already carries a lacal patch (tau = {model.patch.get('tau')}), so its logits are "
                   "adjusted already; use the original checkpoint")
    names = read_names(classes) if classes is not None else model.class_names
    layers = find_heads(model, len(names) if names else None, head)
    if len(layers) > 1:
        raise CheckpointError(f"the model averages {' and '.join(repr(h.name) for h in layers)}, which read "
                              "different features; give the model's logits instead of `checkpoint` and `features`",
                              checkpoint)
    layer = layers[0]
    features_source = open_logits(features, key, context, what="features", notes=notes)
    weight = model.tensor(layer.weight)
    check_width(features_source, weight)
    source = head_logits(features_source, weight, model.tensor(layer.bias) if layer.bias else None, device,
                         f"{features} through {checkpoint} ({layer.name})")
    source.share = features_source.share
    return source, labels, model.class_names


SIZE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12, "k": 1 << 10,
              "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "tib": 1 << 40}
DEFAULT_BUDGET = 2 << 30


def memory_bytes(size) -> int:
    """A memory budget in bytes: an int, or a size such as "512MB" or "4GiB" (at least 1MB); None is 2GiB."""
    import re

    if size is None:
        return DEFAULT_BUDGET
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 10 ** 6:
            raise OptionError(f"expected at least 1MB, got {size} bytes", "memory_budget")
        return size
    text = str(size)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) * SIZE_UNITS[unit] < 10 ** 6:
        raise OptionError(f"expected a size of at least 1MB such as 512MB or 4GB, got {text!r}", "memory_budget")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def output_check(out, force: bool, *inputs) -> None:
    """Refuse `out` before any work (it exists, it is an input, its folder is missing)."""
    from ..data.writers import check_output

    if out is not None:
        check_output(out, force, [p for value in inputs for p in path_list(value)])


def paths_of(*values) -> list[Path]:
    return [p for value in values for p in path_list(value)]

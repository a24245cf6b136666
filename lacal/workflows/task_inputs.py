"""The inputs of a workflow, by task: labels (class ids, or an N x C 0/1 matrix for a multi-label head), training
priors (class priors, or per-label positive rates), the calibration to apply, and the tau search itself. `fit`,
`apply`, `report`, `compare` and `count_priors` call these with the `Task` of the call and are otherwise written
once."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..core.tasks import MULTI_LABEL, SINGLE_LABEL
from ..errors import InputDataError, MismatchError, OptionError
from .inputs import calibration_for, is_path, multi_label_given, open_labels, open_priors


def task_for(multi_label: bool = False, calibration=None, priors=None):
    """The task of a call: multi-label with `multi_label`, or when the calibration or priors given (objects, results
    holding them, or their JSON files) are a multi-label head's."""
    return MULTI_LABEL if multi_label or multi_label_given(calibration, priors) else SINGLE_LABEL


def is_multilabel_calibration(path) -> bool:
    """Whether a calibration file is multi-label (a file that cannot be read is reported when it is loaded)."""
    from ..core.conversions import is_multi_label_file

    return is_multi_label_file(path)


def task_labels(task, data, source, names=None, column=None, context=None) -> np.ndarray:
    """The labels of `source`'s rows: class ids, or (multi-label) the N x C bool label matrix."""
    if task.multi_label:
        return label_matrix(data, source, names, context)
    return open_labels(data, source, names, column, context)


def task_priors(task, train_labels=None, priors=None, num_classes: Optional[int] = None, smoothing: float = 0.0,
                names=None, column=None):
    """The training priors: `Priors` (class priors) or `MultiLabelPriors` (per-label positive rates)."""
    if task.multi_label:
        return training_priors(train_labels, priors, num_classes, smoothing, names)
    return open_priors(train_labels, priors, num_classes, smoothing, names, column)


def task_calibration(task, calibration, tau, train_labels, priors, num_classes, smoothing, names, column=None,
                     required=True, target="uniform", target_logits=None, key=None, device="cpu", budget=None,
                     context=None, notes=None, names_from: str = "`class_names`"):
    """The calibration to apply: the one given (or its file), or one built from `tau` and the training priors; a
    multi-label task takes only a multi-label calibration."""
    if task.multi_label:
        return multilabel_calibration(calibration, tau, train_labels, priors, num_classes, smoothing, names,
                                      required)
    return calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, column, required,
                           target, target_logits, key, device, budget, context, notes, names_from)


def search_tau(task, source, labels, prior, tau_range, search="exact", metric="balanced-error", grid_size=401,
               device="cpu", progress=None, memory_budget=None, context=None, keep_intervals=False):
    """The tau search of the task: `methods.fit_tau` (a `TauFit`) or `methods.fit_multilabel_tau` (a
    `MultiLabelFit`)."""
    if task.multi_label:
        from ..methods.multilabel import fit_multilabel_tau

        return fit_multilabel_tau(source, labels, prior, tau_range, metric, device, progress=progress,
                                  memory_budget=memory_budget, context=context)
    from ..methods.search import fit_tau

    return fit_tau(source, labels, prior, tau_range, search, metric, grid_size, device, progress=progress,
                   memory_budget=memory_budget, context=context, keep_intervals=keep_intervals)


def missing_labels(evaluation, where: str) -> list[str]:
    """The warning for multi-label labels without positive or negative samples (left out of the macro figures)."""
    missing = evaluation.labels_without_samples
    if not missing:
        return []
    return [f"{len(missing)} label(s) lack positive or negative {where} and are left out of the macro figures: "
            f"{missing[:20]}{' ...' if len(missing) > 20 else ''}"]


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


def training_matrix(train_labels) -> np.ndarray:
    """An array of multi-label training labels, checked to be an N x C 0/1 matrix."""
    matrix = np.asarray(train_labels)
    if matrix.ndim != 2 or not np.all((matrix == 0) | (matrix == 1)):
        raise InputDataError(f"multi-label training labels must be an N x C 0/1 matrix, got shape {matrix.shape}",
                             "train_labels")
    return matrix


def training_priors(train_labels=None, priors=None, num_classes: Optional[int] = None, smoothing: float = 0.0,
                    names=None):
    """`MultiLabelPriors` from training labels (a matrix or a file), or whatever `core.conversions.as_priors` takes
    as multi-label `priors` (a `count_priors(..., multi_label=True)` result, a `MultiLabelPriors`, its file)."""
    from ..core.conversions import as_priors
    from ..core.label_matrix import open_multilabel_priors
    from ..core.positive_rates import multilabel_priors_from_labels

    if train_labels is not None and priors is not None:
        raise OptionError("give `train_labels` or `priors`, not both", "priors")
    if priors is not None:
        found = as_priors(priors, "priors", multi_label=True, smoothing=smoothing, classes=names)
        if num_classes is not None and found.num_classes != num_classes:
            problem = f"priors have {found.num_classes} labels but the logits have {num_classes}"
            raise InputDataError(problem, priors) if is_path(priors) else MismatchError(problem, "priors")
        return found
    if train_labels is not None and not is_path(train_labels):
        matrix = training_matrix(train_labels)
        if num_classes is not None and matrix.shape[1] != num_classes:
            raise MismatchError(f"training labels have {matrix.shape[1]} labels but the logits have {num_classes}",
                                "train_labels")
        return multilabel_priors_from_labels(matrix, smoothing, names, None, "train_labels")
    return open_multilabel_priors(train_labels, None, num_classes, smoothing, names)


def multilabel_calibration(calibration=None, tau: Optional[float] = None, train_labels=None, priors=None,
                           num_classes: Optional[int] = None, smoothing: float = 0.0, names=None,
                           required: bool = True):
    """A multi-label `Calibration`: the one given (or its file, which must be multi-label), or one built from `tau`
    and the training priors."""
    import math

    from ..core.calibration import Calibration

    if calibration is not None or tau is None:  # the file, or nothing: as for a softmax head
        loaded = calibration_for(calibration, tau, train_labels, priors, num_classes, smoothing, names, None,
                                 required)
        if loaded is not None and not loaded.multi_label:
            raise MismatchError("is a single-label (softmax) calibration, but `multi_label` was given",
                                calibration if is_path(calibration) else "calibration")
        return loaded
    if not math.isfinite(tau):
        raise OptionError(f"tau must be a finite number, got {tau}", "tau")
    prior = training_priors(train_labels, priors, num_classes, smoothing, names)
    return Calibration(tau=tau, priors=prior.priors, counts=prior.positives, class_names=names or prior.classes,
                       smoothing=prior.smoothing, multi_label=True, train_samples=prior.num_samples)

"""`lacal.count_priors` and `lacal.estimate_priors`: the training priors from labels, and the target priors of
unlabeled data by EM (what `lacal priors` and `lacal priors --em` do)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core.tasks import SINGLE_LABEL, Task, task_of
from ..errors import MismatchError, OptionError
from .inputs import Notes, estimate, is_path, make_context, open_logits, open_priors, output_check, paths_of, \
    read_names


@dataclass(frozen=True, eq=False)
class PriorsResult:
    """Training priors counted from labels.

    Attributes:
        priors: the `Priors` (counts, priors, class names, source), or for a multi-label task the
            `MultiLabelPriors` (positives, rates, log-odds).
        num_labels: how many labels (multi-label: label rows, that is samples) were counted.
        name: where the labels came from.
        out: the priors file written, or None.
        task: the `Task` counted for.
    """

    priors: Any
    num_labels: int
    name: str
    out: Optional[Path] = None
    warnings: tuple[str, ...] = field(default=())
    task: Task = SINGLE_LABEL

    def to_dict(self) -> dict:
        """Exactly `lacal priors --json` (`lacal priors --multi-label --json` for a multi-label task)."""
        return self.priors.to_dict()


@dataclass(frozen=True, eq=False)
class EstimateResult:
    """Target priors q estimated by EM from unlabeled logits.

    Attributes:
        priors: q.
        train_priors: the `Priors` EM started from.
        info: how EM went (iterations, convergence, log-likelihood, floored classes).
        class_names: names of the classes, when known.
        name: the unlabeled logits.
        out: the priors file written, or None.
        warnings: classes EM drove to 0, no convergence.
    """

    priors: np.ndarray
    train_priors: Any
    info: dict
    class_names: Optional[list]
    name: str
    out: Optional[Path] = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """Exactly `lacal priors --em --json`."""
        return {"priors": [float(v) for v in self.priors], **{k: v for k, v in self.info.items() if k != "kind"}}


def count_priors(train_labels, *, num_classes: Optional[int] = None, smoothing: float = 0.0, class_names=None,
                 label_column: Optional[str] = None, out=None, force: bool = False,
                 multi_label: bool = False) -> PriorsResult:
    """Count training labels into class priors pi, as `lacal priors` does.

    Args:
        train_labels: class ids (an array or tensor), or a labels file (.npy, .txt, .csv; names with `class_names`).
        num_classes: the number of classes (default: the class names', else the largest label + 1); give it so that
            a class missing from the labels is caught.
        smoothing: added to every count (needed when a class has no samples).
        class_names: class names in id order (a list or a classes file).
        label_column: the column of a CSV labels file.
        out: write the priors as JSON here (for `priors=`); `force` replaces it.
        multi_label: `train_labels` is an N x C 0/1 matrix (an array, or a .npy, .csv or .txt file); count the
            positives per label into a `MultiLabelPriors`.

    Returns:
        A `PriorsResult`; `.priors` is the `Priors` (or `MultiLabelPriors`), `.to_dict()` is `lacal priors --json`
        (with `multi_label`, `lacal priors --multi-label --json`).

    Example:
        >>> lacal.count_priors("train_labels.txt", num_classes=100).priors.priors[:3]
    """
    from ..data.readers import read_labels, sha256_file
    from .inputs import label_array

    task = task_of(multi_label)
    task.refuse(label_column=label_column)
    names = read_names(class_names)
    output_check(out, force, train_labels, class_names)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise MismatchError(f"lists {len(names)} {task.unit} names but `num_classes` is {num_classes}",
                            class_names if is_path(class_names) else "class_names")
    if task.multi_label:
        from ..core.label_matrix import read_label_matrix
        from .task_inputs import training_matrix

        labels = (read_label_matrix(train_labels, num_classes or (len(names) if names else None), names)
                  if is_path(train_labels) else training_matrix(train_labels))
    else:
        labels = read_labels(train_labels, names, label_column) if is_path(train_labels) else label_array(train_labels)
    source, name = None, "train_labels" if task.multi_label else "labels"
    if is_path(train_labels):
        source, name = {"path": str(train_labels), "sha256": sha256_file(train_labels)}, str(train_labels)
    if task.multi_label:
        from ..core.positive_rates import multilabel_priors_from_labels

        priors = multilabel_priors_from_labels(labels, smoothing, names, source, name)
    else:
        from ..core.priors import priors_from_labels

        count = num_classes or (len(names) if names else int(labels.max()) + 1)
        priors = priors_from_labels(labels, count, smoothing, names, source, name if source else None)
    if out is not None:
        from ..data.writers import write_text

        write_text(out, json.dumps(priors.to_dict(), indent=2) + "\n", force, paths_of(train_labels, class_names))
    return PriorsResult(priors, int(labels.shape[0]), name, None if out is None else Path(out), (), task)


def estimate_priors(target_logits, train_priors=None, *, train_labels=None, class_names=None,
                    label_column: Optional[str] = None, smoothing: float = 0.0, tolerance: float = 1e-8,
                    max_iterations: int = 1000, key: Optional[str] = None, device: str = "auto", memory_budget=None,
                    out=None, force: bool = False, progress: Optional[Callable] = None,
                    context=None) -> EstimateResult:
    """Estimate the class priors q of unlabeled target data by EM (label shift), as `lacal priors --em` does.

    Args:
        target_logits: the model's logits on the unlabeled target data (an array, a tensor, a `LogitsSource`, a
            file, or a folder or glob of shards).
        train_priors: the training priors: a `count_priors` result, a `Priors`, a priors file, or a vector of counts
            or probabilities.
        train_labels: instead of `train_priors`, the training labels (an array or a file).
        class_names, label_column, smoothing: as for `count_priors`.
        tolerance: stop when no prior moves more than this.
        max_iterations: the iteration cap.
        key, device, memory_budget, progress, context: as for `fit`.
        out: write the estimated priors as JSON here (for `target_priors=`); `force` replaces it.

    Returns:
        An `EstimateResult`: `.priors` is q, `.to_dict()` is `lacal priors --em --json`.

    Example:
        >>> q = lacal.estimate_priors(test_logits, priors).priors
    """
    from ..core.priors import Priors
    from .inputs import multi_label_given

    if multi_label_given(None, train_priors):
        raise OptionError("holds a multi-label head's priors; EM estimates the target priors of a single-label "
                          "(softmax) head only", "train_priors")
    notes = Notes()
    names = read_names(class_names)
    context = make_context(device, context)
    output_check(out, force, target_logits, train_labels, train_priors)
    classes = open_logits(target_logits, key, context, notes=notes).num_classes
    prior = open_priors(train_labels, train_priors, classes, smoothing, names, label_column,
                        parameter="train_priors")
    q, info = estimate(target_logits, prior, classes, key, context.device, None, progress, tolerance, max_iterations,
                       context, notes)
    if out is not None and context.leader:
        from ..data.writers import write_text

        record = Priors(priors=q, classes=names or prior.classes, source=info).to_dict()
        write_text(out, json.dumps(record, indent=2) + "\n", force, paths_of(target_logits, train_labels,
                                                                            train_priors))
    return EstimateResult(q, prior, info, names or prior.classes,
                          str(target_logits) if is_path(target_logits) else "logits",
                          None if out is None else Path(out), tuple(notes.warnings))

"""Which task a command runs: multi-label with `--multi-label`, with a labels file that can only be an N x C 0/1
matrix, or with a multi-label calibration file; else single-label. The options each task takes are one table,
`lacal.core.tasks.OPTIONS`, which the library checks."""

from __future__ import annotations


def wanted(flag: bool, labels_path, what: str = "labels", label_column=None) -> bool:
    """Whether to run multi-label: `--multi-label`, or a labels file that can only be multi-label (said in a note).
    A `--label-column` names one column of single labels, so it is never guessed multi-label."""
    from ..core.label_matrix import label_matrix_kind

    if flag:
        return True
    if label_column is not None:
        return False
    kind = label_matrix_kind(labels_path) if labels_path is not None else None
    if kind is not None:
        from .render import line

        line(f"lacal: note: {labels_path} is {kind}, so the {what} are read as multi-label (one sigmoid output per "
             "label); pass --multi-label to say so and silence this note")
    return kind is not None

"""The option checks of the multi-label commands (`--multi-label`, or a labels file that is an N x C 0/1 matrix):
whether to run multi-label, and the options that do not apply. The work is `lacal.workflows.multilabel`, the tables
`cli_render_multilabel`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import OptionError


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


def refuse(options: dict, context=None) -> None:
    """Options that do not apply to a multi-label head (given: a truthy value)."""
    given = [flag for flag, value in options.items() if value]
    if given:
        raise OptionError(f"{', '.join(given)} do(es) not apply to multi-label heads yet", given[0])
    if context is not None and context.active:
        raise OptionError("multi-label commands do not run under torchrun yet; run them in one process", "torchrun")


def is_multilabel_calibration(path) -> bool:
    """Whether a calibration file given to apply or report is multi-label (a bad file is reported later)."""
    if path is None:
        return False
    from ..data.readers import check_readable, parse_json
    from ..errors import LacalError

    try:
        return bool(parse_json(check_readable(path).read_text(encoding="utf-8")).get("multi_label"))
    except (OSError, ValueError, AttributeError, RecursionError, LacalError):
        return False

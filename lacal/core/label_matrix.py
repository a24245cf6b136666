"""Multi-label files: N x C 0/1 label matrices in three formats, and the multi-label priors file.

- `.npy`: an N x C array of 0/1 (bool, integers or whole floats);
- `.csv`: one 0/1 column per label, with or without a header row of label names;
- `.txt`: one line per sample holding the comma-separated ids (or names, with --classes) of its labels; an empty
  line is a sample with no label.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputDataError, InputFileError, LacalError, PriorsError
from ..data.readers import NUMPY_READ_ERRORS, check_npy_size, check_readable, check_same_classes, check_widths, \
    load_npy, parse_json, read_csv_rows
from .positive_rates import PRIORS_FORMAT, MultiLabelPriors, multilabel_priors, multilabel_priors_from_labels

BINARY = ("0", "1")


def read_label_matrix(path: str | os.PathLike, num_classes: int | None = None,
                      classes: list[str] | None = None) -> np.ndarray:
    """An N x C bool matrix from a .npy, .csv or .txt multi-label file (see the module docstring). `num_classes`,
    when given, is checked (a matrix) or bounds the ids (a list per line, default the largest id + 1)."""
    path = check_readable(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)  # its size checked against its header first
        if array.ndim != 2:
            raise InputDataError(f"multi-label labels must be an N x C 0/1 matrix, got shape {array.shape}", path)
        if array.dtype.kind not in "biuf" or not np.all((array == 0) | (array == 1)):
            raise InputDataError("multi-label labels must hold only 0 and 1", path)
        matrix = array.astype(bool)
    elif suffix == ".csv":
        matrix = _csv_matrix(path)
    elif suffix == ".txt":
        matrix = _id_lists(path, num_classes, classes)
    else:
        raise InputFileError(f"unknown multi-label labels format {suffix or '(no suffix)'!r}; use .npy, .csv or "
                             ".txt", path)
    if matrix.shape[0] == 0:
        raise InputDataError("holds no labels", path)
    if num_classes is not None and matrix.shape[1] != num_classes:
        raise InputDataError(f"has {matrix.shape[1]} label columns but the logits have {num_classes}", path)
    return matrix


def _csv_matrix(path: Path) -> np.ndarray:
    rows = read_csv_rows(path)
    if rows and not all(cell.strip() in BINARY for cell in rows[0]):
        rows = rows[1:]  # a header of label names
    check_widths(rows, path, "holds no rows", "data row")
    for number, row in enumerate(rows, start=1):
        bad = next((cell for cell in row if cell.strip() not in BINARY), None)
        if bad is not None:
            raise InputDataError(f"data row {number} holds {bad!r}; a multi-label CSV holds one 0/1 column per "
                                 "label", path)
    return np.array([[cell.strip() == "1" for cell in row] for row in rows], dtype=bool)


def _id_lists(path: Path, num_classes: int | None, classes: list[str] | None) -> np.ndarray:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputFileError("is not UTF-8 text", path) from None
    lookup = {name: i for i, name in enumerate(classes)} if classes else {}
    ids = []
    for number, line in enumerate(lines, start=1):
        row = []
        for token in (t.strip() for t in line.split(",") if t.strip()):
            if token in lookup:
                row.append(lookup[token])
                continue
            try:
                row.append(int(token))
            except ValueError:
                hint = "it is not in the --classes list" if classes else "pass --classes FILE to map names to ids"
                raise InputDataError(f"line {number}: label {token!r} is not an integer label id; {hint}",
                                     path) from None
            if row[-1] < 0:
                raise InputDataError(f"line {number}: label {row[-1]} is negative; label ids start at 0", path)
        ids.append(row)
    largest = max((max(row) for row in ids if row), default=-1)
    count = num_classes if num_classes is not None else (len(classes) if classes else largest + 1)
    if largest >= count:
        number = next(n for n, row in enumerate(ids, start=1) if row and max(row) == largest)
        raise InputDataError(f"line {number}: label {largest} is out of range for {count} labels "
                             f"(ids 0..{count - 1})", path)
    matrix = np.zeros((len(ids), max(count, 0)), dtype=bool)
    for i, row in enumerate(ids):
        matrix[i, row] = True
    return matrix


INDEX_COLUMN_NAMES = ("sample", "samples", "id", "ids", "index", "idx", "image", "images", "file", "filename",
                      "path", "name")
"""Header names of a column that numbers or names the samples: a CSV with one holds single labels beside it."""


def _csv_matrix_kind(rows: list[list[str]], label_names) -> str | None:
    """A CSV is a multi-label matrix only if its header (when it has one) names no label or sample column and every
    data row is 0/1 in two or more columns; one 0/1 row is not enough (`sample,cls` above `0,0`, `1,1`, `2,0`...)."""
    if not rows:
        return None
    header = None if all(_number(cell) for cell in rows[0]) else [cell.lower() for cell in rows[0]]
    if header is not None and any(name in label_names or name in INDEX_COLUMN_NAMES for name in header):
        return None
    data = rows[1:] if header is not None else rows
    width = len(data[0]) if data else 0
    if width < 2 or not all(len(row) == width and all(cell in BINARY for cell in row) for row in data):
        return None
    return f"a CSV of {width} 0/1 columns" + (" under a header" if header is not None else "")


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def label_matrix_kind(path: str | os.PathLike) -> str | None:
    """What makes `path` a multi-label file, or None: an N x C 0/1 .npy or .csv (C > 1, no single label column
    name), or a .txt with comma-separated label lists."""
    from ..data.readers import LABEL_COLUMN_NAMES

    path = Path(path)
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as handle:
                check_npy_size(handle, os.fstat(handle.fileno()).st_size, path)
            array = np.load(path, allow_pickle=False, mmap_mode="r")
            if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind in "biuf" \
                    and np.all((array == 0) | (array == 1)):
                return f"a {array.shape[0]} x {array.shape[1]} matrix of 0/1"
        elif suffix == ".csv":
            return _csv_matrix_kind(read_csv_rows(path), LABEL_COLUMN_NAMES)
        elif suffix == ".txt":
            with open(path, encoding="utf-8") as handle:
                if any("," in line for line in handle):
                    return "a text file of comma-separated label lists"
    except (OSError, ValueError, OverflowError, UnicodeDecodeError, LacalError, *NUMPY_READ_ERRORS):
        return None
    return None


def read_multilabel_priors(path: str | os.PathLike, smoothing: float = 0.0,
                           classes: list[str] | None = None) -> MultiLabelPriors:
    """A multi-label priors file: the JSON `lacal priors --multi-label` writes, or any JSON object with
    "positives" (a count per label) and "num_samples" (the number of training samples)."""
    from ..data.readers import sha256_file

    path = check_readable(path)
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputFileError(f"is not a JSON multi-label priors file: {exc}", path) from None
    if not isinstance(data, dict) or "positives" not in data or "num_samples" not in data:
        raise PriorsError("a multi-label priors file is a JSON object with \"positives\" (a count per label) and "
                          "\"num_samples\"; write one with `lacal priors TRAIN_LABELS --multi-label --out FILE`",
                          path)
    if data.get("format", PRIORS_FORMAT) != PRIORS_FORMAT:
        raise PriorsError(f"has format {data.get('format')!r}, not {PRIORS_FORMAT!r}", path)
    positives = data["positives"]
    if not isinstance(positives, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in positives):
        raise PriorsError("\"positives\" must be a list of counts", path)
    stored = data.get("smoothing", 0.0)
    names = data.get("classes")
    check_same_classes(classes, names if isinstance(names, list) else None, path, "the priors file")
    return multilabel_priors(positives, data["num_samples"], smoothing or float(stored or 0.0), classes or names,
                             {"path": str(path), "sha256": sha256_file(path)}, str(path))


def open_multilabel_priors(train_labels=None, priors_path=None, num_classes: int | None = None,
                           smoothing: float = 0.0, classes=None) -> MultiLabelPriors:
    """Multi-label priors from training labels (any multi-label format) or a priors file, checked against the
    number of labels."""
    from ..errors import OptionError
    from ..data.readers import sha256_file

    if train_labels is not None and priors_path is not None:
        raise OptionError("give `train_labels` or `priors`, not both", "priors")
    if train_labels is not None:
        matrix = read_label_matrix(train_labels, num_classes, classes)
        return multilabel_priors_from_labels(matrix, smoothing, classes,
                                             {"path": str(train_labels), "sha256": sha256_file(train_labels)},
                                             str(train_labels))
    if priors_path is None:
        raise OptionError("the training priors are needed: give `train_labels` FILE or `priors` FILE",
                          "--train-labels")
    priors = read_multilabel_priors(priors_path, smoothing, classes)
    if num_classes is not None and priors.num_classes != num_classes:
        raise InputDataError(f"priors have {priors.num_classes} labels but the logits have {num_classes}",
                             priors_path)
    return priors


def write_multilabel_predictions(path, blocks, class_names: list[str] | None, top_k: int = 1, force: bool = False,
                                 inputs=()) -> None:
    """One CSV row per sample: its index, the labels predicted (adjusted logit > 0, space-separated ids or names),
    and the `top_k` labels with the highest adjusted logits with their sigmoid probabilities."""
    import csv
    import io

    import torch

    from ..data.writers import atomic_path

    def name(k: int) -> str:
        return class_names[k] if class_names else str(k)

    header = ["sample", "labels"] + [column for rank in range(1, top_k + 1)
                                     for column in (f"label_{rank}", f"probability_{rank}")]
    with atomic_path(path, force, inputs) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for start, block in blocks:
                scores = block.double()
                top = torch.sigmoid(scores).topk(top_k, dim=1)
                buffer = io.StringIO()
                rows = csv.writer(buffer)
                for offset, (on, ids, values) in enumerate(zip((scores > 0).tolist(), top.indices.tolist(),
                                                               top.values.tolist())):
                    row = [start + offset, " ".join(name(k) for k, flag in enumerate(on) if flag)]
                    for k, value in zip(ids, values):
                        row += [name(k), f"{value:.6g}"]
                    rows.writerow(row)
                handle.write(buffer.getvalue())

"""Writers. Every file goes to a temporary sibling first and is renamed into place, so a failure never leaves a
partial output and an existing file is never half-overwritten."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import OutputError

LOGITS_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth")
PREDICTION_SUFFIXES = (".csv",)


def check_output(path: str | os.PathLike, force: bool = False, inputs=()) -> Path:
    """Refuse an output that exists (without `force`), is an input, or sits in a folder that does not exist."""
    from .load import expand_inputs

    path = Path(path)
    for source in expand_inputs(inputs):
        if source.is_dir() and path.resolve().parent == source.resolve():
            raise OutputError(f"is inside the input folder {source}, where it would be read as one more shard; "
                              "choose another --out", path)
        if source.exists() and path.exists() and os.path.samefile(path, source):
            raise OutputError("is also an input; lacal never writes over its input, choose another --out", path)
    if path.is_dir():
        raise OutputError("is a folder; give a file name", path)
    if path.exists() and not force:
        raise OutputError("already exists; pass --force to replace it", path)
    if not path.parent.is_dir():
        raise OutputError(f"folder {path.parent} does not exist", path)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False, inputs=()):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on any error it is removed."""
    path = check_output(path, force, inputs)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".lacal-tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open would
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as done:
            os.fsync(done.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        _remove(temporary)
        raise OutputError(f"cannot write: {exc.strerror or exc}", path) from None
    except BaseException:
        _remove(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_text(path, text: str, force: bool = False, inputs=()) -> None:
    with atomic_path(path, force, inputs) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_logits(path, blocks, shape: tuple[int, int], dtype_name: str, force: bool = False, inputs=(),
                 key: str = "logits") -> list[str]:
    """Write N x C logits given as an iterator of row blocks (CPU tensors), in the format named by the suffix.

    .npy is streamed to disk block by block; the other formats hold the array in memory. Returns notes (for example
    a bfloat16 array stored as float32 in a numpy format, which has no bfloat16).
    """
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LOGITS_SUFFIXES:
        raise OutputError(f"unknown output format {suffix or '(no suffix)'!r}; use one of "
                          f"{', '.join(LOGITS_SUFFIXES)}", path)
    notes = []
    numpy_dtype = dtype_name
    if dtype_name == "bfloat16" and suffix in (".npy", ".npz"):
        numpy_dtype = "float32"
        notes.append(f"{path}: numpy has no bfloat16, so the adjusted logits are stored as float32")
    with atomic_path(path, force, inputs) as temporary:
        if suffix == ".npy":  # written block by block: neither the array nor a map of the file is held in memory
            with open(temporary, "wb") as handle:
                np.lib.format.write_array_header_1_0(
                    handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(numpy_dtype)), "fortran_order": False,
                             "shape": tuple(shape)})
                written = 0
                for start, block in blocks:
                    if start != written:
                        raise ValueError(f"blocks out of order: expected row {written}, got {start}")
                    array = (block.float() if block.dtype == torch.bfloat16 else block).numpy()
                    handle.write(np.ascontiguousarray(array, dtype=numpy_dtype).tobytes())
                    written += block.shape[0]
                if written != shape[0]:
                    raise ValueError(f"expected {shape[0]} rows, got {written}")
            return notes
        whole = torch.cat([block for _, block in blocks]) if shape[0] else torch.empty(shape)
        if suffix == ".npz":
            if whole.dtype == torch.bfloat16:
                whole = whole.float()
            with open(temporary, "wb") as handle:
                np.savez(handle, **{key: whole.numpy()})
        elif suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({key: whole.contiguous()}, str(temporary))
        else:
            torch.save(whole, temporary)
    return notes


def write_predictions(path, blocks, class_names: list[str] | None, top_k: int = 1, force: bool = False,
                      inputs=()) -> None:
    """Write one CSV row per sample: its index, the predicted class id (and name), and its softmax probability;
    with top_k > 1, the next classes by rank as class_2, probability_2, ... columns."""
    import torch

    header = ["sample", "class"] + (["name"] if class_names else []) + ["probability"]
    for rank in range(2, top_k + 1):
        header += [f"class_{rank}"] + ([f"name_{rank}"] if class_names else []) + [f"probability_{rank}"]
    with atomic_path(path, force, inputs) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for start, block in blocks:
                probabilities = torch.softmax(block.double(), dim=1)
                top = probabilities.topk(top_k, dim=1)
                buffer = io.StringIO()
                rows = csv.writer(buffer)
                for offset, (ids, values) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
                    row = [start + offset]
                    for class_id, value in zip(ids, values):
                        row += [class_id] + ([class_names[class_id]] if class_names else []) + [f"{value:.6g}"]
                    rows.writerow(row)
                handle.write(buffer.getvalue())

"""Readers: logits, labels, class names. Each reader names the file in every error it raises.

Logits are returned as a `LogitsSource`, which hands out row blocks as CPU tensors, so that later stages can stream a
memory-mapped file without loading it whole. New input kinds register a reader in `LOGITS_READERS`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pickle
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputDataError, InputFileError, LacalError, shown

LOGIT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INPUT_DTYPES = LOGIT_DTYPES + ("bool", "uint8", "int8", "int16", "int32", "int64")
PROBABILITY_CHECK_ROWS = 1024
PROBABILITY_CHECK_VALUES = 1 << 20  # and at most this many values (8 MiB in float64), however many classes


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DuplicateKeyError(json.JSONDecodeError):
    """A JSON object that names one key twice: parsers disagree on which value counts (Python's and JavaScript's
    take the last, others the first or refuse), so lacal refuses it rather than guess."""

    def __init__(self, key: str):
        ValueError.__init__(self, f"the key {key!r} appears twice in one object (JSON readers disagree on which "
                                  "value counts)")
        self.msg, self.doc, self.pos, self.lineno, self.colno = str(self), "", 0, 1, 1

    def __str__(self) -> str:
        return self.args[0]


def _unique_keys(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = value
    return seen


def parse_json(text: str | bytes):
    """`json.loads` that refuses an object naming a key twice (raising DuplicateKeyError, a JSONDecodeError). Every
    JSON input file a user names (calibration, priors, shard index, class names) is parsed with it; model files' own
    JSON (config.json, weight indexes, safetensors headers, patch records) is read with `json.loads`."""
    return json.loads(text, object_pairs_hook=_unique_keys)


SPECIAL_FILES = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"),
                 (stat.S_ISSOCK, "socket"))


def file_kind(mode: int) -> str:
    """What a file of this mode is, in words ("regular file", "folder", "character device", ...)."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "folder"
    return next((name for test, name in SPECIAL_FILES if test(mode)), "special file")


def stat_or_none(path: str | os.PathLike, error=InputFileError) -> os.stat_result | None:
    """os.stat of `path` (following links), None if nothing is there; a name too long, a link loop or another
    failure is raised as `error` naming the path."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise error(f"{getattr(exc, 'strerror', None) or exc}", path) from None


def check_readable(path: str | os.PathLike) -> Path:
    """Raise InputFileError unless `path` is an existing, readable regular file: a device (`/dev/zero`), a FIFO or a
    socket is refused by name, even through a symbolic link, since reading one may never end."""
    path = Path(path)
    info = stat_or_none(path)
    if info is None:
        raise InputFileError("no such file", path)
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError("is a folder, expected a file", path)
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"is a {file_kind(info.st_mode)}, not a regular file; lacal reads only regular files",
                             path)
    if not os.access(path, os.R_OK):
        raise InputFileError("permission denied", path)
    return path


# ---------------------------------------------------------------------------------------------------------- logits


class LogitsSource:
    """An N x C block of logits that can be read a range of rows at a time.

    `rows(start, stop)` returns a CPU torch tensor in the file's dtype. `notes` holds warnings found while opening
    (for example, rows that look like probabilities), for the caller to show. Under torchrun, `share` says which
    shards of the whole input this rank holds and `title` names the whole input (set by lacal.workflows.inputs).
    """

    def __init__(self, name: str, shape: tuple[int, int], dtype_name: str, read_rows: Callable[[int, int], "object"]):
        self.name = name
        self.shape = shape
        self.dtype_name = dtype_name
        self._read_rows = read_rows
        self.notes: list[str] = []
        self.share = None
        self.title = name

    @property
    def num_samples(self) -> int:
        return self.shape[0]

    @property
    def num_classes(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 1

    def rows(self, start: int, stop: int):
        return self._read_rows(start, stop)

    def __repr__(self) -> str:
        return f"LogitsSource({self.name!r}, shape={self.shape}, dtype={self.dtype_name})"


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def source_from_array(array, name: str = "<array>", what: str = "logits") -> LogitsSource:
    """Wrap an in-memory or memory-mapped numpy array, or a torch tensor, as a LogitsSource. `what` names the
    content in errors ("logits" or "features"); only logits are checked for rows that look like probabilities."""
    import torch

    if isinstance(array, LogitsSource):
        return array
    if isinstance(array, torch.Tensor):
        tensor = array.detach()
        _check_shape_dtype(tuple(tensor.shape), _dtype_name(tensor.dtype), name, what)
        source = LogitsSource(name, tuple(tensor.shape), _dtype_name(tensor.dtype),
                              lambda a, b: tensor[a:b])
    else:
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        _check_shape_dtype(array.shape, array.dtype.name, name, what)
        # a writable in-memory array is viewed; a read-only or memory-mapped one is copied a block at a time
        view = array.flags.writeable and not isinstance(array, np.memmap)
        source = LogitsSource(name, tuple(array.shape), array.dtype.name,
                              (lambda a, b: torch.from_numpy(array[a:b])) if view else
                              (lambda a, b: torch.from_numpy(np.array(array[a:b]))))
    if what == "logits":
        _note_probabilities(source)
    return source


def _check_shape_dtype(shape: tuple, dtype_name: str, name: str, what: str = "logits") -> None:
    if what == "inputs":  # model inputs: any shape with samples first, any numeric dtype
        if len(shape) < 1 or shape[0] == 0:
            raise InputDataError(f"inputs need at least one sample, got shape {tuple(shape)}", name)
        if dtype_name not in INPUT_DTYPES:
            raise InputDataError(f"inputs have dtype {dtype_name}; expected one of {', '.join(INPUT_DTYPES)}", name)
        return
    columns = "classes" if what == "logits" else "features"
    if len(shape) != 2:
        raise InputDataError(f"{what} must be a 2-D array (samples x {columns}), got shape {tuple(shape)}", name)
    if dtype_name not in LOGIT_DTYPES:
        raise InputDataError(f"{what} have dtype {dtype_name}; expected one of {', '.join(LOGIT_DTYPES)}", name)
    if shape[0] == 0:
        raise InputDataError(f"{what} have no rows", name)
    if what == "logits" and shape[1] < 2:
        raise InputDataError(f"logits need at least 2 classes (columns), got {shape[1]}", name)


def _note_probabilities(source: LogitsSource) -> None:
    rows = max(1, min(PROBABILITY_CHECK_ROWS, PROBABILITY_CHECK_VALUES // max(1, source.num_classes)))
    head = source.rows(0, min(rows, source.num_samples)).double()
    if not bool(head.isfinite().all()):
        return  # the scorer reports non-finite values with their row
    if bool((head >= 0).all()) and bool(((head.sum(1) - 1).abs() < 1e-3).all()):
        source.notes.append(
            f"{source.name}: every row is non-negative and sums to 1, so these look like probabilities, not logits; "
            "pass the logits (the scores before softmax), or log-probabilities (for example numpy.log(p))")


def _pick_key(keys: list[str], key: str | None, path: Path, what: str) -> str:
    if key is not None:
        if key not in keys:
            raise InputDataError(f"no {what} named {key!r}; it holds {', '.join(map(repr, keys)) or 'nothing'}", path)
        return key
    if len(keys) != 1:
        raise InputDataError(f"holds {len(keys)} {what}s ({', '.join(map(repr, keys[:10]))}); "
                             f"choose one with --key NAME", path)
    return keys[0]


NUMPY_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, MemoryError, OverflowError)


def check_header(shape, dtype, path) -> None:
    """Refuse a .npy header whose array holds Python objects (pickled: lacal never unpickles them), or whose shape
    has a negative dimension (numpy reads one without complaint)."""
    if dtype.hasobject:
        raise InputFileError(f"cannot read as .npy: it holds Python objects ({dtype}), which lacal never unpickles; "
                             "save a numeric array", path)
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise InputFileError(f"cannot read as .npy: its header has the shape {tuple(shape)}, with a negative "
                             "dimension", path)


def check_npy_size(handle, available: int, path, name: str = "") -> None:
    """Refuse a .npy stream (at its start) whose header promises more bytes than the `available` ones: a tiny
    file must not make lacal allocate a huge array."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        return  # numpy checks the rest when it loads
    check_header(shape, dtype, path)
    needed = math.prod(shape) * dtype.itemsize
    if needed > available - handle.tell():
        raise InputFileError(f"is cut short: the header{' of ' + name if name else ''} promises shape "
                             f"{tuple(shape)} of {dtype.name} ({needed:,} bytes)", path)


def load_npy(path: Path) -> np.ndarray:
    """A whole small .npy file (labels, priors), its size checked against its header before anything is allocated."""
    try:
        with open(path, "rb") as handle:
            check_npy_size(handle, os.fstat(handle.fileno()).st_size, path)
        return np.load(path, allow_pickle=False)
    except NUMPY_READ_ERRORS as exc:
        raise InputFileError(f"cannot read as .npy: {exc or 'the file is empty or cut short'}", path) from None


def _read_npy(path: Path, key: str | None, what: str = "logits") -> LogitsSource:
    """A .npy file is read a block of rows at a time, with positioned reads: nothing of it stays in memory beyond
    the block in hand (pages of a memory map would stay resident and count against the memory budget)."""
    try:
        handle = open(path, "rb")
        version = np.lib.format.read_magic(handle)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            handle.close()
            return _read_npy_mapped(path, what)
        shape, fortran_order, dtype = reader[version](handle)
        offset = handle.tell()
    except NUMPY_READ_ERRORS as exc:
        raise InputFileError(f"cannot read as .npy: {exc or 'the file is empty or cut short'}", path) from None
    try:
        check_header(shape, dtype, path)
        if math.prod(shape) * dtype.itemsize > os.fstat(handle.fileno()).st_size - offset:  # Python ints: exact
            raise InputFileError(f"is cut short: the header promises shape {tuple(shape)} of {dtype.name}", path)
    except LacalError:
        handle.close()
        raise
    if fortran_order:
        handle.close()
        return _read_npy_mapped(path, what)
    _check_shape_dtype(shape, dtype.name, str(path), what)
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    if os.fstat(handle.fileno()).st_size < offset + shape[0] * row_bytes:
        handle.close()
        raise InputFileError(f"is cut short: the header promises shape {tuple(shape)} of {dtype.name}", path)
    native = dtype.newbyteorder("=")

    def read_rows(start: int, stop: int):
        import torch

        block = np.empty((stop - start, *shape[1:]), dtype=dtype)
        view = memoryview(block.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            got = os.preadv(handle.fileno(), [view[done:]], offset + start * row_bytes + done)
            if got == 0:
                raise InputFileError("ended before its last row", path)
            done += got
        return torch.from_numpy(block if dtype.isnative else block.astype(native))

    source = LogitsSource(str(path), tuple(shape), dtype.name, read_rows)
    source._handle = handle  # keep the file open while the source lives
    if what == "logits":
        _note_probabilities(source)
    return source


def _read_npy_mapped(path: Path, what: str) -> LogitsSource:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except NUMPY_READ_ERRORS as exc:
        raise InputFileError(f"cannot read as .npy: {exc or 'the file is empty or cut short'}", path) from None
    return source_from_array(array, str(path), what)


def _read_npz(path: Path, key: str | None, what: str = "logits") -> LogitsSource:
    try:
        with np.load(path, allow_pickle=False) as archive:
            name = _pick_key(list(archive.files), key, path, "array")
            member = archive.zip.getinfo(f"{name}.npy" if f"{name}.npy" in archive.zip.namelist() else name)
            with archive.zip.open(member) as stream:
                check_npy_size(stream, member.file_size, path, repr(name))
            array = archive[name]
    except NUMPY_READ_ERRORS as exc:
        raise InputFileError(f"cannot read as .npz: {exc or type(exc).__name__}", path) from None
    return source_from_array(array, str(path), what)


def _read_safetensors(path: Path, key: str | None, what: str = "logits") -> LogitsSource:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt")
        name = _pick_key(list(handle.keys()), key, path, "tensor")
        tensor_slice = handle.get_slice(name)
        shape = tuple(tensor_slice.get_shape())
        dtype_name = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}.get(
            tensor_slice.get_dtype(), tensor_slice.get_dtype().lower())
    except (SafetensorError, OSError) as exc:
        raise InputFileError(f"cannot read as safetensors: {exc}", path) from None
    _check_shape_dtype(shape, dtype_name, str(path), what)
    source = LogitsSource(str(path), shape, dtype_name, lambda a, b: tensor_slice[a:b])
    source._handle = handle  # keep the file open while the source lives
    if what == "logits":
        _note_probabilities(source)
    return source


def load_torch_file(path: Path):
    """torch.load with weights_only=True; a file that needs code to unpickle is refused, never run."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # protocol notes from the safe unpickler
            return _torch_load(torch, path)
    except pickle.UnpicklingError as exc:
        details = [line.strip() for line in str(exc).splitlines()
                   if line.strip().startswith(("Unsupported", "Trying to load", "Unsupported global"))]
        detail = details[0].rstrip(".") if details else "it holds objects other than tensors and plain containers"
        raise InputFileError(
            "refused: loading this PyTorch file would run code from it (lacal loads only tensors and plain "
            f"containers, with weights_only=True): {detail}", path) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            struct.error, UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as exc:
        # a malformed pickle makes the weights_only unpickler fail in many ways (`.` alone: pop from an empty stack)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(f"cannot read as a PyTorch file: {first}", path) from None


def _safe_globals(torch):
    """The plain classes training scripts store beside the weights, allowed through the weights_only unpickler:
    argparse.Namespace, which timm's CheckpointSaver and torchvision's reference train.py keep as `args` (timm loads
    its own files the same way). Rebuilding one sets attributes from the file; it runs no code."""
    import argparse
    import contextlib

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext()


def _torch_load(torch, path: Path):
    with _safe_globals(torch):
        return _torch_load_weights(torch, path)


class _Bounded:
    """A file whose reads never ask for more than what is left in it: a pickle opcode may declare a string of 4 GiB
    in a file of 5 bytes, and the reader would allocate what it was told before finding the file short."""

    def __init__(self, handle):
        self._handle = handle
        self._size = os.fstat(handle.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        left = max(0, self._size - self._handle.tell())
        return self._handle.read(left if size is None or size < 0 or size > left else size)

    def readline(self, size: int = -1) -> bytes:
        return self._handle.readline(size)

    def seek(self, *args) -> int:
        return self._handle.seek(*args)

    def tell(self) -> int:
        return self._handle.tell()


def _torch_load_weights(torch, path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        with open(path, "rb") as handle:  # a legacy (not zip) file: read through the bound
            return torch.load(_Bounded(handle), map_location="cpu", weights_only=True)


def _read_torch(path: Path, key: str | None, what: str = "logits") -> LogitsSource:
    import torch

    obj = load_torch_file(path)
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        obj = tensors[_pick_key(list(tensors), key, path, "tensor")]
    if not isinstance(obj, torch.Tensor):
        raise InputDataError(f"holds a {type(obj).__name__}, expected a tensor of {what}", path)
    return source_from_array(obj, str(path), what)


def check_widths(rows: list[list[str]], path, empty: str, row_name: str = "row") -> int:
    """The width of a CSV file's rows; an `InputDataError` (`empty` when it has no rows, else naming the first row of
    another width)."""
    if not rows:
        raise InputDataError(empty, path)
    width = len(rows[0])
    ragged = next((number for number, row in enumerate(rows, start=1) if len(row) != width), None)
    if ragged is not None:
        raise InputDataError(f"{row_name} {ragged} has {len(rows[ragged - 1])} values, the first row has {width}",
                             path)
    return width


def _read_csv_logits(path: Path, key: str | None, what: str = "logits") -> LogitsSource:
    rows = read_csv_rows(path)
    notes = []
    if rows and not _all_numeric(rows[0]):
        rows = rows[1:]  # a header
    elif rows and _column_numbers(rows[0]):
        first = ", ".join(rows[0][:3]) + (", ..." if len(rows[0]) > 3 else "")
        if any(not _all_integers(row) for row in rows[1:]):
            rows = rows[1:]
            notes.append(f"{path}: its first row ({first}) numbers the columns while the others hold fractions, "
                         "so it was read as a header, not as a sample")
        else:
            notes.append(f"{path}: its first row ({first}) numbers the columns like a header, but was read as a "
                         "sample since every row holds whole numbers; remove it if it is a header")
    check_widths(rows, path, "holds no numeric rows")
    for number, row in enumerate(rows, start=1):
        if not _all_numeric(row):
            column = next(k for k, cell in enumerate(row) if not _all_numeric([cell]))
            raise InputDataError(f"row {number}, column {column + 1} holds {shown(row[column])!r}, which is not a "
                                 "number", path)
    source = source_from_array(np.array(rows, dtype=np.float64), str(path), what)
    source.notes[:0] = notes
    return source


def cells(row: list[str], most: int = 5) -> str:
    """A CSV row for a message: its first `most` cells, each cut, and how many there are in all."""
    listed = ", ".join(repr(shown(cell, 40)) for cell in row[:most])
    return f"[{listed}{', ...' if len(row) > most else ''}]" + (f" ({len(row):,} cells)" if len(row) > most else "")


def _column_numbers(row: list[str]) -> bool:
    """Whether a row reads 0, 1, ..., C-1 (or 1, ..., C): the column numbers of a header."""
    if len(row) < 2 or not _all_integers(row):
        return False
    values = [int(float(cell)) for cell in row]
    return values in (list(range(len(row))), list(range(1, len(row) + 1)))


def _all_integers(row: list[str]) -> bool:
    try:
        return all(float(cell).is_integer() for cell in row)
    except (ValueError, OverflowError):
        return False


def read_csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not part of a cell
            return [[cell.strip() for cell in row] for row in csv.reader(handle) if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"cannot read as CSV text: {exc}", path) from None


def _all_numeric(row: list[str]) -> bool:
    try:
        for cell in row:
            float(cell)
    except ValueError:
        return False
    return True


LOGITS_READERS: dict[str, Callable[..., LogitsSource]] = {
    ".npy": _read_npy,
    ".npz": _read_npz,
    ".safetensors": _read_safetensors,
    ".pt": _read_torch,
    ".pth": _read_torch,
    ".csv": _read_csv_logits,
}


SHARD_INDEX = "index.json"
SHARD_INDEX_FORMAT = "lacal-shards"


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def shard_paths(spec: str | os.PathLike, suffixes=None) -> list[Path]:
    """The files a path names, in order: the file itself; a folder's shards (those its index.json lists, as lacal
    writes it, else its files in natural order: shard-2 before shard-10); or the matches of a glob pattern (quote
    it in the shell), in natural order of their whole paths."""
    import glob

    suffixes = tuple(suffixes or LOGITS_READERS)
    path = Path(spec)
    info = stat_or_none(path)
    if info is not None and stat.S_ISDIR(info.st_mode):
        index = path / SHARD_INDEX
        if index.is_file():
            return _indexed_shards(index, suffixes)
        found = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                 and p.suffix.lower() in suffixes]
        escaping = [p.name for p in found if not _inside(p, path)]
        if escaping:
            raise InputFileError(f"holds {escaping[0]}, a link to a file outside the folder; lacal reads a folder's "
                                 "shards only inside it", path)
        if not found:
            raise InputFileError(f"is a folder with no {'/'.join(suffixes)} files", path)
        strays = [p.name for p in found if "label" in p.name.lower()]
        if strays and len(found) > len(strays):
            raise InputFileError(f"is read as a folder of shards but also holds {strays[0]}; keep labels outside "
                                 "the shard folder, or name the shards with a quoted glob", path)
        return sorted(found, key=lambda p: _natural(p.name))
    if info is None and any(c in str(spec) for c in "*?["):
        found = [Path(p) for p in glob.glob(str(spec)) if Path(p).is_file()]
        if not found:
            raise InputFileError("matches no files", spec)
        return sorted(found, key=lambda p: _natural(str(p)))
    return [path]


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path`, its links followed, lies inside `folder` (its links followed too)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def read_shard_index(index: Path) -> list[dict]:
    """The entries of a lacal shard index ({"file": NAME, "rows": N, ...}), checked for form."""
    try:
        data = parse_json(index.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != SHARD_INDEX_FORMAT:
            raise ValueError(f"not a {SHARD_INDEX_FORMAT} index")
        entries = data["shards"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                                    for e in entries):
            raise ValueError("every shard entry needs a file name")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError, OSError) as exc:
        raise InputFileError(f"is not a shard index: {exc or type(exc).__name__}", index) from None
    return entries


def _indexed_shards(index: Path, suffixes=()) -> list[Path]:
    """The shards an index lists; a folder whose files disagree with its index (a listed file missing, a data file
    it does not list) is refused, as it is not what lacal wrote."""
    names = [entry["file"] for entry in read_shard_index(index)]
    if any(Path(name).is_absolute() or ".." in Path(name).parts for name in names):
        raise InputDataError("lists a shard outside its folder", index)
    seen: set = set()
    twice = next((name for name in names if name in seen or seen.add(name)), None)
    if twice is not None:
        raise InputDataError(f"lists {twice} twice: its rows would be read twice; the folder is not as lacal wrote it",
                             index)
    escaping = [name for name in names if (index.parent / name).exists() and not _inside(index.parent / name,
                                                                                         index.parent)]
    if escaping:
        raise InputDataError(f"lists {escaping[0]}, a link to a file outside its folder; lacal reads a folder's "
                             "shards only inside it", index)
    missing = [name for name in names if not (index.parent / name).is_file()]
    if missing:
        raise InputFileError(f"lists {missing[0]}, which is not in its folder: the folder is incomplete", index)
    listed = set(names)
    unlisted = sorted(p.name for p in index.parent.iterdir() if p.is_file() and not p.name.startswith(".")
                      and p.name != SHARD_INDEX and p.suffix.lower() in suffixes and p.name not in listed)
    if unlisted:
        raise InputDataError(f"does not list {unlisted[0]}, which is in its folder: the folder is not as lacal "
                             "wrote it", index)
    return [index.parent / name for name in names]


def files_lacal_wrote(folder: Path) -> list[str]:
    """The files of a shard folder that lacal wrote: those its index lists, and the index (none without a valid
    index)."""
    index = Path(folder) / SHARD_INDEX
    try:
        return [entry["file"] for entry in read_shard_index(index)] + [SHARD_INDEX] if index.is_file() else []
    except LacalError:
        return []


def check_index_rows(spec, sources: list) -> None:
    """Refuse shards whose row counts differ from those their folder's index.json records."""
    index = Path(spec) / SHARD_INDEX
    if not Path(spec).is_dir() or not index.is_file():
        return
    for entry, source in zip(read_shard_index(index), sources):
        rows = entry.get("rows")
        if isinstance(rows, int) and not isinstance(rows, bool) and rows != source.num_samples:
            raise InputDataError(f"has {source.num_samples} rows but {index} records {rows}: the folder is not as "
                                 "lacal wrote it", source.name)


def expand_inputs(paths) -> list[Path]:
    """Input paths with folders and globs of shards replaced by their files (and the folders themselves kept), for
    checks that an output does not land on an input."""
    expanded = []
    for path in paths:
        if path is None:
            continue
        expanded.append(Path(path))
        try:
            expanded.extend(shard_paths(path))
        except LacalError:
            pass
    return expanded


def concat_sources(sources: list[LogitsSource], name: str) -> LogitsSource:
    """Several sources with the same columns and dtype, read as one: rows(a, b) may span shards."""
    import torch

    first = sources[0]
    for other in sources[1:]:
        if other.shape[1:] != first.shape[1:] or other.dtype_name != first.dtype_name:
            raise InputDataError(f"has shape {other.shape} and dtype {other.dtype_name}, but {first.name} has "
                                 f"{first.shape} and {first.dtype_name}; shards must match", other.name)
    starts = np.cumsum([0] + [s.num_samples for s in sources])

    def read_rows(start: int, stop: int):
        parts = []
        for k, source in enumerate(sources):
            a, b = max(start, starts[k]), min(stop, starts[k + 1])
            if a < b:
                parts.append(source.rows(int(a - starts[k]), int(b - starts[k])))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    combined = LogitsSource(name, (int(starts[-1]), *first.shape[1:]), first.dtype_name, read_rows)
    combined.notes = [note for source in sources for note in source.notes][:1]
    combined.shards = sources
    return combined


def read_logits(path: str | os.PathLike, key: str | None = None, what: str = "logits") -> LogitsSource:
    """Open logits (.npy read in blocks, .npz, .safetensors, .pt/.pth, .csv) as a LogitsSource. `path` may also be
    a folder or a glob pattern of shards, read in natural order as one array. With what="features" the same
    readers open an N x D array of penultimate-layer features."""
    paths = shard_paths(path)
    if len(paths) > 1 or Path(path).is_dir():
        sources = [read_logits(p, key, what) for p in paths]
        check_index_rows(path, sources)
        return sources[0] if len(sources) == 1 else concat_sources(sources, str(path))
    path = check_readable(paths[0])
    reader = LOGITS_READERS.get(path.suffix.lower())
    if reader is None:
        raise InputFileError(f"unknown {what} format {path.suffix or '(no suffix)'!r}; "
                             f"use one of {', '.join(LOGITS_READERS)}", path)
    return reader(path, key, what)


# ---------------------------------------------------------------------------------------------------------- labels

CLASS_ID = re.compile(r"-?[0-9]+", re.ASCII)
LABEL_COLUMN_NAMES = ("label", "labels", "target", "targets", "y", "class")


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names, in id order: a text file with one name per line, or a JSON list (or an id -> name object)."""
    path = check_readable(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first name
    except UnicodeDecodeError:
        raise InputFileError("is not UTF-8 text", path) from None
    if path.suffix.lower() == ".json":
        try:
            data = parse_json(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputFileError(f"is not valid JSON: {exc}", path) from None
        if isinstance(data, dict) and "id2label" in data:
            data = data["id2label"]
        if isinstance(data, dict):
            try:
                ids = sorted(int(k) for k in data)
            except ValueError:
                raise InputDataError("a JSON object of class names must map integer ids to names", path) from None
            if ids != list(range(len(ids))):
                raise InputDataError("class ids in the JSON object must be 0..C-1 without gaps", path)
            names = [str(data[str(i)]) for i in ids]
        elif isinstance(data, list) and all(isinstance(n, (str, int)) for n in data):
            names = [str(n) for n in data]
        else:
            raise InputDataError("expected a JSON list of class names", path)
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        names = [line.strip() for line in lines]
        if "" in names:
            raise InputDataError(f"line {names.index('') + 1} is empty; expected one class name per line", path)
    if not names:
        raise InputDataError("holds no class names", path)
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise InputDataError(f"class name {name!r} appears twice (ids {seen[name]} and {index})", path)
        seen[name] = index
    return names


def informative_names(names):
    """`names`, or None when they are the placeholders transformers writes when a model was given no names
    (LABEL_0, LABEL_1, ...): those say nothing about which class is which."""
    if names is None or list(names) == [f"LABEL_{k}" for k in range(len(names))]:
        return None
    return names


def check_same_classes(given, stored, source, what: str = "the calibration", given_by: str = "`class_names`") -> None:
    """Refuse class names given (by `given_by`: `--classes`, or a model's id2label) that disagree with those a file
    stores (`stored`, from `what`): the logits' columns follow one order, so two lists that differ, even only in
    order, cannot both be right, and taking either by position would give named labels the wrong ids. Either list
    may be None, or transformers' placeholders LABEL_k (nothing to check).

    Raises:
        MismatchError: naming the first id where the lists differ.
    """
    from ..errors import MismatchError

    given, stored = informative_names(given), informative_names(stored)
    if given is None or stored is None or list(given) == list(stored):
        return
    given, stored = list(given), list(stored)
    if len(given) != len(stored):
        raise MismatchError(f"{what} stores {len(stored)} class names but {given_by} lists {len(given)}", source)
    first = next(k for k, (a, b) in enumerate(zip(given, stored)) if a != b)
    where = f"(id {first} is {stored[first]!r} there but {given_by} says {given[first]!r})"
    if sorted(given) == sorted(stored):
        raise MismatchError(f"{what} stores the same class names in another order {where}; class names are matched "
                            f"by name, never by position: give them in the order {what} stores", source)
    raise MismatchError(f"{what} stores other class names {where}", source)


def read_labels(path: str | os.PathLike, classes: list[str] | None = None,
                column: str | None = None) -> np.ndarray:
    """Integer class ids (int64, 1-D) from .npy, .txt (one per line) or .csv (`column`: a header name or 0-based
    index). Names are mapped to ids through `classes`. A folder or glob of label shards is read in natural order."""
    paths = shard_paths(path, (".npy", ".txt", ".csv"))
    if len(paths) > 1:
        return np.concatenate([read_labels(p, classes, column) for p in paths])
    path = check_readable(paths[0])
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise InputDataError(f"labels must be a 1-D array, got shape {array.shape}", path)
        if array.dtype.kind in "iu":
            if array.size and array.dtype.kind == "u" and int(array.max()) > np.iinfo(np.int64).max:
                raise InputDataError(f"label {int(array.max())} (entry {int(array.argmax()) + 1}) is too large for "
                                     "a class id", path)
            ids = array.astype(np.int64)
        elif array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise InputDataError("labels are floats that are not whole numbers; expected integer class ids", path)
            ids = array.astype(np.int64)
        elif array.dtype.kind in "US":
            ids = _tokens_to_ids([str(t) for t in array.astype(str)], classes, path)
        else:
            raise InputDataError(f"labels have dtype {array.dtype}; expected integer class ids or names", path)
    elif suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise InputFileError("is not UTF-8 text", path) from None
        while lines and not lines[-1].strip():
            lines.pop()
        tokens = [line.strip() for line in lines]
        if "" in tokens:
            raise InputDataError(f"line {tokens.index('') + 1} is empty; expected one label per line", path)
        ids = _tokens_to_ids(tokens, classes, path)
    elif suffix == ".csv":
        ids = _tokens_to_ids(_csv_label_column(path, column), classes, path)
    else:
        raise InputFileError(f"unknown labels format {suffix or '(no suffix)'!r}; use .npy, .txt or .csv", path)
    if ids.size == 0:
        raise InputDataError("holds no labels", path)
    if ids.min() < 0:
        raise InputDataError(f"label {int(ids.min())} is negative; class ids start at 0", path)
    return ids


def _csv_label_column(path: Path, column: str | None) -> list[str]:
    rows = read_csv_rows(path)
    if not rows:
        raise InputDataError("holds no rows", path)
    header = [cell.lower() for cell in rows[0]]
    if column is not None and column.lower() in header:
        index, rows = header.index(column.lower()), rows[1:]
    elif column is not None:
        try:
            index = int(column)
        except ValueError:
            raise InputDataError(f"has no column named {shown(column)!r}; its first row is {cells(rows[0])}",
                                 path) from None
        if not 0 <= index < len(rows[0]):
            raise InputDataError(f"has {len(rows[0])} columns, so `label_column` {index} is out of range", path)
        if not rows[0][index].lstrip("-").isdigit() and len(rows) > 1 and len(rows[1]) > index \
                and rows[1][index].lstrip("-").isdigit():
            rows = rows[1:]  # a header above integer labels
    else:
        named = [i for i, name in enumerate(header) if name in LABEL_COLUMN_NAMES]
        if named:
            index, rows = named[0], rows[1:]
        elif len(rows[0]) == 1:
            index = 0
        else:
            raise InputDataError(f"has {len(rows[0])} columns and none is named "
                                 f"{'/'.join(LABEL_COLUMN_NAMES)}; choose one with --label-column NAME_OR_INDEX",
                                 path)
    tokens = []
    for number, row in enumerate(rows, start=1):
        if index >= len(row):
            raise InputDataError(f"data row {number} has no column {index}", path)
        tokens.append(row[index])
    return tokens


def _tokens_to_ids(tokens: list[str], classes: list[str] | None, path: Path) -> np.ndarray:
    """Names are looked up in `classes`; a file of only integers (none of them a class name) holds ids."""
    lookup = {name: i for i, name in enumerate(classes)} if classes is not None else {}
    if classes is not None and all(token in lookup for token in tokens):
        return np.array([lookup[t] for t in tokens], dtype=np.int64)
    ids = []
    for number, token in enumerate(tokens, start=1):
        try:
            if not CLASS_ID.fullmatch(token):  # int() would also take "1_0", "+5" and other digits
                raise ValueError(token)
            ids.append(int(token))
            if len(token) > 18:
                raise InputDataError(f"label {token} (entry {number}) is too large for a class id", path)
        except ValueError:
            if classes is None:
                raise InputDataError(f"label {token!r} (entry {number}) is not an integer class id; "
                                     "pass --classes FILE to map class names to ids", path) from None
            unknown = next((n, t) for n, t in enumerate(tokens, start=1) if t not in lookup)
            raise InputDataError(f"unknown class name {unknown[1]!r} (entry {unknown[0]}); it is not in the "
                                 "--classes list", path) from None
    return np.array(ids, dtype=np.int64)

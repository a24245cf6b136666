"""Writers. Every file goes to a temporary sibling first and is renamed into place, so a failure never leaves a
partial output and an existing file is never half-overwritten; a folder of outputs is written as a hidden sibling
folder and swapped in. Temporary names carry the writer's process id, so that a later run can remove what a killed
one left."""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import OutputError
from .readers import file_kind, stat_or_none

LOGITS_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth")
PREDICTION_SUFFIXES = (".csv",)


def check_output(path: str | os.PathLike, force: bool = False, inputs=()) -> Path:
    """Refuse an output that exists (without `force`), is an input, or sits in a folder that does not exist."""
    from .readers import expand_inputs

    path = Path(path)
    info = stat_or_none(path, OutputError)  # a name too long is said before anything else
    for source in expand_inputs(inputs):
        if source.is_dir() and path.resolve().parent == source.resolve():
            raise OutputError(f"is inside the input folder {source}, where it would be read as one more shard; "
                              "choose another --out", path)
        if source.exists() and path.exists() and os.path.samefile(path, source):
            raise OutputError("is also an input; lacal never writes over its input, choose another --out", path)
    for spec in inputs:
        if spec is not None and _is_pattern(spec) and fnmatch.fnmatch(os.path.abspath(path), os.path.abspath(spec)):
            raise OutputError(f"matches the input pattern {spec}, where it would be read as one more shard; "
                              "choose another --out", path)
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError("is a folder; give a file name", path)
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputError(f"is a {file_kind(info.st_mode)}; lacal writes only regular files and never replaces a "
                          "device, FIFO or socket, even with --force: choose another --out", path)
    if info is not None and not force:
        raise OutputError("already exists; pass --force to replace it", path)
    parent = stat_or_none(path.parent, OutputError)
    if parent is None or not stat.S_ISDIR(parent.st_mode):
        raise OutputError(f"folder {path.parent} does not exist", path)
    return path


def _is_pattern(spec) -> bool:
    return not Path(spec).exists() and any(c in str(spec) for c in "*?[")


TEMPORARY_SUFFIX = ".lacal-tmp"
NAME_BYTES = 100  # of the target's name kept in a temporary name, so that it stays under the 255-byte limit


def temporary_prefix(path: Path) -> str:
    """The start of every temporary name lacal uses for `path`: hidden, with a shortened name and this process's id
    (so that a later run can tell a stale temporary file of a dead process from one in use)."""
    short = os.fsencode(path.name)[:NAME_BYTES].decode("utf-8", "ignore")
    return f".{short}.{os.getpid()}."


def remove_stale(path: Path) -> None:
    """Remove temporary files and folders that an earlier, killed lacal run left for `path` (those of processes
    that no longer run); an old folder moved aside just before the kill goes back to `path` if nothing is there."""
    import shutil

    short = os.fsencode(path.name)[:NAME_BYTES].decode("utf-8", "ignore")
    try:
        candidates = list(path.parent.glob(f".{glob.escape(short)}.*"))
    except OSError:
        return
    pattern = re.compile(rf"\.{re.escape(short)}\.([0-9]+)\.[A-Za-z0-9_]{{8}}\.lacal-(tmp|old)")
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None or _running(int(match.group(1))):
            continue
        if match.group(2) == "old" and not os.path.lexists(path):
            try:  # killed between the two renames of replace_folder: the old folder goes back in place
                os.rename(candidate, path)
                continue
            except OSError:
                pass
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            _remove(candidate)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


@contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False, inputs=(), mode_of=None):
    """Yield a temporary path beside `path`; on success it becomes `path`, on any error it is removed.

    Without `force` the target is created exclusively (a hard link that fails if it exists), so of two runs
    writing the same new output exactly one succeeds. A replaced file keeps its permissions; a new one takes those
    of `mode_of` (the file it is a changed copy of: a private checkpoint's copy stays private), else the umask's."""
    path = check_output(path, force, inputs)
    temporary = None
    try:
        if path.exists():
            mode = os.stat(path).st_mode & 0o7777
        else:
            mode = (os.stat(mode_of).st_mode & 0o7777) if mode_of is not None else 0o666 & ~_umask()
        remove_stale(path)
        handle, temporary = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX,
                                             dir=path.parent)
        os.close(handle)
        os.chmod(temporary, mode)  # mkstemp makes 0600; give the file the mode a plain open (or the old file) had
        yield Path(temporary)
        with open(temporary, "rb+") as done:
            os.fsync(done.fileno())
        if force:
            os.replace(temporary, path)
        else:
            try:
                _create(temporary, path)
            except FileExistsError:
                raise OutputError("already exists (another run wrote it meanwhile); pass --force to replace it",
                                  path) from None
    except OSError as exc:
        _remove(temporary)
        raise OutputError(f"cannot write: {exc.strerror or exc}", path) from None
    except BaseException:
        _remove(temporary)
        raise


def _create(temporary, path: Path) -> None:
    """Move `temporary` to `path`, failing with FileExistsError if `path` exists, even if it appeared just now."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(temporary, path)
        return
    _remove(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def cleanup_on_signals() -> None:
    """Make SIGTERM and SIGHUP unwind the program as Ctrl-C does, so that temporary files and folders are removed;
    the exit status is then 128 + the signal's number. Only SIGKILL (and a crash of the machine) can still leave a
    hidden temporary behind, which the next run for the same output removes."""
    import signal

    def stop(number, frame):
        for other in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(other, signal.SIG_IGN)  # one unwinding at a time
        raise SystemExit(128 + number)

    for number in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(number, stop)
        except (ValueError, OSError):  # not the main thread
            pass


# ------------------------------------------------------------------------------------------- folders of outputs


def foreign_files(folder: Path, ours) -> list[str]:
    """The files under `folder` (paths relative to it) that are not in `ours`, lacal's own temporaries aside."""
    found = []
    for item in sorted(folder.rglob("*")):
        relative = item.relative_to(folder)
        if any(part.endswith((TEMPORARY_SUFFIX, ".lacal-old")) for part in relative.parts):
            continue
        if item.is_dir() and not item.is_symlink():
            continue
        if relative.as_posix() not in ours:
            found.append(relative.as_posix())
    return found


def check_output_folder(out: Path, force: bool, ours, inputs=()) -> None:
    """Refuse an output folder that is a file, an input, in a folder that does not exist, already there without
    `force`, or holding files that lacal did not write (`ours`: the names it did), which replacing it would delete."""
    out = Path(out)
    info, parent = stat_or_none(out, OutputError), stat_or_none(out.parent, OutputError)
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise OutputError("exists and is not a folder; per-shard outputs go into a folder", out)
    if parent is None or not stat.S_ISDIR(parent.st_mode):
        raise OutputError(f"folder {out.parent} does not exist", out)
    remove_stale(out)
    for item in inputs:
        if item is not None and Path(item).exists() and (out.resolve() == Path(item).resolve()
                                                         or out.resolve() in Path(item).resolve().parents):
            raise OutputError(f"is or holds an input ({item}); lacal never writes over its inputs, choose another "
                              "--out", out)
    if not out.is_dir():
        return
    try:
        present, foreign = foreign_files(out, set()), foreign_files(out, set(ours))
    except OSError as exc:
        raise OutputError(f"cannot read: {exc.strerror or exc}", out) from None
    if not present:
        return  # an empty folder
    if not force:
        raise OutputError("already exists; pass --force to replace it", out)
    if foreign:
        raise OutputError(f"holds {foreign[0]}, which lacal did not write there; --force replaces only a folder of "
                          "lacal's outputs: move it away, or choose another --out", out)


def stage_folder(out: Path) -> Path:
    """A new hidden folder beside `out` to write into; `replace_folder` then swaps it in."""
    remove_stale(out)
    try:
        return Path(tempfile.mkdtemp(prefix=temporary_prefix(out), suffix=TEMPORARY_SUFFIX, dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror or exc}", out) from None


def replace_folder(staging: Path, out: Path, force: bool) -> None:
    """Move the finished `staging` folder to `out`. An old `out` (with `force`) is moved aside first and removed
    after; the new folder gets the old one's permissions, or those of a plain mkdir."""
    import shutil

    try:
        mode = (os.stat(out).st_mode & 0o7777) if out.is_dir() else 0o777 & ~_umask()
        os.chmod(staging, mode)
        if not out.exists():
            os.rename(staging, out)  # fails if another run made a folder with files there meanwhile
            return
        if not force:
            raise OutputError("already exists (another run wrote it meanwhile); pass --force to replace it", out)
        backup = Path(tempfile.mkdtemp(prefix=temporary_prefix(out), suffix=".lacal-old", dir=out.parent))
        os.rmdir(backup)
        os.rename(out, backup)
        try:
            os.rename(staging, out)
        except OSError:
            os.rename(backup, out)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror or exc}", out) from None


def discard_folder(staging: Path | None) -> None:
    import shutil

    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


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
            from safetensors.torch import save

            data = save({key: whole.contiguous()})  # bytes written here, so a full disk is an OSError, not theirs
            with open(temporary, "wb") as handle:
                handle.write(data)
        else:
            torch_save(whole, temporary)
    return notes


def torch_save(obj, path: Path) -> None:
    """torch.save, with its failures as OSError: torch reports a full disk (or a quota) as a RuntimeError about stream
    positions ("unexpected pos 704 vs 598"). Written through a Python file, the write's own OSError is behind it and is
    raised instead; failing that, a failed save on a disk with (next to) no room left says so."""
    import errno

    import torch

    try:
        with open(path, "wb") as handle:
            torch.save(obj, handle)
    except RuntimeError as exc:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise OSError(cause.errno, cause.strerror or str(cause)) from None
        try:
            room = os.statvfs(Path(path).parent)
            full = room.f_bavail * room.f_frsize < (1 << 20)  # what the failed write left over is under a block
        except OSError:
            full = False
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "torch.save failed"
        raise OSError(f"torch.save failed: {first}") from None


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell that spreadsheet programs show as text: one starting like a formula (=, +, -, @, tab, carriage
    return) gets a leading apostrophe, as OWASP's advice on CSV injection says."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_predictions(path, blocks, class_names: list[str] | None, top_k: int = 1, force: bool = False,
                      inputs=()) -> None:
    """Write one CSV row per sample: its index, the predicted class id (and name), and its softmax probability;
    with top_k > 1, the next classes by rank as class_2, probability_2, ... columns."""
    import torch

    class_names = [spreadsheet_safe(name) for name in class_names] if class_names else class_names
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

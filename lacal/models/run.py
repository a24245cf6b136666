"""Loading a model to score inputs with (`lacal score`): TorchScript (.pt, .pth, .ts, .torchscript) or a
torch.export program (.pt2).

A model is a program, and scoring runs it; what lacal refuses is Python code hidden in the file's pickles.
TorchScript archives are read by TorchScript's own unpickler, which builds only TorchScript values. A .pt2 archive
may carry pickled Python objects ("opaque" and custom-class constants, payloads marked use_pickle) or compiled code
(AOTInductor), which torch.export.load would unpickle or load: such archives are refused, by their member names and
by their payload configs, and every tensor in the rest is loaded with weights_only=True.
"""

from __future__ import annotations

import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputFileError
from ..data.readers import check_readable

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
EXPORT_SUFFIXES = (".pt2",)
PICKLED_OBJECT_PREFIXES = ("opaque_obj_", "custom_obj_")
PAYLOAD_CONFIG_FOLDERS = ("data/constants/", "data/weights/")
COMPILED_CODE_FOLDER = "data/aotinductor/"
PAYLOAD_CONFIG_LIMIT = 64 << 20


@contextmanager
def weights_only_everywhere():
    """Make every torch.load inside (including those that pass weights_only=False) load weights only."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


@contextmanager
def quiet_export_log():
    """Silence torch.export's logger, which prints a failed load's traceback as a warning before raising; lacal
    reports the failure itself, in one line."""
    import logging

    logger = logging.getLogger("torch.export")
    old = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = old


def check_export_archive(path: Path) -> None:
    """Refuse a .pt2 archive that torch.export.load would unpickle Python objects from, or load compiled code from.

    torch decides what to unpickle from the payload configs (`data/constants/*.json`, `data/weights/*.json`: an
    entry's `use_pickle` and `path_name`), and finds members case-insensitively, so every config entry is checked,
    not only the member names."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            configs = []
            for info in members:
                lowered = info.filename.lower().replace("\\", "/")
                if lowered.endswith(".json") and any(part in lowered for part in PAYLOAD_CONFIG_FOLDERS):
                    if info.file_size > PAYLOAD_CONFIG_LIMIT:
                        raise InputFileError(f"refused: its payload config {info.filename} is larger than "
                                             f"{PAYLOAD_CONFIG_LIMIT} bytes", path)
                    configs.append((info.filename, archive.read(info)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, ValueError, EOFError) as exc:
        raise InputFileError(f"cannot read as a torch.export archive: {exc}", path) from None
    root = members[0].filename.replace("\\", "/").split("/")[0] if members else ""
    for info in members:
        parts = info.filename.replace("\\", "/").split("/")
        if len(parts) < 2 or parts[0] != root or ".." in parts or ":" in parts[0]:
            raise InputFileError(f"refused: the archive's member {info.filename!r} lies outside its folder "
                                 f"{root + '/'!r}; a torch.export archive keeps every member in one folder", path)
    for info in members:
        lowered = info.filename.lower().replace("\\", "/")
        if os.path.basename(lowered).startswith(PICKLED_OBJECT_PREFIXES):
            raise InputFileError(f"refused: the archive holds pickled Python objects ({info.filename}), which "
                                 "loading would run as code", path)
        if COMPILED_CODE_FOLDER in lowered:
            raise InputFileError(f"refused: the archive holds compiled code ({info.filename}), which loading would "
                                 "run", path)
    for name, data in configs:
        for fqn, entry in _payload_entries(name, data, path):
            path_name = entry.get("path_name")
            if entry.get("use_pickle") or not isinstance(path_name, str) or "/" in path_name \
                    or "\\" in path_name or ".." in path_name or path_name.lower().startswith(PICKLED_OBJECT_PREFIXES):
                raise InputFileError(f"refused: {name} asks to unpickle {fqn!r} ({path_name!r}), which loading "
                                     "would run as code", path)


def _payload_entries(name: str, data: bytes, path: Path) -> list:
    import json

    try:
        config = json.loads(data.decode("utf-8"))
        entries = config["config"]
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise TypeError("entries are not objects")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as exc:
        raise InputFileError(f"refused: its payload config {name} cannot be checked ({type(exc).__name__})",
                             path) from None
    return list(entries.items())


def load_model(path: str | os.PathLike):
    """A callable model on the CPU, in eval mode: a TorchScript module or an exported program's module."""
    import pickle

    import torch

    path = check_readable(path)
    suffix = path.suffix.lower()
    if suffix in EXPORT_SUFFIXES:
        check_export_archive(path)
        try:
            with weights_only_everywhere(), quiet_export_log():
                program = torch.export.load(str(path))
        except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputFileError(f"cannot load as a torch.export program (or it needs code to load): {first}",
                                 path) from None
        return program.module()
    if suffix in TORCHSCRIPT_SUFFIXES:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "switch to torch.export": the user's choice
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputFileError(f"cannot load as a TorchScript model: {first}; save one with "
                                 "torch.jit.script(model).save(PATH), or export with torch.export", path) from None
        return model.eval()
    raise InputFileError(f"unknown model format {suffix or '(no suffix)'!r}; use TorchScript "
                         f"({', '.join(TORCHSCRIPT_SUFFIXES)}) or torch.export (.pt2)", path)

"""Opening a model checkpoint: every file read once, into one `Checkpoint` that knows its files, the model's state
dict and the copies of the model beside it. Finding the head (heads.py), computing the patch (patch.py) and writing
it (patch_write.py) then read nothing else from disk but the head's tensors, through this object.

Layouts: a .safetensors file; a PyTorch file (.pt, .pth, .bin, .tar) holding a state dict, or a training checkpoint
that holds one under a common key (and maybe EMA copies of it beside; a PyTorch Lightning .ckpt keeps its
LightningModule's state dict under `state_dict` and StochasticWeightAveraging's averaged copy in its callback state);
a Hugging Face model folder (config.json with
model.safetensors, sharded safetensors with an index, pytorch_model.bin, or several of these: each set of weight
files is a copy of the model, and all of them are patched). PyTorch files are read with weights_only=True only.

Adding a training-checkpoint layout (Lightning's .ckpt, for instance): write a function `layout(obj) -> TorchLayout |
None` that, given the loaded object, returns the key path of the model's state dict and those of the copies of the
model kept beside it (EMA weights), put it in `TORCH_LAYOUTS` before the generic ones, and add the file suffix to
`TORCH_SUFFIXES` (and to `CHECKPOINT_ONLY_SUFFIXES` when such files never hold logits). Finding the head, patching
every copy and writing the object back with its other keys follow; key paths may be nested.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, InputDataError, InputFileError
from ..data.readers import check_readable, load_torch_file
from .heads import (AVERAGED_HEADS, HEAD_LIKE, USUAL_HEAD, USUAL_NAMES, WRAPPER_PREFIXES, Head, TensorInfo,
                    bias_name, find_head, find_heads, head_notes, is_safetensors, plain_name)

__all__ = ["AVERAGED_HEADS", "HEAD_LIKE", "USUAL_HEAD", "USUAL_NAMES", "WRAPPER_PREFIXES", "Checkpoint", "Head",
           "TensorInfo", "TorchLayout", "WeightFile", "Weights", "bias_name", "find_head", "find_heads",
           "head_notes", "is_checkpoint", "is_safetensors", "open_checkpoint", "plain_name"]

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt")
CHECKPOINT_ONLY_SUFFIXES = (".bin", ".tar", ".ckpt")  # never logits: `lacal apply` patches such a file without asking
EMA_KEY = re.compile(r"ema|shadow|swa|averag", re.IGNORECASE)
# The weights a Hugging Face folder may hold, each a full copy of the model; the first present is the main one.
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")
# Weights in a Hugging Face folder that lacal cannot patch (other frameworks, dtype variants): leaving them unpatched
# beside patched ones would serve the unadjusted model to a loader that picks them.
OTHER_HF_WEIGHTS = re.compile(r"^(tf_model\.h5|flax_model\.msgpack|model\.ckpt\.index|"
                              r"(model|pytorch_model)\.[\w-]+\.(safetensors|bin)(\.index\.json)?|"
                              r"(model|pytorch_model)\.(safetensors|bin)\.index\.[\w-]+\.json)$")
PATCH_METADATA_KEY = "lacal_patch"
PATCH_FILE = "lacal_patch.json"
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class TorchLayout:
    """Where the model lives in a loaded PyTorch object: the key path of its state dict (() for a bare state dict)
    and the key paths of the copies of the model beside it."""

    main: tuple = ()
    copies: tuple = ()


@dataclass
class WeightFile:
    """One file of a checkpoint, read once: a safetensors file's header (entries in file order, with __metadata__)
    and where its data starts, or a PyTorch file's loaded object and its layout."""

    path: Path
    header: dict | None = None
    data_start: int = 0
    obj: object = None
    layout: TorchLayout | None = None

    def state(self, key: tuple) -> dict:
        """The state dict at key path `key` of a PyTorch file's object."""
        obj = self.obj
        for part in self.key_path(key):
            obj = obj[part]
        return obj

    def key_path(self, key: tuple) -> tuple:
        """`key`, or where this file keeps the model's state dict when no key is given: in a folder each PyTorch file
        has its own layout (a `pytorch_model.bin` may hold a training checkpoint's {"state_dict": ...})."""
        return key or (self.layout.main if self.layout is not None else ())


@dataclass
class Weights:
    """One full set of the model's tensors: the model's own state dict, an EMA copy in the same PyTorch file, or
    another format's files in a Hugging Face folder. `label` names a copy ("" for the model itself), `key` is the key
    path inside a PyTorch file's object, `index` the weight index of a sharded set (and `index_data` what it holds).
    A copy that `optional` lacks
    the head is another model kept beside (a teacher), left alone; any other copy without it is refused."""

    label: str
    tensors: dict
    key: tuple = ()
    index: Path | None = None
    optional: bool = False
    index_data: dict | None = None


class Checkpoint:
    """The tensors of a checkpoint, where each lives, and what lacal needs to rewrite it: `files` (read once),
    `tensors` (the model's, by name), `copies` (other full sets of the model's tensors), the class names, the record
    of an earlier lacal patch, and a Hugging Face folder's config."""

    def __init__(self, path: Path, kind: str, tensors: dict[str, TensorInfo], class_names=None, patch=None):
        self.path = path
        self.kind = kind  # "safetensors", "torch" or "folder" (or "module", "torchscript", "export" in memory)
        self.tensors = tensors
        self.class_names = class_names
        self.patch = patch  # the provenance record of an earlier lacal patch, if any
        self.files: dict[Path, WeightFile] = {}
        self.key: tuple = ()  # the key path of the model's state dict in a PyTorch file
        self.copies: list[Weights] = []
        self.index_file: Path | None = None
        self.index_data: dict | None = None  # what the index holds, as read
        self.config: dict | None = None  # a Hugging Face folder's config.json

    @property
    def weights(self) -> list[Weights]:
        """The model's own tensors, then every copy."""
        return [Weights("", self.tensors, self.key, self.index_file, index_data=self.index_data), *self.copies]

    def tensor(self, name: str):
        """The named tensor of the model, on the CPU."""
        return self.read(self.tensors[name], self.key)

    def read(self, info: TensorInfo, key: tuple = ()):
        """The tensor `info` describes (in a PyTorch file: in the state dict at `key`)."""
        if is_safetensors(info.file):
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(info.file), framework="pt") as handle:
                    return handle.get_tensor(info.name)
            except (SafetensorError, OSError, ValueError) as exc:
                raise InputFileError(f"cannot read tensor {info.name!r}: {exc}", info.file) from None
        return self.files[info.file].state(key)[info.name]

    @property
    def is_hugging_face(self) -> bool:
        """A folder whose config.json names a transformers architecture or model type."""
        return isinstance(self.config, dict) and bool(self.config.get("architectures") or
                                                      self.config.get("model_type"))

    def architecture(self) -> str:
        names = self.config.get("architectures") if isinstance(self.config, dict) else None
        if isinstance(names, list) and names:
            return str(names[0])
        return str((self.config or {}).get("model_type") or "this architecture")


# --------------------------------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """The header (tensor entries and __metadata__, in file order) and where the data region starts."""
    try:
        with open(path, "rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise ValueError("file is shorter than a safetensors header")
            (size,) = struct.unpack("<Q", size_bytes)
            if size > os.path.getsize(path) - 8:
                raise ValueError("header length is larger than the file")
            header = json.loads(handle.read(size))
    except (ValueError, OSError, RecursionError) as exc:
        raise InputFileError(f"cannot read as safetensors: {exc}", path) from None
    if not isinstance(header, dict):
        raise InputFileError("cannot read as safetensors: the header is not a JSON object", path)
    return header, 8 + size


def _open_safetensors(path: Path, read=None) -> tuple[WeightFile, dict[str, TensorInfo], dict]:
    header, data_start = read if isinstance(read, tuple) else read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise InputFileError("cannot read as safetensors: __metadata__ is not a JSON object", path)
    data_size = os.path.getsize(path) - data_start
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
            if not (isinstance(dtype, str) and isinstance(begin, int) and isinstance(end, int)
                    and 0 <= begin <= end <= data_size):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise InputFileError(f"cannot read as safetensors: the header entry for {name!r} is malformed or points "
                                 "past the end of the file", path) from None
        tensors[name] = TensorInfo(name, shape, SAFETENSORS_DTYPES.get(dtype, dtype.lower()), path, begin)
    return WeightFile(path, header=header, data_start=data_start), tensors, metadata


# ------------------------------------------------------------------------------------------------------- PyTorch


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _bare_state_dict(obj) -> TorchLayout | None:
    return TorchLayout() if _is_state_dict(obj) else None


def _training_checkpoint(obj) -> TorchLayout | None:
    """A dict holding the state dict under a common key; its copies are the other state dicts named like one
    (timm's `state_dict_ema`, torchvision's `model_ema`, `ema`, `shadow`, `swa`, ...) or holding exactly its tensor
    names. Another model kept beside it (a distillation teacher with other layers) is no copy."""
    if not isinstance(obj, dict):
        return None
    for key in STATE_DICT_KEYS:
        if key in obj and _is_state_dict(obj[key]):
            main = {plain_name(str(name)) for name in obj[key]}
            copies = tuple((other,) for other, value in obj.items()
                           if other != key and _is_state_dict(value)
                           and (EMA_KEY.search(str(other)) or {plain_name(str(n)) for n in value} == main))
            return TorchLayout((key,), copies)
    return None


def _lightning_checkpoint(obj) -> TorchLayout | None:
    """A PyTorch Lightning `.ckpt` (`Trainer.save_checkpoint`): the LightningModule's state dict under `state_dict`
    (its names keep the module's attribute prefixes, such as `model.`), beside `pytorch-lightning_version`, loops,
    callbacks and optimizer states. Its copies are those of a training checkpoint (WeightAveraging keeps the live
    model as `current_model_state`) and the averaged state dicts inside a callback's state
    (StochasticWeightAveraging's `average_model_state`), at the key path ("callbacks", callback, key)."""
    if not isinstance(obj, dict) or "pytorch-lightning_version" not in obj:
        return None
    found = _training_checkpoint(obj)
    if found is None or found.main != ("state_dict",):
        return found
    callbacks = obj.get("callbacks")
    inside = tuple(("callbacks", name, key)
                   for name, state in (callbacks.items() if isinstance(callbacks, dict) else ())
                   for key, value in (state.items() if isinstance(state, dict) else ())
                   if EMA_KEY.search(str(key)) and _is_state_dict(value))
    return TorchLayout(found.main, found.copies + inside)


# Tried in order on a loaded PyTorch object; the first that recognises it says where the model is.
TORCH_LAYOUTS = [_bare_state_dict, _lightning_checkpoint, _training_checkpoint]


def _open_torch(path: Path, read=None) -> WeightFile:
    obj = load_torch_file(path) if read is None else read
    for layout in TORCH_LAYOUTS:
        found = layout(obj)
        if found is not None:
            return WeightFile(path, obj=obj, layout=found)
    raise InputDataError("holds no state dict: expected a dict of tensors, or one under "
                         f"{', '.join(repr(k) for k in STATE_DICT_KEYS[:3])}", path)


def _torch_tensors(file: WeightFile, key: tuple) -> dict[str, TensorInfo]:
    return {str(name): TensorInfo(str(name), tuple(t.shape), str(t.dtype).replace("torch.", ""), file.path, position)
            for position, (name, t) in enumerate(file.state(key).items())}


def _torch_copies(file: WeightFile) -> list[Weights]:
    return [Weights("/".join(map(str, key)), _torch_tensors(file, key), key, optional=True)
            for key in file.layout.copies]


# ------------------------------------------------------------------------------------------------------ opening


def open_checkpoint(path: str | os.PathLike, read=None) -> Checkpoint:
    """Open a .safetensors file, a PyTorch file or a Hugging Face model folder, reading every file it needs once.

    Args:
        path: the checkpoint file or folder.
        read: what `sniff(path)` already read of the file (its loaded object or header), used instead of reading
            it again.

    Returns:
        A `Checkpoint`.

    Example:
        >>> checkpoint = open_checkpoint("model.safetensors")
        >>> find_heads(checkpoint, 1000)[0].name
        'fc'
    """
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    check_readable(path)  # (a device, FIFO or socket is refused here by name)
    if is_safetensors(path):
        file, tensors, metadata = _open_safetensors(path, read)
        checkpoint = Checkpoint(path, "safetensors", tensors, patch=_patch_from_metadata(metadata, path))
        checkpoint.files[path] = file
        return checkpoint
    if path.suffix.lower() in TORCH_SUFFIXES:
        file = _open_torch(path, read)
        checkpoint = Checkpoint(path, "torch", _torch_tensors(file, file.layout.main))
        checkpoint.files[path] = file
        checkpoint.key = file.layout.main
        checkpoint.copies = _torch_copies(file)
        checkpoint.patch = _patch_in_torch(file) or _patch_beside(path)
        return checkpoint
    raise InputFileError(f"unknown checkpoint format {path.suffix or '(no suffix)'!r}; use .safetensors, .pt, .pth, "
                         ".bin, .pth.tar, a Lightning .ckpt or a Hugging Face model folder", path)


def check_regular(path: Path) -> None:
    """Refuse a device, FIFO or socket by name before anything opens it (a read could block or never end)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreachable: the reader says so in its own words
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise InputFileError(f"is a {_special_kind(mode)}, not a regular file; lacal reads model files only", path)


def _special_kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def _as_record(value, where: str) -> dict:
    """A provenance record as a dict; anything else found where a record belongs still counts as a patch."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            pass
    return value if isinstance(value, dict) else {"unreadable": where}


def _patch_from_metadata(metadata: dict, path: Path):
    text = metadata.get(PATCH_METADATA_KEY)
    return None if text is None else _as_record(text, str(path))


def _patch_in_torch(file: WeightFile):
    """A record lacal left inside a PyTorch object: in the state dict's _metadata, or beside the state dict in a
    training checkpoint."""
    state = file.state(file.layout.main)
    record = getattr(state, "_metadata", {}).get(PATCH_METADATA_KEY) if hasattr(state, "_metadata") else None
    if record is None and file.layout.main and isinstance(file.obj, dict):
        record = file.obj.get(PATCH_METADATA_KEY)
    return None if record is None else _as_record(record, str(file.path))


def patch_record_path(path: Path) -> Path:
    """Where the provenance of a patched PyTorch file lives: beside it, as NAME.lacal.json."""
    return path.with_name(path.name + ".lacal.json")


def _patch_beside(path: Path):
    record = patch_record_path(path)
    if not record.exists():
        return None
    return _read_record(record)


def _read_record(record: Path):
    try:
        return _as_record(json.loads(record.read_text(encoding="utf-8")), str(record))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError):
        return {"unreadable": str(record)}


def check_folder(folder: Path) -> None:
    """Refuse a model folder holding a device, FIFO or socket (named; never read), a symlinked subfolder, or a
    symlinked file that leads outside the folder (other than to a Hugging Face cache's blobs, beside its
    snapshots): lacal would read, copy or rewrite files elsewhere."""
    root = folder.resolve()
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            item = Path(parent) / name
            mode = os.lstat(item).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                raise InputFileError(f"is a {_special_kind(mode)} inside the model folder; lacal reads and copies "
                                     "regular files only: move it out of the folder", item)
            if not item.is_symlink():
                continue
            real = item.resolve()
            if not real.exists():
                continue  # a broken link reads nothing
            if real.is_dir():
                raise InputFileError(f"is a symlink to a folder ({real}); lacal reads a model folder only through "
                                     "real subfolders", item)
            cache_blob = root.parent.name == "snapshots" and real.parent == root.parent.parent / "blobs"
            if root not in real.parents and not cache_blob:
                raise InputFileError(f"is a symlink that leads outside the model folder (to {real}); lacal reads "
                                     "and writes only inside it", item)
            check_regular(real)


def _open_weight_set(checkpoint: Checkpoint, chosen: Path, label: str) -> Weights:
    """One of a folder's sets of weight files (a single file, or an index and its shards), each file opened once
    into `checkpoint.files`."""
    path = checkpoint.path
    weight_map = {}
    index = data = None
    if chosen.name.endswith(".index.json"):
        try:
            data = json.loads(chosen.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
            if not all(isinstance(name, str) for name in files):
                raise TypeError("shard names must be strings")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise InputDataError(f"is not a valid weight index: {exc}", chosen) from None
        index = chosen
        shards = [path / name for name in files]
        for name, shard in zip(files, shards):
            if Path(name).is_absolute() or ".." in Path(name).parts:  # symlinks (a hub cache's blobs) are fine
                raise InputDataError(f"names a shard outside the folder: {name!r}", chosen)
            check_readable(shard)
    else:
        shards = [chosen]
    tensors = {}
    offset = 0
    for shard in shards:
        if shard in checkpoint.files:
            raise InputDataError(f"{shard.name} belongs to two sets of weights ({label} and another)", path)
        if is_safetensors(shard):
            file, found, metadata = _open_safetensors(shard)
            checkpoint.patch = checkpoint.patch or _patch_from_metadata(metadata, shard)
        else:
            file = _open_torch(shard)
            found = _torch_tensors(file, file.layout.main)
            checkpoint.patch = checkpoint.patch or _patch_in_torch(file)
        checkpoint.files[shard] = file
        for name, info in found.items():
            if name in weight_map and path / weight_map[name] != shard:
                continue  # a copy in another shard: the index names the one that counts
            tensors[name] = TensorInfo(name, info.shape, info.dtype, shard, offset + info.position)
        offset += 1 << 48  # later shards come after earlier ones
    return Weights(label, tensors, index=index, index_data=data)


def _open_folder(path: Path) -> Checkpoint:
    check_folder(path)
    present = [name for name in HF_WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise InputFileError(f"is a folder without model weights; expected one of {', '.join(HF_WEIGHT_FILES)}", path)
    others = sorted(item.name for item in path.iterdir() if OTHER_HF_WEIGHTS.match(item.name))
    if others:
        raise CheckpointError(f"holds weights lacal cannot patch ({', '.join(others)}) beside {present[0]}: a loader "
                              "that picks them would serve the unadjusted model; move them out of the folder and run "
                              "again", path)
    checkpoint = Checkpoint(path, "folder", {})
    sets = []
    for name in present:
        if path / name not in checkpoint.files:  # else a single file that is a shard of the index before it
            sets.append(_open_weight_set(checkpoint, path / name, name))
    main, *copies = sets
    checkpoint.tensors, checkpoint.index_file, checkpoint.copies = main.tensors, main.index, copies
    checkpoint.index_data = main.index_data
    if (path / PATCH_FILE).exists():
        checkpoint.patch = checkpoint.patch or _read_record(path / PATCH_FILE)
    checkpoint.config = read_config(path / "config.json")
    if checkpoint.config is not None and checkpoint.config.get(PATCH_METADATA_KEY) is not None:
        # the copy of the record that survives transformers' from_pretrained + save_pretrained
        checkpoint.patch = checkpoint.patch or _as_record(checkpoint.config[PATCH_METADATA_KEY],
                                                          str(path / "config.json"))
    checkpoint.class_names = config_classes(checkpoint.config)
    return checkpoint


def read_config(config: Path) -> dict | None:
    """A Hugging Face config.json as a dict, or None when there is none."""
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputFileError(f"is not valid JSON: {exc}", config) from None
    return data if isinstance(data, dict) else None


def config_classes(data: dict | None) -> list[str] | None:
    """Class names from a Hugging Face config (id2label), or None."""
    labels = data.get("id2label") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        ids = sorted(int(k) for k in labels)
    except ValueError:
        return None
    if ids != list(range(len(ids))):
        return None
    return [str(labels[str(i)]) for i in ids]


def is_checkpoint(path: str | os.PathLike, key: str | None = None) -> bool:
    """Whether `lacal apply` should treat `path` as a checkpoint rather than logits: a folder with model weights, a
    .bin or .tar file, or a .safetensors/.pt/.pth file with several tensors and no --key."""
    return sniff(path, key)[0]


def sniff(path: str | os.PathLike, key: str | None = None) -> tuple[bool, object]:
    """(`is_checkpoint`'s answer, what was read to give it): a PyTorch file's loaded object or a safetensors file's
    (header, data start), else None. Hand the second to `open_checkpoint` so the file is not read twice."""
    import torch

    path = Path(path)
    if path.is_dir():  # a Hugging Face model folder, not a folder of logits shards
        return any((path / name).is_file() for name in HF_WEIGHT_FILES), None
    if path.suffix.lower() in CHECKPOINT_ONLY_SUFFIXES:  # .pth.tar: a training checkpoint; no logits from .tar
        return True, None
    if key is not None or not path.is_file():
        return False, None
    if is_safetensors(path):
        header, data_start = read_safetensors_header(path)
        return len([k for k in header if k != "__metadata__"]) > 1, (header, data_start)
    if path.suffix.lower() in (".pt", ".pth"):
        obj = load_torch_file(path)
        if isinstance(obj, torch.Tensor):
            return False, None
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)] if isinstance(obj, dict) else []
        return len(tensors) != 1, obj
    return False, None

"""Reading model checkpoints and finding their classifier head.

Three layouts: a .safetensors file; a PyTorch file (.pt, .pth, .bin) holding a state dict, or a training checkpoint
that holds one under a common key; a Hugging Face model folder (config.json with model.safetensors, sharded
safetensors with an index, or pytorch_model.bin). PyTorch files are read with weights_only=True only.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, InputDataError, InputFileError
from .load import check_readable, load_torch_file

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
USUAL_HEAD = re.compile(r"^(fc|head|head\.fc|classifier|classifier\.\d+|heads\.head)$")
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")
PATCH_METADATA_KEY = "lacal_patch"
PATCH_FILE = "lacal_patch.json"
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str
    file: Path
    position: int  # order in the checkpoint: data offset in a safetensors file, key order in a PyTorch file


@dataclass(frozen=True)
class Head:
    """The classifier layer: `weight` [C, D] and `bias` [C] (None when the layer has no bias)."""

    name: str
    weight: str
    bias: str | None
    num_classes: int
    in_features: int
    dtype: str


class Checkpoint:
    """The tensors of a checkpoint, where each lives, and what lacal needs to rewrite it."""

    def __init__(self, path: Path, kind: str, tensors: dict[str, TensorInfo], class_names=None, patch=None):
        self.path = path
        self.kind = kind  # "safetensors", "torch" or "folder"
        self.tensors = tensors
        self.class_names = class_names
        self.patch = patch  # the provenance record of an earlier lacal patch, if any
        self._torch_objects: dict[Path, tuple] = {}
        self.index_file: Path | None = None

    def tensor(self, name: str):
        """The named tensor, on the CPU."""
        info = self.tensors[name]
        if _is_safetensors(info.file):
            from safetensors import safe_open

            with safe_open(str(info.file), framework="pt") as handle:
                return handle.get_tensor(name)
        return self.state_dict(info.file)[name]

    def torch_object(self, file: Path):
        """(the whole loaded object, the key path to its state dict) for a PyTorch file of this checkpoint."""
        if file not in self._torch_objects:
            obj = load_torch_file(file)
            self._torch_objects[file] = (obj, _locate_state_dict(obj, file))
        return self._torch_objects[file]

    def state_dict(self, file: Path) -> dict:
        obj, keys = self.torch_object(file)
        for key in keys:
            obj = obj[key]
        return obj


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


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
    except (ValueError, OSError) as exc:
        raise InputFileError(f"cannot read as safetensors: {exc}", path) from None
    if not isinstance(header, dict):
        raise InputFileError("cannot read as safetensors: the header is not a JSON object", path)
    return header, 8 + size


def _safetensors_tensors(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    header, _ = read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"].lower())
        tensors[name] = TensorInfo(name, tuple(entry["shape"]), dtype, path, int(entry["data_offsets"][0]))
    return tensors, metadata


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _locate_state_dict(obj, path: Path) -> list[str]:
    if _is_state_dict(obj):
        return []
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return [key]
    raise CheckpointError("holds no state dict: expected a dict of tensors, or one under "
                          f"{', '.join(repr(k) for k in STATE_DICT_KEYS[:3])}", path)


def _torch_tensors(checkpoint: Checkpoint, path: Path) -> dict[str, TensorInfo]:
    state = checkpoint.state_dict(path)
    return {str(name): TensorInfo(str(name), tuple(t.shape), str(t.dtype).replace("torch.", ""), path, position)
            for position, (name, t) in enumerate(state.items())}


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a .safetensors file, a PyTorch file or a Hugging Face model folder."""
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    check_readable(path)
    if _is_safetensors(path):
        tensors, metadata = _safetensors_tensors(path)
        return Checkpoint(path, "safetensors", tensors, patch=_patch_from_metadata(metadata, path))
    if path.suffix.lower() in (".pt", ".pth", ".bin"):
        checkpoint = Checkpoint(path, "torch", {}, patch=_patch_beside(path))
        checkpoint.tensors = _torch_tensors(checkpoint, path)
        return checkpoint
    raise InputFileError(f"unknown checkpoint format {path.suffix or '(no suffix)'!r}; use .safetensors, .pt, .pth, "
                         ".bin or a Hugging Face model folder", path)


def _patch_from_metadata(metadata: dict, path: Path):
    text = metadata.get(PATCH_METADATA_KEY)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text}


def patch_record_path(path: Path) -> Path:
    """Where the provenance of a patched PyTorch file lives: beside it, as NAME.lacal.json."""
    return path.with_name(path.name + ".lacal.json")


def _patch_beside(path: Path):
    record = patch_record_path(path)
    if not record.exists():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"unreadable": str(record)}


def _open_folder(path: Path) -> Checkpoint:
    present = [name for name in HF_WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise InputFileError(f"is a folder without model weights; expected one of {', '.join(HF_WEIGHT_FILES)}", path)
    checkpoint = Checkpoint(path, "folder", {})
    chosen = path / present[0]
    if chosen.name.endswith(".index.json"):
        try:
            index = json.loads(chosen.read_text(encoding="utf-8"))
            files = list(dict.fromkeys(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InputDataError(f"is not a valid weight index: {exc}", chosen) from None
        checkpoint.index_file = chosen
        shards = [path / name for name in files]
        for shard in shards:
            check_readable(shard)
    else:
        shards = [chosen]
    offset = 0
    for shard in shards:
        if _is_safetensors(shard):
            tensors, metadata = _safetensors_tensors(shard)
            checkpoint.patch = checkpoint.patch or _patch_from_metadata(metadata, shard)
        else:
            tensors = _torch_tensors(checkpoint, shard)
        for name, info in tensors.items():
            checkpoint.tensors[name] = TensorInfo(name, info.shape, info.dtype, shard, offset + info.position)
        offset += 1 << 48  # later shards come after earlier ones
    if (path / PATCH_FILE).is_file():
        checkpoint.patch = checkpoint.patch or _patch_beside_folder(path)
    checkpoint.class_names = read_config_classes(path / "config.json")
    return checkpoint


def _patch_beside_folder(path: Path):
    try:
        return json.loads((path / PATCH_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"unreadable": str(path / PATCH_FILE)}


def read_config_classes(config: Path) -> list[str] | None:
    """Class names from a Hugging Face config.json (id2label), or None."""
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"is not valid JSON: {exc}", config) from None
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


# ----------------------------------------------------------------------------------------------------- the head


def _plain_name(module: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if module.startswith(prefix):
                module, changed = module[len(prefix):], True
    return module


def _layers(checkpoint: Checkpoint, num_classes: int | None) -> list[Head]:
    """Every `X.weight` that is 2-D (with [C, D] when C is known), with `X.bias` when that is 1-D of length C."""
    layers = []
    for name, info in sorted(checkpoint.tensors.items(), key=lambda item: item[1].position):
        if not name.endswith(".weight") or len(info.shape) != 2:
            continue
        rows, columns = info.shape
        if num_classes is not None and rows != num_classes:
            continue
        module = name[: -len(".weight")]
        bias = checkpoint.tensors.get(module + ".bias")
        has_bias = bias is not None and bias.shape == (rows,)
        layers.append(Head(module, name, module + ".bias" if has_bias else None, rows, columns, info.dtype))
    return layers


def _describe(layer: Head) -> str:
    return f"{layer.name} [{layer.num_classes}, {layer.in_features}]" + ("" if layer.bias else " (no bias)")


def find_head(checkpoint: Checkpoint, num_classes: int | None = None, name: str | None = None) -> Head:
    """The classifier head: `name` when given (a module name or its '.weight'); else the layer with the usual head
    name (fc, head, head.fc, classifier, classifier.N, heads.head, under module./model. prefixes), the last in the
    file when several have one; else the only [C, D] layer. A head without a bias is returned with bias=None."""
    if name is not None:
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        matches = [layer for layer in _layers(checkpoint, None) if layer.name == module]
        if not matches:
            raise CheckpointError(f"--head {name!r}: no 2-D tensor {module + '.weight'!r} in the checkpoint",
                                  checkpoint.path)
        if num_classes is not None and matches[0].num_classes != num_classes:
            raise CheckpointError(f"--head {name!r} has {matches[0].num_classes} outputs but the calibration is for "
                                  f"{num_classes} classes", checkpoint.path)
        return matches[0]
    layers = _layers(checkpoint, num_classes)
    outputs = f"{num_classes} outputs" if num_classes is not None else "a usual head name"
    usual = [layer for layer in layers if USUAL_HEAD.match(_plain_name(layer.name))]
    if usual:
        return usual[-1]
    if num_classes is None:
        raise CheckpointError(f"no layer with {outputs}; name the classifier with --head NAME", checkpoint.path)
    with_bias = [layer for layer in layers if layer.bias]
    if len(with_bias) == 1 or (len(layers) == 1):
        return with_bias[0] if with_bias else layers[0]
    if not layers:
        heads = [layer for layer in _layers(checkpoint, None) if USUAL_HEAD.match(_plain_name(layer.name))]
        if heads:
            raise CheckpointError(f"the head {heads[-1].name!r} has {heads[-1].num_classes} outputs but the "
                                  f"calibration is for {num_classes} classes", checkpoint.path)
        shapes = [f"{n} {list(i.shape)}" for n, i in checkpoint.tensors.items()
                  if n.endswith(".weight") and len(i.shape) == 2][-5:]
        raise CheckpointError(f"no 2-D weight with {num_classes} rows (one per class); 2-D weights include: "
                              f"{', '.join(shapes) or 'none'}; name the classifier with --head NAME (or, if this "
                              "file holds logits rather than a model, choose the array with --key NAME)",
                              checkpoint.path)
    raise CheckpointError(f"{len(layers)} layers could be the classifier head ({num_classes} outputs): "
                          f"{'; '.join(_describe(layer) for layer in layers)}; choose one with --head NAME",
                          checkpoint.path)


def is_checkpoint(path: str | os.PathLike, key: str | None = None) -> bool:
    """Whether `lacal apply` should treat `path` as a checkpoint rather than a logits file: a folder, a .bin file, or
    a .safetensors/.pt/.pth file with several tensors and no --key."""
    import torch

    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".bin":
        return True
    if key is not None or not path.is_file():
        return False
    if _is_safetensors(path):
        header, _ = read_safetensors_header(path)
        return len([k for k in header if k != "__metadata__"]) > 1
    if path.suffix.lower() in (".pt", ".pth"):
        obj = load_torch_file(path)
        if isinstance(obj, torch.Tensor):
            return False
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)] if isinstance(obj, dict) else []
        return len(tensors) != 1
    return False

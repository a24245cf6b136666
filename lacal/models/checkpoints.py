"""Reading model checkpoints and finding their classifier head.

Three layouts: a .safetensors file; a PyTorch file (.pt, .pth, .bin, .tar, .ckpt) holding a state dict, or a training
checkpoint that holds one under a common key (and maybe EMA copies of it beside; a PyTorch Lightning .ckpt keeps its
LightningModule's state dict under `state_dict` and StochasticWeightAveraging's averaged copy in its callback state);
a Hugging Face model folder
(config.json with model.safetensors, sharded safetensors with an index, or pytorch_model.bin). PyTorch files are read
with weights_only=True only.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, InputDataError, InputFileError, MismatchError
from ..data.readers import check_readable, load_torch_file

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
USUAL_HEAD = re.compile(r"^(fc|head|head\.fc|classifier|classifier\.\d+|heads\.head|classifier\.out_proj|score)$")
USUAL_NAMES = "fc, head, head.fc, classifier, classifier.N, heads.head, classifier.out_proj, score"
# Heads whose outputs the model averages at inference, so each gets the full offsets: timm's distilled DeiT and LeViT,
# transformers' DeiTForImageClassificationWithTeacher. Names without wrapper prefixes.
AVERAGED_HEADS = {"head": "head_dist", "head.linear": "head_dist.linear",
                  "cls_classifier": "distillation_classifier"}
# A layer name part that says "an output head" (a second one beside the chosen head is a reason to stop); not fc1 and
# fc2, the hidden layers of transformer blocks.
HEAD_LIKE = re.compile(r"^(fc|fc_\w+|\w+_fc|.*head.*|.*classifier.*|.*logits.*|score)$")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt")
EMA_KEY = re.compile(r"ema|shadow|swa|averag", re.IGNORECASE)
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
        self.config: dict | None = None  # a Hugging Face folder's config.json

    def tensor(self, name: str):
        """The named tensor, on the CPU."""
        info = self.tensors[name]
        if is_safetensors(info.file):
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(info.file), framework="pt") as handle:
                    return handle.get_tensor(name)
            except (SafetensorError, OSError, ValueError) as exc:
                raise InputFileError(f"cannot read tensor {name!r}: {exc}", info.file) from None
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

    def copies(self, file: Path) -> dict:
        """The other state dicts of a training checkpoint, beside the main one, that are copies of the model: named
        like one (timm's `state_dict_ema`, torchvision's `model_ema`, `ema`, `shadow`, `swa`, ...) or holding exactly
        its tensor names (Lightning's WeightAveraging keeps the live model as `current_model_state`); keyed by their
        top-level key. In a Lightning .ckpt, averaged copies inside a callback's state (StochasticWeightAveraging's
        `average_model_state`) too, keyed by their path ("callbacks", callback, key). Another model kept beside it
        (a distillation teacher with other layers) is left alone."""
        obj, keys = self.torch_object(file)
        if not keys or not isinstance(obj, dict):
            return {}
        main = {plain_name(str(name)) for name in obj[keys[0]]}
        found = {str(key): value for key, value in obj.items()
                 if key != keys[0] and _is_state_dict(value)
                 and (EMA_KEY.search(str(key)) or {plain_name(str(name)) for name in value} == main)}
        callbacks = obj.get("callbacks")
        for name, state in (callbacks.items() if isinstance(callbacks, dict) else ()):
            for key, value in (state.items() if isinstance(state, dict) else ()):
                if EMA_KEY.search(str(key)) and _is_state_dict(value):
                    found[("callbacks", name, key)] = value
        return found

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


def is_safetensors(path: Path) -> bool:
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
    except (ValueError, OSError, RecursionError) as exc:
        raise InputFileError(f"cannot read as safetensors: {exc}", path) from None
    if not isinstance(header, dict):
        raise InputFileError("cannot read as safetensors: the header is not a JSON object", path)
    return header, 8 + size


def _safetensors_tensors(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    header, data_start = read_safetensors_header(path)
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
    raise InputDataError("holds no state dict: expected a dict of tensors, or one under "
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
    if is_safetensors(path):
        tensors, metadata = _safetensors_tensors(path)
        return Checkpoint(path, "safetensors", tensors, patch=_patch_from_metadata(metadata, path))
    if path.suffix.lower() in TORCH_SUFFIXES:
        checkpoint = Checkpoint(path, "torch", {})
        checkpoint.tensors = _torch_tensors(checkpoint, path)
        checkpoint.patch = _patch_in_torch(checkpoint, path) or _patch_beside(path)
        return checkpoint
    raise InputFileError(f"unknown checkpoint format {path.suffix or '(no suffix)'!r}; use .safetensors, .pt, .pth, "
                         ".bin, .pth.tar, a Lightning .ckpt or a Hugging Face model folder", path)


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


def _patch_in_torch(checkpoint: "Checkpoint", path: Path):
    """A record lacal left inside a PyTorch object: in the state dict's _metadata, or beside the state dict in a
    training checkpoint."""
    obj, keys = checkpoint.torch_object(path)
    state = checkpoint.state_dict(path)
    record = getattr(state, "_metadata", {}).get(PATCH_METADATA_KEY) if hasattr(state, "_metadata") else None
    if record is None and keys and isinstance(obj, dict):
        record = obj.get(PATCH_METADATA_KEY)
    return None if record is None else _as_record(record, str(path))


def patch_record_path(path: Path) -> Path:
    """Where the provenance of a patched PyTorch file lives: beside it, as NAME.lacal.json."""
    return path.with_name(path.name + ".lacal.json")


def _patch_beside(path: Path):
    record = patch_record_path(path)
    if not record.exists():
        return None
    try:
        return _as_record(json.loads(record.read_text(encoding="utf-8")), str(record))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError):
        return {"unreadable": str(record)}


def check_links(folder: Path) -> None:
    """Refuse a model folder with a symlinked subfolder, or a symlinked file that leads outside the folder (other
    than to a Hugging Face cache's blobs, beside its snapshots): lacal would read, copy or rewrite files elsewhere."""
    root = folder.resolve()
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            item = Path(parent) / name
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


def _open_folder(path: Path) -> Checkpoint:
    check_links(path)
    present = [name for name in HF_WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise InputFileError(f"is a folder without model weights; expected one of {', '.join(HF_WEIGHT_FILES)}", path)
    checkpoint = Checkpoint(path, "folder", {})
    chosen = path / present[0]
    weight_map = {}
    if chosen.name.endswith(".index.json"):
        try:
            index = json.loads(chosen.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
            if not all(isinstance(name, str) for name in files):
                raise TypeError("shard names must be strings")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise InputDataError(f"is not a valid weight index: {exc}", chosen) from None
        checkpoint.index_file = chosen
        shards = [path / name for name in files]
        for name, shard in zip(files, shards):
            if Path(name).is_absolute() or ".." in Path(name).parts:  # symlinks (a hub cache's blobs) are fine
                raise InputDataError(f"names a shard outside the folder: {name!r}", chosen)
            check_readable(shard)
    else:
        shards = [chosen]
    offset = 0
    for shard in shards:
        if is_safetensors(shard):
            tensors, metadata = _safetensors_tensors(shard)
            checkpoint.patch = checkpoint.patch or _patch_from_metadata(metadata, shard)
        else:
            tensors = _torch_tensors(checkpoint, shard)
        for name, info in tensors.items():
            if name in weight_map and path / weight_map[name] != shard:
                continue  # a copy in another shard: the index names the one that counts
            checkpoint.tensors[name] = TensorInfo(name, info.shape, info.dtype, shard, offset + info.position)
        offset += 1 << 48  # later shards come after earlier ones
    if (path / PATCH_FILE).exists():
        checkpoint.patch = checkpoint.patch or _patch_beside_folder(path)
    checkpoint.config = read_config(path / "config.json")
    if checkpoint.config is not None and checkpoint.config.get(PATCH_METADATA_KEY) is not None:
        # the copy of the record that survives transformers' from_pretrained + save_pretrained
        checkpoint.patch = checkpoint.patch or _as_record(checkpoint.config[PATCH_METADATA_KEY],
                                                          str(path / "config.json"))
    checkpoint.class_names = read_config_classes(path / "config.json")
    return checkpoint


def _patch_beside_folder(path: Path):
    try:
        return _as_record(json.loads((path / PATCH_FILE).read_text(encoding="utf-8")), str(path / PATCH_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError):
        return {"unreadable": str(path / PATCH_FILE)}


def read_config(config: Path) -> dict | None:
    """A Hugging Face config.json as a dict, or None when there is none."""
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputFileError(f"is not valid JSON: {exc}", config) from None
    return data if isinstance(data, dict) else None


def read_config_classes(config: Path) -> list[str] | None:
    """Class names from a Hugging Face config.json (id2label), or None."""
    data = read_config(config)
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


def plain_name(module: str) -> str:
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
    for name, info in sorted(checkpoint.tensors.items(), key=lambda item: _order(item[1])):
        if not (name == "weight" or name.endswith(".weight")) or not _linear_shape(info.shape) or _embedding(name):
            continue
        rows, columns = info.shape[:2]
        if num_classes is not None and rows != num_classes:
            continue
        module = name[: -len("weight")].rstrip(".")  # "" for a bare layer's state dict
        bias = checkpoint.tensors.get(bias_name(module))
        has_bias = bias is not None and bias.shape == (rows,)
        layers.append(Head(module, name, bias_name(module) if has_bias else None, rows, columns, info.dtype))
    return layers


def _embedding(name: str) -> bool:
    """Token, position and patch tables ([vocab, D] and the like), never a classifier."""
    return any("embed" in part or part in ("wte", "wpe") for part in name.lower().split("."))


def bias_name(module: str) -> str:
    return f"{module}.bias" if module else "bias"


def _linear_shape(shape: tuple) -> bool:
    """[C, D], or [C, D, 1, 1] (a 1x1 convolution used as the classifier, as in BiT and SqueezeNet)."""
    return len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))


def _natural(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _order(info: TensorInfo) -> tuple:
    """File order for PyTorch files (the order the model defined its modules); safetensors files are written sorted
    by name, so there module names in natural order (classifier.9 before classifier.10) stand in for it."""
    if is_safetensors(info.file):
        return (info.position >> 48, _natural(info.name))
    return (info.position >> 48, info.position)


def _describe(layer: Head) -> str:
    return f"{layer.name or '(top level)'} [{layer.num_classes}, {layer.in_features}]" + \
        ("" if layer.bias else " (no bias)")


def find_head(checkpoint: Checkpoint, num_classes: int | None = None, name: str | None = None) -> Head:
    """The classifier head: `name` when given (a module name, with or without a `module.`-style prefix or
    '.weight'); else the last layer with a usual head name (fc, head, head.fc, classifier, classifier.N,
    heads.head, under module./model. prefixes); else the only [C, D] layer. A head without a bias is returned with
    bias=None; several candidates and no usual name is an error that lists them."""
    if name is not None:
        module = name[: -len("weight")].rstrip(".") if name == "weight" or name.endswith(".weight") else name
        every = _layers(checkpoint, None)
        matches = [layer for layer in every if layer.name == module] or \
            [layer for layer in every if plain_name(layer.name) == plain_name(module)]
        if len(matches) != 1:
            found = "several layers match it" if matches else f"no 2-D tensor {module + '.weight'!r}"
            raise CheckpointError(f"`head` {name!r}: {found} in the checkpoint", checkpoint.path)
        if num_classes is not None and matches[0].num_classes != num_classes:
            raise MismatchError(f"`head` {name!r} has {matches[0].num_classes} outputs but the calibration is for "
                                f"{num_classes} classes", checkpoint.path)
        return matches[0]
    layers = _layers(checkpoint, num_classes)
    usual = [layer for layer in layers if USUAL_HEAD.match(plain_name(layer.name))]
    if usual:
        return usual[-1]
    if num_classes is None:
        likely = [layer for layer in layers if re.search(r"head|classifier|score|logits", layer.name.lower())]
        found = [_describe(layer) for layer in likely + [layer for layer in layers if layer not in likely]][:5]
        raise CheckpointError(f"no layer with a usual head name ({USUAL_NAMES}); 2-D weights include: "
                              f"{'; '.join(found) or 'none'}; name the classifier with --head NAME, or give the "
                              "class count through --calibration or --priors", checkpoint.path)
    if len(layers) == 1:
        return layers[0]
    if not layers:
        heads = [layer for layer in _layers(checkpoint, None) if USUAL_HEAD.match(plain_name(layer.name))]
        if heads:
            raise MismatchError(f"the head {heads[-1].name!r} has {heads[-1].num_classes} outputs but the "
                                f"calibration is for {num_classes} classes", checkpoint.path)
        shapes = [f"{n} {list(i.shape)}" for n, i in checkpoint.tensors.items()
                  if n.endswith(".weight") and _linear_shape(i.shape)][-5:]
        raise CheckpointError(f"no 2-D weight with {num_classes} rows (one per class); 2-D weights include: "
                              f"{', '.join(shapes) or 'none'}; name the classifier with --head NAME (or, if this "
                              "file holds logits rather than a model, choose the array with --key NAME)",
                              checkpoint.path)
    raise CheckpointError(f"{len(layers)} layers could be the classifier head ({num_classes} outputs): "
                          f"{'; '.join(_describe(layer) for layer in layers)}; choose one with --head NAME",
                          checkpoint.path)


def find_heads(checkpoint: Checkpoint, num_classes: int | None = None, name: str | None = None) -> list[Head]:
    """Every layer whose output is the model's output: the head `find_head` picks, and the heads the architecture
    averages with it (timm's distilled DeiT: `head` and `head_dist`), each of which needs the full offsets. Refused
    (CheckpointError): another head-like layer with the same outputs when lacal cannot know how the model combines
    them (unless --head names the one to patch), and a known architecture that transforms the head's output
    further (torchvision's SqueezeNet)."""
    layers = _layers(checkpoint, num_classes)
    by_plain = {plain_name(layer.name): layer for layer in layers}
    pair = next(((by_plain[a], by_plain[b]) for a, b in AVERAGED_HEADS.items() if a in by_plain and b in by_plain),
                None)
    if pair is not None and name is None:
        heads = list(pair)
    else:
        head = find_head(checkpoint, num_classes, name)
        every = {plain_name(layer.name): layer for layer in _layers(checkpoint, head.num_classes)}
        plain = plain_name(head.name)
        partner = AVERAGED_HEADS.get(plain) or next((a for a, b in AVERAGED_HEADS.items() if b == plain), None)
        heads = [head] + ([every[partner]] if partner in every else [])
    if name is None:
        others = [layer for layer in _layers(checkpoint, heads[0].num_classes)
                  if layer not in heads and _head_like(layer) and not any(_same_sequence(layer, h) for h in heads)]
        if others:
            listed = "; ".join(_describe(layer) for layer in heads + others)
            raise CheckpointError(f"several layers could be output heads ({listed}) and lacal cannot know how the "
                                  "model combines them (patching one of several heads that the model adds or "
                                  "averages would apply only part of the adjustment); if the model's output is one of them "
                                  "alone, name it with --head NAME", checkpoint.path)
    _refuse_known_nonlinear_head(checkpoint, heads)
    return heads


def _head_like(layer: Head) -> bool:
    parts = plain_name(layer.name).split(".")
    if any(part.lower().startswith("aux") for part in parts):
        return False  # torchvision's GoogLeNet and Inception v3: auxiliary heads feed the training loss only
    return any(HEAD_LIKE.match(part) for part in parts)


def _same_sequence(layer: Head, head: Head) -> bool:
    """Two numbered layers of one nn.Sequential (classifier.0 and classifier.6): a chain, not parallel heads."""
    parent, _, last = layer.name.rpartition(".")
    head_parent, _, head_last = head.name.rpartition(".")
    return parent == head_parent and last.isdigit() and head_last.isdigit()


def _refuse_known_nonlinear_head(checkpoint: Checkpoint, heads: list[Head]) -> None:
    """torchvision's SqueezeNet ends with classifier.1 (a 1x1 convolution), then a ReLU, then average pooling: a new
    bias would be clipped by the ReLU, so the model's output would not move by the offsets."""
    names = checkpoint.tensors
    squeezenet = any(".squeeze." in n for n in names) and any(".expand1x1." in n for n in names)
    if squeezenet and any(plain_name(h.name) == "classifier.1" for h in heads):
        raise CheckpointError(
            "looks like torchvision's SqueezeNet, whose classifier.1 is followed by a ReLU and average pooling: a new "
            "bias would be clipped by the ReLU, so the patched model would not give logits - tau * log(pi); adjust "
            "the model's logits instead (`lacal apply LOGITS`, or Calibration.adjust in Python)", checkpoint.path)


def head_notes(checkpoint: Checkpoint, heads: list[Head]) -> list[str]:
    """What the user should know about the heads lacal will patch."""
    notes = []
    if len(heads) > 1:
        notes.append(f"the model averages {' and '.join(repr(h.name) for h in heads)}, so each gets the full "
                     "offsets")
    convolutions = [h.name for h in heads if len(checkpoint.tensors[h.weight].shape) == 4]
    if convolutions and not checkpoint.is_hugging_face:
        notes.append(f"{convolutions[0]!r} is a 1x1 convolution and lacal cannot see what the model does after it: "
                     "the patch is exact when only pooling, flattening or a softmax follows, not a ReLU or a "
                     "normalisation; compare the patched model's outputs with the original's minus tau * log(pi) "
                     "to be sure (--verify-features checks the layer itself)")
    return notes


def is_checkpoint(path: str | os.PathLike, key: str | None = None) -> bool:
    """Whether `lacal apply` should treat `path` as a checkpoint rather than logits: a folder with model weights, a
    .bin, .tar or .ckpt (Lightning) file, or a .safetensors/.pt/.pth file with several tensors and no --key."""
    import torch

    path = Path(path)
    if path.is_dir():  # a Hugging Face model folder, not a folder of logits shards
        return any((path / name).is_file() for name in HF_WEIGHT_FILES)
    if path.suffix.lower() in (".bin", ".tar", ".ckpt"):  # training checkpoints; lacal reads no logits from these
        return True
    if key is not None or not path.is_file():
        return False
    if is_safetensors(path):
        header, _ = read_safetensors_header(path)
        return len([k for k in header if k != "__metadata__"]) > 1
    if path.suffix.lower() in (".pt", ".pth"):
        obj = load_torch_file(path)
        if isinstance(obj, torch.Tensor):
            return False
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)] if isinstance(obj, dict) else []
        return len(tensors) != 1
    return False

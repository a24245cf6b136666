"""Finding the classifier head of a checkpoint: pure, from the names, shapes and order of its tensors (a
`Checkpoint`'s `tensors`, or those of a module in memory). Nothing here reads a file.

The head is the layer named by the user, else the last layer with a usual head name, else the only layer with one
row per class. Heads the model averages (timm's distilled DeiT and LeViT, CrossViT's two branches) are found
together, since each needs the full offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, MismatchError

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


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor of a checkpoint lives: its file, and its order in the checkpoint (the data offset in a
    safetensors file, the key order in a PyTorch file; later shards add 1 << 48)."""

    name: str
    shape: tuple
    dtype: str
    file: Path
    position: int


@dataclass(frozen=True)
class Head:
    """The classifier layer: `weight` [C, D] and `bias` [C] (None when the layer has no bias)."""

    name: str
    weight: str
    bias: str | None
    num_classes: int
    in_features: int
    dtype: str


def is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def plain_name(module: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if module.startswith(prefix):
                module, changed = module[len(prefix):], True
    return module


def _layers(checkpoint, num_classes: int | None) -> list[Head]:
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


def find_head(checkpoint, num_classes: int | None = None, name: str | None = None) -> Head:
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
    groups = _averaged_groups(checkpoint, layers)
    if groups and len(groups[0]) == len(layers):  # heads the model averages: `find_heads` returns them all
        return groups[0][0]
    if not layers:
        heads = [layer for layer in _layers(checkpoint, None) if USUAL_HEAD.match(plain_name(layer.name))]
        if heads:
            raise MismatchError(f"the head {heads[-1].name!r} has {heads[-1].num_classes} outputs but the "
                                f"calibration is for {num_classes} classes", checkpoint.path)
        shapes = [f"{n} {list(i.shape)}" for n, i in checkpoint.tensors.items()
                  if n.endswith(".weight") and _linear_shape(i.shape)][-5:]
        raise CheckpointError(f"no 2-D weight with {num_classes} rows (one per class), so no layer can be the "
                              f"classifier for this calibration; 2-D weights include: {', '.join(shapes) or 'none'}; "
                              "if this file holds logits rather than a model, choose the array with --key NAME",
                              checkpoint.path)
    raise CheckpointError(f"{len(layers)} layers could be the classifier head ({num_classes} outputs): "
                          f"{'; '.join(_describe(layer) for layer in layers)}; if the model's output is one of them "
                          "alone, name it with --head NAME (a model that adds or averages several is beyond a bias "
                          "patch: adjust its logits with `lacal apply LOGITS` instead)", checkpoint.path)


def find_heads(checkpoint, num_classes: int | None = None, name: str | None = None) -> list[Head]:
    """Every layer whose output is the model's output: the head `find_head` picks, and the heads the architecture
    averages with it (timm's distilled DeiT: `head` and `head_dist`; CrossViT: `head.0`, `head.1`), each of which
    needs the full offsets; naming one of them with `name` patches them all, never one alone. Refused
    (CheckpointError): another head-like layer with the same outputs when lacal cannot know how the model combines
    them (unless --head names the one to patch), and a known architecture that transforms the head's output
    further (torchvision's SqueezeNet)."""
    layers = _layers(checkpoint, num_classes)
    groups = _averaged_groups(checkpoint, layers)
    if groups and name is None:
        heads = groups[0]
    else:
        head = find_head(checkpoint, num_classes, name)
        group = next((group for group in _averaged_groups(checkpoint, _layers(checkpoint, head.num_classes))
                      if head in group), [])
        heads = [head] + [layer for layer in group if layer != head]
    if name is None:
        others = [layer for layer in _layers(checkpoint, heads[0].num_classes)
                  if layer not in heads and _head_like(layer) and not any(_same_sequence(layer, h) for h in heads)]
        if others:
            listed = "; ".join(_describe(layer) for layer in heads + others)
            raise CheckpointError(f"several layers could be output heads ({listed}) and lacal cannot know how the "
                                  "model combines them (patching one of several heads that the model adds or "
                                  "averages would apply only part of the adjustment); if the model's output is one "
                                  "of them alone, name it with --head NAME, else adjust its logits with `lacal apply "
                                  "LOGITS`", checkpoint.path)
    _refuse_known_nonlinear_head(checkpoint, heads)
    return heads


def _averaged_groups(checkpoint, layers: list[Head]) -> list[list[Head]]:
    """The sets of `layers` that the architecture averages at inference: the pairs in AVERAGED_HEADS, and timm's
    CrossViT (`cls_token_0`, `cls_token_1`, ... one per branch), whose forward_head averages `head.0`, `head.1`, ...
    with equal widths."""
    by_plain = {plain_name(layer.name): layer for layer in layers}
    groups = [[by_plain[a], by_plain[b]] for a, b in AVERAGED_HEADS.items() if a in by_plain and b in by_plain]
    branches = []
    while f"head.{len(branches)}" in by_plain:
        branches.append(by_plain[f"head.{len(branches)}"])
    names = {plain_name(name) for name in checkpoint.tensors}
    if len(branches) > 1 and all(f"cls_token_{i}" in names for i in range(len(branches))) \
            and len({layer.num_classes for layer in branches}) == 1:
        groups.append(branches)
    return groups


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


def _refuse_known_nonlinear_head(checkpoint, heads: list[Head]) -> None:
    """torchvision's SqueezeNet ends with classifier.1 (a 1x1 convolution), then a ReLU, then average pooling: a new
    bias would be clipped by the ReLU, so the model's output would not move by the offsets."""
    names = checkpoint.tensors
    squeezenet = any(".squeeze." in n for n in names) and any(".expand1x1." in n for n in names)
    if squeezenet and any(plain_name(h.name) == "classifier.1" for h in heads):
        raise CheckpointError(
            "looks like torchvision's SqueezeNet, whose classifier.1 is followed by a ReLU and average pooling: a new "
            "bias would be clipped by the ReLU, so the patched model would not give logits - tau * log(pi); adjust "
            "the model's logits instead (`lacal apply LOGITS`, or Calibration.adjust in Python)", checkpoint.path)


def head_notes(checkpoint, heads: list[Head]) -> list[str]:
    """What the user should know about the heads lacal will patch."""
    notes = []
    if len(heads) > 1:
        notes.append(f"the model averages {' and '.join(repr(h.name) for h in heads)}, so each gets the full "
                     "offsets")
    convolutions = [h.name for h in heads if len(checkpoint.tensors[h.weight].shape) == 4]
    if convolutions and not getattr(checkpoint, "is_hugging_face", False):
        notes.append(f"{convolutions[0]!r} is a 1x1 convolution and lacal cannot see what the model does after it: "
                     "the patch is exact when only pooling, flattening or a softmax follows, not a ReLU or a "
                     "normalisation; compare the patched model's outputs with the original's minus tau * log(pi) "
                     "to be sure (--verify-features checks the layer itself)")
    return notes



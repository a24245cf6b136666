"""ONNX models: the classifier's bias carries the adjustment, and onnxruntime runs the model for `lacal score`.

The head is found by following the graph back from the output that has one column per class, through layers that
only move values around (Identity, Flatten, Reshape, Squeeze, Unsqueeze, Dropout), average a convolution's map
over space (GlobalAveragePool) or cast between float types (Cast), and at most one Softmax or LogSoftmax, to the layer that makes the logits: a Gemm (its C input is the bias), a MatMul followed by an Add of a
constant (the constant is the bias), a MatMul alone, or a Conv (its B input). The new bias replaces the old one in
place; where there is none, where it is shared with another node, or where a temperature scales the logits too, one
Add (and one Mul) node goes right after the head instead, so a Softmax after it sees the adjusted logits. Anything
else on the way (a ReLU, a normalisation, another layer) changes what a per-class shift does, and is refused.

Models are read without their external data, so a model over 2 GB (stored with external data) is rewritten without
loading its weights: the data files stay as they are, and only the small new bias is stored in the model file.
onnx and onnxruntime are an optional extra, imported only here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import (CheckpointError, InputFileError, MismatchError, MissingDependencyError,
                     OptionError, OutputError, VerificationError)
from ..data.writers import atomic_path

ONNX_SUFFIXES = (".onnx",)
PATCH_KEY = "lacal_patch"
INSTALL = "pip install 'lacal[onnx]'"
PASS_THROUGH = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout", "GlobalAveragePool")
SOFTMAX = ("Softmax", "LogSoftmax")
HEADS = ("Gemm", "MatMul", "Conv")
FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE
VERIFY_ROWS = 8  # random inputs run when no --verify-features is given and the input shape is fixed


def import_onnx(source=None):
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(f"ONNX models need the onnx package, which is not installed: {INSTALL}",
                                     source) from None
    return onnx


def import_onnxruntime(source=None):
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(f"running an ONNX model needs onnxruntime, which is not installed: {INSTALL}",
                                     source) from None
    return onnxruntime


def is_onnx(path) -> bool:
    return Path(path).suffix.lower() in ONNX_SUFFIXES


@dataclass(frozen=True)
class OnnxHead:
    """Where the offsets go: `logits` is the tensor the head makes (before any Softmax); `bias` the constant that is
    rewritten (an initializer or a Constant node's value), None when an Add node is inserted (`why_add` says why)."""

    output: str
    node: str
    op: str
    logits: str
    bias: str | None
    bias_scale: float  # Gemm's beta: the bias enters the logits beta times
    num_classes: int
    class_axis: int  # 1 for a Conv's (N, C, ...) output, -1 otherwise
    spatial_dims: int  # the Conv's spatial dimensions (the offsets then have shape (C, 1, ...))
    softmax: str | None
    dtype: int
    why_add: str | None = None

    @property
    def name(self) -> str:
        return self.node


@dataclass(frozen=True)
class OnnxPatch:
    model: object  # the patched onnx.ModelProto (external data not loaded)
    head: OnnxHead
    added_node: bool
    max_rounding_error: float
    record: dict
    earlier: dict | None = None


@dataclass
class OnnxFile:
    """An ONNX model read without its external data."""

    path: Path
    model: object
    shapes: dict = field(default_factory=dict)

    @property
    def patch(self) -> dict | None:
        for entry in self.model.metadata_props:
            if entry.key == PATCH_KEY:
                try:
                    record = json.loads(entry.value)
                except (json.JSONDecodeError, RecursionError):
                    record = None
                return record if isinstance(record, dict) else {"unreadable": str(self.path)}
        return None


def open_onnx(path) -> OnnxFile:
    """Read an ONNX model (not its external data) and infer the shapes of its tensors where ONNX can."""
    from ..data.readers import check_readable

    path = check_readable(path)
    onnx = import_onnx(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's errors share no base class
        raise InputFileError(f"cannot read as an ONNX model: {_first_line(exc)}", path) from None
    if not model.graph.output:
        raise InputFileError("cannot read as an ONNX model: the graph has no outputs", path)
    check_external_data(model, path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a help, not a requirement
        inferred = model
    shapes = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in info.type.tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return OnnxFile(path, model, shapes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_external_data(model, path: Path) -> None:
    """Refuse (InputFileError, naming the model file and the location) external data that is not a regular file
    inside the model's folder: an absolute location, one with `..`, a symlink that leads out of the folder, a
    device, FIFO or socket, or a file that is not there. Checked before anything reads or copies the data."""
    import stat

    folder = path.parent.resolve()
    for location in external_files(model):
        relative = Path(location)
        if relative.is_absolute() or ".." in relative.parts or relative.drive:
            raise InputFileError(f"points to external data outside its folder: {location!r}; lacal reads external "
                                 "data only from the model's own folder", path)
        real = (path.parent / relative).resolve()
        if folder not in real.parents:
            raise InputFileError(f"its external data {location!r} leads outside the model's folder (to {real}); "
                                 "lacal reads external data only from the model's own folder", path)
        try:
            mode = os.stat(real).st_mode
        except OSError as exc:
            raise InputFileError(f"cannot read its external data {location!r}: {exc.strerror or exc}", path) from None
        if not stat.S_ISREG(mode):
            raise InputFileError(f"its external data {location!r} is not a regular file", path)


# ----------------------------------------------------------------------------------------------------- the head


def _attribute(node, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            from onnx import helper

            return helper.get_attribute_value(attribute)
    return default


def _all_nodes(graph):
    """The nodes of a graph and of the subgraphs of its If, Loop and Scan nodes."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _all_nodes(subgraph)


def _all_tensors(graph):
    yield from graph.initializer
    for node in _all_nodes(graph):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def _opset(model) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 1)


def find_onnx_head(file: OnnxFile, num_classes: int | None = None, output: str | None = None) -> OnnxHead:
    """Follow the graph back from the logits output (`output`, or the one output with `num_classes` columns) to
    the classifier layer, refusing a path through anything that is not a per-class-order-preserving pass-through
    (a Cast between float types passes: it rounds, but shifts every class alike)."""
    graph = file.model.graph
    outputs = [o.name for o in graph.output]
    if output is not None:
        if output not in outputs:
            raise CheckpointError(f"`head` {output!r}: the model has no such output; its outputs are "
                                  f"{', '.join(outputs)}", file.path)
        chosen = output
    else:
        widths = {name: (file.shapes.get(name) or [None])[-1] for name in outputs}
        matching = [n for n in outputs if widths[n] == num_classes] if num_classes is not None else outputs
        if len(matching) > 1 and "logits" in matching:
            matching = ["logits"]
        if len(matching) != 1:
            described = ", ".join(f"{n} ({widths[n] if widths[n] else '?'} columns)" for n in outputs)
            if not matching:
                raise MismatchError(f"no output has {num_classes} columns (one per class); outputs: {described}",
                                    file.path)
            raise CheckpointError(f"{len(matching)} outputs could be the logits: {described}; name one with "
                                  "--head OUTPUT", file.path)
        chosen = matching[0]
    width = (file.shapes.get(chosen) or [None])[-1]
    if num_classes is not None and width is not None and width != num_classes:
        raise MismatchError(f"output {chosen!r} has {width} columns but the calibration is for {num_classes} "
                            "classes", file.path)
    return _walk_back(file, chosen, num_classes or width)


def _walk_back(file: OnnxFile, output: str, num_classes: int | None) -> OnnxHead:
    graph = file.model.graph
    producers = {name: node for node in graph.node for name in node.output}
    tensor, softmax, passed, seen = output, None, [], set()
    while True:
        node = producers.get(tensor)
        follows = node is not None and (node.op_type in PASS_THROUGH or node.op_type in SOFTMAX or node.op_type == "Cast")
        if tensor in seen or (follows and not (node.input and node.input[0])):
            raise CheckpointError(f"output {output!r}: the graph feeds {tensor!r} back into itself or from a node "
                                  "without an input; it is not a valid model", file.path)
        seen.add(tensor)
        if node is None:
            raise CheckpointError(f"output {output!r} does not come from a classifier layer (followed back through "
                                  f"{', '.join(passed) or 'nothing'} to a graph input or constant)", file.path)
        where = f"{node.op_type} (node {node.name or node.output[0]!r})"
        if node.domain not in ("", "ai.onnx"):
            _refuse(file, output, where)
        if node.op_type in PASS_THROUGH or (node.op_type == "Cast" and _attribute(node, "to", 0) in FLOAT_TYPES):
            passed.append(node.op_type)
            tensor = node.input[0]
            continue
        if node.op_type in SOFTMAX:
            if softmax is not None:
                _refuse(file, output, where)
            softmax = node
            passed.append(node.op_type)
            tensor = node.input[0]
            continue
        if node.op_type in HEADS or (node.op_type == "Add" and _biased_matmul(file, node, producers)):
            head = _head_of(file, node, producers, output, num_classes, softmax)
            if softmax is not None:
                _check_softmax_axis(file, softmax, head)
            return head
        _refuse(file, output, where)


def _refuse(file: OnnxFile, output: str, where: str):
    raise CheckpointError(f"the path from output {output!r} back to the classifier goes through {where}, which does "
                          f"not keep a per-class shift of the logits (only {', '.join(PASS_THROUGH)}, Cast and one "
                          "Softmax may follow the head); lacal cannot place the offsets", file.path)


def _constant(file: OnnxFile, name: str, producers: dict):
    """The TensorProto of an initializer or a Constant node's value, else None."""
    for tensor in file.model.graph.initializer:
        if tensor.name == name:
            return tensor
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for attribute in node.attribute:
            if attribute.name == "value":
                return attribute.t
    return None


def _biased_matmul(file: OnnxFile, node, producers: dict) -> bool:
    """An Add of a constant to the output of a MatMul (the two halves of a linear layer)."""
    if len(node.input) != 2:
        return False
    for data, constant in ((0, 1), (1, 0)):
        producer = producers.get(node.input[data])
        if producer is not None and producer.op_type == "MatMul" and \
                _constant(file, node.input[constant], producers) is not None:
            return True
    return False


def _head_of(file: OnnxFile, node, producers: dict, output: str, num_classes, softmax) -> OnnxHead:
    graph = file.model.graph
    op, beta, class_axis, spatial, bias, weight_classes = node.op_type, 1.0, -1, 0, None, None
    if op == "Gemm":
        weight = file.shapes.get(node.input[1])
        if weight is not None and len(weight) == 2:
            weight_classes = weight[0] if _attribute(node, "transB", 0) else weight[1]
        beta = float(_attribute(node, "beta", 1.0))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    elif op == "MatMul":
        weight = file.shapes.get(node.input[1])
        weight_classes = weight[-1] if weight else None
    elif op == "Conv":
        weight = file.shapes.get(node.input[1])
        weight_classes = weight[0] if weight else None
        spatial = len(weight) - 2 if weight else 2
        class_axis = 1
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    else:  # Add after MatMul
        matmul = 0 if (producers.get(node.input[0]) is not None
                       and producers[node.input[0]].op_type == "MatMul") else 1
        weight = file.shapes.get(producers[node.input[matmul]].input[1])
        weight_classes = weight[-1] if weight else None
        bias = node.input[1 - matmul]
        op = "MatMul+Add"
    classes = num_classes or weight_classes
    if classes is None:
        raise CheckpointError(f"cannot tell how many classes {op} node {node.name!r} makes; give --calibration or "
                              "--priors for the class count", file.path)
    if weight_classes is not None and weight_classes != classes:
        raise MismatchError(f"the classifier {op} node {node.name!r} makes {weight_classes} outputs but output "
                            f"{output!r} has {classes} columns", file.path)
    dtype = _dtype_of(file, node, output)
    why = None
    if bias is None:
        why = f"the {op} node {node.name!r} has no bias"
    elif op == "Gemm" and beta == 0:
        bias, why = None, f"the Gemm node {node.name!r} has beta = 0"
    else:
        tensor = _constant(file, bias, producers)
        uses = sum(name == bias for other in _all_nodes(graph) for name in other.input)
        shape = tuple(tensor.dims) if tensor is not None else None
        if tensor is None:
            why = f"its bias {bias!r} is computed, not stored"
        elif uses > 1 or bias in {i.name for i in graph.input} or bias in {o.name for o in graph.output}:
            why = f"its bias {bias!r} is shared with another node or is a graph input or output"
        elif int(np.prod(shape or (1,))) != classes or (shape and max(shape) != classes):
            why = f"its bias {bias!r} has shape {list(shape)}, not one value per class"
        elif tensor.data_type not in FLOAT_TYPES:
            why = f"its bias {bias!r} is not float16, float32 or float64"
        if why is not None:
            bias = None
    return OnnxHead(output, node.name, op, node.output[0], bias, beta, classes, class_axis, spatial,
                    softmax.op_type if softmax is not None else None, dtype, why)


def _dtype_of(file: OnnxFile, node, output: str) -> int:
    """The element type of the head's logits: from the weight initializer, else from the graph output."""
    for tensor in file.model.graph.initializer:
        if tensor.name in node.input[:2] and tensor.data_type in FLOAT_TYPES:
            return tensor.data_type
    for info in file.model.graph.output:
        if info.name == output and info.type.tensor_type.elem_type in FLOAT_TYPES:
            return info.type.tensor_type.elem_type
    raise CheckpointError(f"the classifier node {node.name!r} does not compute in float16, float32 or float64",
                          file.path)


def _check_softmax_axis(file: OnnxFile, softmax, head: OnnxHead) -> None:
    rank = len(file.shapes.get(softmax.input[0]) or [])
    axis = int(_attribute(softmax, "axis", -1 if _opset(file.model) >= 13 else 1))
    if rank:
        axis = axis + rank if axis < 0 else axis
        expected = rank - 1 if head.class_axis == -1 else 1
    else:
        expected = head.class_axis  # rank unknown: the last axis after a Gemm or MatMul, axis 1 after a Conv
    if axis == expected:
        return
    raise CheckpointError(f"the {softmax.op_type} after the classifier normalises over axis {axis}, not over the "
                          "class axis; lacal cannot place the offsets", file.path)


# ------------------------------------------------------------------------------------------------------ patching


def make_onnx_patch(file: OnnxFile, head: OnnxHead, offsets, tau: float, scale: float = 1.0,
                    calibration_sha256: str | None = None, force: bool = False) -> OnnxPatch:
    """A copy of the model whose head gives logits * scale + offsets: the bias rewritten, or an Add (and a Mul for a
    temperature) inserted after the head. Refuses a model that already carries a lacal patch unless `force`."""
    from onnx import ModelProto, StringStringEntryProto, helper, numpy_helper

    from ..version import __version__
    from .patch import PATCH_FORMAT, PATCH_VERSION, describe_patch

    earlier = file.patch
    if earlier is not None and not force:
        raise CheckpointError(f"already carries a lacal patch{describe_patch(earlier)}; patching again would add "
                              "the offsets twice; pass --force if that is really what you want", file.path)
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.shape != (head.num_classes,):
        raise MismatchError(f"the classifier makes {head.num_classes} outputs but the calibration is for "
                            f"{offsets.shape[0]} classes", file.path)
    model = ModelProto()
    model.CopyFrom(file.model)
    graph = model.graph
    dtype = FLOAT_TYPES[head.dtype]
    producers = {name: node for node in graph.node for name in node.output}
    if head.bias is not None and scale == 1.0:
        tensor = _constant(OnnxFile(file.path, model), head.bias, producers)
        old = _read_tensor(tensor, file.path)
        exact = old.astype(np.float64) + (offsets / head.bias_scale).reshape(old.shape)
        new = exact.astype(old.dtype)
        rounding = float(np.abs(new.astype(np.float64) - exact).max()) * abs(head.bias_scale)
        tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
        added = False
    else:
        shape = (head.num_classes,) + (1,) * head.spatial_dims
        names = {n for node in graph.node for n in [*node.input, *node.output]} | \
            {t.name for t in graph.initializer} | {i.name for i in graph.input}
        raw = _unique(f"{head.logits}_lacal_unadjusted", names)
        shift = offsets.astype(dtype)
        rounding = float(np.abs(shift.astype(np.float64) - offsets).max())
        offsets_name = _unique("lacal_offsets", names)
        graph.initializer.append(numpy_helper.from_array(shift.reshape(shape), offsets_name))
        new_nodes, current = [], raw
        if scale != 1.0:
            scale_name, scaled = _unique("lacal_scale", names), _unique(f"{head.logits}_lacal_scaled", names)
            graph.initializer.append(numpy_helper.from_array(np.array(scale, dtype=dtype), scale_name))
            new_nodes.append(helper.make_node("Mul", [raw, scale_name], [scaled], name=_unique("lacal_mul", names)))
            current = scaled
        new_nodes.append(helper.make_node("Add", [current, offsets_name], [head.logits],
                                          name=_unique("lacal_add", names)))
        position = next(i for i, node in enumerate(graph.node) if head.logits in node.output)
        producer = graph.node[position]
        outputs = [raw if name == head.logits else name for name in producer.output]
        del producer.output[:]
        producer.output.extend(outputs)
        for offset, node in enumerate(new_nodes, start=1):
            graph.node.insert(position + offset, node)
        added = True
    record = {"format": PATCH_FORMAT, "version": PATCH_VERSION, "lacal_version": __version__,
              "output": head.output, "head": head.node, "op": head.op, "bias": head.bias, "added_node": added,
              "why_added": head.why_add if added and scale == 1.0 else None, "tau": float(tau), "scale": scale,
              "offsets": offsets.tolist(), "offsets_sha256": hashlib.sha256(offsets.astype("<f8").tobytes())
              .hexdigest(), "calibration_sha256": calibration_sha256, "dtype": np.dtype(dtype).name,
              "max_rounding_error": rounding}
    kept = [entry for entry in model.metadata_props if entry.key != PATCH_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.append(StringStringEntryProto(key=PATCH_KEY, value=json.dumps(record)))
    return OnnxPatch(model, head, added, rounding, record, earlier)


def _unique(name: str, taken: set) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate)
    return candidate


def _read_tensor(tensor, path: Path) -> np.ndarray:
    """A TensorProto's values, reading them from its external data file when it has one."""
    from onnx import external_data_helper, numpy_helper

    if external_data_helper.uses_external_data(tensor):
        copy = type(tensor)()
        copy.CopyFrom(tensor)
        try:
            external_data_helper.load_external_data_for_tensor(copy, str(path.parent))
        except Exception as exc:
            raise InputFileError(f"cannot read the external data of {tensor.name!r}: {_first_line(exc)}",
                                 path) from None
        tensor = copy
    return numpy_helper.to_array(tensor)


# ------------------------------------------------------------------------------------------------------- writing


def external_files(model) -> list[str]:
    """The external data files the model's tensors point to, relative to the model file."""
    from onnx import external_data_helper

    files = []
    for tensor in _all_tensors(model.graph):
        if external_data_helper.uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and location not in files:
                files.append(location)
    return files


def write_onnx(file: OnnxFile, patch: OnnxPatch, out, force: bool = False, in_place: bool = False, inputs=(),
               check=None) -> list[str]:
    """Write the patched model to `out` (or over the input with in_place), atomically, then call `check(path)` on
    the written file before it is renamed into place. External data files stay as they are; for an `out` in
    another folder they are hard-linked (or copied) beside it. Returns notes."""
    if in_place == (out is not None):
        raise OptionError("give `out`, or `in_place` to rewrite the model itself", "out")
    target = file.path if in_place else Path(out)
    if target.suffix.lower() not in ONNX_SUFFIXES:
        raise OutputError("a patched ONNX model is written as .onnx", target)
    try:
        data = patch.model.SerializeToString()
    except ValueError:
        raise CheckpointError("the patched model is over 2 GB without external data; save it with "
                              "onnx.save_model(..., save_as_external_data=True) first", file.path) from None
    notes, created = [], []
    with atomic_path(target, force or in_place, [] if in_place else [file.path, *inputs],
                     mode_of=file.path) as temporary:
        try:
            if target.parent.resolve() != file.path.parent.resolve():
                for location in external_files(file.model):
                    notes.append(_place_external(file.path.parent, target.parent, location, created))
            temporary.write_bytes(data)
            if in_place:
                shutil.copymode(file.path, temporary)
            if check is not None:
                check(temporary)
        except BaseException:
            for path in created:
                path.unlink(missing_ok=True)
            raise
    return [note for note in notes if note]


def _place_external(source_dir: Path, target_dir: Path, location: str, created: list) -> str | None:
    relative = Path(location)
    if relative.is_absolute() or ".." in relative.parts:
        raise InputFileError(f"points to external data outside its folder: {location!r}", source_dir)
    source, target = source_dir / relative, target_dir / relative
    if target.exists():
        if os.path.samefile(source, target):
            return None
        raise OutputError(f"the model's external data file {location} already exists there; write the patched model "
                          "beside the original or into a folder without that file", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        created.append(target)
        return f"hard-linked the external data file {location} beside the patched model"
    except OSError:
        shutil.copy2(source, target)
        created.append(target)
        return f"copied the external data file {location} beside the patched model"


# ------------------------------------------------------------------------------------------------------- running


class OnnxRunner:
    """A model file run by onnxruntime, called like a torch module on a batch of inputs (a tensor); returns the
    chosen output as a tensor. CUDAExecutionProvider when `device` is a CUDA device and the provider is present."""

    def __init__(self, path, device="cpu", output: str | None = None):
        ort = import_onnxruntime(path)
        self.path = Path(path)
        providers = ["CPUExecutionProvider"]
        device = str(device)
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        graph = _graph_without_data(self.path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise InputFileError(f"onnxruntime cannot load the model: {_first_line(exc)}", path) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputFileError(f"the model takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                 "lacal feeds one", path)
        self.input = inputs[0]
        self.input_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                            "tensor(double)": np.float64, "tensor(int64)": np.int64,
                            "tensor(int32)": np.int32}.get(self.input.type)
        names = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in names:
            raise InputFileError(f"the model has no output {output!r}; its outputs are {', '.join(names)}", path)
        self.output = output or ("logits" if "logits" in names else names[0])
        self.providers = self.session.get_providers()
        self.probabilities = graph is not None and _ends_in_softmax(graph, self.output)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype is not None:
            batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        try:
            return self.session.run([self.output], {self.input.name: batch})[0]
        except Exception as exc:
            if type(exc).__module__.startswith("onnxruntime"):
                raise RuntimeError(_first_line(exc)) from None
            raise

    def __call__(self, x):
        import torch

        return torch.from_numpy(np.asarray(self.run(x.detach().cpu().numpy())))


def _graph_without_data(path: Path):
    """The model's graph, its external data checked (check_external_data) before onnxruntime reads it; None when
    onnx is missing or cannot read the file (onnxruntime then says what is wrong)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx missing or the file unreadable by it
        return None
    check_external_data(model, path)
    return model.graph


def _ends_in_softmax(graph, output: str) -> bool:
    """Whether `output` is a Softmax's (through pass-through layers): probabilities rather than logits."""
    producers = {name: node for node in graph.node for name in node.output}
    node, seen = producers.get(output), set()
    while node is not None and (node.op_type in PASS_THROUGH or node.op_type == "Cast") and node.input \
            and id(node) not in seen:
        seen.add(id(node))
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "Softmax"


# -------------------------------------------------------------------------------------------------- verification


def random_inputs(runner: OnnxRunner, rows: int = VERIFY_ROWS, seed: int = 0) -> np.ndarray | None:
    """Standard normal inputs of the model's input shape, or None when that shape is not fixed (beyond the batch)
    or the input is not floating point."""
    shape = list(runner.input.shape)
    if not shape or runner.input_dtype not in (np.float32, np.float16, np.float64):
        return None
    rest = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return None
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else rows
    return np.random.default_rng(seed).standard_normal([batch, *rest]).astype(runner.input_dtype)


def verify_onnx(original, patched, head: OnnxHead, offsets, scale: float, batches, rounding: float
                ) -> tuple[int, float, float]:
    """Run the original and the patched model on each input batch in `batches` and check that the patched logits
    are original * scale + offsets (for a Softmax or LogSoftmax output: that the log-probabilities are, up to one
    constant per row). Returns (rows checked, max difference, tolerance); raises VerificationError."""
    first = OnnxRunner(original, output=head.output)
    second = OnnxRunner(patched, output=head.output)
    offsets = np.asarray(offsets, dtype=np.float64)
    rows = 0
    worst = largest = 0.0
    eps = float(np.finfo(FLOAT_TYPES[head.dtype]).eps)
    for batch in batches:
        try:
            before, after = first.run(batch).astype(np.float64), second.run(batch).astype(np.float64)
        except RuntimeError as exc:
            raise VerificationError(f"onnxruntime failed on the verification inputs: {exc}", original) from None
        if before.shape != after.shape or before.shape[-1] != offsets.shape[0]:
            raise VerificationError(f"the patched model's output has shape {list(after.shape)}, the original's "
                                    f"{list(before.shape)}; nothing was written", original)
        if head.softmax is None:
            expected, got, valid = before * scale + offsets, after, np.ones(before.shape, dtype=bool)
        else:
            tiny = 1e-30
            valid = (before > tiny) & (after > tiny) if head.softmax == "Softmax" else np.isfinite(before + after)
            log_before = np.log(np.where(valid, before, 1.0)) if head.softmax == "Softmax" else before
            log_after = np.log(np.where(valid, after, 1.0)) if head.softmax == "Softmax" else after
            expected = log_before * scale + offsets
            gap = np.where(valid, log_after - expected, 0.0)
            # one constant per row (the log-normaliser) is free: compare at each row's most likely class
            anchor = np.take_along_axis(gap, np.argmax(np.where(valid, log_after, -np.inf), axis=-1)[..., None],
                                        axis=-1)
            got = np.where(valid, log_after - anchor, expected)
        worst = max(worst, float(np.abs(np.where(valid, got - expected, 0.0)).max(initial=0.0)))
        largest = max(largest, float(np.abs(np.where(valid, expected, 0.0)).max(initial=0.0)),
                      float(np.abs(before).max(initial=0.0)) * scale)
        rows += before.shape[0]
    tolerance = 8 * eps * (1 + largest) + rounding
    if not worst <= tolerance:
        raise VerificationError(f"the patched model's outputs differ from the adjusted outputs by up to {worst:.3g} "
                                f"(tolerance {tolerance:.3g}); nothing was written", original)
    return rows, worst, tolerance


def input_batches(source, batch: int = 256):
    """Numpy batches of a LogitsSource (the verification inputs a user gave)."""
    for start in range(0, source.num_samples, batch):
        block = source.rows(start, min(start + batch, source.num_samples))
        yield (block.float() if str(block.dtype) == "torch.bfloat16" else block).numpy()


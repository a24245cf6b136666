"""Fuzzing every reader: whatever the bytes, a correct result or one `LacalError`, never another exception, and never
a read (an allocation) out of proportion to the file. Property-based (hypothesis) with a fixed budget and
derandomized, so that CI runs the same examples every time; the whole file takes some 20 seconds. Set
LACAL_FUZZ_SCALE=N to run N times as many examples.

The readers: .npy / .npz headers, CSV, calibration JSON, the shard index, class names, priors files, multi-label
label files; and through the public `lacal.patch_checkpoint`, safetensors headers, training-checkpoint pickles and
ONNX graphs."""

import io
import json
import os
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch  # imported here, not first under tracemalloc (which makes a large import slow)
from hypothesis import HealthCheck, given, settings, strategies as st

import lacal
from lacal.core.calibration import Calibration
from lacal.core.label_matrix import label_matrix_kind, read_label_matrix
from lacal.core.priors import read_priors
from lacal.data.readers import read_classes, read_labels, read_logits
from lacal.errors import LacalError

SCALE = int(os.environ.get("LACAL_FUZZ_SCALE", "1"))  # run deeper by hand: LACAL_FUZZ_SCALE=20 pytest ...
FUZZ = settings(max_examples=150 * SCALE, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=50 * SCALE)
BOUND = 64 << 20  # bytes any reader may allocate for these small files


def outcome(function, *args, **kwargs):
    """The reader's result, or the LacalError it raised; any other exception fails the test. The peak of Python
    and numpy allocations while it ran must stay under BOUND (a header promising a huge array must not be obeyed)."""
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        if hasattr(result, "rows") and hasattr(result, "num_samples"):  # a LogitsSource: read its first rows too
            result.rows(0, min(result.num_samples, 4))
        return result
    except LacalError as error:
        assert str(error) and "\n" not in error.message.strip(), error.message
        return error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < BOUND, f"{function.__name__} allocated {peak:,} bytes"


SCRATCH = tempfile.TemporaryDirectory(prefix="lacal-fuzz-")  # removed when the test run ends


def scratch(name: str) -> Path:
    """A path in a new folder of its own for one example's file."""
    return Path(tempfile.mkdtemp(dir=SCRATCH.name)) / name


# ------------------------------------------------------------------------------------------------ .npy and .npz

DESCRS = st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<i8", "|u1", "|b1", "<c8", "|O", "<U3", "V8", "<f16", "x"])
DIMS = st.sampled_from([-1, 0, 1, 2, 3]) | st.integers(-3, 1 << 40)


@st.composite
def npy_bytes(draw):
    """A .npy file: a header of any shape (negative, huge, empty) and dtype, then any body; or bytes cut anywhere."""
    shape = tuple(draw(st.lists(DIMS, max_size=3)))
    header = {"descr": draw(DESCRS), "fortran_order": draw(st.booleans()), "shape": shape}
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except (ValueError, TypeError):
        buffer = io.BytesIO(b"\x93NUMPY\x01\x00" + struct.pack("<H", 32) + repr(header).encode()[:32].ljust(32))
    data = buffer.getvalue() + draw(st.binary(max_size=256))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return data


@FUZZ
@given(npy_bytes(), st.sampled_from(["logits", "features", "labels", "priors", "matrix"]))
def test_npy(data, reader):
    path = scratch("x.npy")
    path.write_bytes(data)
    if reader == "labels":
        found = outcome(read_labels, path)
        if not isinstance(found, LacalError):
            assert found.dtype == np.int64 and found.ndim == 1 and found.min() >= 0
    elif reader == "priors":
        found = outcome(read_priors, path)
        if not isinstance(found, LacalError):
            assert np.all(found.priors > 0) and abs(found.priors.sum() - 1) < 1e-6
    elif reader == "matrix":
        outcome(read_label_matrix, path)
        outcome(label_matrix_kind, path)
    else:
        found = outcome(read_logits, path, None, reader)
        if not isinstance(found, LacalError):
            assert len(found.shape) == 2 and found.shape[0] > 0


@FUZZ
@given(npy_bytes(), st.sampled_from(["logits", "logits.npy", "other"]), st.booleans())
def test_npz(member, name, second):
    path = scratch("x.npz")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, member)
        if second:
            archive.writestr("extra.npy", member[:20])
    outcome(read_logits, path)
    outcome(read_logits, path, "logits")


# ---------------------------------------------------------------------------------------------------------- CSV

CELLS = st.sampled_from(["0", "1", "2", "-1", "0.5", "1e308", "1e999", "nan", "inf", "", " ", "x", "label", "class",
                         "sample", "0,1", '"', "\ufeff", "1_0", "+5", "٣"])


@st.composite
def csv_text(draw):
    rows = draw(st.lists(st.lists(CELLS, min_size=1, max_size=5), max_size=8))
    text = "\n".join(",".join(row) for row in rows)
    return text if draw(st.booleans()) else text + draw(st.text(max_size=20))


@FUZZ
@given(csv_text(), st.sampled_from([None, "label", "0", "1", "7", "cls"]))
def test_csv(text, column):
    path = scratch("x.csv")
    path.write_text(text, encoding="utf-8")
    logits = outcome(read_logits, path)
    if not isinstance(logits, LacalError):
        assert logits.num_classes >= 2
    labels = outcome(read_labels, path, None, column)
    if not isinstance(labels, LacalError):
        assert labels.min() >= 0
    outcome(read_label_matrix, path)
    kind = outcome(label_matrix_kind, path)
    assert kind is None or isinstance(kind, str)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([".csv", ".txt", ".json"]))
def test_text_readers_on_any_bytes(data, suffix):
    path = scratch("x" + suffix)
    path.write_bytes(data)
    outcome(read_labels, path) if suffix != ".json" else outcome(read_classes, path)
    outcome(read_classes, path)
    outcome(read_priors, path)
    outcome(read_label_matrix, path)


# ---------------------------------------------------------------------------------------------------------- JSON

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10, 10 ** 20) | st.floats(allow_nan=False)
                    | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4), max_leaves=12)
VALID = Calibration(tau=1.0, priors=np.array([0.7, 0.2, 0.1]), counts=np.array([70, 20, 10]),
                    class_names=["a", "b", "c"]).to_dict()


@st.composite
def calibration_text(draw):
    """A valid calibration with fields dropped, replaced by any JSON, or a key written twice; or any JSON."""
    if draw(st.integers(0, 4)) == 0:
        return json.dumps(draw(JSON))
    data = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=3)):
        if draw(st.booleans()):
            data.pop(key, None)
        else:
            data[key] = draw(JSON)
    text = json.dumps(data)
    if draw(st.booleans()) and data:
        key = draw(st.sampled_from(sorted(data)))
        text = text.replace("{", "{" + json.dumps(key) + ": " + json.dumps(draw(JSON)) + ", ", 1)
    return text


@FUZZ
@given(calibration_text())
def test_calibration_json(text):
    path = scratch("calibration.json")
    path.write_text(text)
    found = outcome(Calibration.load, path)
    if not isinstance(found, LacalError):
        assert np.isfinite(found.tau) and np.all(found.priors > 0) and np.all(np.isfinite(found.offsets))
        duplicate = json.JSONDecoder(object_pairs_hook=lambda pairs: len(pairs) != len(dict(pairs)) or None)
        assert duplicate.decode(text) is not True  # a key written twice is never accepted


@FUZZ
@given(JSON, st.sampled_from(["classes.json", "priors.json"]))
def test_class_and_priors_json(data, name):
    path = scratch(name)
    path.write_text(json.dumps(data))
    if name == "classes.json":
        names = outcome(read_classes, path)
        if not isinstance(names, LacalError):
            assert len(set(names)) == len(names) > 0
    else:
        outcome(read_priors, path)


# ---------------------------------------------------------------------------------------------------- shard index

ENTRY = st.fixed_dictionaries({"file": st.sampled_from(["a.npy", "b.npy", "c.npy", "../a.npy", "/etc/passwd",
                                                         "sub/a.npy", "", ".", "index.json"])},
                              optional={"rows": st.integers(-1, 20) | st.text(max_size=2)})


@FUZZ
@given(st.lists(ENTRY, max_size=4), st.sampled_from(["lacal-shards", "other", None]), st.booleans())
def test_shard_index(entries, form, link_out):
    folder = scratch("shards")
    folder.mkdir()
    for name, rows in (("a.npy", 3), ("b.npy", 4)):
        np.save(folder / name, np.arange(rows * 3, dtype=np.float32).reshape(rows, 3))
    if link_out:
        np.save(folder.parent / "outside.npy", np.zeros((5, 3), dtype=np.float32))
        (folder / "c.npy").symlink_to(folder.parent / "outside.npy")
    (folder / "index.json").write_text(json.dumps({"format": form, "version": 1, "shards": entries}))
    found = outcome(read_logits, folder)
    if not isinstance(found, LacalError):
        names = [entry["file"] for entry in entries]
        assert len(set(names)) == len(names) and not (link_out and "c.npy" in names)
        assert found.num_samples == sum({"a.npy": 3, "b.npy": 4}[name] for name in names)


# ----------------------------------------------------------------------------- checkpoints, through patch_checkpoint

onnx = pytest.importorskip("onnx")
try:
    import onnxruntime  # noqa: F401  (imported before tracemalloc starts, as torch)
    import safetensors.torch  # noqa: F401
    import lacal.models.checkpoints  # noqa: F401
except ImportError:
    pass

CALIBRATION = Calibration(tau=1.0, priors=np.array([0.5, 0.3, 0.2]))


def patched(path: Path):
    out = path.with_name("out" + "".join(path.suffixes))
    found = outcome(lacal.patch_checkpoint, path, CALIBRATION, out=out, device="cpu")
    if not isinstance(found, LacalError):
        assert out.exists()
    return found


@st.composite
def safetensors_bytes(draw):
    """A safetensors file: a header of any JSON (or a valid one with fields changed), its declared length right or
    wrong, then any body."""
    tensors = {"fc.weight": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 24]},
               "fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [24, 36]}}
    for name in draw(st.lists(st.sampled_from(sorted(tensors)), max_size=2)):
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        tensors[name] = {**tensors[name], field: draw(JSON | st.lists(st.integers(-5, 1 << 62), max_size=3))}
    header = json.dumps(tensors if draw(st.integers(0, 3)) else draw(JSON)).encode()
    length = len(header) if draw(st.booleans()) else draw(st.integers(0, 1 << 63))
    return struct.pack("<Q", length) + header + draw(st.binary(min_size=0, max_size=48))


@FEW
@given(safetensors_bytes())
def test_safetensors_header(data):
    path = scratch("model.safetensors")
    path.write_bytes(data)
    patched(path)
    outcome(read_logits, path)


@st.composite
def checkpoint_object(draw):
    leaf = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=4), st.booleans(),
                     st.sampled_from([(3, 2), (3,), (2, 3), (3, 2, 1), (0,)]).map(lambda s: torch.ones(s)),
                     st.just(torch.ones(3, dtype=torch.int64)))
    tree = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["state_dict", "model", "model_ema", "fc.weight", "fc.bias", "head", "epoch", "args"]),
        inner, max_size=4), max_leaves=8)
    return draw(tree)


@FEW
@given(checkpoint_object(), st.sampled_from(["model.pth.tar", "model.pt"]))
def test_training_checkpoint_pickles(obj, name):
    path = scratch(name)
    torch.save(obj, path)
    patched(path)


@FEW
@given(st.binary(max_size=300))
def test_pickle_bytes(data):
    path = scratch("model.pt")
    path.write_bytes(data)
    patched(path)


@st.composite
def onnx_model(draw):
    """A small ONNX graph: MatMul (+ Add) (+ another op) with initializers of any shape and type, outputs named or
    not, opset any; or a valid one cut short."""
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    weight = numpy_helper.from_array(np.ones((cols, rows), dtype=draw(st.sampled_from([np.float32, np.float64,
                                                                                      np.int64]))), "W")
    bias = numpy_helper.from_array(np.zeros(draw(st.integers(0, 4)), dtype=np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"])]
    last = "h"
    if draw(st.booleans()):
        nodes.append(helper.make_node("Add", ["h", "b"], ["z"]))
        last = "z"
    after = draw(st.sampled_from([None, "Relu", "Softmax", "Identity"]))
    if after:
        nodes.append(helper.make_node(after, [last], ["y"]))
        last = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cols])],
                              [helper.make_tensor_value_info(last if draw(st.booleans()) else "missing",
                                                             TensorProto.FLOAT, ["n", rows])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", draw(st.sampled_from([1, 13, 17])))])
    data = model.SerializeToString()
    return data[:draw(st.integers(0, len(data)))] if draw(st.integers(0, 4)) == 0 else data


@FEW
@given(onnx_model())
def test_onnx_graphs(data):
    path = scratch("model.onnx")
    path.write_bytes(data)
    patched(path)

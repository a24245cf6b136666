"""Patching ONNX models (lacal apply MODEL.onnx) and scoring them (lacal score MODEL.onnx), checked by running the
written files with onnxruntime against float64 numpy computations of the same graphs."""

import hashlib
import warnings
import json
import os
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.errors import VerificationError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
C, D, H = 5, 6, 7
COUNTS = np.array([300, 120, 40, 12, 3])
TAU = 1.2
OFFSETS = -TAU * np.log(COUNTS / COUNTS.sum())
RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((H, D)).astype(np.float32)  # a hidden layer before the head
B1 = RNG.standard_normal(H).astype(np.float32)
W = RNG.standard_normal((C, H)).astype(np.float32)  # the head, [classes, features]
B = RNG.standard_normal(C).astype(np.float32)
X = RNG.standard_normal((11, D)).astype(np.float32)


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=COUNTS / COUNTS.sum(), counts=COUNTS).save(path)
    return path


def _hidden(x):
    return np.maximum(x.astype(np.float64) @ W1.T.astype(np.float64) + B1, 0.0)


def _logits(x, bias=True):
    """The float64 reference of every graph below: relu(x W1^T + b1) W^T + b."""
    return _hidden(x) @ W.T.astype(np.float64) + (B.astype(np.float64) if bias else 0.0)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _model(head_nodes, head_inits, out="logits", extra_outputs=(), opset=17):
    """x -> Gemm(W1, b1) -> Relu -> `head_nodes` (reading "hidden") -> `out` [N, C]."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["pre"], name="hidden_gemm", transB=1),
             helper.make_node("Relu", ["pre"], ["hidden"], name="hidden_relu"), *head_nodes]
    inits = [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(B1, "b1"), *head_inits]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", C]), *extra_outputs]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", D])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def gemm_trans_b():
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["logits"], name="head", transB=1)],
                  [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])


def gemm_plain():
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["logits"], name="head")],
                  [numpy_helper.from_array(np.ascontiguousarray(W.T), "w"), numpy_helper.from_array(B, "b")])


def gemm_beta():  # the bias counts twice: its new value must be b + offsets / 2
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["logits"], name="head", transB=1, beta=2.0)],
                  [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B / 2, "b")])


def matmul_add():
    return _model([helper.make_node("MatMul", ["hidden", "w"], ["mm"], name="head_matmul"),
                   helper.make_node("Add", ["mm", "b"], ["logits"], name="head_add")],
                  [numpy_helper.from_array(np.ascontiguousarray(W.T), "w"), numpy_helper.from_array(B, "b")])


def matmul_no_bias():
    return _model([helper.make_node("MatMul", ["hidden", "w"], ["logits"], name="head_matmul")],
                  [numpy_helper.from_array(np.ascontiguousarray(W.T), "w")])


def gemm_no_bias():
    return _model([helper.make_node("Gemm", ["hidden", "w"], ["logits"], name="head", transB=1)],
                  [numpy_helper.from_array(W, "w")])


def gemm_softmax():
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["z"], name="head", transB=1),
                   helper.make_node("Softmax", ["z"], ["logits"], name="probabilities", axis=-1)],
                  [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])


def gemm_log_softmax_identity():
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["z"], name="head", transB=1),
                   helper.make_node("LogSoftmax", ["z"], ["ls"], name="log_probabilities", axis=1),
                   helper.make_node("Identity", ["ls"], ["logits"], name="same")],
                  [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])


def shared_bias():
    """The head's bias initializer is also the bias of a second (auxiliary) Gemm: it must not change."""
    aux = helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["n", C])
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["logits"], name="head", transB=1),
                   helper.make_node("Gemm", ["hidden", "w2", "b"], ["aux"], name="aux_head", transB=1)],
                  [numpy_helper.from_array(W, "w"), numpy_helper.from_array(W[::-1].copy(), "w2"),
                   numpy_helper.from_array(B, "b")], extra_outputs=[aux])


def conv_head():
    """A 1x1 convolution as the classifier (BiT, SqueezeNet style): [N, H] -> [N, H, 1, 1] -> Conv -> Flatten."""
    shape = numpy_helper.from_array(np.array([-1, H, 1, 1], dtype=np.int64), "shape")
    return _model([helper.make_node("Reshape", ["hidden", "shape"], ["map"], name="to_map"),
                   helper.make_node("Conv", ["map", "w", "b"], ["conv"], name="head_conv", kernel_shape=[1, 1]),
                   helper.make_node("Flatten", ["conv"], ["logits"], name="flatten")],
                  [shape, numpy_helper.from_array(W.reshape(C, H, 1, 1), "w"), numpy_helper.from_array(B, "b")])


def conv_head_no_bias():
    model = conv_head()
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    del conv.input[2]
    kept = [t for t in model.graph.initializer if t.name != "b"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def conv_head_pooled():
    """The 1x1 convolution runs on a 2 x 3 map (the hidden features times fixed spatial weights whose mean is 1), then
    GlobalAveragePool and Flatten."""
    spatial = np.array([[0.5, 1.5, 1.0], [2.0, 0.25, 0.75]], dtype=np.float32).reshape(1, 1, 2, 3)
    return _model([helper.make_node("Reshape", ["hidden", "shape"], ["column"], name="to_map"),
                   helper.make_node("Mul", ["column", "spatial"], ["map"], name="spread"),
                   helper.make_node("Conv", ["map", "w", "b"], ["conv"], name="head_conv", kernel_shape=[1, 1]),
                   helper.make_node("GlobalAveragePool", ["conv"], ["pooled"], name="pool"),
                   helper.make_node("Flatten", ["pooled"], ["logits"], name="flatten")],
                  [numpy_helper.from_array(np.array([-1, H, 1, 1], dtype=np.int64), "shape"),
                   numpy_helper.from_array(spatial, "spatial"), numpy_helper.from_array(W.reshape(C, H, 1, 1), "w"),
                   numpy_helper.from_array(B, "b")])


GRAPHS = {  # builder: (what the patch must do, whether the reference has a bias, the output's activation)
    "gemm_trans_b": (gemm_trans_b, "rewrite", True, None),
    "gemm_plain": (gemm_plain, "rewrite", True, None),
    "gemm_beta": (gemm_beta, "rewrite", True, None),
    "matmul_add": (matmul_add, "rewrite", True, None),
    "matmul_no_bias": (matmul_no_bias, "add", False, None),
    "gemm_no_bias": (gemm_no_bias, "add", False, None),
    "gemm_softmax": (gemm_softmax, "rewrite", True, "softmax"),
    "gemm_log_softmax_identity": (gemm_log_softmax_identity, "rewrite", True, "log_softmax"),
    "shared_bias": (shared_bias, "add", True, None),
    "conv_head": (conv_head, "rewrite", True, None),
    "conv_head_pooled": (conv_head_pooled, "rewrite", True, None),
    "conv_head_no_bias": (conv_head_no_bias, "add", False, None),
}


def _run(path, x=X, output="logits"):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([output], {"x": x})[0]


def _expected(x, bias, activation, offsets=OFFSETS, scale=1.0):
    z = _logits(x, bias) * scale + offsets
    if activation == "softmax":
        return _softmax(z)
    if activation == "log_softmax":
        return np.log(_softmax(z))
    return z


def _initializers(model):
    return {t.name: t.SerializeToString() for t in model.graph.initializer}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_patched_graph_gives_adjusted_outputs(tmp_path, calibration, name):
    build, action, bias, activation = GRAPHS[name]
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(build(), source)
    original = onnx.load(source)
    before = _run(source)
    np.testing.assert_allclose(before, _expected(X, bias, activation, offsets=0.0), rtol=1e-5, atol=1e-5)

    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    assert "ran the original and the patched model on 8 random inputs" in result.output

    after = _run(out)
    expected = _expected(X, bias, activation)
    tolerance = 4 * np.finfo(np.float32).eps * (1 + np.abs(_logits(X, bias)).max() + np.abs(OFFSETS).max())
    np.testing.assert_allclose(after, expected, rtol=0, atol=tolerance)

    patched = onnx.load(out)
    assert patched.opset_import == original.opset_import
    assert [o.name for o in patched.graph.output] == [o.name for o in original.graph.output]
    old, new = _initializers(original), _initializers(patched)
    record = json.loads({p.key: p.value for p in patched.metadata_props}["lacal_patch"])
    assert record["tau"] == TAU and record["added_node"] == (action == "add")
    assert record["calibration_sha256"] == hashlib.sha256(calibration.read_bytes()).hexdigest()
    assert record["offsets_sha256"] == hashlib.sha256(np.asarray(record["offsets"], "<f8").tobytes()).hexdigest()
    np.testing.assert_allclose(record["offsets"], OFFSETS, rtol=1e-12)
    if action == "rewrite":  # same nodes; only the bias initializer's bytes change
        assert [n.SerializeToString() for n in patched.graph.node] == \
            [n.SerializeToString() for n in original.graph.node]
        changed = [k for k in old if old[k] != new[k]]
        assert changed == [record["bias"]] and set(new) == set(old)
    else:  # the initializers are all kept, one Add and its offsets come on top
        assert all(new[k] == old[k] for k in old) and len(new) == len(old) + 1
        assert [n.op_type for n in patched.graph.node if n.name.startswith("lacal")] == ["Add"]
        assert len(patched.graph.node) == len(original.graph.node) + 1
    if name == "shared_bias":  # the auxiliary output that shares the bias is untouched
        np.testing.assert_array_equal(_run(out, output="aux"), _run(source, output="aux"))


def test_temperature_is_a_mul_and_an_add(tmp_path):
    calibration = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=COUNTS / COUNTS.sum(), counts=COUNTS, temperature=2.5).save(calibration)
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(gemm_softmax(), source)
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    expected = _expected(X, True, "softmax", offsets=OFFSETS / 2.5, scale=1 / 2.5)
    np.testing.assert_allclose(_run(out), expected, rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in onnx.load(out).graph.node if n.name.startswith("lacal")] == ["Mul", "Add"]


def _with_after_head(op, *extra_inputs, inits=()):
    return _model([helper.make_node("Gemm", ["hidden", "w", "b"], ["z"], name="head", transB=1),
                   helper.make_node(op, ["z", *extra_inputs], ["logits"], name="after_head")],
                  [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b"), *inits])


@pytest.mark.parametrize("op, extra, inits", [
    ("Relu", (), ()),
    ("Mul", ("k",), (numpy_helper.from_array(np.float32(-1.0), "k"),)),
    ("LpNormalization", (), ()),
])
def test_not_order_preserving_path_is_refused(tmp_path, calibration, op, extra, inits):
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(_with_after_head(op, *extra, inits=inits), source)
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 9, result.output
    assert f"goes through {op} (node 'after_head')" in result.output and "per-class shift" in result.output
    assert not out.exists()


def test_several_outputs_and_head_names_one(tmp_path, calibration):
    model = shared_bias()
    model.graph.output[0].name = model.graph.node[-2].output[0] = "scores"
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(model, source)
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 9 and "2 outputs could be the logits: scores (5 columns), aux (5 columns)" in \
        result.output
    result = run("apply", source, "--calibration", calibration, "--out", out, "--head", "aux")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_run(out, output="scores"), _run(source, output="scores"))
    expected = _hidden(X) @ W[::-1].T.astype(np.float64) + B + OFFSETS
    np.testing.assert_allclose(_run(out, output="aux"), expected, rtol=0, atol=2e-5)


def test_softmax_over_another_axis_is_refused(tmp_path, calibration):
    source = tmp_path / "model.onnx"
    onnx.save(_model([helper.make_node("Gemm", ["hidden", "w", "b"], ["z"], name="head", transB=1),
                      helper.make_node("Softmax", ["z"], ["logits"], axis=0)],
                     [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")]), source)
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.onnx")
    assert result.exit_code == 9 and "axis 0" in result.output


def test_double_patch_is_refused_and_force_adds_twice(tmp_path, calibration):
    source, once, twice = tmp_path / "model.onnx", tmp_path / "once.onnx", tmp_path / "twice.onnx"
    onnx.save(gemm_trans_b(), source)
    assert run("apply", source, "--calibration", calibration, "--out", once).exit_code == 0
    result = run("apply", once, "--calibration", calibration, "--out", twice)
    assert result.exit_code == 9 and "already carries a lacal patch (tau = 1.2)" in result.output
    assert not twice.exists()
    result = run("apply", once, "--calibration", calibration, "--out", twice, "--force")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(_run(twice), _logits(X) + 2 * OFFSETS, rtol=0, atol=2e-5)
    entries = [p.key for p in onnx.load(twice).metadata_props]
    assert entries.count("lacal_patch") == 1


def test_tau_and_priors_and_in_place(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(matmul_add(), source)
    os.chmod(source, 0o640)
    np.save(tmp_path / "priors.npy", COUNTS.astype(np.float64))
    result = run("apply", source, "--tau", TAU, "--priors", tmp_path / "priors.npy", "--in-place")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(_run(source), _logits(X) + OFFSETS, rtol=0, atol=2e-5)
    assert oct(os.stat(source).st_mode & 0o777) == oct(0o640)
    assert [p.name for p in tmp_path.iterdir() if "lacal-tmp" in p.name] == []


def _external(tmp_path):
    """gemm_trans_b saved with every initializer in one external data file."""
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save_model(gemm_trans_b(), folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return folder


def test_external_data_is_kept_and_shared(tmp_path, calibration):
    folder = _external(tmp_path)
    data = (folder / "weights.bin").read_bytes()
    assert all(t.data_location == TensorProto.EXTERNAL for t in onnx.load(folder / "model.onnx",
                                                                        load_external_data=False).graph.initializer)
    out = folder / "patched.onnx"
    result = run("apply", folder / "model.onnx", "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    assert (folder / "weights.bin").read_bytes() == data  # the data file is untouched and used by both models
    np.testing.assert_allclose(_run(out), _logits(X) + OFFSETS, rtol=0, atol=2e-5)
    patched = onnx.load(out, load_external_data=False)
    locations = {t.name: t.data_location for t in patched.graph.initializer}
    assert locations == {"w1": TensorProto.EXTERNAL, "b1": TensorProto.EXTERNAL, "w": TensorProto.EXTERNAL,
                         "b": TensorProto.DEFAULT}  # only the new bias lives in the model file


def test_external_data_beside_an_output_elsewhere(tmp_path, calibration):
    folder = _external(tmp_path)
    elsewhere = tmp_path / "served"
    elsewhere.mkdir()
    result = run("apply", folder / "model.onnx", "--calibration", calibration, "--out", elsewhere / "model.onnx")
    assert result.exit_code == 0, result.output
    assert "external data file weights.bin" in result.output
    assert (elsewhere / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    np.testing.assert_allclose(_run(elsewhere / "model.onnx"), _logits(X) + OFFSETS, rtol=0, atol=2e-5)


def test_verify_features_runs_the_given_inputs_and_refuses_bad_ones(tmp_path, calibration):
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(gemm_softmax(), source)
    np.save(tmp_path / "inputs.npy", X)
    result = run("apply", source, "--calibration", calibration, "--out", out, "--verify-features",
                 tmp_path / "inputs.npy")
    assert result.exit_code == 0, result.output
    assert "on the 11 given inputs" in result.output
    out.unlink()
    np.save(tmp_path / "wrong.npy", X[:, :3])  # the model takes 6 features
    result = run("apply", source, "--calibration", calibration, "--out", out, "--verify-features",
                 tmp_path / "wrong.npy")
    assert result.exit_code == 10, result.output
    assert "nothing" in result.output or "onnxruntime failed" in result.output
    assert not out.exists() and [p for p in tmp_path.iterdir() if "lacal-tmp" in p.name] == []


def test_verifier_catches_wrong_offsets(tmp_path):
    from lacal.models.deploy import open_deployed
    from lacal.models.onnx_patch import make_onnx_patch, verify_onnx

    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(gemm_softmax(), source)
    model = open_deployed(source, "onnx")
    head = model.find_head(C)
    patch = make_onnx_patch(model.file, head, OFFSETS, TAU)
    out.write_bytes(patch.model.SerializeToString())
    rows, worst, tolerance = verify_onnx(source, out, head, OFFSETS, 1.0, [X], patch.max_rounding_error)
    assert rows == len(X) and worst <= tolerance
    wrong = OFFSETS.copy()
    wrong[2] += 1e-3
    with pytest.raises(VerificationError):
        verify_onnx(source, out, head, wrong, 1.0, [X], patch.max_rounding_error)


def test_calibration_for_another_class_count(tmp_path):
    source, calibration = tmp_path / "model.onnx", tmp_path / "cal.json"
    onnx.save(gemm_trans_b(), source)
    lacal.Calibration(tau=1.0, priors=np.full(4, 0.25)).save(calibration)
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.onnx")
    assert result.exit_code == 7 and "4 columns" in result.output


class TorchHead(torch.nn.Module):
    def __init__(self, conv=False):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU())
        self.conv = conv
        self.fc = torch.nn.Conv2d(H, C, 1) if conv else torch.nn.Linear(H, C)

    def forward(self, x):
        h = self.body(x)
        return self.fc(h[:, :, None, None]).flatten(1) if self.conv else self.fc(h)


@pytest.mark.parametrize("conv", [False, True])
def test_model_exported_from_torch(tmp_path, calibration, conv):
    torch.manual_seed(0)
    model = TorchHead(conv).eval()
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    torch.onnx.export(model, (torch.from_numpy(X[:2]),), str(source), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(X).double()).numpy() + OFFSETS
    np.testing.assert_allclose(_run(out), expected, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_model_exported_by_the_dynamo_exporter(tmp_path, calibration):
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = TorchHead().eval()
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    torch.onnx.export(model, (torch.from_numpy(X[:2]),), str(source), dynamo=True, input_names=["x"],
                      output_names=["logits"], dynamic_shapes=[{0: torch.export.Dim("n")}])
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(X).double()).numpy() + OFFSETS
    np.testing.assert_allclose(_run(out), expected, rtol=0, atol=2e-5)


def test_score_runs_onnx_in_batches(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(gemm_trans_b(), source)
    inputs = RNG.standard_normal((37, D)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    result = run("score", source, tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy", "--batch-size", 8,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    logits = np.load(tmp_path / "logits.npy")
    assert logits.dtype == np.float32 and logits.shape == (37, C)
    np.testing.assert_allclose(logits, _logits(inputs), rtol=0, atol=2e-5)


def test_score_warns_about_probabilities(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(gemm_softmax(), source)
    np.save(tmp_path / "inputs.npy", X)
    result = run("score", source, tmp_path / "inputs.npy", "--out", tmp_path / "p.npy")
    assert result.exit_code == 0 and "comes from a Softmax: these are probabilities" in result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), _softmax(_logits(X)), rtol=0, atol=1e-6)
    onnx.save(gemm_log_softmax_identity(), source)
    result = run("score", source, tmp_path / "inputs.npy", "--out", tmp_path / "l.npy")
    assert result.exit_code == 0 and "Softmax" not in result.stderr


def test_score_and_apply_without_onnxruntime(tmp_path, calibration, monkeypatch):
    source = tmp_path / "model.onnx"
    onnx.save(gemm_trans_b(), source)
    np.save(tmp_path / "inputs.npy", X)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail, as when not installed
    result = run("score", source, tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    assert result.exit_code == 11, result.output
    assert "pip install 'lacal[onnx]'" in result.output and not (tmp_path / "logits.npy").exists()
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.onnx")
    assert result.exit_code == 0 and "onnxruntime is not installed" in result.output  # patched, not run
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "q.onnx")
    assert result.exit_code == 11 and "pip install 'lacal[onnx]'" in result.output


@pytest.mark.slow
def test_served_models_example_writes_patchable_files(tmp_path):
    import subprocess

    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    for script in ("make_checkpoints.py", "make_served_models.py"):
        result = subprocess.run([sys.executable, os.path.join(examples, script), "--dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    np.save(tmp_path / "priors.npy", np.bincount(np.loadtxt(tmp_path / "train_labels.txt", dtype=np.int64)))
    inputs = np.load(tmp_path / "test_inputs.npy")[:64]
    np.save(tmp_path / "inputs.npy", inputs)
    for name in ("model.onnx", "model-probabilities.onnx", "model.ts", "model.pt2"):
        out = tmp_path / ("adjusted-" + name)
        result = run("apply", tmp_path / name, "--tau", 1.0, "--priors", tmp_path / "priors.npy", "--out", out,
                     "--verify-features", tmp_path / "inputs.npy")
        assert result.exit_code == 0, (name, result.output)
        assert "on the 64 given inputs" in result.output


def test_float16_head_then_cast(tmp_path, calibration):
    """A half-precision head whose logits are cast to float32: the bias stays float16, the offsets go before the
    Cast, and the outputs agree within float16 rounding."""
    w16, b16 = W[:, :D].astype(np.float16), B.astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="head", transB=1),
         helper.make_node("Cast", ["z"], ["logits"], name="to_float", to=TensorProto.FLOAT)],
        "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", C])],
        [numpy_helper.from_array(w16, "w"), numpy_helper.from_array(b16, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(model, source)
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    assert "the bias stays float16" in result.output
    new_bias = numpy_helper.to_array(onnx.load(out).graph.initializer[1])
    assert new_bias.dtype == np.float16
    np.testing.assert_array_equal(new_bias, (b16.astype(np.float64) + OFFSETS).astype(np.float16))
    x16 = X.astype(np.float16)
    expected = x16.astype(np.float64) @ w16.T.astype(np.float64) + b16 + OFFSETS
    got = _run(out, x16)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=8 * np.finfo(np.float16).eps * (1 + np.abs(expected).max()))


def test_model_with_two_inputs_is_patched_but_not_run(tmp_path, calibration):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["s"], name="merge"),
         helper.make_node("Gemm", ["s", "w", "b"], ["logits"], name="head", transB=1)],
        "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", H]) for n in ("x", "y")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", C])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source, out = tmp_path / "model.onnx", tmp_path / "patched.onnx"
    onnx.save(model, source)
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    assert "the model was not run: the model takes 2 inputs" in result.output
    x, y = X[:, :1].repeat(H, 1), X[:, 1:2].repeat(H, 1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"x": x, "y": y})[0]
    expected = (x.astype(np.float64) + y) @ W.T.astype(np.float64) + B + OFFSETS
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_torchvision_and_timm_models(tmp_path, calibration):
    """Real architectures, randomly initialised: torchvision's MobileNetV3 (head classifier.3 after Hardswish and
    Dropout) and timm's ResNet (global pool, then fc), exported to ONNX and patched; outputs against torch in
    float64."""
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    models = {"mobilenet": torchvision.models.mobilenet_v3_small(num_classes=len(COUNTS)),
              "resnet": timm.create_model("resnet10t", pretrained=False, num_classes=len(COUNTS))}
    x = torch.randn(3, 3, 64, 64)
    for name, model in models.items():
        model.eval()
        source, out = tmp_path / f"{name}.onnx", tmp_path / f"{name}-adjusted.onnx"
        torch.onnx.export(model, (x[:1],), str(source), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
        result = run("apply", source, "--calibration", calibration, "--out", out)
        assert result.exit_code == 0, (name, result.output)
        assert "8 random inputs" in result.output
        with torch.no_grad():
            expected = model.double()(x.double()).numpy() + OFFSETS
        got = _run(out, x.numpy())
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * (1 + np.abs(expected).max()))


# A multi-label calibration patches a served model too: every label's output becomes f - tau * log(pi / (1 - pi)),
# and `--multi-label --tau` (which would build a single-label calibration) is refused for served models.

LABEL_POSITIVES = np.array([300, 120, 40, 9, 2])
LABEL_SAMPLES = 1000
LABEL_TAU = 0.8


def test_onnx_model_takes_the_multilabel_offsets(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 6),), str(tmp_path / "model.onnx"), dynamo=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    rates = LABEL_POSITIVES / LABEL_SAMPLES
    calibration = lacal.Calibration(tau=LABEL_TAU, priors=rates, counts=LABEL_POSITIVES, multi_label=True, train_samples=LABEL_SAMPLES)
    calibration.save(tmp_path / "cal.json")
    runner = CliRunner()
    result = runner.invoke(app, ["apply", str(tmp_path / "model.onnx"), "--calibration", str(tmp_path / "cal.json"),
                                 "--out", str(tmp_path / "patched.onnx")])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "patched.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0].astype(np.float64)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).double().numpy() - LABEL_TAU * np.log(rates / (1 - rates))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    refused = runner.invoke(app, ["apply", str(tmp_path / "model.onnx"), "--multi-label", "--tau", "1", "--priors",
                                  str(tmp_path / "cal.json"), "--out", str(tmp_path / "again.onnx")])
    assert refused.exit_code == 6 and "fit-tau --multi-label --out" in refused.stderr
    assert refused.stderr.startswith("lacal: error: --multi-label: ")
    assert not (tmp_path / "again.onnx").exists()

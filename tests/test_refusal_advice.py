"""Every refusal in lacal/models that suggests a command or an option is followed here, and what following it
produces is checked: the model then gives the adjusted logits (or the advice's other promised result). A refusal's
advice must never lead to a wrong model.

Advice followed in other test files (same standard):
- `--add-bias` (a head without a bias): tests/test_checkpoints.py::test_missing_bias
- `--head OUTPUT` (several ONNX outputs): tests/test_onnx.py::test_several_outputs_and_head_names_one
- `--force` (an ONNX model already patched): tests/test_onnx.py::test_double_patch_is_refused_and_force_adds_twice
- `--head head.0` on CrossViT's averaged heads: tests/test_model_safety.py::test_crossvit_gets_the_full_offsets_...
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.errors import CheckpointError

from .models import C, D, TorchvisionLike, build, save_hf_folder

runner = CliRunner()
COUNTS = np.array([400, 150, 60, 25, 10, 4])
PRIORS = COUNTS / COUNTS.sum()
TAU = 1.3
OFFSETS = -TAU * np.log(PRIORS)


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def refused(result, code):
    assert result.exit_code == code, result.output
    return result.stderr


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=PRIORS, counts=COUNTS).save(path)
    return path


@pytest.fixture
def counts(tmp_path):
    np.save(tmp_path / "counts.npy", COUNTS)
    return tmp_path / "counts.npy"


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(str(label) for label, n in enumerate(COUNTS) for _ in range(n)) + "\n")
    return path


def assert_adjusted(original, patched, x, times=1):
    with torch.no_grad():
        expected = original(x).double() + times * torch.from_numpy(OFFSETS)
        got = patched(x).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def reload(cls, state, **kwargs):
    model = cls(**kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


class Unnamed(nn.Module):
    """A classifier whose layer names say nothing: `body`, then `out_layer` gives the output."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, D)
        self.out_layer = nn.Linear(D, C)

    def forward(self, x):
        return self.out_layer(torch.tanh(self.body(x)))


class AuxiliaryOutput(nn.Module):
    """Two [C, D] layers without usual names: `out` gives the output, `probe` only a training loss."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, D)
        self.probe = nn.Linear(D, C)
        self.out = nn.Linear(D, C)

    def forward(self, x):
        return self.out(torch.tanh(self.body(x)))


class ExtraHead(nn.Module):
    """`head` gives the output; `head_extra`, head-like and as wide, is unused at inference."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, D)
        self.head = nn.Linear(D, C)
        self.head_extra = nn.Linear(D, C)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _x():
    torch.manual_seed(3)
    return torch.randn(9, 8)


# ----------------------------------------------------------------------------------------------- finding the head


def test_no_usual_name_advice_head_or_priors(tmp_path, labels, counts):
    """"name the classifier with --head NAME, or give the class count through --calibration or --priors"."""
    model = build(Unnamed)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    bare = run("apply", tmp_path / "m.safetensors", "--tau", TAU, "--train-labels", labels, "--out",
               tmp_path / "p.safetensors")
    message = refused(bare, 9)
    assert "--head NAME" in message and "--priors" in message
    named = run("apply", tmp_path / "m.safetensors", "--tau", TAU, "--train-labels", labels, "--head", "out_layer",
                "--out", tmp_path / "p.safetensors")
    assert named.exit_code == 0, named.output
    assert_adjusted(model, reload(Unnamed, load_file(tmp_path / "p.safetensors")), _x())
    counted = run("apply", tmp_path / "m.safetensors", "--tau", TAU, "--priors", counts, "--out",
                  tmp_path / "q.safetensors")
    assert counted.exit_code == 0, counted.output
    assert_adjusted(model, reload(Unnamed, load_file(tmp_path / "q.safetensors")), _x())


def test_no_weight_with_a_row_per_class_advice_key(tmp_path, calibration):
    """A safetensors file of logits and labels read as a checkpoint: "choose the array with --key NAME"."""
    logits = np.random.default_rng(0).normal(size=(50, C)).astype(np.float32)
    save_file({"logits": torch.from_numpy(logits), "labels": torch.zeros(50, dtype=torch.int64)},
              tmp_path / "scores.safetensors")
    message = refused(run("apply", tmp_path / "scores.safetensors", "--calibration", calibration, "--out",
                          tmp_path / "p.safetensors"), 9)
    assert "--key NAME" in message and "--head" not in message
    followed = run("apply", tmp_path / "scores.safetensors", "--key", "logits", "--calibration", calibration,
                   "--out", tmp_path / "adjusted.npy")
    assert followed.exit_code == 0, followed.output
    np.testing.assert_allclose(np.load(tmp_path / "adjusted.npy"), logits + OFFSETS, rtol=1e-5, atol=1e-5)


def test_several_candidates_advice_head(tmp_path, calibration):
    """"if the model's output is one of them alone, name it with --head NAME"."""
    model = build(AuxiliaryOutput)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    message = refused(run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                          tmp_path / "p.safetensors"), 9)
    assert "name it with --head NAME" in message and "`lacal apply LOGITS`" in message
    followed = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--head", "out", "--out",
                   tmp_path / "p.safetensors")
    assert followed.exit_code == 0, followed.output
    assert_adjusted(model, reload(AuxiliaryOutput, load_file(tmp_path / "p.safetensors")), _x())


def test_several_output_heads_advice_head(tmp_path, calibration):
    """"several layers could be output heads ...; if the model's output is one of them alone, name it with --head
    NAME"."""
    model = build(ExtraHead)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    message = refused(run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                          tmp_path / "p.safetensors"), 9)
    assert "could be output heads" in message and "--head NAME" in message
    followed = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--head", "head", "--out",
                   tmp_path / "p.safetensors")
    assert followed.exit_code == 0, followed.output
    patched = load_file(tmp_path / "p.safetensors")
    assert_adjusted(model, reload(ExtraHead, patched), _x())
    torch.testing.assert_close(patched["head_extra.bias"], model.head_extra.bias.detach())  # left alone


# ------------------------------------------------------------------------------------------ patching and writing


def test_already_patched_advice_force_adds_the_offsets_twice(tmp_path, calibration):
    """"patching again would add the offset twice; pass --force if that is really what you want"."""
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    assert run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
               tmp_path / "p.safetensors").exit_code == 0
    message = refused(run("apply", tmp_path / "p.safetensors", "--calibration", calibration, "--out",
                          tmp_path / "q.safetensors"), 9)
    assert "--force" in message
    forced = run("apply", tmp_path / "p.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "q.safetensors", "--force")
    assert forced.exit_code == 0 and "offsets add up" in forced.stderr
    x = torch.randn(4, 3, 4, 4)
    assert_adjusted(model, reload(TorchvisionLike, load_file(tmp_path / "q.safetensors")), x, times=2)


def test_output_inside_the_input_folder_advice_in_place(tmp_path, calibration):
    """"is the input folder or inside it; choose another --out, or pass --in-place"."""
    model = build(TorchvisionLike)
    save_hf_folder(model, tmp_path / "hf")
    message = refused(run("apply", tmp_path / "hf", "--calibration", calibration, "--out",
                          tmp_path / "hf" / "sub"), 8)
    assert "--in-place" in message
    followed = run("apply", tmp_path / "hf", "--calibration", calibration, "--in-place")
    assert followed.exit_code == 0, followed.output
    assert_adjusted(model, reload(TorchvisionLike, load_file(tmp_path / "hf" / "model.safetensors")),
                    torch.randn(4, 3, 4, 4))


def test_existing_output_folder_advice_force(tmp_path, calibration):
    """"already exists; pass --force to replace it"."""
    model = build(TorchvisionLike)
    save_hf_folder(model, tmp_path / "hf")
    (tmp_path / "out").mkdir()
    message = refused(run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out"), 8)
    assert "--force" in message
    followed = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out", "--force")
    assert followed.exit_code == 0, followed.output
    assert_adjusted(model, reload(TorchvisionLike, load_file(tmp_path / "out" / "model.safetensors")),
                    torch.randn(4, 3, 4, 4))


def test_weights_lacal_cannot_patch_advice_move_them_out(tmp_path, calibration):
    """"move them out of the folder and run again": then the folder's every copy is patched."""
    model = build(TorchvisionLike)
    save_hf_folder(model, tmp_path / "hf")
    save_file({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "hf" / "model.fp16.safetensors")
    message = refused(run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out"), 9)
    assert "move them out of the folder" in message
    (tmp_path / "hf" / "model.fp16.safetensors").rename(tmp_path / "model.fp16.safetensors")
    followed = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    assert followed.exit_code == 0, followed.output
    assert_adjusted(model, reload(TorchvisionLike, load_file(tmp_path / "out" / "model.safetensors")),
                    torch.randn(4, 3, 4, 4))


def test_transformers_head_without_bias_advice_patch_module(tmp_path, calibration):
    """A transformers head built with bias=False (Llama's `score`): "lacal.patch_module(model, calibration,
    add_bias=True)" on the loaded model gives the adjusted logits."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=C, pad_token_id=0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "hf")
    message = refused(run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out"), 9)
    assert "lacal.patch_module(model, calibration, add_bias=True)" in message
    loaded = LlamaForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    lacal.patch_module(loaded, calibration, add_bias=True)
    tokens = torch.randint(1, 32, (3, 5))
    with torch.no_grad():
        expected = model(tokens).logits.double() + torch.from_numpy(OFFSETS)
        got = loaded(tokens).logits.double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ in memory


class CosineHead(nn.Module):
    """Not a Linear: a cosine classifier with a weight [C, D] and a bias."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(C, D))
        self.bias = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return nn.functional.linear(nn.functional.normalize(x), nn.functional.normalize(self.weight)) + self.bias


class CosineProbe(nn.Module):
    """The output comes from `output` (a Linear); `fc`, a cosine probe with a usual head name, feeds a loss."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, D)
        self.fc = CosineHead()
        self.output = nn.Linear(D, C)

    def forward(self, x):
        return self.output(torch.tanh(self.body(x)))


def test_module_head_that_is_no_linear_advice_head(calibration):
    """"if another layer gives the model's output, name it with head=NAME"."""
    model, original = build(CosineProbe), build(CosineProbe)
    with pytest.raises(CheckpointError, match="head=NAME"):
        lacal.patch_module(model, calibration)
    lacal.patch_module(model, calibration, head="output")
    assert_adjusted(original, model, _x())


def test_module_without_bias_advice_add_bias(calibration):
    """"pass add_bias=True to give it one"."""
    model, original = build(TorchvisionLike, bias=False), build(TorchvisionLike, bias=False)
    with pytest.raises(CheckpointError, match="add_bias=True"):
        lacal.patch_module(model, calibration)
    lacal.patch_module(model, calibration, add_bias=True)
    assert_adjusted(original, model, torch.randn(4, 3, 4, 4))


def test_module_already_patched_advice_force(calibration):
    """"pass force=True if that is really what you want": the offsets add up."""
    model, original = build(TorchvisionLike), build(TorchvisionLike)
    lacal.patch_module(model, calibration)
    with pytest.raises(CheckpointError, match="force=True"):
        lacal.patch_module(model, calibration)
    lacal.patch_module(model, calibration, force=True)
    assert_adjusted(original, model, torch.randn(4, 3, 4, 4), times=2)


# ------------------------------------------------------------------------------------------------ served models


def test_torchscript_without_bias_advice_add_bias_checkpoint_or_onnx(tmp_path, calibration):
    """"export the model from a checkpoint patched with `lacal apply --add-bias`, or as ONNX"."""
    model = build(TorchvisionLike, bias=False)
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    message = refused(run("apply", tmp_path / "m.pt", "--calibration", calibration, "--out", tmp_path / "p.pt"), 9)
    assert "lacal apply --add-bias" in message and "ONNX" in message
    x = torch.randn(4, 3, 4, 4)
    # the first way: a checkpoint patched with --add-bias, loaded into the model built with a bias, then scripted
    torch.save(model.state_dict(), tmp_path / "state.pt")
    added = run("apply", tmp_path / "state.pt", "--calibration", calibration, "--add-bias", "--out",
                tmp_path / "patched.pt")
    assert added.exit_code == 0, added.output
    rebuilt = reload(TorchvisionLike, torch.load(tmp_path / "patched.pt", weights_only=True), bias=True)
    torch.jit.script(rebuilt).save(str(tmp_path / "scripted.pt"))
    assert_adjusted(model, torch.jit.load(str(tmp_path / "scripted.pt")), x)
    # the second way: ONNX, where lacal adds the offsets as a node
    pytest.importorskip("onnxruntime")
    torch.onnx.export(model, (x[:1],), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    exported = run("apply", tmp_path / "m.onnx", "--calibration", calibration, "--out", tmp_path / "p.onnx")
    assert exported.exit_code == 0, exported.output
    from lacal.models.onnx_patch import OnnxRunner

    assert_adjusted(model, OnnxRunner(tmp_path / "p.onnx"), x)

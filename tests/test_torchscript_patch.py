"""Patching TorchScript files (torch.jit.save) and torch.export programs (.pt2) with lacal apply, checked by loading
the written files with torch and comparing their outputs with the original model's in float64."""

import json
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app

from .models import C, TimmLike, TorchvisionLike, VggLike, build

runner = CliRunner()
COUNTS = np.array([400, 150, 60, 25, 10, 4])
TAU = 0.9
OFFSETS = -TAU * np.log(COUNTS / COUNTS.sum())

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=COUNTS / COUNTS.sum(), counts=COUNTS).save(path)
    return path


def _inputs(cls, rows=7):
    generator = torch.Generator().manual_seed(1)
    shape = (rows, 3, 4, 4) if cls is TorchvisionLike else (rows, 8)
    return torch.randn(*shape, generator=generator)


def _expected(model, x, offsets=OFFSETS, scale=1.0):
    with torch.no_grad():
        return model.double()(x.double()) * scale + torch.from_numpy(offsets)


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


@pytest.mark.parametrize("cls, head", [(TorchvisionLike, "fc"), (TimmLike, "head.fc"), (VggLike, "classifier.6")])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_head_is_patched(tmp_path, calibration, cls, head, how):
    model = build(cls)
    x = _inputs(cls)
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    source, out = tmp_path / "model.pt", tmp_path / "patched.pt"
    scripted.save(str(source), _extra_files={"config.json": '{"kept": true}'})
    torch.save(x, tmp_path / "inputs.pt")
    result = run("apply", source, "--calibration", calibration, "--out", out, "--verify-features",
                 tmp_path / "inputs.pt")
    assert result.exit_code == 0, result.output
    assert f"patched '{head}'" in result.output and "on the 7 given inputs" in result.output
    extra = {"config.json": "", "lacal_patch.json": ""}
    patched = torch.jit.load(str(out), _extra_files=extra)
    with torch.no_grad():
        got = patched(x).double()
    torch.testing.assert_close(got, _expected(build(cls), x), rtol=0, atol=1e-5)
    assert extra["config.json"] == b'{"kept": true}'
    record = json.loads(extra["lacal_patch.json"])
    assert record["tau"] == TAU and record["kind"] == "torchscript" and record["bias"] == f"{head}.bias"
    # every other parameter and buffer is the same
    before, after = dict(scripted.state_dict()), dict(patched.state_dict())
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == [f"{head}.bias"]


def test_torchscript_double_patch_and_in_place(tmp_path, calibration):
    model = build(TimmLike)
    source = tmp_path / "model.ts"
    torch.jit.script(model).save(str(source))
    os.chmod(source, 0o600)
    result = run("apply", source, "--calibration", calibration, "--in-place")
    assert result.exit_code == 0, result.output
    assert oct(os.stat(source).st_mode & 0o777) == oct(0o600)
    x = _inputs(TimmLike)
    with torch.no_grad():
        torch.testing.assert_close(_load(source)(x).double(), _expected(build(TimmLike), x), rtol=0, atol=1e-5)
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "again.ts")
    assert result.exit_code == 9 and "already carries a lacal patch (tau = 0.9)" in result.output
    assert not (tmp_path / "again.ts").exists()


def test_frozen_torchscript_is_refused(tmp_path, calibration):
    frozen = torch.jit.freeze(torch.jit.script(build(TimmLike)))
    source = tmp_path / "frozen.pt"
    frozen.save(str(source))
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.pt")
    assert result.exit_code == 9 and "frozen" in result.output and "constants" in result.output
    assert not (tmp_path / "p.pt").exists()


def test_torchscript_head_without_bias_is_refused(tmp_path, calibration):
    source = tmp_path / "model.pt"
    torch.jit.script(build(TorchvisionLike, bias=False)).save(str(source))
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.pt")
    assert result.exit_code == 9 and "no bias" in result.output


def test_torchscript_with_a_temperature(tmp_path):
    calibration = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=COUNTS / COUNTS.sum(), counts=COUNTS, temperature=2.0).save(calibration)
    source, out = tmp_path / "model.pt", tmp_path / "patched.pt"
    torch.jit.script(build(TimmLike)).save(str(source))
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    x = _inputs(TimmLike)
    with torch.no_grad():
        got = _load(out)(x).double()
    torch.testing.assert_close(got, _expected(build(TimmLike), x, OFFSETS / 2, 0.5), rtol=0, atol=1e-5)


def test_state_dict_pt_is_still_a_checkpoint(tmp_path, calibration):
    torch.save(build(TimmLike).state_dict(), tmp_path / "weights.pt")
    names = zipfile.ZipFile(tmp_path / "weights.pt").namelist()
    assert not any(n.endswith("constants.pkl") for n in names)
    result = run("apply", tmp_path / "weights.pt", "--calibration", calibration, "--out", tmp_path / "p.pt")
    assert result.exit_code == 0, result.output
    assert "provenance written into the checkpoint" in result.output  # the checkpoint writer, not TorchScript's


def test_export_program_is_patched(tmp_path, calibration):
    model = build(TorchvisionLike)
    x = _inputs(TorchvisionLike, rows=4)
    program = torch.export.export(model, (x,))
    source, out = tmp_path / "model.pt2", tmp_path / "patched.pt2"
    torch.export.save(program, str(source))
    torch.save(x, tmp_path / "inputs.pt")
    result = run("apply", source, "--calibration", calibration, "--out", out, "--verify-features",
                 tmp_path / "inputs.pt", "--device", "cpu")
    assert result.exit_code == 0, result.output
    extra = {"lacal_patch.json": ""}
    patched = torch.export.load(str(out), extra_files=extra)
    with torch.no_grad():
        got = patched.module()(x).double()
    torch.testing.assert_close(got, _expected(build(TorchvisionLike), x), rtol=0, atol=1e-5)
    assert json.loads(extra["lacal_patch.json"])["kind"] == "export"
    result = run("apply", out, "--calibration", calibration, "--out", tmp_path / "twice.pt2")
    assert result.exit_code == 9 and "already carries a lacal patch" in result.output


def test_export_with_pickled_objects_is_refused(tmp_path, calibration):
    source = tmp_path / "model.pt2"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("model/data/constants/custom_obj_0.pt", b"not loaded")
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.pt2")
    assert result.exit_code == 3 and "pickled Python objects" in result.output


def test_verification_leaves_autograd_on(tmp_path, calibration):
    source = tmp_path / "model.pt"
    torch.jit.script(build(TimmLike)).save(str(source))
    torch.save(_inputs(TimmLike, rows=20), tmp_path / "inputs.pt")
    result = run("apply", source, "--calibration", calibration, "--out", tmp_path / "p.pt", "--verify-features",
                 tmp_path / "inputs.pt")
    assert result.exit_code == 0, result.output
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


class TwoHeads(torch.nn.Module):
    """Like timm's distilled DeiT at inference: the mean of `head` and `head_dist`."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, C)
        self.head_dist = torch.nn.Linear(16, C)

    def forward(self, x):
        features = torch.tanh(self.body(x))
        return (self.head(features) + self.head_dist(features)) / 2


def test_torchscript_with_averaged_heads_patches_both(tmp_path, calibration):
    torch.manual_seed(3)
    model = TwoHeads().eval()
    x = torch.randn(5, 8)
    source, out = tmp_path / "model.pt", tmp_path / "patched.pt"
    torch.jit.script(model).save(str(source))
    result = run("apply", source, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    assert "patched 'head and head_dist'" in result.output
    with torch.no_grad():
        got = _load(out)(x).double()
    torch.testing.assert_close(got, _expected(model, x), rtol=0, atol=1e-5)  # the full offsets, not half

"""A multi-label calibration patches served model files too: an ONNX model's outputs become f - tau * log(pi/(1-pi))
for every label, and `--multi-label --tau` (which would build a single-label calibration) is refused for them."""

import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app

onnxruntime = pytest.importorskip("onnxruntime")

POSITIVES = np.array([300, 120, 40, 9, 2])
SAMPLES = 1000
TAU = 0.8


def test_onnx_model_takes_the_multilabel_offsets(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 6),), str(tmp_path / "model.onnx"), dynamo=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    rates = POSITIVES / SAMPLES
    calibration = lacal.Calibration(tau=TAU, priors=rates, counts=POSITIVES, multi_label=True, train_samples=SAMPLES)
    calibration.save(tmp_path / "cal.json")
    runner = CliRunner()
    result = runner.invoke(app, ["apply", str(tmp_path / "model.onnx"), "--calibration", str(tmp_path / "cal.json"),
                                 "--out", str(tmp_path / "patched.onnx")])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "patched.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0].astype(np.float64)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).double().numpy() - TAU * np.log(rates / (1 - rates))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    refused = runner.invoke(app, ["apply", str(tmp_path / "model.onnx"), "--multi-label", "--tau", "1", "--priors",
                                  str(tmp_path / "cal.json"), "--out", str(tmp_path / "again.onnx")])
    assert refused.exit_code == 6 and "fit-tau --multi-label --out" in refused.stderr
    assert refused.stderr.startswith("lacal: error: --multi-label: ")
    assert not (tmp_path / "again.onnx").exists()

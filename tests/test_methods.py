import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.methods.taunorm import fit_tau_norm, tau_norm_logits

from . import reference

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "140"})


# ---------------------------------------------------------------------------------------------------------- losses


def test_logit_adjusted_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2])
    counts = [50, 20, 5, 1]
    tau = 1.3
    loss = lacal.methods.logit_adjusted_cross_entropy(logits, labels, counts, tau)
    shifted = logits.detach().numpy() + tau * np.log(np.array(counts) / sum(counts))
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    assert float(loss) == pytest.approx(-log_p[np.arange(8), labels.numpy()].mean(), rel=1e-12)
    loss.backward()
    expected_grad = (np.exp(log_p) - np.eye(4)[labels.numpy()]) / 8  # d CE / d logits, the shift being constant
    np.testing.assert_allclose(logits.grad.numpy(), expected_grad, atol=1e-12)
    module = lacal.methods.LogitAdjustedLoss(counts, tau, reduction="none")
    per_sample = module(logits.detach().float(), labels)
    np.testing.assert_allclose(per_sample.numpy(), -log_p[np.arange(8), labels.numpy()], rtol=1e-5)
    assert "log_priors" in dict(module.named_buffers())


# -------------------------------------------------------------------------------------------------------- tau-norm


def test_tau_norm_matches_the_formula():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(6, 5)) * rng.uniform(0.5, 3, size=(6, 1))
    features = rng.normal(size=(240, 5))
    labels = rng.integers(0, 6, 240)
    np.testing.assert_allclose(tau_norm_logits(torch.from_numpy(features), torch.from_numpy(weight), 0.7).numpy(),
                               features @ (weight / np.linalg.norm(weight, axis=1, keepdims=True) ** 0.7).T)
    fit = fit_tau_norm(features, labels, weight, (0, 2), 11)
    for tau, value in zip(fit.taus, fit.values):
        scores = features @ (weight / np.linalg.norm(weight, axis=1, keepdims=True) ** tau).T
        predictions = reference.predictions(scores)
        assert value == pytest.approx(reference.balanced_error(predictions, labels, 6), abs=1e-6)
    assert fit.after.balanced_error == pytest.approx(min(fit.values))


# --------------------------------------------------------------------------------------------------------- compare


@pytest.fixture
def head_files(tmp_path):
    """A linear head, long-tailed training counts, validation and test features that favour head classes."""
    rng = np.random.default_rng(2)
    classes, dims = 8, 6
    weight = rng.normal(size=(classes, dims)).astype(np.float32)
    counts = np.array([400, 200, 120, 60, 30, 15, 8, 4])
    bias = np.log(counts / counts.sum()).astype(np.float32)
    save_file({"fc.weight": torch.from_numpy(weight), "fc.bias": torch.from_numpy(bias)}, tmp_path / "m.safetensors")
    for split, size in (("val", 400), ("test", 800)):
        labels = rng.integers(0, classes, size)
        features = (weight[labels] * 0.6 + rng.normal(size=(size, dims))).astype(np.float32)
        np.save(tmp_path / f"{split}_features.npy", features)
        np.save(tmp_path / f"{split}_labels.npy", labels)
        np.save(tmp_path / f"{split}_logits.npy", features @ weight.T + bias)
    np.save(tmp_path / "counts.npy", counts)
    return tmp_path, weight, counts


def test_compare_rows_match_independent_computations(head_files):
    d, weight, counts = head_files
    result = run("report", d / "val_logits.npy", d / "val_labels.npy", "--priors", d / "counts.npy", "--compare",
                 "--test-logits", d / "test_logits.npy", "--test-labels", d / "test_labels.npy", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {row["method"]: row for row in data["methods"]}
    val_logits, val_labels = np.load(d / "val_logits.npy"), np.load(d / "val_labels.npy")
    test_logits, test_labels = np.load(d / "test_logits.npy"), np.load(d / "test_labels.npy")
    assert rows["ERM"]["balanced_error"] == pytest.approx(reference.metric_at(test_logits, test_labels, counts, 0))
    assert rows["logit adjustment, tau = 1"]["balanced_error"] == pytest.approx(
        reference.metric_at(test_logits, test_labels, counts, 1.0))
    fitted = rows["logit adjustment, fitted tau"]
    assert fitted["tau"] == pytest.approx(lacal.methods.fit_tau(val_logits, val_labels, counts).tau)
    assert fitted["balanced_error"] == pytest.approx(
        reference.metric_at(test_logits, test_labels, counts, fitted["tau"]))
    predictions = reference.predictions(reference.adjusted(test_logits, counts, 1.0))
    groups = lacal.core.group_errors(lacal.core.evaluate_predictions(predictions, test_labels, 8), counts)
    assert rows["logit adjustment, tau = 1"]["few"] == pytest.approx(groups["few"]["error"])
    bias = lacal.methods.fit_bias(val_logits, val_labels, lacal.core.offsets(counts, fitted["tau"]))
    shifted = reference.adjusted(test_logits, counts, fitted["tau"]) + bias.temperature * bias.bias
    assert rows["logit adjustment + bias calibration"]["balanced_error"] == pytest.approx(
        reference.balanced_error(reference.predictions(shifted), test_labels, 8))
    assert "tau-normalisation" not in rows


def test_compare_with_checkpoint_adds_tau_norm(head_files):
    d, weight, counts = head_files
    result = run("report", d / "val_labels.npy", "--checkpoint", d / "m.safetensors", "--features",
                 d / "val_features.npy", "--priors", d / "counts.npy", "--compare", "--test-features",
                 d / "test_features.npy", "--test-labels", d / "test_labels.npy", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads(result.stdout)["methods"]}
    norm = rows["tau-normalisation"]
    test_features, test_labels = np.load(d / "test_features.npy"), np.load(d / "test_labels.npy")
    scores = test_features.astype(np.float64) @ (weight / np.linalg.norm(weight, axis=1, keepdims=True)
                                                 ** norm["tau"]).T
    assert norm["balanced_error"] == pytest.approx(
        reference.balanced_error(reference.predictions(scores), test_labels, 8), abs=1e-9)
    table = run("report", d / "val_labels.npy", "--checkpoint", d / "m.safetensors", "--features",
                d / "val_features.npy", "--priors", d / "counts.npy", "--compare")
    assert table.exit_code == 0 and "tau-normalisation" in table.stdout and "same data" in table.stderr


def test_fit_tau_method_tau_norm(head_files):
    d, weight, counts = head_files
    result = run("fit-tau", d / "val_labels.npy", "--checkpoint", d / "m.safetensors", "--features",
                 d / "val_features.npy", "--method", "tau-norm", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    direct = fit_tau_norm(np.load(d / "val_features.npy"), np.load(d / "val_labels.npy"), weight)
    assert data["tau"] == pytest.approx(direct.tau) and data["method"] == "tau-norm"
    refused = run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--priors", d / "counts.npy", "--method",
                  "tau-norm")
    assert refused.exit_code == 6 and "needs --checkpoint and --features" in refused.stderr


# ------------------------------------------------------------------------------------------------------------ plot


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def test_plot_is_a_sensible_png(head_files):
    d, _, counts = head_files
    np.save(d / "counts.npy", counts)
    result = run("report", d / "test_logits.npy", d / "test_labels.npy", "--tau", 1.0, "--priors", d / "counts.npy",
                 "--plot", d / "report.png", "--limit", 0)
    assert result.exit_code == 0, result.output
    (width, height), size = _png_size(d / "report.png")
    assert 1000 < width < 4000 and 300 < height < 2000 and 20_000 < size < 5_000_000
    again = run("report", d / "test_logits.npy", d / "test_labels.npy", "--plot", d / "report.png")
    assert again.exit_code == 8 and "--force" in again.stderr
    wrong = run("report", d / "test_logits.npy", d / "test_labels.npy", "--plot", d / "report.jpg")
    assert wrong.exit_code == 6 and "PNG" in wrong.stderr


def test_plot_title_takes_a_file_name_as_text_not_mathtext(head_files):
    """The title names the logits file; a name with dollar signs (`$\\frac$`, invalid mathtext) is drawn as it is,
    not parsed as matplotlib mathtext (which raised a traceback from tight_layout)."""
    d, _, _ = head_files
    logits = d / "t$\\frac$.npy"
    logits.write_bytes((d / "test_logits.npy").read_bytes())
    result = run("report", logits, d / "test_labels.npy", "--tau", 1.0, "--priors", d / "counts.npy",
                 "--plot", d / "dollar.png", "--limit", 0)
    assert result.exit_code == 0, result.output
    (width, height), _ = _png_size(d / "dollar.png")
    assert width > 1000 and height > 300


def test_plot_without_matplotlib_says_what_to_install(head_files):
    d, _, _ = head_files
    code = ("import sys; sys.modules['matplotlib'] = None; from lacal.cli.app import main; "
            f"sys.argv = ['lacal', 'report', {str(d / 'test_logits.npy')!r}, {str(d / 'test_labels.npy')!r}, "
            f"'--plot', {str(d / 'x.png')!r}]; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 6
    assert result.stderr.strip() == ("lacal: error: --plot: plots need matplotlib, an optional extra: pip install "
                                     "'lacal[plot]' (or pip install matplotlib)")
    assert not (d / "x.png").exists()


def test_a_zero_weight_row_keeps_tau_norm_finite():
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(4, 5))
    weight[3] = 0.0
    features = rng.normal(size=(200, 5))
    labels = (features @ weight.T).argmax(1)
    fit = fit_tau_norm(features, labels, weight)
    assert np.isfinite(fit.values).all() and fit.before.balanced_error == 0.0
    assert np.isfinite(tau_norm_logits(torch.from_numpy(features), torch.from_numpy(weight), 1.0).numpy()).all()


def test_options_that_do_not_apply_are_refused(head_files):
    d, _, _ = head_files
    compare = run("report", d / "val_logits.npy", d / "val_labels.npy", "--priors", d / "counts.npy", "--compare",
                  "--limit", 3)
    assert compare.exit_code == 6 and "--limit do(es) not apply to --compare" in compare.stderr
    norm = run("fit-tau", d / "val_labels.npy", "--checkpoint", d / "m.safetensors", "--features",
               d / "val_features.npy", "--method", "tau-norm", "--train-labels", d / "missing.txt")
    assert norm.exit_code == 6 and "tau-norm uses no training priors" in norm.stderr

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import lacal
from lacal.methods.probability import fit_bias, fit_temperature
from lacal.cli.app import app
from lacal.engine.passes import probability_pass

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def gaussian_shift(samples=20_000, seed=0):
    """A Bayes-calibrated model: logits = log p(x|y) + log pi, evaluated on data drawn with priors q."""
    rng = np.random.default_rng(seed)
    classes, dims = 5, 3
    means = rng.normal(scale=2, size=(classes, dims))
    pi = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = pi[::-1].copy()
    labels = rng.choice(classes, size=samples, p=q)
    x = means[labels] + rng.normal(size=(samples, dims))
    logits = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1) + np.log(pi)
    return logits, labels, pi, q


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------------------------- EM


def test_em_recovers_known_priors():
    logits, labels, pi, _ = gaussian_shift()
    estimate = lacal.methods.estimate_target_priors(logits, pi)
    observed = np.bincount(labels, minlength=5) / labels.size
    error = np.abs(estimate.priors - observed).max()
    assert estimate.converged and error < 0.01, f"max |q_em - q| = {error:.4f}"
    assert estimate.priors.sum() == pytest.approx(1.0)


def test_em_stops_at_its_fixed_point():
    logits, _, pi, _ = gaussian_shift(samples=3000, seed=1)
    estimate = lacal.methods.estimate_target_priors(logits, pi, tolerance=1e-12)
    p = softmax(logits)
    weighted = p * (estimate.priors / pi)
    responsibilities = weighted / weighted.sum(1, keepdims=True)
    np.testing.assert_allclose(responsibilities.mean(0), estimate.priors, atol=1e-10)
    assert estimate.log_likelihood == pytest.approx(np.log((p * (estimate.priors / pi)).sum(1)).sum())


def test_em_reports_when_it_stops_early_and_streams_the_same():
    logits, _, pi, _ = gaussian_shift(samples=3000, seed=2)
    early = lacal.methods.estimate_target_priors(logits, pi, max_iterations=2)
    assert not early.converged and early.iterations == 2 and early.change > early.tolerance
    cached = lacal.methods.estimate_target_priors(logits, pi)
    streamed = lacal.methods.estimate_target_priors(logits, pi, memory_budget=1 << 16, rows=701)  # 5 blocks, the last short
    assert streamed.iterations == cached.iterations
    np.testing.assert_allclose(streamed.priors, cached.priors, atol=1e-12)


# ------------------------------------------------------------------------------------------------------- metrics


def reference_metrics(p, labels, bins):
    n, classes = p.shape
    confidence, predicted = p.max(1), p.argmax(1)
    ece = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) if b < bins - 1 else (confidence <= high))
        if inside.any():
            ece += inside.sum() / n * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    classwise = []
    for c in range(classes):
        total = 0.0
        for b in range(bins):
            low, high = b / bins, (b + 1) / bins
            inside = (p[:, c] >= low) & ((p[:, c] < high) if b < bins - 1 else (p[:, c] <= high))
            if inside.any():
                total += inside.sum() / n * abs((labels[inside] == c).mean() - p[inside, c].mean())
        classwise.append(total)
    onehot = np.eye(classes)[labels]
    return {"nll": -np.log(p[np.arange(n), labels]).mean(), "brier": ((p - onehot) ** 2).sum(1).mean(),
            "ece": ece, "classwise_ece": float(np.mean(classwise))}


@pytest.mark.parametrize("bins", [15, 4])
def test_probability_metrics_match_a_reference(bins):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 4)) * 2.5
    logits[0] = [1000.0, 0.0, 0.0, 0.0]  # confidence exactly 1.0: the last bin
    labels = rng.integers(0, 4, 400)
    labels[0] = 0
    metrics = probability_pass(logits, labels, [(1.0, np.zeros(4))], bins)[0]
    p = softmax(logits)
    assert p[0].max() == 1.0
    expected = reference_metrics(p, labels, bins)
    for key, value in expected.items():
        assert metrics.to_dict()[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_empty_bins_add_nothing():
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])  # every confidence in one bin
    metrics = probability_pass(logits, np.array([0, 1, 1]), [(1.0, np.zeros(2))], 15)[0]
    assert int((metrics.bin_count > 0).sum()) == 1
    confidence = softmax(logits).max(1)
    assert metrics.ece == pytest.approx(abs(2 / 3 - confidence.mean()))


# ---------------------------------------------------------------------------------------------------------- fits


def test_temperature_fit_finds_the_nll_minimum():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 2000)
    logits = rng.normal(size=(2000, 5))
    logits[np.arange(2000), labels] += 2
    logits *= 3  # overconfident

    def nll(t):
        return -np.log(softmax(logits / t)[np.arange(2000), labels]).mean()

    low, high = np.log(0.05), np.log(20.0)  # golden-section search on log T: independent of the Newton steps
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(np.exp(a)) < nll(np.exp(b)):
            high = b
        else:
            low = a
    fit = fit_temperature(logits, labels)
    assert fit.converged and fit.moved
    assert fit.temperature == pytest.approx(np.exp((low + high) / 2), rel=1e-5)
    assert fit.loss_after == pytest.approx(nll(fit.temperature)) and fit.loss_after < fit.loss_before


def test_bias_fit_reaches_the_newton_optimum():
    rng = np.random.default_rng(5)
    n, classes, l2 = 90, 3, 0.05
    labels = np.repeat(np.arange(classes), [50, 30, 10])
    logits = rng.normal(size=(n, classes)) * 1.5
    logits[np.arange(n), labels] += 1.0
    logits[:, 0] += 1.0  # a head-class bias for the fit to remove
    weight = (1.0 / np.bincount(labels))[labels] / classes

    def gradient_hessian(theta):
        beta, b = theta[0], theta[1:]
        p = softmax(beta * logits + b)
        onehot = np.eye(classes)[labels]
        features = [logits] + [np.eye(classes)[c][None, :].repeat(n, 0) for c in range(classes)]
        grad = np.zeros(classes + 1)
        hess = np.zeros((classes + 1, classes + 1))
        for k, fk in enumerate(features):
            grad[k] = (weight * ((p * fk).sum(1) - (onehot * fk).sum(1))).sum()
            for m, fm in enumerate(features):
                cov = (p * fk * fm).sum(1) - (p * fk).sum(1) * (p * fm).sum(1)
                hess[k, m] = (weight * cov).sum()
        grad[1:] += l2 * b / classes
        hess[1:, 1:] += l2 * np.eye(classes) / classes
        return grad, hess

    theta = np.concatenate([[1.0], np.zeros(classes)])
    for _ in range(50):  # Newton's method on (beta, b), the loss being convex
        grad, hess = gradient_hessian(theta)
        theta = theta - np.linalg.solve(hess, grad)
    assert np.abs(gradient_hessian(theta)[0]).max() < 1e-12
    fit = fit_bias(logits, labels, l2=l2)
    assert fit.converged
    assert fit.temperature == pytest.approx(1 / theta[0], rel=1e-5)
    np.testing.assert_allclose(fit.bias, theta[1:], atol=1e-5)


# ---------------------------------------------------------------------------------------------- files and the CLI


@pytest.fixture
def shifted(tmp_path):
    logits, labels, pi, _ = gaussian_shift(samples=4000, seed=6)
    val_logits, val_labels, _, _ = gaussian_shift(samples=2000, seed=7)
    np.save(tmp_path / "target.npy", logits.astype(np.float32))
    np.save(tmp_path / "target_labels.npy", labels)
    np.save(tmp_path / "val.npy", val_logits.astype(np.float32))
    np.save(tmp_path / "val_labels.npy", val_labels)
    np.save(tmp_path / "pi.npy", pi)
    return tmp_path


def test_priors_em_cli(shifted):
    result = run("priors", "--em", shifted / "target.npy", "--priors", shifted / "pi.npy", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sum(data["priors"]) == pytest.approx(1.0) and data["converged"] and data["iterations"] > 1
    library = lacal.methods.estimate_target_priors(np.load(shifted / "target.npy"), np.load(shifted / "pi.npy"))
    np.testing.assert_allclose(data["priors"], library.priors, atol=1e-9)
    written = run("priors", "--em", shifted / "target.npy", "--priors", shifted / "pi.npy", "--out", shifted / "q.json")
    assert written.exit_code == 0
    np.testing.assert_allclose(lacal.core.read_priors(shifted / "q.json").priors, library.priors, atol=1e-9)


def test_fit_tau_with_em_and_calibration_then_apply_and_report(shifted):
    result = run("fit-tau", shifted / "val.npy", shifted / "val_labels.npy", "--priors", shifted / "pi.npy",
                 "--target-priors", "em", "--target-logits", shifted / "target.npy", "--calibrate", "bias",
                 "--json", "--out", shifted / "cal.json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target_priors"]["kind"] == "em" and data["target_priors"]["converged"]
    assert data["calibration"]["method"] == "bias" and data["calibration"]["converged"]
    assert "balanced_error_calibrated" in data
    calibration = lacal.Calibration.load(shifted / "cal.json")
    assert calibration.target_priors is not None and calibration.bias is not None
    applied = run("apply", shifted / "target.npy", "--calibration", shifted / "cal.json", "--out", shifted / "a.npy")
    assert applied.exit_code == 0, applied.output
    target = np.load(shifted / "target.npy")
    np.testing.assert_allclose(np.load(shifted / "a.npy"), calibration.adjust(target), rtol=1e-6, atol=1e-5)
    expected = (target.astype(np.float64) - calibration.tau * np.log(calibration.priors)) / calibration.temperature \
        + calibration.bias + np.log(calibration.target_priors)
    np.testing.assert_allclose(np.load(shifted / "a.npy"), expected, rtol=1e-5, atol=1e-4)
    report = json.loads(run("report", shifted / "target.npy", shifted / "target_labels.npy", "--calibration",
                            shifted / "cal.json", "--json", "--bins", 10).stdout)
    labels = np.load(shifted / "target_labels.npy")
    reference = reference_metrics(softmax(expected), labels, 10)
    for key in ("nll", "brier", "ece", "classwise_ece"):
        assert report[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key
        assert key in report["baseline"]
    assert report["accuracy"] > report["baseline"]["accuracy"]  # the target is label-shifted


def test_a_calibrated_model_does_not_move(shifted):
    logits = np.load(shifted / "val.npy")
    labels = np.load(shifted / "val_labels.npy")
    first = fit_temperature(logits, labels)
    np.save(shifted / "calibrated.npy", (logits / first.temperature).astype(np.float32))
    result = run("fit-tau", shifted / "calibrated.npy", shifted / "val_labels.npy", "--priors", shifted / "pi.npy",
                 "--tau-range", "0,0.0001", "--calibrate", "temperature")
    assert result.exit_code == 0 and "did not move" in result.stderr


def test_temperature_folds_into_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3)
    save_file(head.state_dict(), tmp_path / "m.safetensors")
    calibration = lacal.Calibration(tau=1.2, priors=np.array([0.6, 0.3, 0.1]), temperature=2.5,
                                    bias=np.array([0.2, -0.1, -0.1]), target_priors=np.array([0.2, 0.3, 0.5]))
    calibration.save(tmp_path / "cal.json")
    features = torch.randn(20, 4)
    np.save(tmp_path / "features.npy", features.numpy())
    result = run("apply", tmp_path / "m.safetensors", "--calibration", tmp_path / "cal.json", "--out",
                 tmp_path / "p.safetensors", "--verify-features", tmp_path / "features.npy")
    assert result.exit_code == 0, result.output
    assert "temperature 2.5 is folded into the head" in result.stderr
    patched = torch.nn.Linear(4, 3)
    patched.load_state_dict(load_file(tmp_path / "p.safetensors"))
    with torch.no_grad():
        got = torch.softmax(patched(features).double(), 1).numpy()
        expected = softmax(calibration.adjust(head(features).double().numpy()))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_target_prior_option_errors(shifted):
    base = ["fit-tau", shifted / "val.npy", shifted / "val_labels.npy", "--priors", shifted / "pi.npy"]
    np.save(shifted / "wide.npy", np.zeros((10, 7), dtype=np.float32))
    lacal.Calibration(tau=1.0, priors=np.full(5, 0.2)).save(shifted / "cal.json")
    cases = [
        (base + ["--target-priors", "em"], 6, "--target-priors: --target-priors em estimates"),
        (base + ["--target-logits", shifted / "target.npy"], 6, "--target-logits is for --target-priors em"),
        (base + ["--target-priors", "em", "--target-logits", shifted / "wide.npy"], 7, "has 7 classes but the "
                                                                                         "priors have 5"),
        (["apply", shifted / "target.npy", "--calibration", shifted / "cal.json", "--target-priors", "em",
          "--target-logits", shifted / "target.npy", "--out", shifted / "o.npy"], 6, "carries its target priors"),
    ]
    for args, code, message in cases:
        result = run(*args)
        assert result.exit_code == code and message in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (shifted / "o.npy").exists()


def test_em_prior_of_zero_is_floored_and_usable(tmp_path):
    rng = np.random.default_rng(1)
    target = rng.normal(size=(200, 3))
    target[:, 2] = -1000.0  # the model never predicts class 2 here
    np.save(tmp_path / "target.npy", target)
    np.save(tmp_path / "pi.npy", np.array([0.5, 0.3, 0.2]))
    estimate = lacal.methods.estimate_target_priors(target, [0.5, 0.3, 0.2])
    assert estimate.floored == [2] and estimate.priors[2] > 0 and np.isfinite(np.log(estimate.priors)).all()
    result = run("priors", "--em", tmp_path / "target.npy", "--priors", tmp_path / "pi.npy", "--out",
                 tmp_path / "q.json")
    assert result.exit_code == 0 and "drove 1 class(es) to a prior of 0" in result.stderr
    assert lacal.core.read_priors(tmp_path / "q.json").priors[2] > 0  # the written file is usable as --target-priors
    val = rng.normal(size=(60, 3)).astype(np.float32)
    np.save(tmp_path / "val.npy", val)
    np.save(tmp_path / "val_labels.npy", np.arange(60) % 3)
    fitted = run("fit-tau", tmp_path / "val.npy", tmp_path / "val_labels.npy", "--priors", tmp_path / "pi.npy",
                 "--target-priors", tmp_path / "q.json", "--out", tmp_path / "cal.json")
    assert fitted.exit_code == 0, fitted.output
    applied = run("apply", tmp_path / "val.npy", "--calibration", tmp_path / "cal.json", "--out",
                  tmp_path / "a.npy")
    assert applied.exit_code == 0 and np.isfinite(np.load(tmp_path / "a.npy")).all()


def test_separated_validation_data_is_not_called_converged():
    labels = np.arange(60) % 3
    logits = np.eye(3)[labels] * 8.0 + np.random.default_rng(2).normal(size=(60, 3)) * 0.1
    for fit in (fit_temperature(logits, labels), fit_bias(logits, labels)):
        assert not fit.converged and "separate the validation set" in fit.message


def test_a_class_without_validation_samples_is_not_pushed_out():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400)  # class 4 has no validation samples
    logits = rng.normal(size=(400, 5))
    logits[np.arange(400), labels] += 2.0
    fit = fit_bias(logits, labels)
    assert fit.bias[4] == pytest.approx(fit.bias[:4].mean())
    assert "no validation samples" in fit.message

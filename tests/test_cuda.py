"""GPU paths. CI has no GPU: these skip there, and run on a machine with CUDA."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.errors import OptionError
from lacal.methods.multilabel import fit_multilabel_tau

from .conftest import long_tail_problem

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
runner = CliRunner()


@cuda
@pytest.mark.parametrize("metric", ["balanced-error", "worst-class-error"])
@pytest.mark.parametrize("search", ["exact", "grid"])
def test_fit_tau_on_cuda_equals_cpu(metric, search):
    logits, labels, counts = long_tail_problem(num_samples=3000, num_classes=50, seed=7)
    on_cpu = lacal.methods.fit_tau(logits, labels, counts, metric=metric, search=search, device="cpu")
    on_gpu = lacal.methods.fit_tau(logits, labels, counts, metric=metric, search=search, device="cuda")
    assert on_gpu.tau == pytest.approx(on_cpu.tau, abs=1e-6)
    assert on_gpu.after == on_cpu.after and on_gpu.before == on_cpu.before


@cuda
def test_adjust_and_evaluate_on_cuda_tensors():
    logits, labels, counts = long_tail_problem(num_samples=500, num_classes=20, seed=3)
    on_gpu = lacal.core.adjust_logits(torch.from_numpy(logits).cuda(), counts, 1.3)
    assert on_gpu.is_cuda
    np.testing.assert_allclose(on_gpu.cpu().numpy(), lacal.core.adjust_logits(logits, counts, 1.3), rtol=1e-6)
    assert lacal.methods.evaluate(logits, labels, counts, 1.3, device="cuda") == lacal.methods.evaluate(logits, labels, counts, 1.3)


@cuda
def test_cli_on_cuda_matches_cpu(files):
    base = ["fit-tau", str(files / "val_logits.npy"), str(files / "val_labels.npy"), "--train-labels",
            str(files / "train_labels.txt"), "--json"]
    on_gpu = json.loads(runner.invoke(app, base + ["--device", "cuda"]).stdout)
    on_cpu = json.loads(runner.invoke(app, base + ["--device", "cpu"]).stdout)
    assert on_gpu["tau"] == pytest.approx(on_cpu["tau"], abs=1e-6)
    assert on_gpu["balanced_error_after"] == on_cpu["balanced_error_after"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(files):
    with pytest.raises(OptionError, match="no CUDA device"):
        lacal.engine.resolve_device("cuda")
    result = runner.invoke(app, ["report", str(files / "val_logits.npy"), str(files / "val_labels.npy"),
                                 "--device", "cuda"])
    assert result.exit_code == 6 and "--device: cuda was asked for" in result.stderr


def test_unknown_device_is_refused():
    with pytest.raises(OptionError, match="unknown device"):
        lacal.engine.resolve_device("tpu")


@cuda
def test_label_shift_calibration_and_metrics_on_cuda_equal_cpu():
    from lacal.methods.probability import fit_bias, fit_temperature
    from lacal.engine.passes import probability_pass
    from lacal.methods.taunorm import fit_tau_norm

    logits, labels, counts = long_tail_problem(num_samples=2000, num_classes=20, seed=11)
    em_cpu = lacal.methods.estimate_target_priors(logits, counts)
    em_gpu = lacal.methods.estimate_target_priors(logits, counts, device="cuda")
    np.testing.assert_allclose(em_gpu.priors, em_cpu.priors, atol=1e-9)
    offset = lacal.core.offsets(counts, 1.0)
    for fit in (fit_temperature, fit_bias):
        on_cpu, on_gpu = fit(logits, labels, offset), fit(logits, labels, offset, device="cuda")
        assert on_gpu.temperature == pytest.approx(on_cpu.temperature, rel=1e-6)
    cpu_metrics = probability_pass(logits, labels, [(1.0, offset)])[0]
    gpu_metrics = probability_pass(logits, labels, [(1.0, offset)], device="cuda")[0]
    for key, value in cpu_metrics.to_dict().items():
        assert gpu_metrics.to_dict()[key] == pytest.approx(value, rel=1e-9), key
    weight = np.random.default_rng(0).normal(size=(20, 8))
    features = np.random.default_rng(1).normal(size=(2000, 8)).astype(np.float32)
    assert fit_tau_norm(features, labels, weight, device="cuda").tau == fit_tau_norm(features, labels, weight).tau


@cuda
def test_interval_pass_on_cuda_equals_cpu_with_shared_priors():
    from lacal.engine.passes import interval_pass

    logits, labels, _ = long_tail_problem(num_samples=3000, num_classes=40, seed=12)
    counts = np.repeat([500, 100, 20, 5], 10)  # groups of equal priors
    log_priors = np.log(counts / counts.sum())
    on_cpu = interval_pass(logits, labels, log_priors, [0.0, 1.0])
    on_gpu = interval_pass(logits, labels, log_priors, [0.0, 1.0], device="cuda")
    np.testing.assert_array_equal(on_gpu.lo.cpu().numpy(), on_cpu.lo.numpy())
    np.testing.assert_array_equal(on_gpu.hi.cpu().numpy(), on_cpu.hi.numpy())
    for tau in (0.0, 1.0):
        np.testing.assert_array_equal(on_gpu.points[tau], on_cpu.points[tau])


# Multi-label heads (one sigmoid per label): the same behaviour, the other task.


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["balanced-error", "macro-f1"])
def test_multilabel_search_on_cuda_equals_cpu(metric):
    rng = np.random.default_rng(5)
    rates = np.linspace(0.01, 0.5, 30)
    y = rng.random((3000, 30)) < rates
    f = (rng.normal(size=y.shape) + 2 * y - 1 + np.log(rates / (1 - rates))).astype(np.float32)
    on_cpu = fit_multilabel_tau(f, y, rates, metric=metric, device="cpu")
    on_gpu = fit_multilabel_tau(f, y, rates, metric=metric, device="cuda")
    assert on_gpu.tau == on_cpu.tau and on_gpu.interval == on_cpu.interval
    np.testing.assert_array_equal(on_gpu.after.true_positives, on_cpu.after.true_positives)
    np.testing.assert_array_equal(on_gpu.after.false_positives, on_cpu.after.false_positives)

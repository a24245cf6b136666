"""Multi-label bootstrap intervals (samples resampled): replicates are exact refits of the shared tau, and the macro
intervals are the percentiles of figures recomputed from the replicates' weights with plain numpy."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.methods.bootstrap_multilabel import bootstrap_multilabel
from lacal.methods.multilabel import fit_multilabel_tau, log_odds
from lacal.methods.resampling import Slots

runner = CliRunner()


def problem(rows=200, labels=6, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    pi = np.linspace(0.05, 0.6, labels)
    truth = rng.random((rows, labels)) < pi
    logits = rng.normal(size=(rows, labels)) + 1.5 * (2 * truth - 1) + np.log(pi / (1 - pi))
    return logits.astype(dtype), truth, pi


def drawn(rows, seed, replicates):
    return Slots(np.array([rows]), stratified=False).counts(seed, list(replicates)).T.numpy().astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1])
def test_replicates_are_exact_multilabel_refits(seed):
    logits, truth, pi = problem(seed=seed)
    fit = fit_multilabel_tau(logits, truth, pi)
    boot = bootstrap_multilabel(logits, truth, log_odds(pi), fit.tau, (0.0, 4.0), 16, seed=seed, block=5)
    counts = drawn(len(truth), seed, range(16))
    for b in range(16):
        rows = np.repeat(np.arange(len(truth)), counts[b])
        refit = fit_multilabel_tau(logits[rows], truth[rows], pi)
        assert boot.taus[b] == refit.tau
        assert boot.refit[b] == pytest.approx(refit.after.balanced_error, abs=1e-12)
        assert boot.before[b, 0] == pytest.approx(refit.before.balanced_error, abs=1e-12)
        assert boot.before[b, 1] == pytest.approx(refit.before.macro_f1, abs=1e-12)


def test_report_intervals_are_the_replicates_percentiles():
    logits, truth, pi = problem(rows=300, seed=4)
    train = (np.random.default_rng(1).random((3000, 6)) < pi).astype(np.int64)
    report = lacal.report(logits, truth.astype(np.int64), tau=1.0, train_labels=train, multi_label=True,
                          bootstrap=120, seed=5, device="cpu")
    prior = lacal.workflows.task_inputs.training_priors(train, None, 6)
    predicted = (logits - 1.0 * prior.log_odds.astype(np.float32)) > 0
    counts = drawn(len(truth), 5, range(120)).astype(np.float64)
    macro_f1 = []
    for w in counts:
        tp = (w[:, None] * (predicted & truth)).sum(0)
        fp = (w[:, None] * (predicted & ~truth)).sum(0)
        positives = (w[:, None] * truth).sum(0)
        scored = (positives > 0) & (positives < w.sum())
        macro_f1.append(np.mean((2 * tp / (tp + fp + positives))[scored]))
    assert report.intervals.ci("macro_f1", "after") == pytest.approx(tuple(np.quantile(macro_f1, [0.025, 0.975])))
    assert report.adjusted.macro_f1 == pytest.approx(report.intervals.original[1, 1])
    data = report.to_dict()
    assert "tau_ci" not in data and len(data["per_label_balanced_error_after_ci"]) == 6


def test_cli_multilabel_bootstrap(tmp_path):
    logits, truth, pi = problem(rows=250, seed=2)
    train = (np.random.default_rng(3).random((2000, 6)) < pi).astype(np.int64)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", truth.astype(np.int64))
    np.save(tmp_path / "train.npy", train)
    args = ["fit-tau", tmp_path / "logits.npy", tmp_path / "labels.npy", "--train-labels", tmp_path / "train.npy",
            "--multi-label", "--bootstrap", 80, "--json"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tau_ci"][0] <= data["tau"] <= data["tau_ci"][1]
    assert data["macro_f1_change_ci"] is not None
    for extra, flag in ((["--folds", 3], "--folds"), (["--tau-rule", "one-se"], "--tau-rule")):
        refused = runner.invoke(app, [str(a) for a in args + extra])
        lines = refused.stderr.strip().splitlines()
        assert refused.exit_code == 6 and len(lines) == 1 and lines[0].startswith(f"lacal: error: {flag}: "), lines

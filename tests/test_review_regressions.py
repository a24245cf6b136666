"""Regression tests for problems found in reviews of the scorer, label shift and calibration."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.methods.probability import fit_bias, fit_temperature
from lacal.cli.app import app
from lacal.data.readers import shard_paths

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def test_globs_across_folders_keep_natural_path_order(tmp_path):
    for run_id in (1, 2, 3, 10, 20):
        (tmp_path / f"run{run_id}").mkdir()
        np.save(tmp_path / f"run{run_id}" / "logits.npy", np.full((2, 3), run_id, dtype=np.float32))
    order = [p.parent.name for p in shard_paths(str(tmp_path / "*" / "logits.npy"))]
    assert order == ["run1", "run2", "run3", "run10", "run20"]
    rows = lacal.data.read_logits(str(tmp_path / "*" / "logits.npy")).rows(0, 10)[:, 0].tolist()
    assert rows == [1, 1, 2, 2, 3, 3, 10, 10, 20, 20]


def test_outputs_never_land_in_a_shard_folder_and_labels_are_not_shards(tmp_path, problem):
    logits, labels, counts = problem
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "p1.npy", logits[:300])
    np.save(tmp_path / "shards" / "p2.npy", logits[300:])
    np.save(tmp_path / "counts.npy", counts)
    before = (tmp_path / "shards" / "p1.npy").read_bytes()
    result = run("apply", tmp_path / "shards", "--tau", 1, "--priors", tmp_path / "counts.npy", "--out",
                 tmp_path / "shards" / "p1.npy", "--force")
    assert result.exit_code == 8 and "inside the input folder" in result.stderr
    assert (tmp_path / "shards" / "p1.npy").read_bytes() == before
    np.save(tmp_path / "shards" / "labels.npy", labels)
    mixed = run("report", tmp_path / "shards", tmp_path / "shards" / "labels.npy")
    assert mixed.exit_code == 3 and "also holds labels.npy" in mixed.stderr


def test_score_refusals(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    program = torch.export.export(Net(), (torch.randn(10, 4),))  # a fixed batch of 10
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32))
    np.save(tmp_path / "long.npy", np.zeros((5, 4), dtype=np.longdouble))
    cases = [
        (["score", tmp_path / "fixed.pt2", tmp_path / "x.npy", "--out", tmp_path / "o.npy", "--batch-size", 10],
         4, "export with a dynamic batch dimension"),
        (["score", tmp_path / "fixed.pt2", tmp_path / "long.npy", "--out", tmp_path / "o.npy"], 4,
         "inputs have dtype float128"),
        (["score", tmp_path / "fixed.pt2", tmp_path / "x.npy", "--out", tmp_path / "o.csv"], 6,
         "logits are written as"),
    ]
    for args, code, message in cases:
        result = run(*args)
        assert result.exit_code == code and message in result.stderr, result.output
        assert not (tmp_path / "o.npy").exists() and not (tmp_path / "o.csv").exists()


def test_one_megabyte_budget_is_accepted(files):
    result = run("report", files / "val_logits.npy", files / "val_labels.npy", "--memory-budget", "1MB", "--json")
    assert result.exit_code == 0


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


def test_option_mistakes(files):
    base = ["report", files / "val_logits.npy", files / "val_labels.npy"]
    result = run(*base, "--target-priors", files / "nope.json")
    assert result.exit_code == 6 and "--target-priors goes with --tau" in result.stderr
    zero = run("priors", "--em", files / "val_logits.npy", "--train-labels", files / "train_labels.txt",
               "--em-tolerance", 0)
    assert zero.exit_code == 6 and "must be > 0" in zero.stderr

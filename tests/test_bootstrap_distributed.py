"""Bootstrap intervals under torchrun (two gloo processes) equal those of one process: the replicates' weights
depend only on the seed and the samples' global order, and the ranks split the replicates, not the samples."""

import json

import numpy as np
import pytest
import torch

from .conftest import long_tail_problem
from .test_distributed import single, torchrun

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in"),
              pytest.mark.slow]  # each starts two processes (about 20 s here)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("bootstrap_distributed")
    logits, labels, counts = long_tail_problem(num_samples=900, num_classes=10, seed=5)
    (d / "shards").mkdir()
    cuts = [0, 250, 251, 600, 900]  # uneven: rank 0 reads two shards, rank 1 two
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.save(d / "shards" / f"part-{k}.npy", logits[a:b])
    np.save(d / "labels.npy", labels)
    np.save(d / "counts.npy", counts)
    return d


def test_fit_tau_intervals_equal_one_process(shards):
    args = ["fit-tau", shards / "shards", shards / "labels.npy", "--priors", shards / "counts.npy", "--json",
            "--bootstrap", 150, "--folds", 4, "--seed", 7]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = json.loads(many.stdout), json.loads(one.stdout)
    assert a == b
    assert a["tau_ci"][0] <= a["tau"] <= a["tau_ci"][1]


def test_report_intervals_equal_one_process(shards):
    args = ["report", shards / "shards", shards / "labels.npy", "--tau", 1.0, "--priors", shards / "counts.npy",
            "--json", "--bootstrap", 120, "--seed", 3]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    a, b = json.loads(many.stdout), json.loads(one.stdout)
    intervals = [k for k in b if k.endswith("_ci") or k == "bootstrap"]
    assert len(intervals) == 9
    assert {k: a[k] for k in intervals} == {k: b[k] for k in intervals}  # NLL and ECE sums differ in rounding


def test_multilabel_intervals_equal_one_process(tmp_path):
    rng = np.random.default_rng(6)
    pi = np.linspace(0.05, 0.6, 5)
    truth = (rng.random((400, 5)) < pi).astype(np.int64)
    logits = (rng.normal(size=(400, 5)) + 1.5 * (2 * truth - 1) + np.log(pi / (1 - pi))).astype(np.float32)
    (tmp_path / "shards").mkdir()
    for k, (a, b) in enumerate([(0, 130), (130, 131), (131, 400)]):
        np.save(tmp_path / "shards" / f"part-{k}.npy", logits[a:b])
    np.save(tmp_path / "labels.npy", truth)
    np.save(tmp_path / "train.npy", (rng.random((3000, 5)) < pi).astype(np.int64))
    args = ["fit-tau", tmp_path / "shards", tmp_path / "labels.npy", "--train-labels", tmp_path / "train.npy",
            "--multi-label", "--json", "--bootstrap", 60, "--seed", 2]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads(many.stdout) == json.loads(one.stdout)

"""Multi-label fit-tau and report under torchrun (two gloo processes on uneven shards) against one process."""

import json

import numpy as np
import pytest
import torch

from .test_distributed import single, torchrun

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in"),
              pytest.mark.slow]


def test_multilabel_fit_and_report_equal_one_process(tmp_path):
    rng = np.random.default_rng(4)
    rates = np.array([0.3, 0.1, 0.04, 0.5, 0.02])
    y = rng.random((900, rates.size)) < rates
    f = (1.5 * y - 0.75 + rng.normal(size=y.shape) + np.log(rates / (1 - rates))).astype(np.float32)
    (tmp_path / "shards").mkdir()
    for k, (a, b) in enumerate(zip([0, 50, 400, 401, 700], [50, 400, 401, 700, 900])):
        np.save(tmp_path / "shards" / f"part-{k}.npy", f[a:b])
    np.save(tmp_path / "labels.npy", y)
    np.save(tmp_path / "train.npy", rng.random((4000, rates.size)) < rates)
    for metric in ("balanced-error", "macro-f1"):
        args = ["fit-tau", tmp_path / "shards", tmp_path / "labels.npy", "--train-labels", tmp_path / "train.npy",
                "--multi-label", "--metric", metric, "--json"]
        many, one = torchrun(*args), single(*args)
        assert many.returncode == 0, many.stderr[-3000:]
        a, b = json.loads(many.stdout), json.loads(one.stdout)
        assert a == b  # the sweep sees every flip; the figures come from summed counts
    args = ["report", tmp_path / "shards", tmp_path / "labels.npy", "--tau", 1.3, "--train-labels",
            tmp_path / "train.npy", "--multi-label", "--json"]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    assert json.loads(many.stdout) == json.loads(one.stdout)
    refused = torchrun("apply", tmp_path / "shards", "--tau", 1.0, "--train-labels", tmp_path / "train.npy",
                       "--multi-label", "--out", tmp_path / "out")
    assert refused.returncode != 0 and "multi-label commands do not run under torchrun yet" in refused.stderr

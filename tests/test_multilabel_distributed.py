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
    for k, (a, b) in enumerate(zip([0, 10, 20, 30, 500], [10, 20, 30, 500, 900])):  # rank 0: 30 rows
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


SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from lacal.engine.distributed import join
from lacal.methods.multilabel import fit_multilabel_tau, multilabel_priors_from_labels

d = Path(sys.argv[1])
context = join("cpu")
f, y = np.load(d / "logits.npy"), np.load(d / "labels.npy")
rows = slice(None) if context.world == 1 else (slice(0, 30) if context.rank == 0 else slice(30, None))
prior = multilabel_priors_from_labels(np.load(d / "train.npy"))
result = {}
for metric in ("balanced-error", "macro-f1"):
    fit = fit_multilabel_tau(f[rows], y[rows], prior, (0.5, 4.0), metric, context=context)
    result[metric] = [fit.tau, list(fit.interval), fit.search_value, fit.after.metric(metric)]
if context.rank == 0:
    print(json.dumps(result))
context.close()
"""


def test_the_sweep_itself_equals_one_process(tmp_path):
    """Rank 0 holds 30 rows: the sweep's value (not only the measured figures) must use every rank's counts."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(8)
    rates = np.array([0.3, 0.1, 0.04, 0.2, 0.02, 0.07])
    y = rng.random((600, rates.size)) < rates
    np.save(tmp_path / "logits.npy", (1.5 * y - 0.75 + rng.normal(size=y.shape)
                                      + np.log(rates / (1 - rates))).astype(np.float32))
    np.save(tmp_path / "labels.npy", y)
    np.save(tmp_path / "train.npy", rng.random((4000, rates.size)) < rates)
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    many = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           tmp_path / "script.py", tmp_path], capture_output=True, text=True, timeout=300, env=env)
    one = subprocess.run([sys.executable, tmp_path / "script.py", tmp_path], capture_output=True, text=True,
                         timeout=300, env=env)
    assert many.returncode == 0 and one.returncode == 0, many.stderr[-3000:] + one.stderr[-3000:]
    a, b = json.loads(many.stdout), json.loads(one.stdout)
    assert a == b
    for tau, interval, searched, measured in a.values():
        assert searched == pytest.approx(measured, abs=1e-12)

"""Two processes on localhost with gloo (torchrun), against one process: the same tau, metrics and files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from .conftest import long_tail_problem

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def torchrun(*args, processes=2, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m",
               "lacal", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def single(*args):
    return subprocess.run([sys.executable, "-m", "lacal", *map(str, args)], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("distributed")
    logits, labels, counts = long_tail_problem(num_samples=1200, num_classes=12, seed=3)
    (d / "shards").mkdir()
    (d / "label_shards").mkdir()
    cuts = [0, 100, 430, 431, 900, 1200]  # uneven shards; rank 0 takes three, rank 1 two
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.save(d / "shards" / f"part-{k}.npy", logits[a:b])
        np.save(d / "label_shards" / f"part-{k}.npy", labels[a:b])
    bad = d / "bad"
    bad.mkdir()
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        part = logits[a:b].copy()
        if k == 4:
            part[7, 3] = np.nan  # in rank 1's share
        np.save(bad / f"part-{k}.npy", part)
    np.save(d / "labels.npy", labels)
    np.save(d / "counts.npy", counts)
    rng = np.random.default_rng(9)
    np.save(d / "target_shards_all.npy", rng.permutation(logits))
    (d / "target").mkdir()
    target = np.load(d / "target_shards_all.npy")
    np.save(d / "target" / "a.npy", target[:600])
    np.save(d / "target" / "b.npy", target[600:])
    return d


@pytest.mark.parametrize("extra", [[], ["--search", "grid"], ["--metric", "worst-class-error"]])
def test_fit_tau_equals_one_process(shards, extra):
    args = ["fit-tau", shards / "shards", shards / "labels.npy", "--priors", shards / "counts.npy", "--json", *extra]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    assert json.loads(many.stdout) == json.loads(one.stdout)


def test_label_shards_and_calibration_under_torchrun(shards):
    args = ["fit-tau", shards / "shards", shards / "label_shards", "--priors", shards / "counts.npy", "--json",
            "--calibrate", "temperature", "--target-priors", "em", "--target-logits", shards / "target"]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    a, b = json.loads(many.stdout), json.loads(one.stdout)
    assert (a["tau"], a["tau_interval"], a["balanced_error_after"]) == (b["tau"], b["tau_interval"],
                                                                          b["balanced_error_after"])
    # floating-point sums over ranks agree to rounding
    assert a["calibration"]["temperature"] == pytest.approx(b["calibration"]["temperature"], rel=1e-9)
    np.testing.assert_allclose(a["target_priors"]["priors"], b["target_priors"]["priors"], atol=1e-12)


def test_report_equals_one_process(shards):
    args = ["report", shards / "shards", shards / "labels.npy", "--tau", 1.0, "--priors", shards / "counts.npy",
            "--json"]
    many, one = torchrun(*args), single(*args)
    assert many.returncode == 0, many.stderr[-3000:]
    a, b = json.loads(many.stdout), json.loads(one.stdout)
    for key in ("balanced_error", "accuracy", "worst_class_error", "per_class", "groups"):
        assert a[key] == b[key], key
    for key in ("nll", "brier", "ece", "classwise_ece"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key


def test_apply_writes_the_same_shards_and_index(shards):
    many = torchrun("apply", shards / "shards", "--tau", 1.0, "--priors", shards / "counts.npy", "--out",
                    shards / "out_many")
    one = single("apply", shards / "shards", "--tau", 1.0, "--priors", shards / "counts.npy", "--out",
                 shards / "out_one")
    assert many.returncode == 0 and one.returncode == 0, many.stderr[-3000:]
    names = sorted(p.name for p in (shards / "out_one").iterdir())
    assert names == sorted(p.name for p in (shards / "out_many").iterdir())
    assert "index.json" in names and len(names) == 6
    for name in names:
        assert (shards / "out_many" / name).read_bytes() == (shards / "out_one" / name).read_bytes(), name
    import lacal

    whole = lacal.data.read_logits(shards / "out_many")
    logits = np.concatenate([np.load(shards / "shards" / f"part-{k}.npy") for k in range(5)])
    np.testing.assert_array_equal(whole.rows(0, whole.num_samples).numpy(),
                                  lacal.core.adjust_logits(logits, np.load(shards / "counts.npy"), 1.0))


def test_a_failing_rank_ends_the_job_with_its_message(shards):
    result = torchrun("fit-tau", shards / "bad", shards / "labels.npy", "--priors", shards / "counts.npy", "--json",
                      timeout=120)
    assert result.returncode != 0
    assert "lacal: error: rank 1: " in result.stderr
    assert "bad/part-4.npy: logits hold NaN values (the first non-finite row is 8)" in result.stderr
    assert result.stdout == ""


def test_more_ranks_than_shards_is_an_error(shards):
    result = torchrun("report", shards / "shards" / "part-0.npy", shards / "labels.npy", timeout=120)
    assert result.returncode != 0 and "every rank needs at least one" in result.stderr


def test_em_on_a_failing_rank_and_devices(shards):
    bad_em = torchrun("priors", "--em", shards / "bad", "--priors", shards / "counts.npy", "--json", timeout=120)
    assert bad_em.returncode != 0
    assert "lacal: error: rank 1: " in bad_em.stderr and "part-4.npy: logits hold NaN values" in bad_em.stderr
    if not torch.cuda.is_available():
        no_gpu = torchrun("fit-tau", shards / "shards", shards / "labels.npy", "--priors", shards / "counts.npy",
                          "--device", "cuda", timeout=120)
        assert no_gpu.returncode != 0 and "no CUDA device" in no_gpu.stderr
        assert not [line for line in no_gpu.stderr.splitlines() if 'File "' in line and "/lacal/" in line]
    named = torchrun("fit-tau", shards / "shards", shards / "labels.npy", "--priors", shards / "counts.npy",
                     "--device", "cuda:1", timeout=120)
    assert named.returncode != 0 and "each rank uses cuda:LOCAL_RANK" in named.stderr


def test_label_errors_name_the_global_entry(shards):
    labels = np.load(shards / "labels.npy").copy()
    labels[1000] = 99  # in rank 1's rows
    np.save(shards / "bad_labels.npy", labels)
    result = torchrun("fit-tau", shards / "shards", shards / "bad_labels.npy", "--priors", shards / "counts.npy",
                      timeout=120)
    assert result.returncode != 0 and "label 99 (entry 1001) is out of range" in result.stderr


# Multi-label heads under torchrun: the same behaviour, the other task.


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_multilabel_sweep_itself_equals_one_process(tmp_path):
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

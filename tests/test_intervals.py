"""The interval pass against the pre-rewrite one (tests/reference_intervals.py), its threading, and its memory."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lacal
import lacal.engine.threads
from lacal.engine.passes import _block_intervals, interval_pass

from .reference_intervals import reference_intervals

DTYPES = ["float32", "float64", "float16", "bfloat16", "integers"]
PRIORS = ["distinct", "pairs", "all equal", "random"]


def problem(seed, samples, classes, dtype, priors, scale, shift):
    rng = np.random.default_rng(seed)
    if priors == "distinct":
        counts = rng.permutation(np.arange(1, classes + 1) * 7)
    elif priors == "pairs":
        counts = rng.permutation(np.repeat(np.arange(1, classes // 2 + 2) * 5, 2)[:classes])
    elif priors == "all equal":
        counts = np.full(classes, 10)
    else:
        counts = rng.integers(1, 6, classes)  # small counts: many shared priors
    labels = rng.integers(0, classes, samples)
    if dtype == "integers":
        logits = rng.integers(-3, 4, size=(samples, classes)).astype(np.float32) * scale + shift
    else:
        values = torch.from_numpy(rng.normal(size=(samples, classes)) * scale + shift)
        logits = values.to(getattr(torch, dtype))
    return logits, labels, np.log(counts / counts.sum())


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2 ** 31), samples=st.integers(1, 70), classes=st.integers(2, 9),
       dtype=st.sampled_from(DTYPES), priors=st.sampled_from(PRIORS), scale=st.sampled_from([0.01, 1.0, 3.0, 1e4]),
       shift=st.sampled_from([0.0, -50.0, 7.5]), rows=st.sampled_from([1, 5, None]))
def test_intervals_equal_the_previous_pass(seed, samples, classes, dtype, priors, scale, shift, rows):
    logits, labels, log_priors = problem(seed, samples, classes, dtype, priors, scale, shift)
    stats = interval_pass(logits, labels, log_priors, rows=rows)
    lo, hi = reference_intervals(logits, labels, log_priors)
    # equal value for value (np.testing treats -0.0 and 0.0 as different: zeros must have the same sign too)
    np.testing.assert_array_equal(stats.lo.numpy(), lo.numpy(), strict=True)
    np.testing.assert_array_equal(np.signbit(stats.lo.numpy()), np.signbit(lo.numpy()))
    np.testing.assert_array_equal(stats.hi.numpy(), hi.numpy(), strict=True)
    np.testing.assert_array_equal(np.signbit(stats.hi.numpy()), np.signbit(hi.numpy()))


def test_ties_with_classes_of_the_same_prior_follow_argmax():
    # classes 1 and 2 share a prior; sample 0 (label 2) ties class 1, which comes first: never right. Sample 1
    # (label 1) ties class 2, which comes after and bounds nothing: right for every tau above class 0's crossing.
    logits = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    log_priors = np.log(np.array([0.5, 0.25, 0.25]))
    lo, hi = _block_intervals(logits, torch.tensor([2, 1]), torch.as_tensor(log_priors, dtype=torch.float32))
    assert (lo[0].item(), hi[0].item()) == (np.inf, -np.inf)
    assert lo[1].item() == pytest.approx(-1 / np.log(2), rel=1e-6) and hi[1].item() == np.inf
    for tau in (lo[1].item() - 0.01, lo[1].item() + 0.01):
        adjusted = logits[1].double() - tau * torch.from_numpy(log_priors)
        assert (int(adjusted.argmax()) == 1) == (tau > lo[1].item())


def test_threads_give_the_same_intervals(monkeypatch):
    logits, labels, log_priors = problem(3, 500, 40, "float16", "random", 2.0, 0.0)
    one = interval_pass(logits, labels, log_priors, rows=7)
    monkeypatch.setattr(lacal.engine.threads, "block_workers", lambda device, blocks: 3)
    seen = []
    original = lacal.engine.passes._block_intervals

    def recording(*args):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return original(*args)

    monkeypatch.setattr(lacal.engine.passes, "_block_intervals", recording)
    threads_before = torch.get_num_threads()
    several = interval_pass(logits, labels, log_priors, rows=7)
    assert torch.get_num_threads() == threads_before
    assert len({ident for ident, _ in seen}) > 1 and all(count == 1 for _, count in seen)
    assert torch.equal(one.lo, several.lo) and torch.equal(one.hi, several.hi)


def test_run_blocks_reports_progress_and_stops_at_a_bad_block():
    blocks = [(k * 4, torch.zeros(4, 2)) for k in range(6)]
    written, progress = [], []
    lacal.engine.threads.run_blocks(iter(blocks), lambda start, block: written.append(start), 2, progress.append)
    assert sorted(written) == [0, 4, 8, 12, 16, 20] and progress == [4, 8, 12, 16, 20, 24]

    def failing():
        yield blocks[0]
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        lacal.engine.threads.run_blocks(failing(), lambda start, block: None, 2)


def test_no_table_grows_with_the_square_of_the_classes():
    # 8,000 classes: the old pass built 3 x 8,000^2 float32 tables (768 MB) under the default budget
    code = (
        "import numpy as np, lacal\n"
        "rng = np.random.default_rng(0)\n"
        "logits = rng.normal(size=(64, 8000)).astype(np.float32)\n"
        "counts = rng.integers(1, 500, 8000)\n"
        "labels = rng.integers(0, 8000, 64)\n"
        "lacal.methods.fit_tau(logits[:4], labels[:4], counts, rows=2)\n"  # imports and warm-up
        "rss = lambda f: int([l for l in open('/proc/self/status') if l.startswith(f)][0].split()[1]) // 1024\n"
        "before = rss('VmRSS:')\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "lacal.methods.fit_tau(logits, labels, counts)\n"
        "print(rss('VmHWM:') - before)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "clear_refs" in result.stderr:
        pytest.skip("needs /proc/self/clear_refs (Linux)")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 64  # MB


def test_fit_tau_spreads_the_pass_and_restores_the_thread_count(monkeypatch):
    logits, labels, log_priors = problem(5, 300, 12, "float32", "random", 2.0, 0.0)
    counts = np.exp(log_priors)
    single = lacal.methods.fit_tau(logits, labels, counts, rows=7)
    seen = []
    original = lacal.engine.passes._block_intervals

    def recording(*args):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return original(*args)

    monkeypatch.setattr(lacal.engine.passes, "_block_intervals", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spread = lacal.methods.fit_tau(logits, labels, counts, rows=7)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert all(count == 1 for _, count in seen)
    assert len({ident for ident, _ in seen}) == min(2, os.cpu_count() or 1)
    assert (spread.tau, spread.interval, spread.after) == (single.tau, single.interval, single.after)


@pytest.mark.slow
def test_the_fused_kernel_gives_the_same_intervals(monkeypatch):
    import lacal.engine.fused

    monkeypatch.setenv(lacal.engine.fused.ENVIRONMENT, "1")
    monkeypatch.setattr(lacal.engine.fused, "_kernels", {})
    kernel = lacal.engine.fused.fused_kernel(torch.float32, "cpu")
    if kernel is None:
        pytest.skip("torch.compile cannot compile here (no C++ compiler)")
    calls = []

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setitem(lacal.engine.fused._kernels, (torch.float32, "cpu"), counting)
    for seed, dtype, priors in [(1, "integers", "pairs"), (2, "float16", "random"), (3, "float32", "distinct"),
                                (4, "bfloat16", "all equal"), (5, "integers", "random")]:
        logits, labels, log_priors = problem(seed, 300, 9, dtype, priors, 1.0, -3.0)
        stats = interval_pass(logits, labels, log_priors, rows=64)
        lo, hi = reference_intervals(logits, labels, log_priors)
        np.testing.assert_array_equal(stats.lo.numpy(), lo.numpy(), strict=True)
        np.testing.assert_array_equal(stats.hi.numpy(), hi.numpy(), strict=True)
        np.testing.assert_array_equal(np.signbit(stats.lo.numpy()), np.signbit(lo.numpy()))
        np.testing.assert_array_equal(np.signbit(stats.hi.numpy()), np.signbit(hi.numpy()))
    assert len(calls) == 5 * 5  # every block of 64 rows (the last has 44) went through the kernel


def test_a_failing_fused_kernel_falls_back_to_the_eager_pass(monkeypatch):
    import lacal.engine.fused

    def broken(*args):
        raise RuntimeError("compiled code failed")

    monkeypatch.setattr(lacal.engine.fused, "fused_kernel", lambda dtype, device: broken)
    logits, labels, log_priors = problem(6, 200, 7, "integers", "pairs", 1.0, 0.0)
    stats = interval_pass(logits, labels, log_priors, rows=16)
    lo, hi = reference_intervals(logits, labels, log_priors)
    assert torch.equal(stats.lo, lo) and torch.equal(stats.hi, hi)

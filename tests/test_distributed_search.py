"""The distributed exact search (histogram of interval ends, then an exact sweep of the candidate buckets) against
the single-process search, in one process: a context that claims to be distributed but holds all the data."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lacal
from lacal.engine.distributed import Context
from lacal.methods.search import _exact, _exact_distributed, balanced_weights

from .conftest import long_tail_problem


class AllInOne(Context):
    """world > 1 so that the distributed path runs, but this one process holds every sample."""

    def __init__(self):
        super().__init__(rank=0, world=2)

    def sum(self, values):
        return values

    def max(self, values):
        return values

    def min(self, values):
        return values

    def gather(self, value):
        return [value]


def _intervals(logits, labels, counts):
    from lacal.engine.passes import interval_pass

    stats = interval_pass(logits, labels, np.log(np.asarray(counts) / np.sum(counts)))
    support = torch.as_tensor(np.bincount(labels, minlength=logits.shape[1]))
    return stats, support


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), buckets=st.sampled_from([1, 2, 7, 64, 4096]), ties=st.booleans(),
       low=st.sampled_from([0.0, -1.0, 0.7]), width=st.sampled_from([4.0, 0.5, 2.5]))
def test_bucketed_sweep_equals_the_full_sweep(seed, buckets, ties, low, width):
    logits, labels, counts = long_tail_problem(num_samples=80, num_classes=6, seed=seed, dtype=np.float64)
    if ties:
        logits = np.round(logits)
    stats, support = _intervals(logits, labels, counts)
    weights, exact = balanced_weights(support)
    expected = _exact(stats.lo, stats.hi, stats.labels, support, low, low + width, "balanced-error", weights, exact)
    got = _exact_distributed(AllInOne(), stats.lo, stats.hi, stats.labels, low, low + width, weights, exact, buckets)
    assert got == expected


def test_fit_tau_with_a_distributed_context_equals_one_process():
    logits, labels, counts = long_tail_problem(num_samples=500, num_classes=9, seed=4)
    for metric in ("balanced-error", "worst-class-error"):
        for search in ("exact", "grid"):
            one = lacal.methods.fit_tau(logits, labels, counts, metric=metric, search=search)
            many = lacal.methods.fit_tau(logits, labels, counts, metric=metric, search=search, context=AllInOne())
            assert (many.tau, many.interval, many.after, many.before) == (one.tau, one.interval, one.after,
                                                                          one.before)


def test_interval_ends_on_bucket_edges_land_in_the_same_bucket_as_in_the_sweep():
    mismatches = []
    for seed in range(400):  # ends placed on, and one float either side of, bucket edges of odd-width ranges
        rng = np.random.default_rng(seed)
        low = float(rng.choice([0.0, 0.1, 0.3, -0.7]))
        high = low + float(rng.choice([0.6, 3.0, 2.9, 4.0]))
        buckets = int(rng.choice([7, 64, 4096]))
        edges = low + (high - low) / buckets * np.arange(buckets + 1)
        n = int(rng.integers(3, 40))
        first = rng.integers(0, buckets + 1, n)
        second = np.minimum(buckets, first + rng.integers(1, max(2, buckets // 3), n))
        jitter = rng.integers(-1, 2, (2, n))
        starts = np.where(jitter[0] < 0, np.nextafter(edges[first], -9),
                          np.where(jitter[0] > 0, np.nextafter(edges[first], 9), edges[first]))
        ends = np.where(jitter[1] < 0, np.nextafter(edges[second], -9),
                        np.where(jitter[1] > 0, np.nextafter(edges[second], 9), edges[second]))
        lo, hi = torch.tensor(starts), torch.tensor(ends)
        labels = torch.tensor(rng.integers(0, int(rng.integers(2, 5)), n))
        support = torch.bincount(labels)
        weights, exact = balanced_weights(support)
        one = _exact(lo, hi, labels, support, low, high, "balanced-error", weights, exact)
        many = _exact_distributed(AllInOne(), lo, hi, labels, low, high, weights, exact, buckets)
        if one[:2] != many[:2]:
            mismatches.append(seed)
    assert mismatches == []


def test_a_run_one_float_wide_is_not_returned_outside_itself():
    lo = torch.tensor([0.5, np.nextafter(1.25, 0)], dtype=torch.float64)
    hi = torch.tensor([1.25, 1.5], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    support = torch.tensor([1, 1])
    weights, exact = balanced_weights(support)
    tau, (left, right), _ = _exact(lo, hi, labels, support, 0.0, 4.0, "balanced-error", weights, exact)
    assert left < tau < right

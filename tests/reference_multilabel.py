"""Naive float64 references for a multi-label head: every decision by the flip rule, the macro metrics, and every
candidate tau, for the tests of the multi-label search and metrics (as reference.py is for a softmax head)."""

import numpy as np
from hypothesis import strategies as st


def decisions(f, L, tau):
    """Predicted labels at tau, by the flip rule: a label with L < 0 is on for tau > f / L, one with L > 0 for
    tau < f / L, one with L = 0 when f > 0; a decision at its flip point is off."""
    out = np.zeros(f.shape, dtype=bool)
    for i in range(f.shape[0]):
        for k in range(f.shape[1]):
            if L[k] == 0:
                out[i, k] = f[i, k] > 0
            else:
                t = f[i, k] / L[k]
                out[i, k] = tau > t if L[k] < 0 else tau < t
    return out


def value(f, y, L, tau, metric):
    """Macro balanced error, or 1 - macro-F1, over labels with positive and negative samples."""
    predicted = decisions(f, L, tau)
    scores = []
    for k in range(f.shape[1]):
        p, n = int(y[:, k].sum()), int((~y[:, k]).sum())
        if p == 0 or n == 0:
            continue
        tp = int((predicted[:, k] & y[:, k]).sum())
        fp = int((predicted[:, k] & ~y[:, k]).sum())
        if metric == "balanced-error":
            scores.append(((p - tp) / p + fp / n) / 2)
        else:
            scores.append(1 - 2 * tp / (2 * tp + fp + (p - tp)))
    return sum(scores) / len(scores) if scores else float("nan")


def candidates(f, L, lo, hi):
    """Every flip point in [lo, hi], the ends, and a tau strictly inside each segment between them."""
    flips = {f[i, k] / L[k] for i in range(f.shape[0]) for k in range(f.shape[1]) if L[k] != 0}
    points = sorted({lo, hi} | {t for t in flips if lo <= t <= hi})
    middles = [a + (b - a) / 2 for a, b in zip(points, points[1:]) if a < a + (b - a) / 2 < b]
    return points, middles


@st.composite
def problems(draw):
    n = draw(st.integers(1, 10))
    c = draw(st.integers(2, 4))
    f = np.array(draw(st.lists(st.integers(-8, 8), min_size=n * c, max_size=n * c)), dtype=np.float64).reshape(n, c)
    f /= 4
    y = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))).reshape(n, c)
    train_n = draw(st.sampled_from([10, 20, 37]))
    positives = np.array(draw(st.lists(st.integers(1, train_n - 1), min_size=c, max_size=c)))
    if draw(st.booleans()):
        positives[0] = train_n // 2 if train_n % 2 == 0 else positives[0]  # pi = 0.5: never flips
    lo = draw(st.sampled_from([0.0, -1.0, 0.5]))
    hi = draw(st.sampled_from([4.0, 1.5, 2.0]))
    return f, y, positives, train_n, (lo, hi)

"""The batch scorer: one pass over logits, a block of rows at a time, on the chosen device.

Each pass returns mergeable statistics (per-class correct counts for a list of offset vectors, and the tau-interval on
which each sample is classified correctly), so the result does not depend on the block size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputDataError
from .load import LogitsSource, source_from_array

DEFAULT_BLOCK_BYTES = 64 << 20


def compute_dtype(source: LogitsSource):
    import torch

    return torch.float64 if source.dtype_name == "float64" else torch.float32


def block_rows(source: LogitsSource, block_rows: int | None = None) -> int:
    """Rows per block: as given, or enough to fill about DEFAULT_BLOCK_BYTES of float32 work per temporary."""
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError("block_rows must be at least 1")
        return int(block_rows)
    return max(1, DEFAULT_BLOCK_BYTES // (8 * source.num_classes))


def iter_blocks(source: LogitsSource, device, rows: int | None = None):
    """Yield (start, logits block on `device` in the compute dtype), checking every value is finite."""
    import torch

    dtype = compute_dtype(source)
    step = block_rows(source, rows)
    for start in range(0, source.num_samples, step):
        block = source.rows(start, min(start + step, source.num_samples)).to(device=device, dtype=dtype)
        finite = torch.isfinite(block)
        if not bool(finite.all()):
            row = start + int((~finite).any(1).nonzero()[0, 0])
            kind = "NaN" if bool(torch.isnan(block).any()) else "Inf"
            raise InputDataError(f"logits hold {kind} values (the first non-finite row is {row + 1})",
                                 source.name)
        yield start, block


@dataclass(frozen=True)
class PassStats:
    """What one pass gathered: `correct[k, c]`, how many samples of class c were predicted correctly with offset
    vector k added; and, when asked for, each sample's open tau-interval (lo, hi) of correct classification."""

    support: np.ndarray
    correct: np.ndarray
    lo: object = None
    hi: object = None
    labels: object = None


def _labels_tensor(labels, source: LogitsSource, device):
    import torch

    from .priors import check_labels

    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64).ravel()
    if labels.shape[0] != source.num_samples:
        raise InputDataError(f"logits have {source.num_samples} rows but there are {labels.shape[0]} labels",
                             source.name)
    check_labels(labels, source.num_classes, source.name)
    return torch.from_numpy(labels).to(device)


def score_pass(source, labels, offsets=(), log_priors=None, device="cpu", rows: int | None = None) -> PassStats:
    """One pass over `source` (a LogitsSource or an array).

    For each offset vector in `offsets`, counts per class how many samples argmax(logits + offset) gets right
    (torch.argmax takes the first of tied maxima). With `log_priors`, also returns each sample's correct
    tau-interval for scores logits - tau * log_priors.
    """
    import torch

    source = source_from_array(source) if not isinstance(source, LogitsSource) else source
    device = torch.device(device)
    num_classes = source.num_classes
    targets = _labels_tensor(labels, source, device)
    dtype = compute_dtype(source)
    shifts = [torch.as_tensor(np.asarray(o), dtype=dtype, device=device) for o in offsets]
    correct = torch.zeros(len(shifts), num_classes, dtype=torch.int64, device=device)
    support = torch.bincount(targets, minlength=num_classes)
    los, his = [], []
    lp = None if log_priors is None else torch.as_tensor(np.asarray(log_priors), dtype=dtype, device=device)
    equal_priors = lp is not None and torch.unique(lp).numel() < num_classes
    for start, block in iter_blocks(source, device, rows):
        y = targets[start:start + block.shape[0]]
        for k, shift in enumerate(shifts):
            hit = (block + shift).argmax(1) == y
            correct[k].index_add_(0, y, hit.to(torch.int64))
        if lp is not None:
            lo, hi = correct_intervals(block, y, lp, equal_priors)
            los.append(lo)
            his.append(hi)
    stats = PassStats(support=support.cpu().numpy(), correct=correct.cpu().numpy())
    if lp is not None:
        stats = PassStats(stats.support, stats.correct, torch.cat(los), torch.cat(his), targets)
    return stats


def correct_intervals(block, y, lp, equal_priors: bool = True):
    """For each row, the open interval (lo, hi) of tau on which argmax_j (f_j - tau * lp_j) equals the label.

    Row i is correct iff (f_y - f_j) > tau * (lp_y - lp_j) for every j != y: an upper bound on tau where
    lp_y > lp_j, a lower bound where lp_y < lp_j. Where lp_y == lp_j the condition does not depend on tau; if it
    fails (f_j wins, or ties and comes first, as argmax picks the first maximum) the row is never correct, and its
    interval is returned empty (lo = +inf, hi = -inf).
    """
    import torch

    gap = block.gather(1, y[:, None]) - block
    slope = lp[y][:, None] - lp[None, :]
    ratio = gap / slope
    lo = torch.where(slope < 0, ratio, -torch.inf).amax(1)
    hi = torch.where(slope > 0, ratio, torch.inf).amin(1)
    if equal_priors:
        columns = torch.arange(block.shape[1], device=block.device)
        blocked = (slope == 0) & ((gap < 0) | ((gap == 0) & (columns[None, :] < y[:, None])))
        never = blocked.any(1)
        lo = torch.where(never, torch.inf, lo)
        hi = torch.where(never, -torch.inf, hi)
    return lo.double(), hi.double()


def iter_adjusted(source: LogitsSource, offset, device="cpu", rows: int | None = None, keep_dtype: bool = True):
    """Yield (start, block + offset) as CPU tensors. The sum runs in float32 (float64 for float64 input); with
    keep_dtype it is rounded back to the source's dtype, as for writing adjusted logits. Predictions should use
    keep_dtype=False, so that rounding to float16/bfloat16 creates no new ties: they then match what fit-tau and
    report score."""
    import torch

    device = torch.device(device)
    shift = torch.as_tensor(np.asarray(offset), dtype=compute_dtype(source), device=device)
    out_dtype = getattr(torch, source.dtype_name) if keep_dtype else compute_dtype(source)
    for start, block in iter_blocks(source, device, rows):
        yield start, (block + shift).to(out_dtype).cpu()


def head_logits(features: LogitsSource, weight, bias=None, device="cpu", name: str | None = None) -> LogitsSource:
    """Logits computed from N x D `features` by a linear head: features @ weight.T + bias, a block at a time on
    `device` (float32, or float64 for a float64 head)."""
    import torch
    import torch.nn.functional as F

    if features.num_classes != weight.shape[1]:
        raise InputDataError(f"features have {features.num_classes} columns but the head takes {weight.shape[1]}",
                             features.name)
    device = torch.device(device)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    weight = weight.to(device=device, dtype=dtype)
    bias = None if bias is None else bias.to(device=device, dtype=dtype)

    def rows(start: int, stop: int):
        return F.linear(features.rows(start, stop).to(device=device, dtype=dtype), weight, bias)

    return LogitsSource(name or features.name, (features.num_samples, int(weight.shape[0])),
                        str(dtype).replace("torch.", ""), rows)

"""The batch scorer: one pass over logits, a block of rows at a time, on the chosen device.

Each pass returns mergeable statistics (per-class correct counts for a list of offset vectors, and the tau-interval on
which each sample is classified correctly), so the result does not depend on the block size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputDataError
from .load import LogitsSource, source_from_array

DEFAULT_MEMORY_BUDGET = 1 << 30
WORK_BYTES_PER_VALUE = 24  # a block's logits in the compute dtype plus the temporaries a pass makes of it
CPU_BLOCK_BYTES = 4 << 20  # blocks this size stay in the CPU's cache while several operations run over them
CUDA_BLOCK_BYTES = 256 << 20


def compute_dtype(source: LogitsSource):
    import torch

    return torch.float64 if source.dtype_name == "float64" else torch.float32


def block_rows(source: LogitsSource, rows: int | None = None, memory_budget: int | None = None,
               device=None) -> int:
    """Rows per block: as given, else what the device works best with (a few MiB on a CPU, to stay in cache;
    larger on a GPU), never more than `memory_budget` (bytes) allows."""
    if rows is not None:
        if rows < 1:
            raise ValueError("rows must be at least 1")
        return int(rows)
    value_bytes = 8 if source.dtype_name == "float64" else 4
    on_gpu = device is not None and getattr(device, "type", str(device)) != "cpu"
    target = (CUDA_BLOCK_BYTES if on_gpu else CPU_BLOCK_BYTES) // (value_bytes * source.num_classes)
    budget = (memory_budget or DEFAULT_MEMORY_BUDGET) // (WORK_BYTES_PER_VALUE * source.num_classes)
    return max(1, min(target, budget))


def iter_blocks(source: LogitsSource, device, rows: int | None = None, progress=None,
                memory_budget: int | None = None):
    """Yield (start, logits block on `device` in the compute dtype), checking every value is finite.
    `progress(rows_done)` is called after each block."""
    import torch

    dtype = compute_dtype(source)
    step = block_rows(source, rows, memory_budget, device)
    for start in range(0, source.num_samples, step):
        block = source.rows(start, min(start + step, source.num_samples)).to(device=device, dtype=dtype)
        finite = torch.isfinite(block)
        if not bool(finite.all()):
            row = start + int((~finite).any(1).nonzero()[0, 0])
            kind = "NaN" if bool(torch.isnan(block).any()) else "Inf"
            raise InputDataError(f"logits hold {kind} values (the first non-finite row is {row + 1})",
                                 source.name)
        yield start, block
        if progress is not None:
            progress(start + block.shape[0])


@dataclass(frozen=True)
class PassStats:
    """What one pass gathered: `correct[k, c]`, how many samples of class c were predicted correctly with offset
    vector k added."""

    support: np.ndarray
    correct: np.ndarray


def _labels_tensor(labels, source: LogitsSource, device):
    import torch

    from .priors import check_labels

    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64).ravel()
    if labels.shape[0] != source.num_samples:
        raise InputDataError(f"logits have {source.num_samples} rows but there are {labels.shape[0]} labels",
                             source.name)
    check_labels(labels, source.num_classes, source.name)
    return torch.from_numpy(labels).to(device)


def score_pass(source, labels, offsets=(), device="cpu", rows: int | None = None, progress=None,
               memory_budget: int | None = None) -> PassStats:
    """One pass over `source` (a LogitsSource or an array): for each offset vector in `offsets`, count per class
    how many samples argmax(logits + offset) gets right (torch.argmax takes the first of tied maxima)."""
    import torch

    source = source_from_array(source) if not isinstance(source, LogitsSource) else source
    device = torch.device(device)
    targets = _labels_tensor(labels, source, device)
    dtype = compute_dtype(source)
    shifts = [torch.as_tensor(np.asarray(o), dtype=dtype, device=device) for o in offsets]
    correct = torch.zeros(len(shifts), source.num_classes, dtype=torch.int64, device=device)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = targets[start:start + block.shape[0]]
        for k, shift in enumerate(shifts):
            hit = (block + shift).argmax(1) == y
            correct[k].index_add_(0, y, hit.to(torch.int64))
    support = torch.bincount(targets, minlength=source.num_classes)
    return PassStats(support=support.cpu().numpy(), correct=correct.cpu().numpy())


@dataclass(frozen=True)
class IntervalStats:
    """What the tau-search pass gathers, mergeable over blocks.

    `points[tau][c]`: samples of class c that argmax(logits - tau * log pi) gets right, for each tau asked for.
    `lo`, `hi`: each sample's open interval of correct classification, clipped to the search range (lo >= hi when it
    is empty). `labels`: the class of each sample (on the device).
    """

    support: np.ndarray
    points: dict
    lo: object
    hi: object
    labels: object


def interval_pass(source, labels, log_priors, tau_range: tuple[float, float], points=(), device="cpu",
                  rows: int | None = None, progress=None, memory_budget: int | None = None) -> IntervalStats:
    """One pass over the logits that gives every sample's correct tau-interval within `tau_range`, and the per-class
    correct counts at the taus in `points`, with argmax's tie rule.

    Scores are s(tau) = logits + float(-tau * log pi), computed as `apply` computes them. A class j can only take a
    sample from its label y somewhere in [LO, HI] if it ties or beats y at LO or at HI (the scores are linear in
    tau), so two comparisons over the block find those (sample, class) pairs, and the exact work runs on the pairs
    alone. A sample right at tau is one where no pair beats it at tau.
    """
    import torch

    source = source_from_array(source) if not isinstance(source, LogitsSource) else source
    device = torch.device(device)
    targets = _labels_tensor(labels, source, device)
    dtype = compute_dtype(source)
    lo_tau, hi_tau = tau_range
    inside = [t for t in points if lo_tau <= t <= hi_tau]
    outside = [t for t in points if t not in inside]
    log_priors = np.asarray(log_priors, dtype=np.float64)
    lp = torch.as_tensor(log_priors, dtype=dtype, device=device)
    shift = {t: torch.as_tensor(-t * log_priors, dtype=dtype, device=device) for t in {lo_tau, hi_tau, *points}}
    counts = {t: torch.zeros(source.num_classes, dtype=torch.int64, device=device) for t in points}
    columns = torch.arange(source.num_classes, device=device)
    los, his = [], []
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = targets[start:start + block.shape[0]]
        at_lo = block if lo_tau == 0 else block + shift[lo_tau]
        at_hi = block + shift[hi_tau]
        rivals = (at_lo >= at_lo.gather(1, y[:, None])) | (at_hi >= at_hi.gather(1, y[:, None]))
        row, col = rivals.nonzero(as_tuple=True)
        keep = col != y[row]
        row, col = row[keep], col[keep]
        label = y[row]
        f_y, f_j = block[row, label], block[row, col]
        gap, slope = f_y - f_j, lp[label] - lp[col]
        ratio = gap / slope
        n = block.shape[0]
        lo = torch.full((n,), -torch.inf, dtype=dtype, device=device)
        hi = torch.full((n,), torch.inf, dtype=dtype, device=device)
        lo.scatter_reduce_(0, row[slope < 0], ratio[slope < 0], reduce="amax")
        hi.scatter_reduce_(0, row[slope > 0], ratio[slope > 0], reduce="amin")
        flat = slope == 0  # equal priors: the order of the two scores never changes
        never = torch.zeros(n, dtype=torch.bool, device=device)
        never[row[flat & ((gap < 0) | ((gap == 0) & (col < label)))]] = True
        lo = torch.where(never, torch.inf, lo.clamp(min=lo_tau)).double()
        hi = torch.where(never, -torch.inf, hi.clamp(max=hi_tau)).double()
        los.append(lo)
        his.append(hi)
        for t in inside:
            s_y, s_j = f_y + shift[t][label], f_j + shift[t][col]
            beaten = (s_j > s_y) | ((s_j == s_y) & (col < label))
            lost = torch.zeros(n, dtype=torch.bool, device=device)
            lost[row[beaten]] = True
            counts[t].index_add_(0, y, (~lost).to(torch.int64))
        for t in outside:
            hit = (block + shift[t]).argmax(1) == y
            counts[t].index_add_(0, y, hit.to(torch.int64))
    support = torch.bincount(targets, minlength=source.num_classes)
    return IntervalStats(support=support.cpu().numpy(), points={t: c.cpu().numpy() for t, c in counts.items()},
                         lo=torch.cat(los), hi=torch.cat(his), labels=targets)


def iter_adjusted(source: LogitsSource, offset, device="cpu", rows: int | None = None, keep_dtype: bool = True,
                  progress=None, memory_budget: int | None = None):
    """Yield (start, block + offset) as CPU tensors. The sum runs in float32 (float64 for float64 input); with
    keep_dtype it is rounded back to the source's dtype, as for writing adjusted logits. Predictions should use
    keep_dtype=False, so that rounding to float16/bfloat16 creates no new ties: they then match what fit-tau and
    report score."""
    import torch

    device = torch.device(device)
    shift = torch.as_tensor(np.asarray(offset), dtype=compute_dtype(source), device=device)
    out_dtype = getattr(torch, source.dtype_name) if keep_dtype else compute_dtype(source)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        yield start, (block + shift).to(out_dtype).cpu()


def head_logits(features: LogitsSource, weight, bias=None, device="cpu", name: str | None = None) -> LogitsSource:
    """Logits computed from N x D `features` by a linear head: features @ weight.T + bias, a block at a time on
    `device` (float32, or float64 for a float64 head)."""
    import torch
    import torch.nn.functional as F

    weight = weight.reshape(weight.shape[0], -1)  # a 1x1 convolution head is a linear layer
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

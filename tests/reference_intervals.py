"""The interval pass as it stood before the no-table rewrite (lacal 0.1.0, commit 382533e), kept verbatim as a
reference: the new pass must give the same tau-intervals, value for value.

It builds three C x C per-label tables (or their rows per block when those do not fit) and checks classes that share
y's prior with a gather or a dense mask."""

import numpy as np
import torch

SMALL_GROUP = 64


class _Bounds:
    def __init__(self, lp, dtype, device, memory_budget: int, small_group: int = SMALL_GROUP):
        self.lp = lp
        classes = lp.shape[0]
        table_bytes = 3 * classes * classes * torch.finfo(dtype).bits // 8
        self.tables = None
        if table_bytes <= memory_budget // 2:
            self.tables = self._rows(torch.arange(classes, device=device))
        values, group, sizes = torch.unique(lp, return_inverse=True, return_counts=True)
        self.group = group
        self.peers = None
        self.shared = int(sizes.max()) > 1
        self.large_groups = int(sizes.max()) > max(small_group, classes // 4)
        if self.shared and not self.large_groups:
            order = torch.argsort(group, stable=True)
            starts = torch.cumsum(sizes, 0) - sizes
            width = int(sizes.max())
            slots = starts[group][:, None] + torch.arange(width, device=device)[None, :]
            valid = torch.arange(width, device=device)[None, :] < sizes[group][:, None]
            members = order[slots.clamp(max=classes - 1)]
            own = torch.arange(classes, device=device)[:, None]
            self.peers = torch.where(valid & (members != own), members, own)

    def _rows(self, y):
        diff = self.lp[None, :] - self.lp[y][:, None]
        lower = torch.full_like(diff, -torch.inf).masked_fill_(diff > 0, 0.0)
        upper = torch.full_like(diff, torch.inf).masked_fill_(diff < 0, 0.0)
        same = diff == 0
        weight = diff.reciprocal_().masked_fill_(same, 0.0)
        return weight, lower, upper

    def rows(self, y):
        if self.tables is None:
            return self._rows(y)
        return tuple(table.index_select(0, y) for table in self.tables)

    def never(self, block, y):
        if not self.shared:
            return torch.zeros(block.shape[0], dtype=torch.bool, device=block.device)
        f_y = block.gather(1, y[:, None])
        if not self.large_groups:
            peers = self.peers.index_select(0, y)
            f_peer = block.gather(1, peers)
            return ((f_peer > f_y) | ((f_peer == f_y) & (peers < y[:, None]))).any(1)
        columns = torch.arange(block.shape[1], device=block.device)[None, :]
        same = (self.group[None, :] == self.group[y][:, None]) & (columns != y[:, None])
        return (same & ((block > f_y) | ((block == f_y) & (columns < y[:, None])))).any(1)


def reference_intervals(logits, labels, log_priors, rows: int = 64, memory_budget: int = 2 << 30,
                        small_group: int = SMALL_GROUP, device="cpu"):
    """(lo, hi) as float64 tensors, computed the old way. `logits` in float32 (float64 stays float64), as the
    scorer computes."""
    logits = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(device=device, dtype=dtype)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device)
    lp = torch.as_tensor(np.asarray(log_priors, dtype=np.float64), dtype=dtype, device=device)
    bounds = _Bounds(lp, dtype, device, memory_budget, small_group)
    lo_all = torch.empty(logits.shape[0], dtype=torch.float64, device=device)
    hi_all = torch.empty(logits.shape[0], dtype=torch.float64, device=device)
    for start in range(0, logits.shape[0], rows):
        block = logits[start:start + rows]
        y = targets[start:start + block.shape[0]]
        weight, lower, upper = bounds.rows(y)
        crossing = torch.sub(block, block.gather(1, y[:, None])).mul_(weight)
        lo = crossing.add(lower).amax(1)
        hi = crossing.add_(upper).amin(1)
        never = bounds.never(block, y)
        lo_all[start:start + block.shape[0]] = lo.masked_fill_(never, torch.inf)
        hi_all[start:start + block.shape[0]] = hi.masked_fill_(never, -torch.inf)
    return lo_all, hi_all

"""An optional fused interval kernel: `torch.compile` of the arithmetic of `scoring._block_intervals`, so that each
block is read once instead of in nine eager passes.

Off unless the environment sets LACAL_COMPILE=1: it needs a C++ compiler at run time on a CPU (Triton on CUDA), and
compiling takes about half a minute the first time (torch caches the result on disk), which is more than it saves
on one validation set in a fresh process. When compiling or running it fails, the eager pass runs instead; both give
the same intervals (tests/test_intervals.py). Rows with exact ties are settled by the eager code either way.
"""

from __future__ import annotations

import os
import threading

ENVIRONMENT = "LACAL_COMPILE"
_lock = threading.Lock()
_kernels: dict = {}  # (dtype, device type) -> compiled kernel, or None after a failure


def _bounds(block, y, lp):
    """(max of min(crossing, side), min of max(crossing, side)) per row: `_block_intervals` before its fix-ups."""
    import torch

    weight = 1.0 / (lp[None, :] - lp[y][:, None])
    columns = torch.arange(block.shape[1], device=block.device)
    difference = torch.where(columns[None, :] == y[:, None], -1.0, block - block.gather(1, y[:, None]))
    crossing = difference * weight
    side = weight * torch.inf
    return torch.minimum(crossing, side).amax(1), torch.maximum(crossing, side).amin(1)


def fused_kernel(dtype, device):
    """The compiled kernel for blocks of `dtype` on `device`, compiled (and tried once) on first use; None when
    LACAL_COMPILE is not 1 or it could not be compiled here."""
    import torch

    if os.environ.get(ENVIRONMENT) != "1":
        return None
    key = (dtype, torch.device(device).type)
    with _lock:
        if key not in _kernels:
            _kernels[key] = None
            try:
                kernel = torch.compile(_bounds, dynamic=True)
                block = torch.arange(12, dtype=dtype, device=device).reshape(3, 4)  # a first call compiles
                kernel(block, torch.tensor([0, 3, 1], device=device), torch.linspace(-3, -1, 4, dtype=dtype,
                                                                                    device=device))
                _kernels[key] = kernel
            except Exception:  # noqa: BLE001  (no compiler, no Triton, an unsupported platform: run eager)
                pass
        return _kernels[key]

"""Running a pass's blocks on several threads, each doing its tensor work on one thread.

Eager torch splits every operation over its intra-op threads, and between operations those threads wait for each
other. On a block of a few MiB an operation takes well under a millisecond, so on a machine where another process
holds a core the waiting dominates (OpenMP threads spin, and a descheduled one stalls the rest). Giving each worker
whole blocks, with torch's own threading turned off for the duration of the pass, leaves nothing to wait for: a
worker that is descheduled delays only its own block.

Code run by these workers (and just before them) makes no numpy matrix product (`@`, `dot`): numpy hands those to
OpenBLAS, whose own threads then spin for about a tenth of a second, taking the cores the workers need (in the
bootstrap that made two workers barely faster than one). Use torch, or masked sums. Nor does it spend long in a numpy
function that keeps the interpreter lock, such as `np.bincount`: the workers then take turns (torch's `bincount`
and `scatter_add_` release it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque

_outer = threading.local()  # torch's thread count from before the outermost single_threaded_ops, on this thread


def available_threads() -> int:
    """torch's thread count (which honours OMP_NUM_THREADS and torch.set_num_threads), as it was before
    `single_threaded_ops` turned it down."""
    import torch

    return getattr(_outer, "threads", None) or torch.get_num_threads()


def block_workers(device, blocks: int) -> int:
    """How many threads a pass over `blocks` blocks on `device` uses: `available_threads()` capped by the CPUs and
    the blocks; one on a GPU."""
    import torch

    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(available_threads(), os.cpu_count() or 1, blocks))


@contextlib.contextmanager
def single_threaded_ops():
    """torch's intra-op threads set to one for the duration (restored afterwards). Small operations then run on
    the calling thread, with no other thread to wait for; passes over blocks still use `block_workers` threads."""
    import torch

    outermost = getattr(_outer, "threads", None) is None
    before = torch.get_num_threads()
    if outermost:
        _outer.threads = before
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
        if outermost:
            _outer.threads = None


def run_blocks(blocks, work, workers: int, progress=None) -> None:
    """Call `work(start, block)` for every (start, block) of the iterable `blocks`, on `workers` threads, and
    `progress(rows done)` on this thread as blocks finish. Blocks are read on this thread, in order (an error in
    one stops the pass there); at most two per worker are in flight. `work` must only write its own rows."""
    done = 0
    if workers <= 1:
        for start, block in blocks:
            work(start, block)
            done += block.shape[0]
            if progress is not None:
                progress(done)
        return
    from concurrent.futures import ThreadPoolExecutor

    with single_threaded_ops(), ThreadPoolExecutor(workers, thread_name_prefix="lacal-pass") as pool:
        pending = deque()

        def finish_oldest():
            nonlocal done
            future, rows = pending.popleft()
            future.result()
            done += rows
            if progress is not None:
                progress(done)

        try:
            for start, block in blocks:
                pending.append((pool.submit(work, start, block), block.shape[0]))
                while len(pending) >= 2 * workers:
                    finish_oldest()
            while pending:
                finish_oldest()
        finally:
            for future, _ in pending:
                future.cancel()

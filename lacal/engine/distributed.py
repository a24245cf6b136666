"""Running under torch.distributed (torchrun): which shards each process takes, and how statistics are combined.

lacal detects a torchrun launch from its environment (WORLD_SIZE > 1, RANK, LOCAL_RANK, MASTER_ADDR/PORT or a
rendezvous) and joins the process group: NCCL when each process has a CUDA device, gloo otherwise. Each rank reads a
contiguous run of the input shards, computes the same mergeable statistics as one process does, and the statistics
are combined with collectives; only rank 0 prints and writes shared files. Before every exchange the ranks agree on
whether any of them failed, so a rank that hits a bad shard ends the whole job with its own message instead of
leaving the others waiting.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np

from ..errors import LacalError

TIMEOUT = datetime.timedelta(minutes=30)


class RankFailed(Exception):
    """Another rank failed; its error (message and exit code) ends this rank too."""

    def __init__(self, message: str, exit_code: int, rank: int):
        super().__init__(message)
        self.message, self.exit_code, self.rank = message, exit_code, rank


@dataclass
class Context:
    """The process group lacal runs in; a single process (rank 0 of 1) when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: object = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------ collectives

    def sum(self, values):
        """Element-wise sum over ranks of a numpy array or tensor (returned as the same kind)."""
        import torch
        import torch.distributed as dist

        if not self.active:
            return values
        is_numpy = isinstance(values, np.ndarray)
        tensor = torch.as_tensor(values).clone().to(self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy() if is_numpy else tensor.to(values.device)

    def max(self, values):
        """Element-wise maximum over ranks (a tensor)."""
        return self._reduce(values, "MAX")

    def min(self, values):
        """Element-wise minimum over ranks (a tensor)."""
        return self._reduce(values, "MIN")

    def _reduce(self, values, op: str):
        import torch.distributed as dist

        if not self.active:
            return values
        tensor = values.clone().to(self._comm_device())
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
        return tensor.to(values.device)

    def gather(self, value) -> list:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        import torch.distributed as dist

        if not self.active:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def agree(self, error: BaseException | None) -> None:
        """Exchange failures: if any rank failed, raise the first failure (by rank) on every rank."""
        if not self.active:
            if error is not None:
                raise error
            return
        report = None
        if error is not None:
            code = error.exit_code if isinstance(error, LacalError) else 1
            message = error.message if isinstance(error, LacalError) else f"{type(error).__name__}: {error}"
            report = (message, code)
        reports = self.gather(report)
        for rank, report in enumerate(reports):
            if report is not None:
                if rank == self.rank and error is not None:
                    raise error
                raise RankFailed(report[0], report[1], rank)

    def _comm_device(self):
        import torch

        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device_name: str | None = "auto") -> Context:
    """The Context of this process: joins the torchrun process group when launched by torchrun. The device is
    cuda:LOCAL_RANK when CUDA is there (and `device_name` allows it), else the CPU."""
    import torch

    from .device import resolve_device

    if not launched_by_torchrun():
        return Context(device=resolve_device(device_name))
    import torch.distributed as dist

    from ..errors import OptionError

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = (device_name or "auto").lower()
    if name.startswith("cuda:"):
        raise OptionError("under torchrun each rank uses cuda:LOCAL_RANK; pass `device` cuda or auto", "device")
    if name == "cuda" and not torch.cuda.is_available():
        resolve_device(name)  # says that there is no CUDA device
    use_cuda = torch.cuda.is_available() and name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = resolve_device("cpu" if name in ("auto", "cuda") else name)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, backend=backend,
                   device=device)


def my_share(count: int, ctx: Context) -> range:
    """The contiguous run of `count` shards that this rank reads (rank order is shard order)."""
    base, extra = divmod(count, ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (1 if ctx.rank < extra else 0))

"""Passes over logits in blocks on a device: scoring, per-sample tau intervals, threads, and the torchrun context
whose reductions make a multi-process run give the same numbers as one process."""

from .device import resolve_device
from .distributed import Context
from .passes import iter_blocks, score_model, score_pass

__all__ = ["Context", "iter_blocks", "resolve_device", "score_model", "score_pass"]

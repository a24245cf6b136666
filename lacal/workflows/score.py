"""`lacal.score`: run a TorchScript, torch.export or ONNX model over inputs in batches and write its logits (what
`lacal score` does)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import OptionError
from .inputs import Notes, make_context, progress_bar
from .shards import SHARD_FORMATS


@dataclass(frozen=True, eq=False)
class ScoreResult:
    """What `score` wrote: `out` (a file, or a folder of per-shard logits with index.json), `rows` and `num_classes`
    (None for per-shard output), and warnings."""

    out: Path
    rows: int
    num_classes: Optional[int]
    per_shard: bool
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"out": str(self.out), "rows": self.rows, "num_classes": self.num_classes, "per_shard": self.per_shard,
                "warnings": list(self.warnings)}


def score(model, inputs, out, *, batch_size: int = 256, amp: Optional[str] = None, key: Optional[str] = None,
          device: str = "auto", format: str = "npy", force: bool = False, progress: Optional[Callable] = None,
          context=None) -> ScoreResult:
    """Run a model over inputs in batches and write its logits, for `fit`, `apply` and `report`.

    Args:
        model: a TorchScript file, a torch.export program (.pt2) or an ONNX model (run by onnxruntime).
        inputs: model inputs, samples first: a file, or a folder or glob of shards.
        out: a logits file (.npy is written as it comes), or a folder (a path without a suffix): one logits file per
            input shard, in `format`, and index.json (needed under torchrun).
        batch_size: samples per forward pass.
        amp: None, "bf16" or "fp16": run PyTorch models under autocast.
        key, device, force, progress, context: as for `fit`.

    Returns:
        A `ScoreResult`.

    Example:
        >>> lacal.score("model.onnx", "images.npy", "logits.npy")
    """
    from ..data.readers import read_logits
    from ..models.run import load_model
    from ..engine.passes import score_model
    from ..data.writers import LOGITS_SUFFIXES, check_output, write_logits
    from .shards import write_shards

    notes = Notes()
    context = make_context(device, context)
    compute = context.device
    model, inputs, out = Path(model), Path(inputs), Path(out)
    per_shard = out.suffix == ""
    if context.active and not per_shard:
        raise OptionError("under torchrun, score writes one output per input shard: give `out` FOLDER", "out")
    if per_shard and format not in SHARD_FORMATS[:-1]:
        raise OptionError(f"logits are written as {', '.join(SHARD_FORMATS[:-1])}; got `format` {format}", "format")
    if not per_shard and out.suffix.lower() not in LOGITS_SUFFIXES:
        raise OptionError(f"logits are written as {', '.join(LOGITS_SUFFIXES)}; got {out.name}", "out")
    if not per_shard:
        check_output(out, force, [model, inputs])
    if model.suffix.lower() == ".onnx":
        from ..models.onnx_patch import OnnxRunner

        if amp is not None:
            raise OptionError("`amp` is for PyTorch models; an ONNX model runs in the precision it was saved in",
                              "amp")
        network, compute = OnnxRunner(model, compute), "cpu"  # onnxruntime takes numpy batches on the CPU
        if network.probabilities:
            notes.warn(f"{model}: output {network.output!r} comes from a Softmax: these are probabilities, while "
                       "fit-tau, apply and report expect logits (patch the model with `lacal apply` instead; the "
                       "offsets go before its Softmax)")
    else:
        network = load_model(model)

    def write_one(shard, target, step=None, source=None):
        source = source or read_logits(shard, key, what="inputs")
        blocks = score_model(network, source, compute, batch_size, amp, step)
        first = next(blocks)  # the first batch tells the number of classes
        shape = (source.num_samples, first[1].shape[1])
        write_logits(target, itertools.chain([first], blocks), shape, "float32", force, [model, inputs])
        return shape

    if per_shard:
        rows = write_shards(context, [inputs], out, f".{format}", force, [model, inputs],
                            lambda shard, target: write_one(shard, target)[0])
        return ScoreResult(out, rows, None, True, tuple(notes.warnings))
    source = read_logits(inputs, key, what="inputs")
    with progress_bar(progress, source.num_samples, "score") as step:
        shape = write_one(inputs, out, step, source)
    return ScoreResult(out, shape[0], shape[1], False, tuple(notes.warnings))

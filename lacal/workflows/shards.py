"""One output per input shard in a folder, with the `index.json` that reads it back as one array (`apply` and `score`
with an output folder; under torchrun each rank writes its own shards)."""

from __future__ import annotations

import json
from pathlib import Path

SHARD_FORMATS = ("npy", "npz", "safetensors", "pt", "csv")


def write_shards(context, paths, out: Path, suffix: str, force: bool, inputs, write_one) -> int:
    """One output per input shard in the folder `out` (named after the shards), and `index.json` listing them in
    order (written by rank 0 once every rank is done), so the folder reads back as one array. `write_one(shard,
    target)` writes one and returns its rows. The folder is written as a hidden sibling and swapped in at the end,
    so a failure leaves `out` as it was. Returns the rows written by all ranks."""
    from ..engine.distributed import my_share
    from ..data.readers import SHARD_INDEX, SHARD_INDEX_FORMAT, files_lacal_wrote, shard_paths
    from ..data.writers import check_output_folder, discard_folder, remove_stale, replace_folder, stage_folder, write_text

    out = Path(out)
    files = [shard for path in paths for shard in shard_paths(path)]
    stems = [f.stem for f in files]
    names = [f"{stem}{suffix}" for stem in stems] if len(set(stems)) == len(stems) else \
        [f"shard-{k:05d}{suffix}" for k in range(len(files))]
    failure = staging = None
    if context.leader:
        try:
            if out.parent.is_dir():
                remove_stale(out)  # first, so that an old folder a killed run moved aside is back
            check_output_folder(out, force, files_lacal_wrote(out), inputs)
            staging = stage_folder(out)
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
    try:
        context.agree(failure)
        staging = Path(context.gather(str(staging) if staging else None)[0])
        share = my_share(len(files), context) if context.active else range(len(files))
        written, failure = [], None
        try:
            for k in share:
                written.append((k, names[k], write_one(files[k], staging / names[k]), str(files[k])))
        except Exception as exc:  # noqa: BLE001
            failure = exc
        context.agree(failure)
        everything = sorted(entry for part in context.gather(written) for entry in part)
        total = sum(rows for _, _, rows, _ in everything)
        if context.leader:
            index = {"format": SHARD_INDEX_FORMAT, "version": 1, "rows": total,
                     "shards": [{"file": name, "rows": rows, "source": source}
                                for _, name, rows, source in everything]}
            write_text(staging / SHARD_INDEX, json.dumps(index, indent=2) + "\n")
            replace_folder(staging, out, force)
    except BaseException:
        if context.leader:
            discard_folder(staging)
        raise
    return total

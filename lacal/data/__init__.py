"""Reading and writing files: logits, labels and class names (`.npy`, `.npz`, `.pt`, `.safetensors`, CSV, text),
shard folders and their `index.json`, and the atomic writers every output goes through."""

from .readers import LogitsSource, read_classes, read_labels, read_logits, sha256_file, source_from_array
from .writers import write_logits, write_predictions, write_text

__all__ = ["LogitsSource", "read_classes", "read_labels", "read_logits", "sha256_file", "source_from_array",
           "write_logits", "write_predictions", "write_text"]

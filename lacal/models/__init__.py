"""Models and checkpoints: reading them and finding the classifier head, writing the patched bias into safetensors,
PyTorch, Hugging Face, ONNX and TorchScript files or into a module in memory, and running a model to get logits."""

from .checkpoints import Checkpoint, Head, find_head, find_heads, open_checkpoint
from .module_patch import PatchResult, patch_module
from .run import load_model

__all__ = ["Checkpoint", "Head", "PatchResult", "find_head", "find_heads", "load_model", "open_checkpoint",
           "patch_module"]

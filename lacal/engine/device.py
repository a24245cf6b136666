"""Choosing the torch device the heavy work runs on."""

from __future__ import annotations

from ..errors import OptionError


def resolve_device(name: str | None = "auto"):
    """Return a torch.device for `name`: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps", "device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"{name} was asked for but torch sees no CUDA device; use `device` cpu or auto",
                              "device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"{name} does not exist; torch sees {torch.cuda.device_count()} CUDA device(s)",
                              "device")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError("mps was asked for but is not available on this machine", "device")
    elif device.type != "cpu":
        raise OptionError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps", "device")
    return device

"""The `lacal` command: options, one library call per command, and the rendering of its result."""

from .app import app, main

__all__ = ["app", "main"]

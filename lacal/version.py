"""The version of lacal, recorded in every patch it writes (kept in step with pyproject.toml)."""

__version__ = "0.1.0"

"""The version of lacal, recorded in every patch it writes. The one place it is set: pyproject.toml reads it from
here (`[tool.setuptools.dynamic]`), and `lacal --version` prints it."""

__version__ = "0.2.0"

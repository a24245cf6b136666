"""docs/reference/promises.md names the test that checks each promise: every test it names exists."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_the_promises_name_exists():
    text = (REPO / "docs" / "reference" / "promises.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text))
    assert len(named) > 30
    for path, name in sorted(named):
        tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
        assert name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, f"{path}::{name}"

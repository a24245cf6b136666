"""The package's layers: every module imports only from its own layer or the layers below (errors -> data -> core ->
engine -> methods -> models -> workflows -> integrations -> cli, as in DESIGN.md, one folder each), no import cycle exists (imports inside functions
included), and no module uses another module's `_private` name. Read from the source with `ast`, so that an import
hidden in a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lacal"

LAYERS = ("errors", "data", "core", "engine", "methods", "models", "workflows", "integrations", "cli")

# Each layer is a folder of lacal/; beside the folders sit only the package's own `__init__`, `__main__` and `version`.
LAYER_OF = {**{layer: layer for layer in LAYERS}, "version": "errors", "__main__": "cli", "": "cli"}

# Edges that may go the wrong way, and private names that may be shared, each with the reason. Keep these empty.
KNOWN = set()
KNOWN_PRIVATE = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported name or None) for every import of a lacal module in `name`, at any depth."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        package = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "lacal" or node.module.startswith("lacal.")):
                target = node.module[len("lacal."):] if node.module != "lacal" else ""
            else:
                continue
            for alias in node.names:
                joined = f"{target}.{alias.name}" if target else alias.name
                if joined in MODULES:
                    yield joined, None
                else:
                    yield target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lacal" or alias.name.startswith("lacal."):
                    yield alias.name[len("lacal."):] if alias.name != "lacal" else "", None


def _layer(module: str) -> str:
    return LAYER_OF[module.split(".")[0]] if module else LAYER_OF[""]


def _edges() -> dict[str, set[str]]:
    return {name: {target for target, _ in _imports(name, path) if target != name}
            for name, path in MODULES.items()}


def test_every_module_sits_in_a_layer_folder():
    loose = sorted(name for name in MODULES if "." not in name and name not in ("", "__main__", "version")
                   and name not in LAYERS)
    assert not loose, f"move these modules into a layer folder: {loose}"
    unknown = sorted({name.split(".")[0] for name in MODULES} - set(LAYER_OF))
    assert not unknown, f"these folders are no layer of LAYERS: {unknown}"


def test_modules_import_only_from_their_layer_or_below():
    wrong = []
    for name, targets in _edges().items():
        for target in targets:
            if target.startswith(name + ".") or (name, target) in KNOWN:
                continue  # a package hands on its own modules' names
            if LAYERS.index(_layer(target)) > LAYERS.index(_layer(name)):
                wrong.append(f"{name or 'lacal'} ({_layer(name)}) imports {target} ({_layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    edges = {name: {t for t in targets if (name, t) not in KNOWN and not t.startswith(name + ".") and name != ""}
             for name, targets in _edges().items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    used = [f"{name or 'lacal'} imports {target}.{imported}" for name, path in MODULES.items()
            for target, imported in _imports(name, path)
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name
            and (name, target, imported) not in KNOWN_PRIVATE]
    assert not used, "\n".join(sorted(used))


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from .scoring import iter_blocks\n", ("scoring", "iter_blocks")),
    ("from ..metrics import _hidden\n", ("metrics", "_hidden")),
])
def test_the_parser_sees_function_level_and_private_imports(tmp_path, source, expected):
    path = tmp_path / "module.py"
    path.write_text(source)
    name = "workflows.module" if source.startswith("from ..") else "metrics"
    assert expected in list(_imports(name, path))

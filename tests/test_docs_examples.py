"""Every example in the docs and the README runs, and prints what the page shows.

Each page runs in order in a fresh folder holding the demo's five input files (and `examples/`, linked in):

- ```console blocks: commands after `$ `, their expected output (stdout and stderr as a terminal shows them, at 120
  columns) on the lines below. A line `...` stands for any number of lines, `...` inside a line for any text. A
  command whose shown output holds a `lacal: error:` line must fail, every other one must succeed. `lacal` commands
  run in this process (through the Typer app), everything else in bash; `cd DIR` moves the rest of the page.
- ```python blocks: run in one namespace per page; the `#> ` lines are the expected printed output.
- ```text (and json, toml, yaml) blocks are not run. A bare ``` fence is an error: every block says what it is.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
RUN = {"console", "python", "bash"}
STILL = {"text", "json", "toml", "yaml"}
WIDTH = "120"
SHELL_SYNTAX = re.compile(r"[|<>;&`$(){}*?]")
ERROR_LINE = "lacal: error:"


@dataclass
class Block:
    kind: str
    lines: list[str]
    line: int   # where the block starts in its page (1-based), for messages


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, in order."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^( *)(`{3,})(.*)$", lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, kind = len(fence.group(1)), fence.group(2), fence.group(3).strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        found.append(Block(kind.split()[0] if kind else "", [line[indent:] for line in lines[i + 1:end]], i + 1))
        i = end + 1
    return found


def console_steps(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of a console block."""
    steps = []
    for line in block.lines:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"line {block.line}: a console block starts with a `$ ` command, not {line!r}")
    return steps


def _line_matches(expected: str, actual: str) -> bool:
    if "..." not in expected:
        return expected == actual
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def _trimmed(lines) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def output_matches(expected: list[str], actual: str) -> bool:
    """Whether `actual` is what `expected` shows: lines compared after stripping trailing spaces; `...` as a line is
    any number of lines (none included), `...` inside a line any text."""
    want, have = _trimmed(expected), _trimmed(actual.splitlines())

    @functools.lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(have)
        if want[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(have) + 1))
        return j < len(have) and _line_matches(want[i], have[j]) and match(i + 1, j + 1)

    return match(0, 0)


@dataclass
class Session:
    """The state of one page while it runs: its folder, the Python namespace, the last exit status."""
    cwd: Path
    shims: Path
    cache: Path
    namespace: dict = field(default_factory=dict)
    status: int = 0

    def env(self) -> dict:
        return {**os.environ, "PATH": f"{self.shims}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                "COLUMNS": WIDTH}

    def command(self, command: str) -> tuple[int, str]:
        words = shlex.split(command)
        if words and words[0] == "cd" and len(words) == 2:
            self.cwd = (self.cwd / words[1]).resolve()
            return 0, ""
        if words and words[0] == "lacal" and not SHELL_SYNTAX.search(re.sub(r"\"[^\"]*\"|'[^']*'", "", command)):
            return self._lacal(words[1:])
        cached = self._example(words)
        if cached is not None:
            return cached
        done = subprocess.run(["bash", "-c", f"(exit {self.status}); {command}"], cwd=self.cwd, env=self.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        return done.returncode, done.stdout

    def _lacal(self, arguments: list[str]) -> tuple[int, str]:
        from typer.testing import CliRunner

        from lacal.cli import app

        previous = os.getcwd()
        os.chdir(self.cwd)
        try:
            result = CliRunner().invoke(app, arguments, env={"COLUMNS": WIDTH}, catch_exceptions=True)
        finally:
            os.chdir(previous)
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            output += "".join(traceback.format_exception(result.exception))
        return result.exit_code, output

    def _example(self, words: list[str]):
        """`python examples/NAME.py --dir DIR` into a DIR not yet there: run once per test session, then copied."""
        if not (len(words) == 4 and words[0] == "python" and words[1].startswith("examples/") and words[2] == "--dir"
                and not (self.cwd / words[3]).exists()):
            return None
        key = self.cache / re.sub(r"\W", "_", " ".join(words))
        if not key.exists():
            key.mkdir(parents=True)
            (key / "examples").symlink_to(ROOT / "examples")
            done = subprocess.run(words, cwd=key, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=600)
            (key / "output").write_text(done.stdout)
            (key / "status").write_text(str(done.returncode))
        if (key / words[3]).exists():
            shutil.copytree(key / words[3], self.cwd / words[3])
        return int((key / "status").read_text()), (key / "output").read_text()

    def python(self, source: str) -> str:
        previous = os.getcwd()
        os.chdir(self.cwd)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                exec(compile(source, "<docs>", "exec"), self.namespace)
        finally:
            os.chdir(previous)
        return captured.getvalue()


def run_page(page: Path, session: Session) -> None:
    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    for block in blocks(page.read_text()):
        where = f"{name}:{block.line}"
        if block.kind in ("console", "bash"):
            steps = console_steps(block) if block.kind == "console" else [("\n".join(block.lines), [])]
            for command, expected in steps:
                status, output = session.command(command)
                session.status = status
                failing = any(line.startswith(ERROR_LINE) for line in expected)
                assert (status != 0) == failing, (f"{where}: `{command}` exited with {status}, expected "
                                                  f"{'a failure' if failing else 0}:\n{output}")
                if expected and "\n".join(expected).strip():
                    assert output_matches(expected, output), (
                        f"{where}: `{command}` printed\n{output}\nbut the page shows\n" + "\n".join(expected))
        elif block.kind == "python":
            source = "\n".join(block.lines)
            try:
                output = session.python(source)
            except Exception as error:
                raise AssertionError(f"{where}: the Python block raised {error!r}") from error
            expected = [line[3:] if line.startswith("#> ") else "" for line in block.lines
                        if line.startswith("#>")]
            if expected:
                assert output_matches(expected, output), (
                    f"{where}: the Python block printed\n{output}\nbut the page shows\n" + "\n".join(expected))


# ------------------------------------------------------------------------------------------------ fast checks


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_says_what_it_is(page):
    for block in blocks(page.read_text()):
        assert block.kind in RUN | STILL, (f"{page.relative_to(ROOT)}:{block.line}: fence the block as console, "
                                           f"python or text, not {block.kind or 'bare'!r}")
        if block.kind == "console":
            assert console_steps(block), f"{page.relative_to(ROOT)}:{block.line}: a console block without `$ `"


def test_output_matching_is_strict_where_no_ellipsis():
    assert output_matches(["tau = 1.4951"], "tau = 1.4951  \n\n")
    assert not output_matches(["tau = 1.4951"], "tau = 1.4952")
    assert not output_matches(["a", "b"], "a\nb\nc")          # an extra line is a difference
    assert not output_matches(["a", "b", "c"], "a\nc")
    assert output_matches(["a", "...", "c"], "a\nx\ny\nc")    # `...` lines: any number of lines
    assert output_matches(["a", "...", "c"], "a\nc")
    assert not output_matches(["a", "...", "c"], "a\nx\nd")
    assert output_matches(['{"tau": 1.49...}'], '{"tau": 1.4951153993606567}')
    assert not output_matches(['{"tau": 1.49...}'], '{"tau": 1.5}')
    assert not output_matches(["x (1.49...)"], "x (1.49) trailing")


def test_console_steps_and_blocks_are_parsed_as_a_reader_sees_them():
    page = "text\n\n```console\n$ lacal demo\nline one\n\n$ cd demo\n```\n\n  ```python\n  print(1)\n  #> 1\n  ```\n"
    found = blocks(page)
    assert [block.kind for block in found] == ["console", "python"]
    assert console_steps(found[0]) == [("lacal demo", ["line one", ""]), ("cd demo", [])]
    assert found[1].lines == ["print(1)", "#> 1"]


def test_a_page_that_drifted_fails(tmp_path):
    page = tmp_path / "page.md"
    session = Session(tmp_path, tmp_path, tmp_path)
    page.write_text("```python\nprint(2 + 2)\n#> 5\n```\n")
    with pytest.raises(AssertionError, match="printed"):
        run_page(page, session)
    page.write_text("```console\n$ bash -c 'exit 3'\n```\n")
    with pytest.raises(AssertionError, match="exited with 3"):
        run_page(page, session)
    page.write_text("```console\n$ echo lacal: error: shown\nlacal: error: shown\n```\n")
    with pytest.raises(AssertionError, match="expected a failure"):
        run_page(page, session)


# ------------------------------------------------------------------------------------------- the pages themselves


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    """The five input files `lacal demo` writes (train labels, validation and test logits and labels)."""
    from lacal.cli.demo import write_problem

    folder = tmp_path_factory.mktemp("demo-inputs")
    write_problem(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    """`lacal` and `python` on PATH for the shell commands: this interpreter, this checkout."""
    folder = tmp_path_factory.mktemp("bin")
    for name, target in (("lacal", f'exec "{sys.executable}" -m lacal "$@"'),
                         ("python", f'exec "{sys.executable}" "$@"')):
        (folder / name).write_text(f"#!/bin/sh\n{target}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def example_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("example-runs")


RUNNABLE = [page for page in PAGES if any(block.kind in RUN for block in blocks(page.read_text()))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run_and_print_what_the_page_shows(page, tmp_path, demo_inputs, shims, example_cache,
                                                         monkeypatch):
    monkeypatch.setenv("COLUMNS", WIDTH)
    work = tmp_path / "work"
    shutil.copytree(demo_inputs, work)
    (work / "examples").symlink_to(ROOT / "examples")
    run_page(page, Session(work, shims, example_cache))

"""MkDocs hook: pages generated from the code itself, so that they cannot drift from it.

A page that holds one of these markers gets it replaced at build time:

- `<!-- lacal:cli-reference -->`: every command of the Typer app (`lacal.cli.app`), with its help text, usage,
  arguments and options (names, metavar, default, help), walked through click's own command objects;
- `<!-- lacal:exit-codes -->`: the exit-code table, from `lacal.errors.EXIT_CODES` and the exception classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLI_MARKER = "<!-- lacal:cli-reference -->"
EXIT_MARKER = "<!-- lacal:exit-codes -->"


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if EXIT_MARKER in markdown:
        markdown = markdown.replace(EXIT_MARKER, exit_codes())
    return markdown


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _parameter_row(parameter, context) -> str:
    # The same pair `lacal COMMAND --help` prints: the names with the metavar, and the help with its default.
    names, help_text = parameter.get_help_record(context)
    return f"| `{_cell(names)}` | {_cell(help_text)} |"


def command_section(name: str, command, parent) -> str:
    context = command.context_class(command, info_name=f"lacal {name}", parent=parent)
    lines = [f"## `lacal {name}`", "", _help_text(command.help or ""), ""]
    usage = " ".join(command.collect_usage_pieces(context))
    lines += ["```text", f"lacal {name} {usage}", "```", ""]
    rows = [_parameter_row(p, context) for p in command.get_params(context)
            if not getattr(p, "hidden", False) and p.get_help_record(context) is not None]
    if rows:
        lines += ["| argument or option | meaning |", "|---|---|", *rows, ""]
    return "\n".join(lines)


def _help_text(text: str) -> str:
    # click's "\b" marks a paragraph that must not be rewrapped; Markdown needs nothing for it.
    return "\n".join(line for line in text.replace("\b", "").splitlines()).strip()


def cli_reference() -> str:
    import typer

    from lacal.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="lacal")
    parts = [_help_text(group.help or ""), "",
             "`lacal --help` and `lacal COMMAND --help` print the same text in a terminal.", ""]
    for name in group.list_commands(root):
        parts.append(command_section(name, group.get_command(root, name), root))
    return "\n".join(parts)


def exit_codes() -> str:
    from lacal import errors

    classes = {cls.exit_code: cls.__name__ for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.LacalError) and cls is not errors.LacalError}
    rows = ["| code | meaning | Python exception |", "|---|---|---|"]
    for code, text in errors.EXIT_CODES.items():
        exception = f"`{classes[code]}`" if code in classes else ""
        rows.append(f"| {code} | {_cell(text)} | {exception} |")
    return "\n".join(rows)

"""The one display rule: every string that comes from a file or an argument (file names, class names, tensor names,
`id2label` values, cells of a CSV row) passes through `shown` before it reaches a terminal.

A terminal obeys what it is sent: an escape sequence can retitle the window, print a live hyperlink or hide what
follows; a right-to-left override reverses the text after it; a newline splits a one-line error in two. `shown`
writes every character that Python does not call printable (C0 and C1 controls, ESC, DEL, bidirectional overrides
and other format characters, line and paragraph separators, lone surrogates from undecodable file names) as its
Python escape (`\\x1b`, `\\u202e`, `\\n`), and cuts a long value, saying its length. Rich markup is not this
module's business: the CLI's rich console is made with markup and emoji codes off, so `[b]` and `:smile:` print as
they are.
"""

from __future__ import annotations

VALUE_LIMIT = 200
"""Characters of one value (a name, a cell) shown before it is cut."""

MESSAGE_LIMIT = 2000
"""Characters of one whole message line shown before its middle is cut."""


def escaped(text: str) -> str:
    """`text` with every non-printable character written as its Python escape; nothing else changes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(value, limit: int = VALUE_LIMIT) -> str:
    """`value` (any object; a string from a file, most often) as it may reach a terminal: control and format
    characters escaped, and cut after `limit` characters with its length said.

    Args:
        value: the value to show; `str(value)` is shown.
        limit: characters kept before the value is cut.

    Returns:
        One line of printable text.

    Example:
        >>> shown("cat\\x1b]0;owned\\x07")
        'cat\\\\x1b]0;owned\\\\x07'
        >>> shown("x" * 1000, limit=5)
        'xxxxx... (1,000 characters)'
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return f"{escaped(text[:limit])}... ({len(text):,} characters)"
    return escaped(text)


def shown_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A whole message line (an error, a warning, a note) as it may reach a terminal: control and format characters
    escaped, and, when longer than `limit`, its middle cut with the length said, so that both the file named at its
    start and the problem at its end stay.

    Args:
        message: the message.
        limit: characters kept in all.

    Returns:
        One line of printable text.

    Example:
        >>> shown_line("a.npy: no such file")
        'a.npy: no such file'
    """
    if len(message) > limit:
        head, tail = message[:limit * 2 // 3], message[-(limit // 3):]
        return f"{escaped(head)} ... [{len(message) - len(head) - len(tail):,} of {len(message):,} characters cut] " \
               f"... {escaped(tail)}"
    return escaped(message)

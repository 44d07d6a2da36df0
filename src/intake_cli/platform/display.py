"""Text from outside, made safe to show on the operator's terminal.

Webhook answers, DB2's error messages, user ids, DSNs, anything read from a
database or a file can carry escape sequences: `ESC ] 0; … BEL` retitles the
terminal, `ESC [ 2J` clears it, CR and backspace overwrite what the line
already says, and a bidi override makes a line read otherwise than it is
written. Every place that prints such text passes it through `safe`, or
through `markup` where rich renders it (rich would also take a webhook's
`[bold]` for a style), or shows it as a `cell`.

JSON output needs none of this: json.dumps escapes control characters (and,
with its default ensure_ascii, everything outside ASCII) by itself.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

# C0 controls (tab and newline too: they would forge a table cell or a log
# line), DEL, C1 controls (U+009B is CSI on many terminals), the line and
# paragraph separators, bidi embeddings, overrides, isolates and marks, and
# lone surrogates (no encoder takes them: printing one would raise).
_OTHERS = r"\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_ANYWHERE = re.compile(rf"[\x00-\x1f{_OTHERS}]")
# The same but newline: for messages whose lines are their structure.
_KEEPING_LINES = re.compile(rf"[\x00-\x09\x0b-\x1f{_OTHERS}]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: object, *, lines: bool = False) -> str:
    """`text` with every control character written out as `\\x1b` or `\\u202e`.

    Ordinary Unicode (accents, CJK, emoji) is kept as it is. With `lines`,
    newlines are kept: for a multi-line message such as a configuration
    error, whose other characters are still escaped.
    """
    return (_KEEPING_LINES if lines else _ANYWHERE).sub(_visible, str(text))


def markup(text: object, *, lines: bool = False) -> str:
    """`safe(text)`, also escaped for rich markup, to go inside an f-string that rich prints."""
    return escape(safe(text, lines=lines))


def cell(text: object, style: str = "") -> Text:
    """`safe(text)` as a rich Text: shown literally in a table, never read as markup."""
    return Text(safe(text), style=style)

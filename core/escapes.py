"""Typed text: backslash escapes read the same wherever text is typed (the command line's `-e` and
the app's Generate prompt), and text that is not UTF-8 refused in one line; shown text: control
characters from disk or a model written in that same escaped form."""
from __future__ import annotations

import re

from core.errors import AcmError


def unescape(text: str, what: str = "the text") -> str:
    """TEXT (UTF-8, as `utf8` checks) with its backslash escapes (\\n, \\t, \\", \\x41, \\u00e9) read;
    a bad escape, or one that makes no character (\\ud800), is one line."""
    try:
        read = utf8(text, what).encode("latin-1", "backslashreplace").decode("unicode_escape")
        read.encode("utf-8")
    except UnicodeDecodeError as e:
        raise AcmError(f"invalid escape in {text!r}: {e.reason}") from None
    except UnicodeEncodeError as e:
        escape = f"\\u{ord(read[e.start]):04x}"
        raise AcmError(f"{what}: the escape {escape} is half a surrogate pair, not a character") from None
    return read


def utf8(text: str, what: str) -> str:
    """TEXT, where every character can be written as UTF-8; else one line naming the first one that
    cannot: a byte the terminal's encoding did not decode (Python keeps it in the command line as a
    lone surrogate, U+DC80-U+DCFF), or another lone surrogate by its code point."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        bad = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
        raise AcmError(f"{what} is not UTF-8: {bad} at character {e.start + 1}; type it in UTF-8") from None
    return text


_CONTROL_IN_A_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and newline lay the text out
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(text: str, lines: bool = False) -> str:
    """TEXT with its control characters (C0, DEL, C1) written as the escapes `-e` reads (\\x1b, \\r):
    text from disk or a model, shown on a terminal, never moves the cursor, clears the screen or
    retitles the window. LINES keeps newlines and tabs, for multi-line content; a name, a path or a
    table cell has them escaped too, so it stays on its line."""
    pattern = _CONTROL_IN_LINES if lines else _CONTROL_IN_A_LINE
    return pattern.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)

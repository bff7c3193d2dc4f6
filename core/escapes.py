"""Typed text: backslash escapes read the same wherever text is typed (the command line's `-e` and
the app's Generate prompt), and text that is not UTF-8 refused in one line; shown text: control
characters from disk or a model written in that same escaped form."""
from __future__ import annotations

import json
import re

from core.errors import AcmError


def unescape(text: str, what: str = "the text") -> str:
    """TEXT (UTF-8, as `utf8` checks) with its backslash escapes (\\n, \\t, \\", \\x41, \\u00e9) read;
    a bad escape, or one that makes no character (\\ud800), is one line."""
    try:
        read = utf8(text, what).encode("latin-1", "backslashreplace").decode("unicode_escape")
        read.encode("utf-8")
    except UnicodeDecodeError as e:
        raise AcmError(f"{what}: invalid escape in '{visible(text)}': {e.reason}") from None  # as typed
    except UnicodeEncodeError as e:
        escape = f"\\u{ord(read[e.start]):04x}"
        raise AcmError(f"{what}: the escape {escape} is half a surrogate pair, not a character") from None
    return read


def stop_strings(text: str, what: str = "stop") -> tuple[str, ...]:
    """Stop strings typed on one line: none for an empty line; several as double-quoted strings
    separated by commas (`"\\n\\n", "exit 0"`, escapes read as JSON reads them); else the line is one
    string, its escapes read as the prompt's."""
    text = text.strip()
    if not text:
        return ()
    if not text.startswith('"'):
        return (unescape(text, what),)
    try:
        found = json.loads(f"[{text}]")
    except (ValueError, RecursionError):
        found = None
    if not found or not all(isinstance(s, str) and s for s in found):
        raise AcmError(f"{what}: give one string, or several in double quotes separated by commas, with JSON's "
                       f"escapes (\"\\n\\n\", \"exit 0\", \"\\u0041\"); got '{visible(text[:40])}'")
    return tuple(utf8(s, what) for s in found)


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


# Unicode's format characters (category Cf): invisible (zero-width spaces and joiners, the soft
# hyphen, the byte-order mark, tag characters) or reordering what follows (bidirectional overrides and
# isolates): shown as they are, a script on screen would read otherwise than the bytes that run
FORMAT = ("\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
          "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
          "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
_CONTROL_IN_A_LINE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{FORMAT}]")
_CONTROL_IN_LINES = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{FORMAT}]")  # tab and newline lay the text out
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(text: str, lines: bool = False) -> str:
    """TEXT with its control characters (C0, DEL, C1) and Unicode's format characters written as the
    escapes `-e` reads (\\x1b, \\r, \\u202e): text from disk or a model, shown on a terminal, never
    moves the cursor, clears the screen or retitles the window, nor hides or reorders what it shows.
    LINES keeps newlines and tabs, for multi-line content; a name, a path or a table cell has them
    escaped too, so it stays on its line."""
    pattern = _CONTROL_IN_LINES if lines else _CONTROL_IN_A_LINE
    return pattern.sub(lambda m: _NAMED.get(m[0]) or _escape(ord(m[0])), text)


def without_surrogates(text: str) -> str:
    """TEXT writable as UTF-8: a byte of a file's name that is not UTF-8 (Python keeps it as a lone
    surrogate, U+DC80-U+DCFF) as its escape `\\xff`, any other lone surrogate (a JSON `\\ud800`) as
    `\\ud800`: a name recorded or shown never stops the work that met it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda m: _escape(ord(m[0]) - 0xdc00 if "\udc80" <= m[0] <= "\udcff" else ord(m[0])),
                              text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

"""Typed text: backslash escapes read the same wherever text is typed (the command line's `-e` and
the app's Generate prompt), and text that is not UTF-8 refused in one line."""
from __future__ import annotations

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

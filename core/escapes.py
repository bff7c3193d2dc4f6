"""Backslash escapes in typed text, read the same wherever text is typed: the command line's `-e`
and the app's Generate prompt."""
from __future__ import annotations

from core.errors import AcmError


def unescape(text: str) -> str:
    """TEXT with its backslash escapes (\\n, \\t, \\", \\x41, \\u00e9) read; a bad escape is one line."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise AcmError(f"invalid escape in {text!r}: {e.reason}") from None

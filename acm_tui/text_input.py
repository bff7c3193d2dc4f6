"""The app's one-line input: what is typed or pasted into it reaches the screen as text only."""
from __future__ import annotations

from textual.widgets import Input

from core.escapes import visible


class TextInput(Input):
    """An Input that takes control characters (C0, DEL, C1) and Unicode's format characters, from a
    paste or a stray key, as the escapes `-e` reads (`\\x0e`, `\\u202e`): drawn raw they would act on
    the terminal (SO and SI switch its character set, ENQ asks for its answerback) or reorder what it
    shows. A prompt reads them back as the characters they were; a setting or a name refuses them."""

    def replace(self, text: str, start: int, end: int) -> None:
        super().replace(visible(text), start, end)

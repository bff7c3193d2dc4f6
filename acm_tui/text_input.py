"""The app's one-line input: what is typed or pasted into it reaches the screen as text only."""
from __future__ import annotations

import re

from textual.widgets import Input

from core.escapes import visible

# what would act on the terminal or reorder what it shows: C0 but the tab, DEL, C1, and Unicode's
# bidirectional embeddings, overrides and isolates (joiners and the soft hyphen are text)
ACTING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class TextInput(Input):
    """An Input that takes control characters (C0, DEL, C1) and bidirectional controls, from a paste
    or a stray key, as the escapes `-e` reads (`\\x0e`, `\\u202e`): drawn raw they would act on the
    terminal (SO and SI switch its character set, ENQ asks for its answerback) or reorder what it
    shows. A prompt reads them back as the characters they were; a setting or a name refuses them.
    Tabs, joiners (emoji, Persian) and the soft hyphen stay as typed."""

    def replace(self, text: str, start: int, end: int) -> None:
        super().replace(ACTING.sub(lambda m: visible(m[0]), text), start, end)

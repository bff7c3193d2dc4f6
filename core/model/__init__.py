"""The model: its shape (`model_shape`), the network (gpt.py) and the architecture test (check.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from core.presets import ModelShape

if TYPE_CHECKING:
    from core.config import Config


class Vocabulary(Protocol):
    @property
    def vocab_size(self) -> int: ...


def model_shape(cfg: Config, tokenizer: Vocabulary) -> ModelShape:
    """The shape a model is built with: the preset's layers over its tokenizer's vocabulary, the one
    source of it (a corpus too small for the preset's target stops short, and the model follows)."""
    return cfg.model.shape().with_vocab(tokenizer.vocab_size)

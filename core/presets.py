"""Model presets as plain data: the original design's `tiny` and `medium`, plus small ones that
train on a CPU. Settings read them (names, context, the vocabulary to aim for), so no MLX here.

A preset's vocab_size is only the default target of tokenizer training: a built model takes the
vocabulary its tokenizer reached (`core.model.model_shape`).

GPT-2 style throughout: learned positions, pre-LayerNorm blocks, GELU MLP, biases on every
linear layer and LayerNorm. The original log states layers, heads, vocab and parameter counts;
the remaining fields are chosen so the counts land on the log's figures:

- tiny: hidden 768, FFN 3072, context 2048, tied input/output embeddings -> 98.9M (log: 98.9M)
- medium: untied output head (no bias) -> 372.0M (log: 371M, +0.3%)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from core.errors import AcmError


@dataclass(frozen=True)
class ModelShape:
    """A model's dimensions; vocab_size is a preset's target until `with_vocab` sets the tokenizer's."""
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    n_ffn: int
    n_ctx: int
    vocab_size: int
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def param_count(self) -> int:
        """Parameters, counted from the shape (equals the built model's count; tested)."""
        d, f = self.n_embd, self.n_ffn
        attn = d * 3 * d + 3 * d + d * d + d
        mlp = d * f + f + f * d + d
        norms = 2 * 2 * d
        blocks = self.n_layer * (attn + mlp + norms)
        embed = self.vocab_size * d + self.n_ctx * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return blocks + embed + head + 2 * d

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 x matmul parameters + attention (nanoGPT's estimate)."""
        # position lookups are no matmul; an untied input table is a lookup too (the head counts)
        lookups = self.n_ctx * self.n_embd + (0 if self.tie_embeddings else self.vocab_size * self.n_embd)
        matmul = self.param_count() - lookups
        return 6 * matmul + 12 * self.n_layer * self.n_embd * seq_len

    def with_vocab(self, vocab_size: int) -> ModelShape:
        return replace(self, vocab_size=vocab_size)

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelShape] = {
    p.name: p
    for p in (
        ModelShape("nano", n_layer=2, n_head=2, n_embd=64, n_ffn=256, n_ctx=128, vocab_size=1024),
        ModelShape("micro", n_layer=4, n_head=4, n_embd=128, n_ffn=512, n_ctx=256, vocab_size=2048),
        ModelShape("tiny", n_layer=12, n_head=12, n_embd=768, n_ffn=3072, n_ctx=2048, vocab_size=16000),
        ModelShape(
            "medium", n_layer=24, n_head=16, n_embd=1024, n_ffn=4096, n_ctx=4096, vocab_size=32000,
            tie_embeddings=False,
        ),
    )
}


def get_preset(name: str) -> ModelShape:
    try:
        return PRESETS[name]
    except KeyError:
        raise AcmError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def human_count(n: float) -> str:
    """98_916_864 -> '98.9M' (the log's style)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))

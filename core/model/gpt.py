"""The GPT-2-style transformer, in MLX: learned positions, pre-LayerNorm blocks, GELU MLP.

Weights are kept in float32 (the master copy AdamW updates); `compute_dtype` (e.g. bfloat16) is
what activations and the per-call cast of each weight use, so small updates are never rounded
away. Parameter names follow GPT-2's (`wte`, `h.N.attn.c_attn`, ...) so exporting to mlx-lm's
`gpt2` is a rename-free copy.

Shapes: B batch, T tokens, C = n_embd, nh heads, hs = C // nh head size, V vocab.
"""
from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from core.model import cuda_kernels, fused
from core.model.layer_norm import Addend, add_layer_norm, layer_norm
from core.presets import ModelShape

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def _as(w: mx.array, dtype: mx.Dtype) -> mx.array:
    return w if w.dtype == dtype else w.astype(dtype)


class Linear(nn.Linear):
    """nn.Linear whose weights are cast to the input's dtype on the fly (a no-op for the views of
    the optimizer's buffers that training passes in)."""

    def __call__(self, x: mx.array, training: bool = True) -> mx.array:
        w = _as(self.weight, x.dtype)
        if "bias" not in self:
            return fused.project(x, w) if training else x @ w.T
        b = _as(self.bias, x.dtype)
        return fused.linear(x, w, b) if training else mx.addmm(b, x, w.T)


class LayerNorm(nn.Module):
    """LayerNorm in the input's dtype (`core.model.layer_norm`: MLX's, or hand-written kernels on CUDA)."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))

    def __call__(self, x: mx.array, training: bool = True) -> mx.array:
        return layer_norm(x, _as(self.weight, x.dtype), _as(self.bias, x.dtype), self.eps, training)

    def add(self, x: mx.array, h: Addend, training: bool = True) -> tuple[mx.array, mx.array]:
        """(x + h, this norm of it): the residual stream and the next sublayer's input, in one kernel
        on CUDA (where h is None, x and its norm)."""
        return add_layer_norm(x, h, _as(self.weight, x.dtype), _as(self.bias, x.dtype), self.eps, training)


class KVCache:
    """Keys and values of past positions for one layer, grown in blocks to avoid re-allocating."""

    block = 256

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        # k, v: (B, nh, T, hs)
        start, T = self.offset, k.shape[2]
        if self.keys is None or start + T > self.keys.shape[2]:
            B, nh, _, hs = k.shape
            grow = ((T + self.block - 1) // self.block) * self.block
            new_k = mx.zeros((B, nh, grow, hs), k.dtype)
            new_v = mx.zeros((B, nh, grow, hs), v.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :start, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :start, :], new_v], axis=2)
        self.offset += T
        self.keys[..., start:self.offset, :] = k
        self.values[..., start:self.offset, :] = v
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]


# On NVIDIA GPUs, a prompt's attention scores up to this many (batch x heads x queries x keys) are
# computed with plain operations: MLX's fused attention builds a cuDNN graph for every new shape it
# meets, and each prompt length is one. On an H200 a pretrain's first live-samples check took
# 0.55-0.65 s with it, 0.40-0.48 s without, and a fresh machine's first lone prompt 4.4 s with it
# (bench/RESULTS.md). Apple silicon's fused attention builds nothing: it keeps it (0).
PLAIN_PREFILL = 1 << 22 if cuda_kernels.available() else 0


def plain_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | str) -> mx.array:
    """Softmax attention of q (B, nh, T, hs) over k, v (B, nh, S, hs) under `mask` ("causal": aligned
    to the last key, or a boolean (B, 1, T, S)), in float32 throughout, rounded to the inputs' dtype
    once, at the end."""
    T, S = q.shape[2], k.shape[2]
    if isinstance(mask, str):
        mask = mx.arange(S)[None, :] <= mx.arange(S - T, S)[:, None]
    f32 = mx.float32
    scores = (q.astype(f32) * scale) @ k.astype(f32).swapaxes(-1, -2)
    weights = mx.softmax(mx.where(mask, scores, -mx.inf), axis=-1)
    return (weights @ v.astype(f32)).astype(v.dtype)


class Attention(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.n_head = s.n_head
        self.scale = s.head_dim**-0.5
        self.c_attn = Linear(s.n_embd, 3 * s.n_embd)
        self.c_proj = Linear(s.n_embd, s.n_embd)

    def __call__(self, x: mx.array, cache: KVCache | None, mask: mx.array | None = None) -> mx.array:
        B, T, C = x.shape
        training = cache is None
        qkv = self.c_attn(x, training)
        q, k, v = fused.split_qkv(qkv) if training else mx.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, T, self.n_head, -1).transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, nh, offset + T, hs)
        # "causal" aligns the mask to the last key, so a prompt continuing a cache sees all the past;
        # rows of a batch with left padding bring their own mask
        if mask is None:
            mask = "causal" if T > 1 else None
        if cache is not None and T > 1 and B * self.n_head * T * k.shape[2] <= PLAIN_PREFILL:
            y = plain_attention(q, k, v, self.scale, mask)
        else:
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.c_proj(y.transpose(0, 2, 1, 3).reshape(B, T, C), training)


class MLP(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.c_fc = Linear(s.n_embd, s.n_ffn)
        self.c_proj = Linear(s.n_ffn, s.n_embd)

    def __call__(self, x: mx.array, decoding: bool = False) -> Addend:
        """The MLP's output. Decoding launches fewer kernels a token: its GELU is one kernel
        (`fused.gelu_decoding`), and a lone row (one stream, one token) hands the output over as
        (product, bias) for the next residual addition to add both in one kernel (`fused.add_biased`):
        at one row MLX runs a biased product as a split product and a reduction, two kernels, where
        the plain product is one. Batches of rows keep the biased product."""
        fc, proj = self.c_fc, self.c_proj
        if decoding:  # no backward pass to save memory for; skip the custom function's extra nodes
            a = fused.gelu_decoding(fc(x, False))
            if x.size == x.shape[-1]:
                return a @ _as(proj.weight, x.dtype).T, _as(proj.bias, x.dtype)
            return proj(a, False)
        y, _ = fused.mlp(x, *(_as(p, x.dtype) for p in (fc.weight, fc.bias, proj.weight, proj.bias)))
        return y


class Block(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.ln_1 = LayerNorm(s.n_embd, s.norm_eps)
        self.attn = Attention(s)
        self.ln_2 = LayerNorm(s.n_embd, s.norm_eps)
        self.mlp = MLP(s)

    def __call__(self, x: mx.array, h: Addend, cache: KVCache | None,
                 mask: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """The residual stream x + h (h: the previous block's MLP output, or None) through this block,
        returned as the stream after attention and the MLP's output, which the next layer norm adds:
        each residual addition happens inside the layer norm that reads its result."""
        training = cache is None
        x, n = self.ln_1.add(x, h, training)
        x, n = self.ln_2.add(x, self.attn(n, cache, mask), training)
        return x, self.mlp(n, decoding=not training)


def padded_positions(offset: int, T: int, pad: mx.array) -> tuple[mx.array, mx.array]:
    """Positions (B, T) and attention mask (B, 1, T, S) for left-padded rows at cache steps
    offset .. offset + T - 1.

    A query sees the keys up to itself that are not padding; a padding position sees only itself,
    so nothing in the batch becomes NaN (a fully masked row would)."""
    steps = mx.arange(offset, offset + T)
    keys = mx.arange(offset + T)[None, None, :]  # (1, 1, S)
    q = steps[None, :, None]  # (1, T, 1)
    mask = (keys <= q) & ((keys >= pad[:, None, None]) | (keys == q))  # (B, T, S)
    return mx.maximum(steps[None, :] - pad[:, None], 0), mask[:, None]


class GPT(nn.Module):
    def __init__(self, shape: ModelShape, compute_dtype: str = "float32", checkpoint_activations: bool = False):
        super().__init__()
        self.shape = shape
        self.compute_dtype = DTYPES[compute_dtype]
        self.checkpoint_activations = checkpoint_activations
        self.wte = nn.Embedding(shape.vocab_size, shape.n_embd)
        self.wpe = nn.Embedding(shape.n_ctx, shape.n_embd)
        self.h = [Block(shape) for _ in range(shape.n_layer)]
        self.ln_f = LayerNorm(shape.n_embd, shape.norm_eps)
        if not shape.tie_embeddings:
            self.lm_head = Linear(shape.n_embd, shape.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), zero biases."""
        residual_std = 0.02 / math.sqrt(2 * self.shape.n_layer)

        def init(path: str, p: mx.array) -> mx.array:
            if path.endswith("bias"):
                return mx.zeros_like(p)
            if path.startswith("ln") or ".ln_" in path:
                return mx.ones_like(p)
            std = residual_std if path.endswith("c_proj.weight") else 0.02
            return mx.random.normal(p.shape, scale=std)

        self.update(tree_map_with_path(init, self.parameters()))

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.h]

    def __call__(self, idx: mx.array, cache: list[KVCache] | None = None, pad: mx.array | None = None) -> mx.array:
        """idx (B, T) token ids -> logits (B, T, V) in the compute dtype.

        `pad` (B,): how many left-padding positions each row of a decoding batch starts with; those
        positions are masked out and each row's positions count from its first real token."""
        B, T = idx.shape
        offset = cache[0].offset if cache else 0
        if offset + T > self.shape.n_ctx:
            raise ValueError(f"{offset + T} positions exceed the model's context of {self.shape.n_ctx}")
        training = not cache  # decoding keeps MLX's plain operations: no backward to prepare for
        lookup = fused.embedding if training else (lambda table, i: table[i])
        positions, mask = self._positions(offset, T, pad, training)
        x = lookup(self.wte.weight, idx) + positions
        x, h = _as(x, self.compute_dtype), None  # (B, T, C): the residual stream, and what it adds next
        for i, block in enumerate(self.h):
            if self.checkpoint_activations and training:  # keep only block inputs; recompute the rest
                x = x if h is None else x + h
                x, h = nn.utils.checkpoint(block, lambda x, block=block: block(x, None, None))(x)
            else:
                x, h = block(x, h, cache[i] if cache else None, mask)
        _, x = self.ln_f.add(x, h, training)
        if self.shape.tie_embeddings:
            w = _as(self.wte.weight, x.dtype)
            return fused.project(x, w) if training else x @ w.T
        return self.lm_head(x, training)

    def _positions(self, offset: int, T: int, pad: mx.array | None,
                   training: bool) -> tuple[mx.array, mx.array | None]:
        """The position embeddings of steps offset .. offset + T - 1, (T, C), and the attention mask
        (None but for a padded batch, whose positions (B, T, C) count from each row's first real
        token). Decoding a lone stream reads them as a slice of the table, which costs no kernel
        (an index and a lookup would cost two a token)."""
        if pad is not None:
            positions, mask = padded_positions(offset, T, pad)
            return self.wpe.weight[positions], mask
        if training:
            return fused.embedding(self.wpe.weight, mx.arange(offset, offset + T)), None
        return self.wpe.weight[offset:offset + T], None

    def loss(self, idx: mx.array, targets: mx.array) -> mx.array:
        """Mean next-token cross-entropy, accumulated in float32."""
        return fused.cross_entropy(self(idx), targets)

    def num_params(self) -> int:
        return sum(p.size for _, p in tree_flatten(self.parameters()))

    def nbytes(self) -> int:
        return sum(p.nbytes for _, p in tree_flatten(self.parameters()))

"""Training-step building blocks with hand-written derivatives, for speed and memory.

- Autodiff through an elementwise formula keeps every intermediate the chain rule touches: for
  the MLP's GELU that is several (B, T, 4C) arrays a layer. `mlp` keeps only the pre-activation
  and recomputes the cheap elementwise parts in the backward (what PyTorch's compiler does by
  itself); the compiled step fuses them into one kernel (on CUDA, core/model/cuda_gelu.py's).
- A bias gradient is a sum over all B*T rows. MLX's CUDA column reduction runs it on n / 32 thread
  blocks; as a (1, rows) @ (rows, n) matrix product it is about 4x faster (`mlp`, and `linear` for
  the attention's projections).
- A weight used as `x @ w.T` gets, from autodiff, a transposed view as its gradient, which every
  later reader (the tied embedding's sum, the flat gradient) reads column by column; `linear` and
  `project` return it row-major.
- No `x**3`: MLX computes it with pow(), which made GELU three times slower than a product.
- Joins in one kernel on CUDA (`split_qkv`'s gradient; the optimizer's flat gradient uses the same
  `cuda_join`), where MLX's concatenation launches a copy per array.
"""
from __future__ import annotations

import math
from functools import partial

import mlx.core as mx

from core.model import cuda_gelu, cuda_join

_K = math.sqrt(2 / math.pi)
_C = 0.044715


@partial(mx.compile, shapeless=True)  # one kernel even outside a compiled step
def gelu(h: mx.array) -> mx.array:
    """GPT-2's tanh-approximated GELU ("gelu_new"), as `nn.gelu_approx`."""
    return 0.5 * h * (1 + mx.tanh(_K * (h + _C * h * h * h)))  # h**3 would be a slow pow()


@partial(mx.compile, shapeless=True)
def add_biased(x: mx.array, y: mx.array, b: mx.array) -> mx.array:
    """x + y + b in one kernel: decoding's residual addition and the MLP projection's bias."""
    return x + y + b


def _gelu_again(h: mx.array) -> mx.array:
    """The forward's GELU recomputed for the backward, as h * sigmoid(2u).

    A different formula from the forward's on purpose: the compiler merges identical
    expressions, and merging these with the forward's would keep them alive until the backward.
    """
    return h * mx.sigmoid(h * (2 * _K + (2 * _K * _C) * (h * h)))


# GELU as decoding runs it, 0.5 h (1 + tanh u) written as h * sigmoid(2u): MLX fuses a chain of at
# most 11 operations (its broadcast constants included) into one kernel, and `gelu`'s chain came out
# as two kernels (as `nn.gelu_approx`'s does), which decoding one token at a time pays for in launches
gelu_decoding = mx.compile(_gelu_again, shapeless=True)


def _gelu_slope(h: mx.array) -> mx.array:
    """GELU's derivative, s + 2K h s (1 - s)(1 + 3C h^2) with s = sigmoid(2K h (1 + C h^2)).

    It shares no subexpression with `_gelu_again` (squares, products and the sigmoid's argument
    are written differently): a shared intermediate would be written out and read back by both,
    where now each is one kernel reading only h.
    """
    q = mx.square(h)
    k2h = (2 * _K) * h
    s = mx.sigmoid(k2h + (2 * _K * _C) * (h * q))
    return s + k2h * s * (1 - s) * (1 + (3 * _C) * q)


def _rows(z: mx.array) -> mx.array:
    return z.reshape(-1, z.shape[-1])


def _column_sum(z2: mx.array) -> mx.array:
    """Sum of a (rows, n) array over its rows, as a matrix product (float32 accumulation)."""
    return (mx.ones((1, z2.shape[0]), z2.dtype) @ z2).reshape(-1)


@mx.custom_function
def mlp(x: mx.array, w_fc: mx.array, b_fc: mx.array, w_proj: mx.array, b_proj: mx.array):
    """GELU MLP, `gelu(x @ w_fc.T + b_fc) @ w_proj.T + b_proj`, returned with its pre-activation.

    The pre-activation is the one (B, T, 4C) array the backward keeps; the activation is
    recomputed from it there, so a layer holds one wide array instead of two or more.
    Callers ignore the second output.
    """
    h = mx.addmm(b_fc, x, w_fc.T)
    return mx.addmm(b_proj, cuda_gelu.gelu(h) if cuda_gelu.covers(h) else gelu(h), w_proj.T), h


@mlp.vjp
def _mlp_vjp(primals, cotangents, outputs):
    x, w_fc, _, w_proj, _ = primals
    dy = cotangents[0]
    h = outputs[1]
    dy2 = _rows(dy)
    if cuda_gelu.covers(h):  # one pass over h for both
        dh, a = cuda_gelu.gelu_vjp(dy @ w_proj, h)
    else:
        a = _gelu_again(h)
        dh = (dy @ w_proj) * _gelu_slope(h)
    dh2 = _rows(dh)
    return dh @ w_fc, dh2.T @ _rows(x), _column_sum(dh2), dy2.T @ _rows(a), _column_sum(dy2)


@mx.custom_function
def linear(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
    """`x @ w.T + b` whose bias gradient is a matrix product instead of a column reduction."""
    return mx.addmm(b, x, w.T)


@linear.vjp
def _linear_vjp(primals, dy, y):
    x, w, _ = primals
    dy2 = _rows(dy)
    return dy @ w, dy2.T @ _rows(x), _column_sum(dy2)


@mx.custom_function
def split_qkv(qkv: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """`mx.split(qkv, 3, axis=-1)`, whose gradient joins the three in one kernel on CUDA
    (`cuda_join`) where MLX's concatenation copies each with a strided kernel of its own."""
    return tuple(mx.split(qkv, 3, axis=-1))


@split_qkv.vjp
def _split_qkv_vjp(qkv, cotangents, outputs):
    """The three gradients side by side, as the projection that made q, k, v reads them (MLX passes
    a lone primal as itself, not in a tuple)."""
    C = qkv.shape[-1] // 3
    return cuda_join.joined(list(cotangents), [C, C, C], qkv.dtype).reshape(qkv.shape)


@mx.custom_function
def project(x: mx.array, w: mx.array) -> mx.array:
    """`x @ w.T` (the vocabulary head) whose weight gradient is row-major."""
    return x @ w.T


@project.vjp
def _project_vjp(primals, dy, y):
    x, w = primals
    return dy @ w, _rows(dy).T @ _rows(x)


@mx.custom_function
def embedding(table: mx.array, idx: mx.array) -> mx.array:
    """`table[idx]`, whose gradient is summed in float32 whatever the table's dtype: a frequent token
    adds up thousands of rows, which bfloat16 would round at every addition."""
    return table[idx]


@embedding.vjp
def _embedding_vjp(primals, dy, y):
    table, idx = primals
    return mx.zeros(table.shape, mx.float32).at[idx].add(dy.astype(mx.float32)), mx.zeros_like(idx)


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean next-token cross-entropy, accumulated in float32 without an upcast copy of the logits.

    On the GPU `mx.fast.cross_entropy` reads low-precision logits directly (forward and backward
    fused). The CPU reduces in the logits' dtype, so there they are upcast first.
    """
    if logits.dtype != mx.float32 and mx.default_device() != mx.gpu:
        logits = logits.astype(mx.float32)
    return mx.fast.cross_entropy(logits, targets).mean()

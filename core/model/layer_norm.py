"""Layer norm, alone or after the residual addition it follows (`add_layer_norm`): on NVIDIA GPUs
hand-written forward and backward kernels (core/model/cuda_kernels.py; the backward skips MLX's slow
column reductions for the gain and bias gradients, and the addition needs no kernel of its own),
elsewhere MLX's `mx.fast.layer_norm` after a plain addition."""
from __future__ import annotations

from functools import cache

import mlx.core as mx

from core.model import cuda_kernels, fused


@cache
def kernel_layer_norm(eps: float):
    """`mx.fast.layer_norm(x, w, b, eps)` as `cuda_kernels.layer_norm`, whose backward is
    `cuda_kernels.layer_norm_vjp`."""

    @mx.custom_function
    def layer_norm(x, w, b):
        return cuda_kernels.layer_norm(x, w, b, eps)

    @layer_norm.vjp
    def layer_norm_vjp(primals, cotangent, output):
        x, w, _ = primals
        return cuda_kernels.layer_norm_vjp(x, w, cotangent, eps)

    return layer_norm


@cache
def kernel_add_layer_norm(eps: float):
    """(x + h, layer norm of it) as `cuda_kernels.add_layer_norm`, whose backward is
    `cuda_kernels.add_layer_norm_vjp`: both addends get the sum's gradient."""

    @mx.custom_function
    def add_layer_norm(x, h, w, b):
        return cuda_kernels.add_layer_norm(x, h, w, b, eps)

    @add_layer_norm.vjp
    def add_layer_norm_vjp(primals, cotangents, outputs):
        gs, g = cotangents
        d, dw, db = cuda_kernels.add_layer_norm_vjp(outputs[0], primals[2], g, gs, eps)
        return d, d, dw, db

    return add_layer_norm


def _kernels_cover(x: mx.array) -> bool:
    return cuda_kernels.available() and cuda_kernels.covers_layer_norm(x)


def layer_norm(x: mx.array, w: mx.array, b: mx.array, eps: float, training: bool = True) -> mx.array:
    """Layer norm over the last axis, with the kernel's backward where it applies."""
    if training and _kernels_cover(x):
        return kernel_layer_norm(eps)(x, w, b)
    return mx.fast.layer_norm(x, w, b, eps)


# What a layer norm adds to the residual stream before norming it: a sublayer's output, none, or
# (decoding) the MLP's product and bias, added together in one kernel
Addend = mx.array | tuple[mx.array, mx.array] | None


def add_layer_norm(x: mx.array, h: Addend, w: mx.array, b: mx.array, eps: float,
                   training: bool = True) -> tuple[mx.array, mx.array]:
    """(s, layer norm of s) for the residual stream s = x + h (s = x where h is None; h may be a
    (product, bias) pair, both added): one kernel in training where the CUDA kernels apply. Decoding
    keeps MLX's addition and norm: at batch 1 a custom kernel's launch costs the host more than the
    two operations (bench/RESULTS.md)."""
    if h is None:
        return x, layer_norm(x, w, b, eps, training)
    if isinstance(h, tuple):
        s = fused.add_biased(x, *h)
        return s, layer_norm(s, w, b, eps, training)
    if training and h.shape == x.shape and h.dtype == x.dtype and _kernels_cover(x):
        return kernel_add_layer_norm(eps)(x, h, w, b)
    s = x + h
    return s, layer_norm(s, w, b, eps, training)

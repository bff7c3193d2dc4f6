"""Layer norm for training: on NVIDIA GPUs hand-written forward and backward kernels
(core/model/cuda_kernels.py; the backward skips MLX's slow column reductions for the gain and bias
gradients), elsewhere MLX's `mx.fast.layer_norm`."""
from __future__ import annotations

from functools import cache

import mlx.core as mx

from core.model import cuda_kernels


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


def layer_norm(x: mx.array, w: mx.array, b: mx.array, eps: float, training: bool = True) -> mx.array:
    """Layer norm over the last axis, with the kernel's backward where it applies."""
    if training and cuda_kernels.available() and cuda_kernels.covers_layer_norm(x):
        return kernel_layer_norm(eps)(x, w, b)
    return mx.fast.layer_norm(x, w, b, eps)

"""Layer norm for training: on NVIDIA GPUs its backward is one hand-written kernel.

MLX's CUDA layer-norm backward writes a (rows, C) temporary for the gain gradient and sums it and
the bias gradient with column reductions that run on C / 32 thread blocks (24 for C = 768): each
takes ~0.3 ms of a ~37 ms tiny step, two per layer norm, and each CUDA graph waits for its last one.
The kernel here reads x and the cotangent once (16-byte loads, a row per warp), writes dx, and keeps
per-warp float32 partial sums of the gain and bias gradients, which one matrix product adds up
(bench/layer_norm_vjp.py: faster alone, and gain/bias gradients 10x closer to float64 than MLX's
bf16 temporary). It assumes rows start 16-byte aligned, as fresh activations and their gradients do. Elsewhere
(Metal, CPU) and for shapes the kernel does not cover, `mx.fast.layer_norm` is used as it is.
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

WARPS = 8  # warps per thread block; each warp normalises one row at a time
ROWS_PER_WARP = 4  # (the fastest of 4 or 8 warps x 2 to 16 rows on an H100, both presets)
SOURCE = """
    constexpr int VEC = 16 / sizeof(T);           // elements per 16-byte load
    constexpr int PER = C / (32 * VEC);           // loads per lane per row
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int gwarp = blockIdx.x * WARPS + warp;
    int nwarps = gridDim.x * WARPS;
    float wv[PER][VEC], dw_acc[PER][VEC], db_acc[PER][VEC];
    #pragma unroll
    for (int k = 0; k < PER; k++) {
      #pragma unroll
      for (int j = 0; j < VEC; j++) {
        wv[k][j] = static_cast<float>(w[(k * 32 + lane) * VEC + j]);  // w may be unaligned: scalar loads
        dw_acc[k][j] = 0.f;
        db_acc[k][j] = 0.f;
      }
    }
    for (int row = gwarp; row < ROWS; row += nwarps) {
      const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)row * C);
      const uint4* gr = reinterpret_cast<const uint4*>(g + (size_t)row * C);
      uint4 xraw[PER], graw[PER];
      #pragma unroll
      for (int k = 0; k < PER; k++) {  // both rows requested at once: one memory round trip per row
        xraw[k] = xr[k * 32 + lane];
        graw[k] = gr[k * 32 + lane];
      }
      float xv[PER][VEC], gv[PER][VEC];
      float s = 0.f, ss = 0.f, a = 0.f, b = 0.f;
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        const T* xs = reinterpret_cast<const T*>(&xraw[k]);
        const T* gs = reinterpret_cast<const T*>(&graw[k]);
        #pragma unroll
        for (int j = 0; j < VEC; j++) {
          xv[k][j] = static_cast<float>(xs[j]);
          gv[k][j] = static_cast<float>(gs[j]);
          s += xv[k][j];
        }
      }
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffff, s, o);
      float mean = s / C;
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        #pragma unroll
        for (int j = 0; j < VEC; j++) { float d = xv[k][j] - mean; ss += d * d; }
      }
      for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffff, ss, o);
      float rstd = rsqrtf(ss / C + EPS_F);
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        #pragma unroll
        for (int j = 0; j < VEC; j++) {
          float xh = (xv[k][j] - mean) * rstd;
          float gw = gv[k][j] * wv[k][j];
          xv[k][j] = xh;
          a += gw;
          b += gw * xh;
          dw_acc[k][j] += gv[k][j] * xh;
          db_acc[k][j] += gv[k][j];
        }
      }
      for (int o = 16; o > 0; o /= 2) {
        a += __shfl_xor_sync(0xffffffff, a, o);
        b += __shfl_xor_sync(0xffffffff, b, o);
      }
      a /= C;
      b /= C;
      uint4* dxr = reinterpret_cast<uint4*>(dx + (size_t)row * C);
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        uint4 out;
        T* os = reinterpret_cast<T*>(&out);
        #pragma unroll
        for (int j = 0; j < VEC; j++) os[j] = static_cast<T>(rstd * (gv[k][j] * wv[k][j] - a - xv[k][j] * b));
        dxr[k * 32 + lane] = out;
      }
    }
    #pragma unroll
    for (int k = 0; k < PER; k++) {
      #pragma unroll
      for (int j = 0; j < VEC; j++) {
        size_t at = (size_t)gwarp * C + (k * 32 + lane) * VEC + j;
        dw_part[at] = dw_acc[k][j];
        db_part[at] = db_acc[k][j];
      }
    }
"""


def kernel_available() -> bool:
    """Whether MLX runs on an NVIDIA GPU here (the kernel is CUDA C++)."""
    try:
        return mx.default_device() == mx.gpu and mx.cuda.is_available()
    except AttributeError:  # an MLX without the cuda module
        return False


def covers(x: mx.array) -> bool:
    """The kernel reads rows in 16-byte pieces, 32 lanes wide, and keeps a row in registers:
    widths that are multiples of 32 such pieces, up to 2048."""
    C = x.shape[-1]
    return C % (32 * 16 // x.dtype.size) == 0 and C <= 2048


@lru_cache(maxsize=None)
def _kernel(eps: float):
    return mx.fast.cuda_kernel(name="acm_layer_norm_vjp", input_names=["x", "w", "g"],
                               output_names=["dx", "dw_part", "db_part"],
                               header=f"#define WARPS {WARPS}\n#define EPS_F {eps!r}f\n", source=SOURCE)


@lru_cache(maxsize=None)
def kernel_layer_norm(eps: float):
    """`mx.fast.layer_norm(x, w, b, eps)` whose backward is the kernel above (CUDA only)."""

    @mx.custom_function
    def layer_norm(x, w, b):
        return mx.fast.layer_norm(x, w, b, eps)

    @layer_norm.vjp
    def layer_norm_vjp(primals, cotangent, output):
        x, w, _ = primals
        C = x.shape[-1]
        rows = x.size // C
        warps = WARPS * max(1, -(-rows // (WARPS * ROWS_PER_WARP)))
        dx, dw_part, db_part = _kernel(eps)(
            inputs=[x, w, cotangent], template=[("T", x.dtype), ("C", C), ("ROWS", rows)],
            grid=(warps * 32, 1, 1), threadgroup=(WARPS * 32, 1, 1),
            output_shapes=[x.shape, (warps, C), (warps, C)], output_dtypes=[x.dtype, mx.float32, mx.float32])
        ones = mx.ones((1, warps), mx.float32)
        return dx, (ones @ dw_part).reshape(-1).astype(w.dtype), (ones @ db_part).reshape(-1).astype(w.dtype)

    return layer_norm


def layer_norm(x: mx.array, w: mx.array, b: mx.array, eps: float, training: bool = True) -> mx.array:
    """Layer norm over the last axis, with the kernel's backward where it applies."""
    if training and kernel_available() and covers(x):
        return kernel_layer_norm(eps)(x, w, b)
    return mx.fast.layer_norm(x, w, b, eps)

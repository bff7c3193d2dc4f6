"""Layer norm's backward on an NVIDIA GPU: MLX's own against a hand-written CUDA kernel.

usage: python bench/layer_norm_vjp.py [--rows-per-warp 4]      one JSON line per shape
MLX's CUDA layer-norm backward writes a (rows, C) gain-gradient temporary in the activations' dtype
and sums it, and the bias gradient, with column reductions. The kernel here (one warp per row,
float32 gain/bias partials per warp, summed by a matrix product) is the candidate replacement:
each shape reports ms for forward + backward and the largest error of dx, dw, db against a
float64 reference, relative to the largest exact value. CUDA only: MLX's `mx.fast.cuda_kernel`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import mlx.core as mx
import numpy as np

from core import fused

WARPS = 8
EPS = 1e-5
SOURCE = """
    constexpr int PER = C / 32;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int gwarp = blockIdx.x * WARPS + warp;
    int nwarps = gridDim.x * WARPS;
    float wv[PER], dw_acc[PER], db_acc[PER];
    #pragma unroll
    for (int k = 0; k < PER; k++) {
      wv[k] = static_cast<float>(w[lane + 32 * k]);
      dw_acc[k] = 0.f; db_acc[k] = 0.f;
    }
    for (int row = gwarp; row < ROWS; row += nwarps) {
      const T* xr = x + (size_t)row * C;
      const T* gr = g + (size_t)row * C;
      float xv[PER], gv[PER];
      float s = 0.f, ss = 0.f, a = 0.f, b = 0.f;
      #pragma unroll
      for (int k = 0; k < PER; k++) { xv[k] = static_cast<float>(xr[lane + 32 * k]); s += xv[k]; }
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffff, s, o);
      float mean = s / C;
      #pragma unroll
      for (int k = 0; k < PER; k++) { float d = xv[k] - mean; ss += d * d; }
      for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffff, ss, o);
      float rstd = rsqrtf(ss / C + EPS_F);
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        gv[k] = static_cast<float>(gr[lane + 32 * k]);
        float xh = (xv[k] - mean) * rstd;
        xv[k] = xh;
        a += gv[k] * wv[k]; b += gv[k] * wv[k] * xh;
        dw_acc[k] += gv[k] * xh; db_acc[k] += gv[k];
      }
      for (int o = 16; o > 0; o /= 2) {
        a += __shfl_xor_sync(0xffffffff, a, o);
        b += __shfl_xor_sync(0xffffffff, b, o);
      }
      a /= C; b /= C;
      T* dxr = dx + (size_t)row * C;
      #pragma unroll
      for (int k = 0; k < PER; k++) dxr[lane + 32 * k] = static_cast<T>(rstd * (gv[k] * wv[k] - a - xv[k] * b));
    }
    #pragma unroll
    for (int k = 0; k < PER; k++) {
      dw_part[(size_t)gwarp * C + lane + 32 * k] = dw_acc[k];
      db_part[(size_t)gwarp * C + lane + 32 * k] = db_acc[k];
    }
"""


def kernel_layer_norm(rows_per_warp: int):
    """`mx.fast.layer_norm` whose backward is the kernel above."""
    kernel = mx.fast.cuda_kernel(name="layer_norm_vjp", input_names=["x", "w", "g"],
                                 output_names=["dx", "dw_part", "db_part"],
                                 header=f"#define WARPS {WARPS}\n#define EPS_F {EPS!r}f\n", source=SOURCE)

    @mx.custom_function
    def layer_norm(x, w, b):
        return mx.fast.layer_norm(x, w, b, EPS)

    @layer_norm.vjp
    def layer_norm_vjp(primals, cotangent, output):
        x, w, _ = primals
        C = x.shape[-1]
        rows = x.size // C
        warps = WARPS * max(1, -(-rows // (WARPS * rows_per_warp)))
        dx, dw_part, db_part = kernel(
            inputs=[x, w, cotangent], template=[("T", x.dtype), ("C", C), ("ROWS", rows)],
            grid=(warps * 32, 1, 1), threadgroup=(WARPS * 32, 1, 1),
            output_shapes=[x.shape, (warps, C), (warps, C)], output_dtypes=[x.dtype, mx.float32, mx.float32])
        return dx, fused._column_sum(dw_part).astype(w.dtype), fused._column_sum(db_part).astype(w.dtype)

    return layer_norm


def exact_vjp(x, w, g) -> tuple[np.ndarray, ...]:
    X, W, G = (np.asarray(a.astype(mx.float32), dtype=np.float64) for a in (x, w, g))
    X, G = X.reshape(-1, X.shape[-1]), G.reshape(-1, G.shape[-1])
    mean = X.mean(1, keepdims=True)
    rstd = 1 / np.sqrt(((X - mean) ** 2).mean(1, keepdims=True) + EPS)
    xh, gw = (X - mean) * rstd, G * W
    dx = rstd * (gw - gw.mean(1, keepdims=True) - xh * (gw * xh).mean(1, keepdims=True))
    return dx, (G * xh).sum(0), G.sum(0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows-per-warp", type=int, default=4)
    a = p.parse_args()
    if not (mx.default_device() == mx.gpu and mx.cuda.is_available()):
        sys.exit("layer_norm_vjp: needs MLX's CUDA backend on an NVIDIA GPU")
    ours = kernel_layer_norm(a.rows_per_warp)
    mlx_own = lambda x, w, b: mx.fast.layer_norm(x, w, b, EPS)  # noqa: E731
    for shape in ((16, 1024, 768), (8, 1024, 1024)):  # tiny batch 16, medium batch 8
        mx.random.seed(1)
        x = (mx.random.normal(shape) * 2 + 0.5).astype(mx.bfloat16)
        w = (1 + 0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        b = (0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        g = mx.random.normal(shape).astype(mx.bfloat16)
        exact = exact_vjp(x, w, g)
        out = {"shape": shape, "rows_per_warp": a.rows_per_warp}
        for name, f in (("mlx", mlx_own), ("kernel", ours)):
            vjp = mx.compile(lambda x, w, b, g, f=f: mx.vjp(f, [x, w, b], [g])[1])
            grads = vjp(x, w, b, g)
            out[f"{name}_rel_err_dx_dw_db"] = [
                round(float(np.abs(np.asarray(d.astype(mx.float32)).reshape(e.shape) - e).max() / np.abs(e).max()), 5)
                for d, e in zip(grads, exact)]
            for _ in range(5):
                mx.eval(vjp(x, w, b, g))
            t = time.perf_counter()
            for _ in range(50):
                mx.eval(vjp(x, w, b, g))
            out[f"{name}_ms"] = round((time.perf_counter() - t) / 50 * 1e3, 3)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

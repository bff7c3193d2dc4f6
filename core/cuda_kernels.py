"""Hand-written CUDA kernels for the training step's backward, where MLX's own are slow.

- Layer norm's backward: MLX's writes a (rows, C) temporary for the gain gradient and sums it and
  the bias gradient with column reductions that run on C / 32 thread blocks (24 for C = 768); each
  took ~0.3 ms of a ~37 ms tiny step. `layer_norm_vjp` reads x and the cotangent once (16-byte
  loads, a row per warp), writes dx, and sums the gain and bias gradients in float32 per block.
- Column sums (bias gradients): `column_sum` reads a (rows, n) array once over a grid of row
  chunks; a (1, rows) @ (rows, n) product, the portable way, goes through cuBLAS's split-K path
  with a separate reduce kernel and took ~3 ms of GPU time a tiny step.

Both sum in float32 and in a fixed order (deterministic), and assume rows start 16-byte aligned, as
fresh activations and their gradients do. They run through `mx.fast.cuda_kernel`, so only on MLX's
CUDA backend: callers check `available()` and `covers_*` and otherwise use MLX's operations
(Metal, CPU). bench/layer_norm_vjp.py checks them against float64 and times them.
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

LN_WARPS = 8  # warps per thread block; each warp normalises one row at a time
LN_ROWS_PER_WARP = 4  # the fastest of 4 or 8 warps x 2 to 16 rows on an H100, both presets
SUM_WARPS = 8
SUM_ROWS_PER_BLOCK = 256

LAYER_NORM_VJP = """
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
    // The block's warps add up their partial sums in a fixed order (deterministic): one row of
    // dw_part and db_part per block.
    __shared__ float red[WARPS * C];
    #pragma unroll
    for (int pass = 0; pass < 2; pass++) {
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        #pragma unroll
        for (int j = 0; j < VEC; j++) red[warp * C + (k * 32 + lane) * VEC + j] = pass ? db_acc[k][j] : dw_acc[k][j];
      }
      __syncthreads();
      float* part = pass ? db_part : dw_part;
      for (int c = threadIdx.x; c < C; c += WARPS * 32) {
        float t = 0.f;
        #pragma unroll
        for (int q = 0; q < WARPS; q++) t += red[q * C + c];
        part[(size_t)blockIdx.x * C + c] = t;
      }
      __syncthreads();
    }
"""

COLUMN_SUM = """
    constexpr int VEC = 16 / sizeof(T);           // columns per lane (one 16-byte load)
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int col0 = (blockIdx.x * 32 + lane) * VEC;
    int r0 = blockIdx.y * ROWS_PER_BLOCK;
    int r1 = min(r0 + ROWS_PER_BLOCK, R);
    float acc[VEC];
    #pragma unroll
    for (int j = 0; j < VEC; j++) acc[j] = 0.f;
    if (col0 < N) {
      #pragma unroll 8
      for (int r = r0 + warp; r < r1; r += WARPS) {
        uint4 raw = *reinterpret_cast<const uint4*>(z + (size_t)r * N + col0);
        const T* v = reinterpret_cast<const T*>(&raw);
        #pragma unroll
        for (int j = 0; j < VEC; j++) acc[j] += static_cast<float>(v[j]);
      }
    }
    __shared__ float red[WARPS * 32 * VEC];
    #pragma unroll
    for (int j = 0; j < VEC; j++) red[warp * 32 * VEC + lane * VEC + j] = acc[j];
    __syncthreads();
    for (int c = threadIdx.x; c < 32 * VEC; c += WARPS * 32) {
      int col = blockIdx.x * 32 * VEC + c;
      if (col < N) {
        float t = 0.f;
        #pragma unroll
        for (int q = 0; q < WARPS; q++) t += red[q * 32 * VEC + c];
        part[(size_t)blockIdx.y * N + col] = t;
      }
    }
"""


def available() -> bool:
    """Whether MLX runs on an NVIDIA GPU here."""
    try:
        return mx.default_device() == mx.gpu and mx.cuda.is_available()
    except AttributeError:  # an MLX without the cuda module
        return False


def _vec(a: mx.array) -> int:
    return 16 // a.dtype.size


def covers_layer_norm(x: mx.array) -> bool:
    """Rows read in 16-byte pieces, 32 lanes wide, held in registers: C a multiple of 32 pieces, <= 1024."""
    C = x.shape[-1]
    return x.dtype != mx.float64 and C % (32 * _vec(x)) == 0 and C <= 1024


def covers_column_sum(z2: mx.array) -> bool:
    return z2.ndim == 2 and z2.dtype in (mx.bfloat16, mx.float16, mx.float32) and z2.shape[1] % _vec(z2) == 0


@lru_cache(maxsize=None)
def _layer_norm_kernel(eps: float, warps: int):
    return mx.fast.cuda_kernel(name="acm_layer_norm_vjp", input_names=["x", "w", "g"],
                               output_names=["dx", "dw_part", "db_part"],
                               header=f"#define WARPS {warps}\n#define EPS_F {eps!r}f\n", source=LAYER_NORM_VJP)


@lru_cache(maxsize=None)
def _column_sum_kernel(warps: int, rows_per_block: int):
    return mx.fast.cuda_kernel(name="acm_column_sum", input_names=["z"], output_names=["part"],
                               header=f"#define WARPS {warps}\n#define ROWS_PER_BLOCK {rows_per_block}\n",
                               source=COLUMN_SUM)


def layer_norm_vjp(x: mx.array, w: mx.array, g: mx.array, eps: float) -> tuple[mx.array, mx.array, mx.array]:
    """dx (x's dtype), and the gain and bias gradients (float32), of `mx.fast.layer_norm(x, w, b, eps)`
    for the cotangent g."""
    C = x.shape[-1]
    rows = x.size // C
    blocks = max(1, -(-rows // (LN_WARPS * LN_ROWS_PER_WARP)))
    dx, dw_part, db_part = _layer_norm_kernel(eps, LN_WARPS)(
        inputs=[x, w, g], template=[("T", x.dtype), ("C", C), ("ROWS", rows)],
        grid=(blocks * LN_WARPS * 32, 1, 1), threadgroup=(LN_WARPS * 32, 1, 1),
        output_shapes=[x.shape, (blocks, C), (blocks, C)], output_dtypes=[x.dtype, mx.float32, mx.float32])
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)


def column_sum(z2: mx.array) -> mx.array:
    """The sum of a (rows, n) array over its rows, in float32."""
    R, N = z2.shape
    chunks = max(1, -(-R // SUM_ROWS_PER_BLOCK))
    col_blocks = -(-N // (32 * _vec(z2)))
    (part,) = _column_sum_kernel(SUM_WARPS, SUM_ROWS_PER_BLOCK)(
        inputs=[z2], template=[("T", z2.dtype), ("R", R), ("N", N)],
        grid=(col_blocks * SUM_WARPS * 32, chunks, 1), threadgroup=(SUM_WARPS * 32, 1, 1),
        output_shapes=[(chunks, N)], output_dtypes=[mx.float32])
    return part.sum(axis=0)

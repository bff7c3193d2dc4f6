"""Hand-written CUDA kernels for layer norm in training, where MLX's own are slow, alone and with the
residual addition before it (`add_layer_norm`: the sum is stored and normed in one pass, and its
backward adds the sum's other gradient; the bits of an addition followed by `layer_norm`).

Layer norm's backward: MLX's writes a (rows, C) temporary for the gain gradient and sums it and
the bias gradient with column reductions that run on C / 32 thread blocks (24 for C = 768); each
took ~0.3 ms of a ~37 ms tiny step. `layer_norm_vjp` reads x and the cotangent once (16-byte loads,
a row per warp), writes dx, and sums the gain and bias gradients in float32, per block in a fixed
order, then over blocks (deterministic). The forward, `layer_norm`, is the same row-per-warp
loop; MLX's took twice the time its reads and writes need. Both assume rows start 16-byte aligned,
as fresh activations and their gradients do. They run only on MLX's CUDA backend: callers check
`available()` and `covers_layer_norm` and otherwise use MLX's layer norm (Metal, CPU). Each is
compiled once per machine as a complete kernel (core/model/kernel_cache.py) and run with
`mx.fast.precompiled_cuda_kernel`; where that cannot compile, `mx.fast.cuda_kernel` compiles the same
body in each process. bench/cuda_kernels.py checks them against float64 and times them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import mlx.core as mx

from core.model import kernel_cache

LN_WARPS = 4  # warps per thread block; each warp normalises one row at a time
LN_ROWS_PER_WARP = 4  # the fastest launch shape on an H100 for both presets (bench/cuda_kernels.py)

# Float conversions the kernels' bodies use: through CUDA's types where MLX compiles them (its headers
# define __nv_bfloat16 and __half), and through the same instructions where they are compiled alone.
MLX_CONVERSIONS = """
__device__ __forceinline__ float acm_to_float(float v) { return v; }
__device__ __forceinline__ float acm_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float acm_to_float(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T acm_from_float(float v) { return static_cast<T>(v); }
"""

STANDALONE_CONVERSIONS = """
struct acm_bf16 { unsigned short bits; };
struct acm_f16 { unsigned short bits; };
__device__ __forceinline__ float acm_to_float(float v) { return v; }
__device__ __forceinline__ float acm_to_float(acm_bf16 v) { return __uint_as_float(((unsigned int)v.bits) << 16); }
__device__ __forceinline__ float acm_to_float(acm_f16 v) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits)); return f;
}
template <typename T> __device__ __forceinline__ T acm_from_float(float v);
template <> __device__ __forceinline__ float acm_from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ acm_bf16 acm_from_float<acm_bf16>(float v) {
  acm_bf16 r; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v)); return r;
}
template <> __device__ __forceinline__ acm_f16 acm_from_float<acm_f16>(float v) {
  acm_f16 r; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v)); return r;
}
"""

# Shared by both kernels (their `header`): a row's 16-byte pieces as floats, and its mean and 1 / std.
ROW_HELPERS = """
template <typename T, int PER, int VEC>
__device__ __forceinline__ void acm_unpack(const uint4 (&raw)[PER], float (&v)[PER][VEC]) {
  #pragma unroll
  for (int k = 0; k < PER; k++) {
    const T* p = reinterpret_cast<const T*>(&raw[k]);
    #pragma unroll
    for (int j = 0; j < VEC; j++) v[k][j] = acm_to_float(p[j]);
  }
}

template <int PER, int VEC>
__device__ __forceinline__ void acm_row_stats(const float (&v)[PER][VEC], int n, float eps, float& mean, float& rstd) {
  float s = 0.f, ss = 0.f;
  #pragma unroll
  for (int k = 0; k < PER; k++) {
    #pragma unroll
    for (int j = 0; j < VEC; j++) s += v[k][j];
  }
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffff, s, o);
  mean = s / n;
  #pragma unroll
  for (int k = 0; k < PER; k++) {
    #pragma unroll
    for (int j = 0; j < VEC; j++) { float d = v[k][j] - mean; ss += d * d; }
  }
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffff, ss, o);
  rstd = rsqrtf(ss / n + eps);
}

// The residual sum s = x + h of a row (x already in v), rounded to T, stored, and left in v: the
// bits an addition in T followed by a layer norm of its result would see.
template <typename T, int PER, int VEC>
__device__ __forceinline__ void acm_add_row(float (&v)[PER][VEC], const T* h, T* s, int lane) {
  const uint4* hr = reinterpret_cast<const uint4*>(h);
  uint4* sr = reinterpret_cast<uint4*>(s);
  uint4 hraw[PER];
  #pragma unroll
  for (int k = 0; k < PER; k++) hraw[k] = hr[k * 32 + lane];
  float hv[PER][VEC];
  acm_unpack<T, PER, VEC>(hraw, hv);
  #pragma unroll
  for (int k = 0; k < PER; k++) {
    uint4 out;
    T* os = reinterpret_cast<T*>(&out);
    #pragma unroll
    for (int j = 0; j < VEC; j++) {
      os[j] = acm_from_float<T>(v[k][j] + hv[k][j]);
      v[k][j] = acm_to_float(os[j]);
    }
    sr[k * 32 + lane] = out;
  }
}

// A 16-byte piece of T values plus another, each sum rounded to T.
template <typename T, int VEC>
__device__ __forceinline__ void acm_add_piece(uint4& piece, const uint4& other) {
  T* ps = reinterpret_cast<T*>(&piece);
  const T* gs = reinterpret_cast<const T*>(&other);
  #pragma unroll
  for (int j = 0; j < VEC; j++) ps[j] = acm_from_float<T>(acm_to_float(ps[j]) + acm_to_float(gs[j]));
}
"""

# Both kernels' start: a row per warp, read in 16-byte pieces, PER pieces a lane.
_ROW_PER_WARP = """
    constexpr int VEC = 16 / sizeof(T);           // elements per 16-byte load
    constexpr int PER = C / (32 * VEC);           // loads per lane per row
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int gwarp = blockIdx.x * WARPS + warp;
    int nwarps = gridDim.x * WARPS;
"""

LAYER_NORM = _ROW_PER_WARP + """
    float wv[PER][VEC], bv[PER][VEC];
    #pragma unroll
    for (int k = 0; k < PER; k++) {
      #pragma unroll
      for (int j = 0; j < VEC; j++) {
        wv[k][j] = acm_to_float(w[(k * 32 + lane) * VEC + j]);  // w, b may be unaligned: scalar loads
        bv[k][j] = acm_to_float(b[(k * 32 + lane) * VEC + j]);
      }
    }
    for (int row = gwarp; row < ROWS; row += nwarps) {
      const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)row * C);
      uint4 xraw[PER];
      #pragma unroll
      for (int k = 0; k < PER; k++) xraw[k] = xr[k * 32 + lane];
      float xv[PER][VEC], mean, rstd;
      acm_unpack<T, PER, VEC>(xraw, xv);
#if RESIDUAL
      // xv = s = x + h, rounded to T as s is stored
      acm_add_row<T, PER, VEC>(xv, h + (size_t)row * C, s + (size_t)row * C, lane);
#endif
      acm_row_stats<PER, VEC>(xv, C, EPS_F, mean, rstd);
      uint4* yr = reinterpret_cast<uint4*>(y + (size_t)row * C);
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        uint4 out;
        T* os = reinterpret_cast<T*>(&out);
        #pragma unroll
        for (int j = 0; j < VEC; j++) os[j] = acm_from_float<T>((xv[k][j] - mean) * rstd * wv[k][j] + bv[k][j]);
        yr[k * 32 + lane] = out;
      }
    }
"""

LAYER_NORM_VJP = _ROW_PER_WARP + """
    float wv[PER][VEC], dw_acc[PER][VEC], db_acc[PER][VEC];
    #pragma unroll
    for (int k = 0; k < PER; k++) {
      #pragma unroll
      for (int j = 0; j < VEC; j++) {
        wv[k][j] = acm_to_float(w[(k * 32 + lane) * VEC + j]);  // w may be unaligned: scalar loads
        dw_acc[k][j] = 0.f;
        db_acc[k][j] = 0.f;
      }
    }
    for (int row = gwarp; row < ROWS; row += nwarps) {
      const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)row * C);
      const uint4* gr = reinterpret_cast<const uint4*>(g + (size_t)row * C);
      uint4 xraw[PER], graw[PER];
#if RESIDUAL
      const uint4* sr = reinterpret_cast<const uint4*>(gs + (size_t)row * C);
      uint4 sraw[PER];  // the gradient s gets from its other readers
#endif
      #pragma unroll
      for (int k = 0; k < PER; k++) {  // all rows requested at once: one memory round trip per row
        xraw[k] = xr[k * 32 + lane];
        graw[k] = gr[k * 32 + lane];
#if RESIDUAL
        sraw[k] = sr[k * 32 + lane];
#endif
      }
      float xv[PER][VEC], gv[PER][VEC], mean, rstd, a = 0.f, b = 0.f;
      acm_unpack<T, PER, VEC>(xraw, xv);
      acm_unpack<T, PER, VEC>(graw, gv);
      acm_row_stats<PER, VEC>(xv, C, EPS_F, mean, rstd);
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
        for (int j = 0; j < VEC; j++) os[j] = acm_from_float<T>(rstd * (gv[k][j] * wv[k][j] - a - xv[k][j] * b));
#if RESIDUAL
        acm_add_piece<T, VEC>(out, sraw[k]);  // plus s's other gradient, rounded as MLX's addition would
#endif
        dxr[k * 32 + lane] = out;
      }
    }
    // The block's warps add up their partial sums in a fixed order (deterministic): one row of
    // gain and one of bias partials per block.
    __shared__ float red[WARPS * C];
    #pragma unroll
    for (int pass = 0; pass < 2; pass++) {
      #pragma unroll
      for (int k = 0; k < PER; k++) {
        #pragma unroll
        for (int j = 0; j < VEC; j++) red[warp * C + (k * 32 + lane) * VEC + j] = pass ? db_acc[k][j] : dw_acc[k][j];
      }
      __syncthreads();
      float* out = part + (size_t)pass * gridDim.x * C;  // part: (2, blocks, C), gain then bias
      for (int c = threadIdx.x; c < C; c += WARPS * 32) {
        float t = 0.f;
        #pragma unroll
        for (int q = 0; q < WARPS; q++) t += red[q * C + c];
        out[(size_t)blockIdx.x * C + c] = t;
      }
      __syncthreads();
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


def _defines(kind: str, eps: float, warps: int) -> str:
    return f"#define WARPS {warps}\n#define EPS_F {eps!r}f\n#define RESIDUAL {int(kind.startswith('add_'))}\n"


def _header(kind: str, eps: float, warps: int) -> str:
    return f"{_defines(kind, eps, warps)}{MLX_CONVERSIONS}{ROW_HELPERS}"


@dataclass(frozen=True)
class Kernel:
    """A kernel's inputs and outputs by name, its body, and the name of its one scalar: the count of
    rows or elements it covers (a template argument where MLX's JIT compiles it)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    body: str
    count: str = "ROWS"

    def params(self, out_types: tuple[str, ...]) -> str:
        """Its parameters as MLX passes them: inputs (the gain and bias typed W, the rest T), outputs,
        then the count."""
        ins = [f"const {'W' if n in ('w', 'b') else 'T'}* {n}" for n in self.inputs]
        return ", ".join([*ins, *(f"{t}* {n}" for t, n in zip(out_types, self.outputs)), f"int {self.count}"])

    def jit(self, name: str, header: str):
        """The kernel through `mx.fast.cuda_kernel` (compiled in each process)."""
        return mx.fast.cuda_kernel(name=name, input_names=list(self.inputs), output_names=list(self.outputs),
                                   header=header, source=self.body)


def run(compiled: tuple[str, bytes] | None, jit, inputs: list[mx.array], count: int, template: list,
        launch: dict) -> list[mx.array]:
    """A kernel's outputs: from its binary in the machine's cache where it compiled ((name, binary)),
    else through `jit`, MLX's per-process compile of the same body, with `template` (the count among it)."""
    if compiled is not None:
        name, binary = compiled
        return mx.fast.precompiled_cuda_kernel(name=name, compiled_source=binary, inputs=inputs, scalars=[count],
                                               ensure_row_contiguous=True, **launch)
    return jit(inputs=inputs, template=template, **launch)


KERNELS = {
    "layer_norm": Kernel(("x", "w", "b"), ("y",), LAYER_NORM),
    "layer_norm_vjp": Kernel(("x", "w", "g"), ("dx", "part"), LAYER_NORM_VJP),
    # the same, with a residual addition before (s = x + h) and its gradient added after
    "add_layer_norm": Kernel(("x", "h", "w", "b"), ("s", "y"), LAYER_NORM),
    "add_layer_norm_vjp": Kernel(("x", "w", "g", "gs"), ("dx", "part"), LAYER_NORM_VJP),
}
C_TYPES = {mx.float32: "float", mx.bfloat16: "acm_bf16", mx.float16: "acm_f16"}


def standalone_source(kind: str, name: str, x_dtype: mx.Dtype, w_dtype: mx.Dtype, C: int, eps: float,
                      warps: int) -> str:
    """A kernel's complete source, needing no header: what kernel_cache compiles."""
    k = KERNELS[kind]
    params = k.params(("T", "float") if kind.endswith("_vjp") else ("T", "T"))
    return (f"{STANDALONE_CONVERSIONS}\ntypedef {C_TYPES[x_dtype]} T;\ntypedef {C_TYPES[w_dtype]} W;\n"
            f"constexpr int C = {C};\n{_defines(kind, eps, warps)}{ROW_HELPERS}\n"
            f'extern "C" __global__ void {name}({params}) {{\n{k.body}\n}}\n')


@cache
def _precompiled(kind: str, x_dtype: mx.Dtype, w_dtype: mx.Dtype, C: int, eps: float,
                 warps: int) -> tuple[str, bytes] | None:
    """(kernel name, binary) from the machine's kernel cache, or None where it cannot compile."""
    if x_dtype not in C_TYPES or w_dtype not in C_TYPES:
        return None
    name = f"acm_{kind}_{C_TYPES[x_dtype]}_{C_TYPES[w_dtype]}_{C}_{warps}"
    data = kernel_cache.binary(name, standalone_source(kind, name, x_dtype, w_dtype, C, eps, warps))
    return (name, data) if data else None


@cache
def _jit_kernel(kind: str, eps: float, warps: int):
    """The same kernel through `mx.fast.cuda_kernel` (compiled in each process)."""
    return KERNELS[kind].jit(f"acm_{kind}", _header(kind, eps, warps))


def _launch(kind: str, inputs: list[mx.array], eps: float, blocks: int, output_shapes: list,
            output_dtypes: list) -> list[mx.array]:
    """Run kernel `kind` over `inputs` (in KERNELS' order) on `blocks` blocks of LN_WARPS warps."""
    x, w = inputs[0], inputs[KERNELS[kind].inputs.index("w")]
    C = x.shape[-1]
    rows = x.size // C
    launch = {"grid": (blocks * LN_WARPS * 32, 1, 1), "threadgroup": (LN_WARPS * 32, 1, 1),
              "output_shapes": output_shapes, "output_dtypes": output_dtypes}
    return run(_precompiled(kind, x.dtype, w.dtype, C, eps, LN_WARPS), _jit_kernel(kind, eps, LN_WARPS), inputs,
               rows, [("T", x.dtype), ("C", C), ("ROWS", rows)], launch)


def _blocks(rows: int) -> int:
    return max(1, -(-rows // (LN_WARPS * LN_ROWS_PER_WARP)))


def layer_norm(x: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    """`mx.fast.layer_norm(x, w, b, eps)`: a row per warp, 16-byte loads and stores, float32 inside."""
    rows = x.size // x.shape[-1]
    (y,) = _launch("layer_norm", [x, w, b], eps, _blocks(rows), [x.shape], [x.dtype])
    return y


def layer_norm_vjp(x: mx.array, w: mx.array, g: mx.array, eps: float) -> tuple[mx.array, mx.array, mx.array]:
    """dx, and the gain and bias gradients (summed in float32, returned in w's dtype), of
    `mx.fast.layer_norm(x, w, b, eps)` for the cotangent g."""
    C = x.shape[-1]
    blocks = _blocks(x.size // C)
    dx, part = _launch("layer_norm_vjp", [x, w, g], eps, blocks, [x.shape, (2, blocks, C)], [x.dtype, mx.float32])
    dw, db = part.sum(axis=1).astype(w.dtype)
    return dx, dw, db


def add_layer_norm(x: mx.array, h: mx.array, w: mx.array, b: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    """(s, layer_norm(s)) for the residual sum s = x + h, in one pass: the bits of `x + h` followed
    by `layer_norm`, without the addition's kernel and its extra reads and writes."""
    rows = x.size // x.shape[-1]
    s, y = _launch("add_layer_norm", [x, h, w, b], eps, _blocks(rows), [x.shape, x.shape], [x.dtype, x.dtype])
    return s, y


def add_layer_norm_vjp(s: mx.array, w: mx.array, g: mx.array, gs: mx.array,
                       eps: float) -> tuple[mx.array, mx.array, mx.array]:
    """The gradient of both addends, and the gain and bias gradients, of `add_layer_norm` for the
    cotangents gs (of s) and g (of the layer norm): `layer_norm_vjp(s, w, g)`'s dx plus gs, rounded
    as MLX's addition of the two would be."""
    C = s.shape[-1]
    blocks = _blocks(s.size // C)
    d, part = _launch("add_layer_norm_vjp", [s, w, g, gs], eps, blocks, [s.shape, (2, blocks, C)],
                      [s.dtype, mx.float32])
    dw, db = part.sum(axis=1).astype(w.dtype)
    return d, dw, db

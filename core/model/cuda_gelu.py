"""The MLP's GELU in training as hand-written CUDA kernels: 16-byte loads and stores, float32 inside.

MLX's compiled elementwise kernels for GELU and its backward took 1.5-2x the time their reads and
writes need (bench/RESULTS.md), and the backward was two of them, each reading the (B, T, 4C)
pre-activation h. `gelu_vjp` reads the incoming gradient and h once and writes both the gradient
of h and the recomputed activation the weight gradient needs. The formulas are `core.model.fused`'s
(GPT-2's tanh approximation, written with a sigmoid) evaluated in float32, not rounded to the
array's dtype after every operation as MLX's kernels round. Like `cuda_kernels`, each kernel is
compiled once per machine (core/model/kernel_cache.py), with `mx.fast.cuda_kernel` as the fallback;
callers check `covers` and otherwise use the formulas through MLX (Metal, CPU).
"""
from __future__ import annotations

from functools import cache

import mlx.core as mx

from core.model import cuda_kernels, kernel_cache
from core.model.cuda_kernels import Kernel

THREADS = 256
GELU_K2 = 2 * 0.7978845608028654  # 2 sqrt(2 / pi)
GELU_C = 0.044715

# One element of h: its activation a = h sigmoid(u), u = 2K h (1 + C h^2), and a's slope.
ELEMENT = f"""
__device__ __forceinline__ float acm_gelu(float x, float& slope) {{
  float q = x * x;
  float s = 1.f / (1.f + __expf(-{GELU_K2!r}f * x * (1.f + {GELU_C!r}f * q)));
  slope = s + {GELU_K2!r}f * x * s * (1.f - s) * (1.f + {3 * GELU_C!r}f * q);
  return x * s;
}}
"""

_LOOP = """
    constexpr int VEC = 16 / sizeof(T);
    size_t pieces = (size_t)N / VEC;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < pieces; i += (size_t)gridDim.x * blockDim.x) {
      uint4 hraw = reinterpret_cast<const uint4*>(h)[i];
      const T* hs = reinterpret_cast<const T*>(&hraw);
"""

GELU = _LOOP + """
      uint4 araw;
      T* as = reinterpret_cast<T*>(&araw);
      #pragma unroll
      for (int j = 0; j < VEC; j++) {
        float slope;
        as[j] = acm_from_float<T>(acm_gelu(acm_to_float(hs[j]), slope));
      }
      reinterpret_cast<uint4*>(a)[i] = araw;
    }
"""

GELU_VJP = _LOOP + """
      uint4 graw = reinterpret_cast<const uint4*>(g)[i];
      const T* gs = reinterpret_cast<const T*>(&graw);
      uint4 draw, araw;
      T* ds = reinterpret_cast<T*>(&draw);
      T* as = reinterpret_cast<T*>(&araw);
      #pragma unroll
      for (int j = 0; j < VEC; j++) {
        float slope;
        as[j] = acm_from_float<T>(acm_gelu(acm_to_float(hs[j]), slope));
        ds[j] = acm_from_float<T>(acm_to_float(gs[j]) * slope);
      }
      reinterpret_cast<uint4*>(dh)[i] = draw;
      reinterpret_cast<uint4*>(a)[i] = araw;
    }
"""

KERNELS = {"gelu": Kernel(("h",), ("a",), GELU, "N"), "gelu_vjp": Kernel(("g", "h"), ("dh", "a"), GELU_VJP, "N")}


def covers(h: mx.array) -> bool:
    """Where the kernels run: MLX on an NVIDIA GPU, and whole 16-byte pieces of a float type."""
    return (h.dtype in cuda_kernels.C_TYPES and h.size % (16 // h.dtype.size) == 0 and h.size < 2**31
            and cuda_kernels.available())


def standalone_source(kind: str, name: str, dtype: mx.Dtype) -> str:
    """A kernel's complete source, needing no header: what kernel_cache compiles."""
    k = KERNELS[kind]
    params = k.params(("T",) * len(k.outputs))
    return (f"{cuda_kernels.STANDALONE_CONVERSIONS}\ntypedef {cuda_kernels.C_TYPES[dtype]} T;\n{ELEMENT}\n"
            f'extern "C" __global__ void {name}({params}) {{\n{k.body}\n}}\n')


@cache
def _precompiled(kind: str, dtype: mx.Dtype) -> tuple[str, bytes] | None:
    name = f"acm_{kind}_{cuda_kernels.C_TYPES[dtype]}"
    data = kernel_cache.binary(name, standalone_source(kind, name, dtype))
    return (name, data) if data else None


@cache
def _jit_kernel(kind: str):
    return KERNELS[kind].jit(f"acm_{kind}", cuda_kernels.MLX_CONVERSIONS + ELEMENT)


def _launch(kind: str, inputs: list[mx.array]) -> list[mx.array]:
    h, outputs = inputs[-1], len(KERNELS[kind].outputs)
    pieces = h.size // (16 // h.dtype.size)
    launch = {"grid": (max(1, -(-pieces // THREADS)) * THREADS, 1, 1), "threadgroup": (THREADS, 1, 1),
              "output_shapes": [h.shape] * outputs, "output_dtypes": [h.dtype] * outputs}
    return cuda_kernels.run(_precompiled(kind, h.dtype), _jit_kernel(kind), inputs, h.size,
                            [("T", h.dtype), ("N", h.size)], launch)


def gelu(h: mx.array) -> mx.array:
    """`fused.gelu(h)` in one pass."""
    (a,) = _launch("gelu", [h])
    return a


def gelu_vjp(g: mx.array, h: mx.array) -> tuple[mx.array, mx.array]:
    """(g times GELU's slope at h, GELU(h)) in one pass over g and h."""
    dh, a = _launch("gelu_vjp", [g, h])
    return dh, a

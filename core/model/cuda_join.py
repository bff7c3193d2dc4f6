"""Arrays joined side by side in one CUDA kernel, where MLX's concatenation launches a copy per array.

Two joins run every training step. The flat gradient of each optimizer buffer joins one piece per
parameter (about 150 for tiny, most of them a bias or a gain of 768 values): MLX copies each piece
with a kernel of its own, and the trace of a tiny step put 0.65 ms on those copies, where reading
and writing the bytes takes about 0.1 ms. The attention's q, k and v gradients are joined into the
(B, T, 3C) gradient of the projection that made them: three strided copies a layer.

`join(parts, widths)` writes, row after row, each part's row side by side, with None for a stretch
of zeros (an unused parameter, the buffer's padding): one kernel, 16-byte loads and stores, the
same bits as `mx.concatenate`. The layout (the parts' widths) is baked into the kernel's source, so
a layout compiles once per machine (core/model/kernel_cache.py), with `mx.fast.cuda_kernel` as the
fallback; `covers` says where it runs (MLX on an NVIDIA GPU, every width whole 16-byte pieces) and
`joined` falls back to MLX's concatenation elsewhere (Metal, CPU).
"""
from __future__ import annotations

import hashlib
from functools import cache
from itertools import accumulate

import mlx.core as mx

from core.model import cuda_kernels, kernel_cache

THREADS = 128
THREADS_IN_FLIGHT = 1 << 20  # enough to fill any GPU; the loops cover the rest
MAX_PARTS = 480  # a pointer each at most: within the 4 KB of parameters any CUDA kernel may take

# A thread takes one 16-byte unit u of a row (VEC values): finds the part whose columns hold it (a
# binary search over the parts' starting columns) once, then copies that unit of every row its block
# row covers, or writes zeros where the part is None. Rows step by the part's width in the source and
# by the total in the output, so a thread's loop is pointer arithmetic and 16-byte copies.
BODY = """
    constexpr int VEC = 16 / sizeof(T);
    constexpr int UNITS = (int)(ACM_TOTAL / VEC);
    for (int u = blockIdx.x * blockDim.x + threadIdx.x; u < UNITS; u += gridDim.x * blockDim.x) {
      long long col = (long long)u * VEC;
      int lo = 0, hi = ACM_PARTS - 1;
      while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ACM_START[mid] <= col) lo = mid; else hi = mid - 1;
      }
      const T* src = nullptr;
      switch (lo) {
ACM_CASES
      }
      long long width = ACM_START[lo + 1] - ACM_START[lo];
      uint4* dst = reinterpret_cast<uint4*>(out) + u;
      if (src == nullptr) {
        uint4 zero;
        zero.x = zero.y = zero.z = zero.w = 0u;
        for (int row = blockIdx.y; row < ROWS; row += gridDim.y) dst[(size_t)row * UNITS] = zero;
        continue;
      }
      src += col - ACM_START[lo];
      if ((reinterpret_cast<size_t>(src) & 15) == 0) {  // every row then too: widths are whole pieces
        for (int row = blockIdx.y; row < ROWS; row += gridDim.y)
          dst[(size_t)row * UNITS] = *reinterpret_cast<const uint4*>(src + row * width);
      } else {  // a view that starts inside a 16-byte piece
        for (int row = blockIdx.y; row < ROWS; row += gridDim.y) {
          uint4 v;
          T* vs = reinterpret_cast<T*>(&v);
          #pragma unroll
          for (int j = 0; j < VEC; j++) vs[j] = src[row * width + j];
          dst[(size_t)row * UNITS] = v;
        }
      }
    }
"""


def covers(parts: list[mx.array | None], widths: list[int], dtype: mx.Dtype) -> bool:
    """Whether the kernel joins these: MLX on an NVIDIA GPU, a float type, every width whole 16-byte
    pieces (under 2^31 of them a row), at most MAX_PARTS parts with at least one array, all of `dtype`."""
    if dtype not in cuda_kernels.C_TYPES or len(parts) > MAX_PARTS:
        return False
    vec = 16 // dtype.size
    arrays = [p for p in parts if p is not None]
    return (bool(arrays) and all(p.dtype == dtype for p in arrays) and all(w > 0 and w % vec == 0 for w in widths)
            and sum(widths) // vec < 2**31 and cuda_kernels.available())


def _layout(widths: tuple[int, ...], present: tuple[bool, ...]) -> tuple[str, str]:
    """(header, body): the parts' starting columns as constants, and the body with its cases, which
    kernel argument each present part is."""
    starts = [0, *accumulate(widths)]
    args = iter(range(sum(present)))
    cases = "\n".join(f"        case {j}: src = p{next(args)}; break;" for j, here in enumerate(present) if here)
    header = (f"#define ACM_PARTS {len(widths)}\n#define ACM_TOTAL {starts[-1]}LL\n"
              f"__constant__ long long ACM_START[{len(starts)}] = {{{', '.join(f'{s}LL' for s in starts)}}};\n")
    return header, BODY.replace("ACM_CASES", cases)


def _name(widths: tuple[int, ...], present: tuple[bool, ...], dtype: mx.Dtype) -> str:
    """A name of the layout's own: MLX's JIT keeps kernels by name, and the cache files are named by it."""
    key = hashlib.sha256(repr((widths, present)).encode()).hexdigest()[:16]
    return f"acm_join_{cuda_kernels.C_TYPES[dtype]}_{key}"


def standalone_source(widths: tuple[int, ...], present: tuple[bool, ...], dtype: mx.Dtype) -> str:
    """The kernel's complete source, needing no header: what kernel_cache compiles."""
    header, body = _layout(widths, present)
    ins = ", ".join(f"const T* p{i}" for i in range(sum(present)))
    return (f"{cuda_kernels.STANDALONE_CONVERSIONS}\ntypedef {cuda_kernels.C_TYPES[dtype]} T;\n{header}"
            f'extern "C" __global__ void {_name(widths, present, dtype)}({ins}, T* out, int ROWS) {{\n{body}\n}}\n')


@cache
def _precompiled(widths: tuple[int, ...], present: tuple[bool, ...], dtype: mx.Dtype) -> tuple[str, bytes] | None:
    """(kernel name, binary) from the machine's kernel cache, or None where it cannot compile."""
    name = _name(widths, present, dtype)
    data = kernel_cache.binary(name, standalone_source(widths, present, dtype))
    return (name, data) if data else None


@cache
def _jit_kernel(widths: tuple[int, ...], present: tuple[bool, ...], dtype: mx.Dtype):
    """The same kernel through `mx.fast.cuda_kernel` (compiled in each process)."""
    header, body = _layout(widths, present)
    return mx.fast.cuda_kernel(name=_name(widths, present, dtype), input_names=[f"p{i}" for i in range(sum(present))],
                               output_names=["out"], header=header, source=body)


def _rows(parts: list[mx.array | None], widths: list[int]) -> int:
    """How many rows the parts have, from the first one present (part j holds widths[j] a row)."""
    first = next(j for j, p in enumerate(parts) if p is not None)
    return parts[first].size // widths[first]


def join(parts: list[mx.array | None], widths: list[int], dtype: mx.Dtype) -> mx.array:
    """The parts' rows side by side, as one flat array of rows * sum(widths) values: part j holds
    `widths[j]` values a row (None: zeros). Callers check `covers` first."""
    rows = _rows(parts, widths)
    arrays = [p for p in parts if p is not None]
    total = sum(widths)
    present = tuple(p is not None for p in parts)
    units = total // (16 // dtype.size)  # a row's
    across = min(-(-units // THREADS), THREADS_IN_FLIGHT // THREADS)
    down = max(1, min(rows, 65535, THREADS_IN_FLIGHT // (across * THREADS)))
    launch = {"grid": (across * THREADS, down, 1), "threadgroup": (THREADS, 1, 1),
              "output_shapes": [(rows * total,)], "output_dtypes": [dtype]}
    key = (tuple(widths), present, dtype)
    (out,) = cuda_kernels.run(_precompiled(*key), _jit_kernel(*key), arrays, rows,
                              [("T", dtype), ("ROWS", rows)], launch)
    return out


def joined(parts: list[mx.array | None], widths: list[int], dtype: mx.Dtype) -> mx.array:
    """`join` where the kernel covers the parts, else MLX's concatenation of the same (flat; parts that
    are all None: one row of zeros)."""
    if covers(parts, widths, dtype):
        return join(parts, widths, dtype)
    if all(p is None for p in parts):
        return mx.zeros((sum(widths),), dtype)
    rows = _rows(parts, widths)
    pieces = [mx.zeros((rows, w), dtype) if p is None else p.reshape(rows, w).astype(dtype)
              for p, w in zip(parts, widths)]
    if rows == 1:  # along the only axis: each piece one contiguous copy
        return mx.concatenate([p.reshape(-1) for p in pieces])
    return mx.concatenate(pieces, axis=1).reshape(-1)

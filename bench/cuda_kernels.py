"""acm's CUDA kernels (core/model/cuda_kernels.py) against MLX's own layer norm, on an NVIDIA GPU.

usage: python bench/cuda_kernels.py [--ln-configs 8:4,4:8] [--parts joins,gelus]      one JSON line per shape
Layer norm, forward alone and forward + backward: MLX's (its backward writes a (rows, C)
gain-gradient temporary and sums it with column reductions) against acm's kernels at each
WARPS:ROWS_PER_WARP launch shape.
Each reports ms (calls queued back to back) and the largest error against a float64 reference,
relative to the largest exact value, and whether acm's kernels compiled alone (the machine's kernel
cache) give the same bits as the same bodies compiled by `mx.fast.cuda_kernel`. Then the residual
addition inside the layer norm (`add_layer_norm`) against an addition before it: whether both give
the same bits forward and backward, and their times. Then the MLP's GELU, forward and backward,
as kernels against MLX's compiled formulas. Then the joins (core/model/cuda_join.py): a tiny and a
medium model's flat gradients for each optimizer (MLX's concatenation of one piece per parameter
against one kernel) and the attention's q, k, v gradients joined into (B, T, 3C). CUDA only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from core.model import cuda_gelu, cuda_join, fused
from core.model import cuda_kernels as ck
from core.model import layer_norm as ln
from core.model.gpt import GPT
from core.presets import get_preset
from core.train.optimizer import FlatAdamW

EPS = 1e-5


def exact_layer_norm_vjp(x, w, g) -> tuple[np.ndarray, ...]:
    X, W, G = (np.asarray(a.astype(mx.float32), dtype=np.float64) for a in (x, w, g))
    X, G = X.reshape(-1, X.shape[-1]), G.reshape(-1, G.shape[-1])
    mean = X.mean(1, keepdims=True)
    rstd = 1 / np.sqrt(((X - mean) ** 2).mean(1, keepdims=True) + EPS)
    xh, gw = (X - mean) * rstd, G * W
    dx = rstd * (gw - gw.mean(1, keepdims=True) - xh * (gw * xh).mean(1, keepdims=True))
    return dx, (G * xh).sum(0), G.sum(0)


def exact_layer_norm(x, w, b) -> np.ndarray:
    X, W, B = (np.asarray(a.astype(mx.float32), dtype=np.float64) for a in (x, w, b))
    mean = X.mean(-1, keepdims=True)
    return (X - mean) / np.sqrt(((X - mean) ** 2).mean(-1, keepdims=True) + EPS) * W + B


def rel_err(got: mx.array, exact: np.ndarray) -> float:
    got = np.asarray(got.astype(mx.float32)).reshape(exact.shape)
    return round(float(np.abs(got - exact).max() / np.abs(exact).max()), 5)


def timed_ms(fn, *args, reps: int = 50) -> float:
    """ms per call with the calls queued back to back (no wait between them), after a warm-up."""
    mx.eval(fn(*args))
    t = time.perf_counter()
    mx.eval([fn(*args) for _ in range(reps)])
    return round((time.perf_counter() - t) / reps * 1e3, 4)


def with_launch_shape(config: str):
    """acm's layer norm with its backward launched as WARPS:ROWS_PER_WARP."""
    warps, rows = (int(v) for v in config.split(":"))

    def f(x, w, b):
        ck.LN_WARPS, ck.LN_ROWS_PER_WARP = warps, rows  # read when the backward is traced
        ln.kernel_layer_norm.cache_clear()
        return ln.kernel_layer_norm(EPS)(x, w, b)

    return f


@contextlib.contextmanager
def through_mlx_jit():
    """acm's kernels compiled by `mx.fast.cuda_kernel` instead of taken from the kernel cache, for the
    forward and the backward alike (mx.vjp runs the backward after the forward has returned)."""
    saved = ck._precompiled, cuda_gelu._precompiled, cuda_join._precompiled
    ck._precompiled = cuda_gelu._precompiled = cuda_join._precompiled = lambda *a: None
    clear = lambda: (ln.kernel_layer_norm.cache_clear(), ln.kernel_add_layer_norm.cache_clear())  # noqa: E731
    clear()
    try:
        yield
    finally:
        ck._precompiled, cuda_gelu._precompiled, cuda_join._precompiled = saved
        clear()


def same_bits(f, x, w, b, g) -> bool:
    """Whether `f`'s output and its vjp are the same bits from the kernel cache and through MLX's JIT."""
    def outputs():
        out = [f(x, w, b), *mx.vjp(f, [x, w, b], [g])[1]]
        mx.eval(out)
        return out
    cached = outputs()
    with through_mlx_jit():
        jit = outputs()
    return all(a.dtype == c.dtype and mx.array_equal(a, c).item() for a, c in zip(cached, jit))


def layer_norms(configs: str) -> None:
    mlx_own = lambda x, w, b: mx.fast.layer_norm(x, w, b, EPS)  # noqa: E731
    for shape in ((16, 1024, 768), (8, 1024, 1024)):  # tiny batch 16, medium batch 8
        mx.random.seed(1)
        x = (mx.random.normal(shape) * 2 + 0.5).astype(mx.bfloat16)
        w = (1 + 0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        b = (0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        g = mx.random.normal(shape).astype(mx.bfloat16)
        exact = exact_layer_norm_vjp(x, w, g)
        exact_y = exact_layer_norm(x, w, b)
        variants = [("mlx", mlx_own)]
        for config in configs.split(","):
            variants.append((f"kernel_{config}", with_launch_shape(config)))
        out = {"op": "layer_norm", "shape": shape}
        for name, f in variants:
            fwd = mx.compile(f)
            out[f"{name}_rel_err_y"] = rel_err(fwd(x, w, b), exact_y)
            out[f"{name}_fwd_ms"] = timed_ms(fwd, x, w, b)
            vjp = mx.compile(lambda x, w, b, g, f=f: mx.vjp(f, [x, w, b], [g])[1])
            out[f"{name}_rel_err_dx_dw_db"] = [rel_err(d, e) for d, e in zip(vjp(x, w, b, g), exact)]
            out[f"{name}_ms"] = timed_ms(vjp, x, w, b, g)
        default = with_launch_shape(f"{ck.LN_WARPS}:{ck.LN_ROWS_PER_WARP}")
        out["from_kernel_cache"] = ck._precompiled("layer_norm_vjp", x.dtype, w.dtype, shape[-1], EPS,
                                                   ck.LN_WARPS) is not None
        out["kernel_cache_equals_mlx_jit"] = same_bits(default, x, w, b, g)
        print(json.dumps(out), flush=True)


def unfused_add_layer_norm(x, h, w, b):
    """The residual addition as its own kernel, then acm's layer norm: what `add_layer_norm` replaces."""
    s = x + h
    return s, ln.kernel_layer_norm(EPS)(s, w, b)


def fused_add_layer_norm(x, h, w, b):
    return ln.kernel_add_layer_norm(EPS)(x, h, w, b)


def add_layer_norms() -> None:
    """The residual addition inside the layer norm against before it: the same bits forward and
    backward (the fused backward rounds as MLX's addition of the two gradients does), and the time."""
    for shape in ((16, 1024, 768), (8, 1024, 1024), (1, 1, 768)):  # tiny 16, medium 8, one decoding token
        mx.random.seed(2)
        x, h, gs, g = ((mx.random.normal(shape) * 2 + 0.5).astype(mx.bfloat16) for _ in range(4))
        w = (1 + 0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        b = (0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        out, results = {"op": "add_layer_norm", "shape": shape}, {}

        def outputs(f, args=(x, h, w, b), cotangents=(gs, g)):
            return [*f(*args), *mx.vjp(f, list(args), list(cotangents))[1]]

        for name, f in (("unfused", unfused_add_layer_norm), ("fused", fused_add_layer_norm)):
            fwd = mx.compile(f)
            vjp = mx.compile(lambda x, h, w, b, gs, g, f=f: mx.vjp(f, [x, h, w, b], [gs, g])[1])
            results[name] = outputs(f)
            out[f"{name}_fwd_ms"] = timed_ms(fwd, x, h, w, b)
            out[f"{name}_ms"] = timed_ms(vjp, x, h, w, b, gs, g)
        with through_mlx_jit():
            results["jit"] = outputs(fused_add_layer_norm)
        for key, other in (("fused_equals_unfused", "unfused"), ("kernel_cache_equals_mlx_jit", "jit")):
            out[key] = all(mx.array_equal(a, c).item() for a, c in zip(results["fused"], results[other]))
        print(json.dumps(out), flush=True)


def exact_gelu(h, g) -> tuple[np.ndarray, np.ndarray]:
    """(g times GELU's slope at h, GELU(h)) in float64."""
    H, G = (np.asarray(a.astype(mx.float32), dtype=np.float64) for a in (h, g))
    u = math.sqrt(2 / math.pi) * (H + 0.044715 * H**3)
    t = np.tanh(u)
    slope = 0.5 * (1 + t) + 0.5 * H * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * H * H)
    return G * slope, 0.5 * H * (1 + t)


def mlx_gelu_vjp(g, h):
    return g * fused._gelu_slope(h), fused._gelu_again(h)


def gelus() -> None:
    """The MLP's GELU, forward and backward (core/model/cuda_gelu.py) against MLX's compiled formulas
    (core/model/fused.py): time, error against float64, and the kernel cache's bits against MLX's JIT."""
    for shape in ((16, 1024, 3072), (8, 1024, 4096)):  # tiny batch 16, medium batch 8
        mx.random.seed(3)
        h, g = ((mx.random.normal(shape) * 2).astype(mx.bfloat16) for _ in range(2))
        exact_dh, exact_a = exact_gelu(h, g)
        out = {"op": "gelu", "shape": shape}
        for name, fwd, vjp in (("mlx", mx.compile(fused.gelu), mx.compile(mlx_gelu_vjp)),
                               ("kernel", cuda_gelu.gelu, cuda_gelu.gelu_vjp)):
            out[f"{name}_rel_err_a"] = rel_err(fwd(h), exact_a)
            out[f"{name}_fwd_ms"] = timed_ms(fwd, h)
            out[f"{name}_vjp_rel_err_dh_a"] = [rel_err(d, e) for d, e in zip(vjp(g, h), (exact_dh, exact_a))]
            out[f"{name}_vjp_ms"] = timed_ms(vjp, g, h)
        cached = [cuda_gelu.gelu(h), *cuda_gelu.gelu_vjp(g, h)]
        with through_mlx_jit():
            jit = [cuda_gelu.gelu(h), *cuda_gelu.gelu_vjp(g, h)]
        out["from_kernel_cache"] = cuda_gelu._precompiled("gelu_vjp", h.dtype) is not None
        out["kernel_cache_equals_mlx_jit"] = all(mx.array_equal(a, c).item() for a, c in zip(cached, jit))
        print(json.dumps(out), flush=True)


@contextlib.contextmanager
def mlx_concatenation():
    """Joins by MLX's concatenation, as before core/model/cuda_join.py."""
    saved = cuda_join.covers
    cuda_join.covers = lambda *a: False
    try:
        yield
    finally:
        cuda_join.covers = saved


def compare_join(out: dict, f, *args) -> None:
    """`f(*args)` through the kernel and through MLX's concatenation: times, and whether all three
    (kernel cache, MLX's JIT of the kernel, MLX's concatenation) give the same bits."""
    out["kernel_ms"] = timed_ms(f, *args)
    kernel = f(*args)
    with through_mlx_jit():
        jit = f(*args)
    with mlx_concatenation():
        out["mlx_ms"] = timed_ms(f, *args)
        plain = f(*args)
    flat = lambda r: r if isinstance(r, mx.array) else mx.concatenate(list(r.values()))  # noqa: E731
    kernel, jit, plain = flat(kernel), flat(jit), flat(plain)
    out["same_bits_as_mlx"] = mx.array_equal(kernel, plain).item()
    out["kernel_cache_equals_mlx_jit"] = mx.array_equal(kernel, jit).item()
    print(json.dumps(out), flush=True)


def odd_joins() -> None:
    """Layouts a step does not make, against MLX's concatenation: a missing first part, views that
    start inside a 16-byte piece, several rows, float32 as well as bfloat16."""
    for dtype in (mx.bfloat16, mx.float32):
        vec = 16 // dtype.size
        rows, widths = 37, [vec, 3 * vec, 2 * vec, vec]
        flat = mx.random.normal((rows * 8 * vec + 1,)).astype(dtype)
        shifted = flat[1:1 + rows * 3 * vec].reshape(rows, 3 * vec)  # one value past a 16-byte boundary
        whole = mx.random.normal((rows, 2 * vec)).astype(dtype)
        for parts in ([None, shifted, whole, None], [whole[:, :vec], shifted, None, whole[:, vec:]]):
            mx.eval([p for p in parts if p is not None])
            kernel = cuda_join.join(parts, widths, dtype)
            with mlx_concatenation():
                plain = cuda_join.joined(parts, widths, dtype)
            print(json.dumps({"op": "odd_join", "dtype": str(dtype), "rows": rows, "widths": widths,
                              "missing": [p is None for p in parts],
                              "same_bits_as_mlx": mx.array_equal(kernel, plain).item()}), flush=True)


def joins() -> None:
    """The flat gradients of tiny and medium (bf16, each optimizer's buffers) and the attention's
    q, k, v gradients joined, by the kernel and by MLX's concatenation."""
    for preset, batch in (("tiny", 16), ("medium", 8)):
        shape = get_preset(preset).with_vocab(16000)
        model = GPT(shape, "bfloat16")
        for optimizer, muon_lr in (("adamw", None), ("muon", 0.02)):
            opt = FlatAdamW(model.parameters(), 1e-3, 0.1, mx.bfloat16, muon_lr=muon_lr)
            grads = tree_map(lambda p: mx.random.normal(p.shape).astype(mx.bfloat16), model.parameters())
            mx.eval(grads)
            compare_join({"op": "flat_gradient", "preset": preset, "optimizer": optimizer,
                          "pieces": len(opt.slots)}, opt.pack_gradients, grads, mx.bfloat16)
        C = shape.n_embd
        qkv = [mx.random.normal((batch, 1024, C)).astype(mx.bfloat16) for _ in range(3)]
        mx.eval(qkv)
        compare_join({"op": "qkv_gradient", "preset": preset, "shape": (batch, 1024, C)},
                     lambda *p, C=C: cuda_join.joined(list(p), [C] * 3, mx.bfloat16), *qkv)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ln-configs", default=f"{ck.LN_WARPS}:{ck.LN_ROWS_PER_WARP}",
                   help="comma-separated WARPS:ROWS_PER_WARP layer-norm launch shapes to compare")
    p.add_argument("--parts", default="layer_norms,add_layer_norms,gelus,joins,odd_joins",
                   help="comma-separated: which of layer_norms, add_layer_norms, gelus, joins, odd_joins to run")
    a = p.parse_args()
    if not ck.available():
        sys.exit("cuda_kernels: needs MLX's CUDA backend on an NVIDIA GPU")
    parts = {"layer_norms": lambda: layer_norms(a.ln_configs), "add_layer_norms": add_layer_norms, "gelus": gelus,
             "joins": joins, "odd_joins": odd_joins}
    for name in a.parts.split(","):
        if name not in parts:
            sys.exit(f"cuda_kernels: no part {name!r} (one of {', '.join(parts)})")
        parts[name]()


if __name__ == "__main__":
    main()

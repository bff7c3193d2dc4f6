"""Layer norm's backward on an NVIDIA GPU: MLX's own against acm's kernel (core/layer_norm.py).

usage: python bench/layer_norm_vjp.py [--configs 4:8,8:16]      one JSON line per shape
MLX's CUDA layer-norm backward writes a (rows, C) gain-gradient temporary in the activations' dtype
and sums it, and the bias gradient, with column reductions. acm's kernel (one warp per row,
float32 gain/bias partials per warp, summed by a matrix product) replaces it in training:
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

from core import layer_norm as ln

EPS = 1e-5


def exact_vjp(x, w, g) -> tuple[np.ndarray, ...]:
    X, W, G = (np.asarray(a.astype(mx.float32), dtype=np.float64) for a in (x, w, g))
    X, G = X.reshape(-1, X.shape[-1]), G.reshape(-1, G.shape[-1])
    mean = X.mean(1, keepdims=True)
    rstd = 1 / np.sqrt(((X - mean) ** 2).mean(1, keepdims=True) + EPS)
    xh, gw = (X - mean) * rstd, G * W
    dx = rstd * (gw - gw.mean(1, keepdims=True) - xh * (gw * xh).mean(1, keepdims=True))
    return dx, (G * xh).sum(0), G.sum(0)


def timed_ms(fn, *args, reps: int = 50) -> float:
    """ms per call with the calls queued back to back (no wait between them), after a warm-up."""
    mx.eval(fn(*args))
    t = time.perf_counter()
    mx.eval([fn(*args) for _ in range(reps)])
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default=f"{ln.WARPS}:{ln.ROWS_PER_WARP}",
                   help="comma-separated WARPS:ROWS_PER_WARP kernel launch shapes to compare")
    a = p.parse_args()
    if not (mx.default_device() == mx.gpu and mx.cuda.is_available()):
        sys.exit("layer_norm_vjp: needs MLX's CUDA backend on an NVIDIA GPU")
    mlx_own = lambda x, w, b: mx.fast.layer_norm(x, w, b, EPS)  # noqa: E731
    for shape in ((16, 1024, 768), (8, 1024, 1024)):  # tiny batch 16, medium batch 8
        mx.random.seed(1)
        x = (mx.random.normal(shape) * 2 + 0.5).astype(mx.bfloat16)
        w = (1 + 0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        b = (0.1 * mx.random.normal(shape[-1:])).astype(mx.bfloat16)
        g = mx.random.normal(shape).astype(mx.bfloat16)
        exact = exact_vjp(x, w, g)
        variants = [("mlx", mlx_own)]
        for config in a.configs.split(","):
            ln.WARPS, ln.ROWS_PER_WARP = (int(v) for v in config.split(":"))
            ln._kernel.cache_clear()
            ln.kernel_layer_norm.cache_clear()
            variants.append((f"kernel_{config}", ln.kernel_layer_norm(EPS)))
        out = {"shape": shape}
        for name, f in variants:
            vjp = mx.compile(lambda x, w, b, g, f=f: mx.vjp(f, [x, w, b], [g])[1])
            grads = vjp(x, w, b, g)
            out[f"{name}_rel_err_dx_dw_db"] = [
                round(float(np.abs(np.asarray(d.astype(mx.float32)).reshape(e.shape) - e).max() / np.abs(e).max()), 5)
                for d, e in zip(grads, exact)]
            out[f"{name}_ms"] = round(timed_ms(vjp, x, w, b, g), 4)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

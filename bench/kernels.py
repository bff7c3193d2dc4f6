"""The training step's kernels one at a time, in MLX or PyTorch: forward and forward + backward ms.

usage: python bench/kernels.py mlx|torch --preset tiny --batch 16 --seq 1024     one JSON line
Run both frameworks in one call on one card: the per-kernel ratios show where the whole-step gap
between them comes from. Shapes are acm's (bf16 activations and weights): each linear layer of a
block and the vocabulary projection, layer norm, GELU, causal attention, cross-entropy, and the
sum over rows that a bias gradient is (as a reduction, and as a matrix product).
"""
from __future__ import annotations

import argparse
import json
import time


def shapes(preset: str, batch: int, seq: int) -> dict:
    from core.presets import get_preset

    s = get_preset(preset)
    return {"M": batch * seq, "B": batch, "T": seq, "C": s.n_embd, "F": s.n_ffn, "V": s.vocab_size,
            "H": s.n_head, "D": s.head_dim}


def linear_cases(d: dict) -> dict:
    C, F, V = d["C"], d["F"], d["V"]
    return {"c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, F), "mlp.c_proj": (F, C), "head": (C, V)}


def run_mlx(d: dict, steps: int) -> dict:
    import mlx.core as mx

    bf = mx.bfloat16

    def timed(fn, *args) -> float:
        for _ in range(3):
            mx.eval(fn(*args))
        t = time.perf_counter()
        for _ in range(steps):  # queued without waiting, as PyTorch's launches are
            out = fn(*args)
            mx.async_eval(out)
        mx.eval(out)
        return (time.perf_counter() - t) / steps * 1e3

    def case(f, *args):
        out = f(*args)
        g = mx.random.normal(out.shape).astype(out.dtype)
        fwd = mx.compile(f)
        both = mx.compile(lambda *a: mx.vjp(f, list(a), [g]))
        return {"fwd_ms": timed(fwd, *args), "fwd_bwd_ms": timed(both, *args)}

    M, C, F = d["M"], d["C"], d["F"]
    res = {}
    for name, (k, n) in linear_cases(d).items():
        x, w, b = (mx.random.normal(s).astype(bf) for s in ((M, k), (n, k), (n,)))
        res[name] = case(lambda x, w, b: mx.addmm(b, x, w.T), x, w, b)
    x, w, b = (mx.random.normal(s).astype(bf) for s in ((M, C), (C,), (C,)))
    res["layer_norm"] = case(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), x, w, b)
    import mlx.nn as nn

    from core.model import fused

    h = mx.random.normal((M, F)).astype(bf)
    res["gelu"] = case(fused.gelu, h)
    res["gelu_nn_approx"] = case(nn.gelu_approx, h)  # MLX's own, with x**3 as pow()
    x = mx.random.normal((M, C)).astype(bf)
    wf, bfc, wp, bp = (mx.random.normal(s).astype(bf) * 0.02 for s in ((F, C), (F,), (C, F), (C,)))
    res["mlp_autodiff"] = case(lambda x, a, b, c, e: mx.addmm(e, nn.gelu_approx(mx.addmm(b, x, a.T)), c.T),
                               x, wf, bfc, wp, bp)
    res["mlp_fused"] = case(lambda *a: fused.mlp(*a)[0], x, wf, bfc, wp, bp)
    q, k, v = (mx.random.normal((d["B"], d["H"], d["T"], d["D"])).astype(bf) for _ in range(3))
    scale = d["D"] ** -0.5
    res["attention"] = case(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal"),
                            q, k, v)
    g = mx.random.normal((M, F)).astype(bf)
    res["column_sum_reduce"] = {"fwd_ms": timed(mx.compile(lambda g: g.sum(axis=0)), g)}
    res["column_sum_matmul"] = {"fwd_ms": timed(mx.compile(fused._column_sum), g)}
    logits = mx.random.normal((M, d["V"])).astype(bf)
    y = mx.random.randint(0, d["V"], (M,))
    res["cross_entropy"] = case(lambda z: mx.fast.cross_entropy(z, y).mean(), logits)
    res["cross_entropy_fp32_copy"] = case(
        lambda z: nn.losses.cross_entropy(z.astype(mx.float32), y, reduction="mean"), logits)
    return res


def run_torch(d: dict, steps: int) -> dict:
    import torch
    import torch.nn.functional as F_

    dev, bf = "cuda", torch.bfloat16

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps * 1e3

    def case(f, *shapes_):
        args = [torch.randn(s, device=dev, dtype=bf, requires_grad=True) for s in shapes_]
        with torch.no_grad():
            g = torch.randn_like(f(*args))

        def both():
            out = f(*args)
            torch.autograd.backward(out, g)

        with torch.no_grad():
            fwd = timed(lambda: f(*args))
        return {"fwd_ms": fwd, "fwd_bwd_ms": timed(both)}

    M, C, F = d["M"], d["C"], d["F"]
    res = {}
    for name, (k, n) in linear_cases(d).items():
        res[name] = case(F_.linear, (M, k), (n, k), (n,))
    res["layer_norm"] = case(lambda x, w, b: F_.layer_norm(x, (C,), w, b, 1e-5), (M, C), (C,), (C,))
    res["gelu"] = case(lambda h: F_.gelu(h, approximate="tanh"), (M, F))
    res["mlp"] = case(lambda x, a, b, c, e: F_.linear(F_.gelu(F_.linear(x, a, b), approximate="tanh"), c, e),
                      (M, C), (F, C), (F,), (C, F), (C,))
    qkv = (d["B"], d["H"], d["T"], d["D"])
    res["attention"] = case(lambda q, k, v: F_.scaled_dot_product_attention(q, k, v, is_causal=True), qkv, qkv, qkv)
    g = torch.randn((M, F), device=dev, dtype=bf)
    with torch.no_grad():
        res["column_sum_reduce"] = {"fwd_ms": timed(lambda: g.sum(dim=0))}
    y = torch.randint(0, d["V"], (M,), device=dev)
    res["cross_entropy"] = case(lambda z: F_.cross_entropy(z.float(), y), (M, d["V"]))
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=["mlx", "torch"])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    d = shapes(a.preset, a.batch, a.seq)
    res = (run_mlx if a.framework == "mlx" else run_torch)(d, a.steps)
    out = {"fw": a.framework, "preset": a.preset, "batch": a.batch, "seq": a.seq,
           "kernels": {k: {m: round(v, 3) for m, v in r.items()} for k, r in res.items()}}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

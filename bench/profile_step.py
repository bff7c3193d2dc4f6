"""Where a training step's time goes, part by part (each part compiled and timed alone).

usage: python bench/profile_step.py --preset tiny --seq 1024 --batch 16     prints one JSON line
Parts: forward + loss; forward + backward; the whole step; the optimizer update alone (global norm,
clipping, AdamW); the loss
head alone (final norm + vocab projection + cross-entropy); attention alone; each in ms, with the
peak memory (GB) while it ran above what the model and optimizer hold (`held_gb`).
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial

import mlx.core as mx
from step_setup import fixed_batch

from core.model import fused
from core.model.gpt import GPT
from core.presets import get_preset
from core.train.optimizer import FlatAdamW
from core.train.step import build_steps


def bench(fn, *args, steps=10, warmup=3, state=None) -> tuple[float, float]:
    """ms per call, and the peak memory (GB) while it ran, above what was held before."""
    for _ in range(warmup):
        mx.eval(fn(*args), state or [])
    mx.clear_cache()
    held = mx.get_active_memory()
    mx.reset_peak_memory()
    t = time.perf_counter()
    for _ in range(steps):
        mx.eval(fn(*args), state or [])
    ms = (time.perf_counter() - t) / steps * 1e3
    return ms, (mx.get_peak_memory() - held) / 2**30


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--checkpoint-activations", action="store_true")
    a = p.parse_args()
    shape = get_preset(a.preset)
    mx.random.seed(0)
    model = GPT(shape, a.dtype, a.checkpoint_activations)
    opt = FlatAdamW(model.parameters(), 3e-4, 0.1, model.compute_dtype)
    model.update(opt.parameters())
    step, gradients, _, forward_loss = build_steps(model, opt, grad_clip=1.0)
    state = [opt.state]
    x, y = fixed_batch(shape, a.batch, a.seq)
    mx.eval(state)
    out = {"preset": a.preset, "batch": a.batch, "seq": a.seq, "dtype": a.dtype,
           "checkpoint_activations": a.checkpoint_activations, "held_gb": mx.get_active_memory() / 2**30}

    def part(name, fn, *args, state=None):
        out[f"{name}_ms"], out[f"{name}_peak_gb"] = bench(fn, *args, state=state)

    part("step", step, x, y, state=state)
    part("forward_loss", forward_loss, x, y)
    part("forward_backward", gradients, x, y)
    grads = gradients(x, y)[1]
    mx.eval(grads)
    upd = partial(mx.compile, inputs=state, outputs=state)(lambda g: opt.clip_and_update(g, 1.0))
    part("optimizer", upd, grads, state=state)
    model.update(opt.parameters())  # the steps leave their traced views in the model
    mx.eval(model.parameters())
    h = mx.random.normal((a.batch, a.seq, shape.n_embd)).astype(getattr(mx, a.dtype))

    def head(h, y):
        hh = model.ln_f(h)
        w = model.wte.weight if shape.tie_embeddings else model.lm_head.weight
        logits = hh @ w.astype(hh.dtype).T
        return fused.cross_entropy(logits, y)

    hg = partial(mx.compile, inputs=state)(mx.value_and_grad(head))
    part("loss_head_fwd_bwd", hg, h, y)
    q = mx.random.normal((a.batch, shape.n_head, a.seq, shape.head_dim)).astype(getattr(mx, a.dtype))

    def attn(q):
        return mx.fast.scaled_dot_product_attention(q, q, q, scale=shape.head_dim**-0.5, mask="causal").sum()

    ag = mx.compile(mx.value_and_grad(attn))
    part("attention_fwd_bwd_one_layer", ag, q)
    out["attention_fwd_bwd_all_layers_ms"] = out["attention_fwd_bwd_one_layer_ms"] * shape.n_layer
    out["tok_s"] = round(a.batch * a.seq / out["step_ms"] * 1e3)
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}), flush=True)


if __name__ == "__main__":
    main()

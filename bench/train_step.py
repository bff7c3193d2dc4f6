"""acm's own training step (the product's compiled step) on a preset: tokens/s, MFU, peak memory.

usage: python bench/train_step.py --preset tiny --seq 1024 --batch 16 --steps 20 [--dtype bfloat16]
Prints one JSON line. Run it in the same call as ../shared/bench/gpt_step.py (PyTorch) on the same
shapes so the ratio is measured side by side on one card. The data is a fixed random batch (seed
0), so `loss` after --steps steps is comparable between runs of this script.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import mlx.core as mx
import mlx.nn as nn
from step_setup import compiled_step, fixed_batch, per_tensor_step

from core.hardware import device_info, peak_flops
from core.model import cuda_gelu, cuda_join, cuda_kernels
from core.model import gpt as model
from core.presets import get_preset
from core.train import optimizer


def use_plain_autodiff() -> None:
    """Swap in the MLP and loss as autodiff sees them unaided, to measure what core/model/fused.py saves."""
    def mlp(self, x, decoding=False):
        return self.c_proj(nn.gelu_approx(self.c_fc(x)))

    def loss(self, idx, targets):
        return nn.losses.cross_entropy(self(idx).astype(mx.float32), targets, reduction="mean")

    model.MLP.__call__, model.GPT.loss = mlp, loss


def use_mlx_layer_norm() -> None:
    """MLX's own layer norm, forward and backward, instead of core/model/cuda_kernels.py's (CUDA),
    after residual additions of their own."""
    model.layer_norm = lambda x, w, b, eps, training=True: mx.fast.layer_norm(x, w, b, eps)
    model.add_layer_norm = add_then_layer_norm


def use_mlx_layer_norm_forward() -> None:
    """MLX's layer-norm forward with core/model/cuda_kernels.py's backward (CUDA)."""
    cuda_kernels.layer_norm = lambda x, w, b, eps: mx.fast.layer_norm(x, w, b, eps)

    def add_then_mlx_layer_norm(x, h, w, b, eps):
        s = x + h
        return s, mx.fast.layer_norm(s, w, b, eps)

    cuda_kernels.add_layer_norm = add_then_mlx_layer_norm


def use_mlx_gelu() -> None:
    """The MLP's GELU and its backward as MLX's compiled formulas instead of core/model/cuda_gelu.py's (CUDA)."""
    cuda_gelu.covers = lambda h: False


def use_unfused_residual() -> None:
    """Residual additions as kernels of their own before acm's layer norms (CUDA)."""
    model.add_layer_norm = add_then_layer_norm


saved_add_layer_norm = model.add_layer_norm


def add_then_layer_norm(x, h, w, b, eps, training=True):
    """The residual addition, then the model's layer norm as it stands (MLX's under --mlx-layer-norm)."""
    if h is None or isinstance(h, tuple):  # no addition, or decoding's (product, bias): as shipped
        return saved_add_layer_norm(x, h, w, b, eps, training)
    s = x + h
    return s, model.layer_norm(s, w, b, eps, training)


def use_addmm_bias() -> None:
    """Attention projections differentiated by autodiff (bias gradients by column reduction)."""
    model.fused.linear = lambda x, w, b: mx.addmm(b, x, w.T)


def use_mlx_concatenate() -> None:
    """Joins (the flat gradients, the attention's q/k/v gradients) by MLX's concatenation instead of
    core/model/cuda_join.py's kernel (CUDA)."""
    cuda_join.covers = lambda *a: False


def use_mlx_qkv_join() -> None:
    """The attention's q/k/v gradients joined by MLX's concatenation (mx.split's own gradient); the
    flat gradients still by core/model/cuda_join.py's kernel."""
    model.fused.split_qkv = lambda qkv: tuple(mx.split(qkv, 3, axis=-1))


def use_elementwise_newton_schulz() -> None:
    """Muon's Newton-Schulz iteration with its sums as elementwise passes (before `mx.addmm`)."""
    a, b, c = optimizer.NS_COEFFICIENTS

    def orthogonalise(x):
        rows, cols = x.shape[-2:]
        if rows > cols:
            x = x.swapaxes(-1, -2)
        x = x * mx.rsqrt(mx.sum(mx.square(x.astype(mx.float32)), axis=(-2, -1), keepdims=True) + 1e-14).astype(x.dtype)
        for _ in range(optimizer.NS_STEPS):
            s = x @ x.swapaxes(-1, -2)
            x = a * x + (b * s + c * (s @ s)) @ x
        if rows > cols:
            x = x.swapaxes(-1, -2)
        return x * max(1.0, rows / cols) ** 0.5

    optimizer.orthogonalise = orthogonalise


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--autodiff", action="store_true",
                   help="plain autodiff MLP and a float32 copy of the logits (the step before core/model/fused.py)")
    p.add_argument("--sync", action="store_true",
                   help="wait for each step before building the next (the loop before steps were queued)")
    p.add_argument("--per-tensor", action="store_true",
                   help="MLX's AdamW tensor by tensor (the step before core/train/optimizer.py's flat buffers)")
    p.add_argument("--mlx-layer-norm", action="store_true", help="MLX's own layer norm, forward and backward")
    p.add_argument("--mlx-layer-norm-forward", action="store_true", help="MLX's layer-norm forward, acm's backward")
    p.add_argument("--mlx-gelu", action="store_true", help="MLX's compiled GELU formulas, forward and backward")
    p.add_argument("--unfused-residual", action="store_true", help="residual additions before the layer norms")
    p.add_argument("--mlx-concatenate", action="store_true", help="joins by MLX's concatenation, not acm's kernel")
    p.add_argument("--mlx-qkv-join", action="store_true", help="only the q/k/v gradients joined by MLX's concatenation")
    p.add_argument("--addmm-bias", action="store_true", help="attention bias gradients by column reduction")
    p.add_argument("--ln-launch", default=None, metavar="WARPS:ROWS",
                   help="the layer-norm kernel's launch shape (core/model/cuda_kernels.py)")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="global-norm clip (0: off; the norm is still computed, for the monitor)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"],
                   help="muon: Muon (at 0.02) for the blocks' matrices, as train.optimizer = muon")
    p.add_argument("--elementwise-ns", action="store_true", help="Muon's iteration with elementwise sums")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak (MFU)")
    return p.parse_args()


def apply_variants(a: argparse.Namespace) -> None:
    """Swap in the earlier implementations the flags name."""
    for flag, use in ((a.autodiff, use_plain_autodiff), (a.mlx_layer_norm, use_mlx_layer_norm),
                      (a.mlx_layer_norm_forward, use_mlx_layer_norm_forward), (a.addmm_bias, use_addmm_bias),
                      (a.elementwise_ns, use_elementwise_newton_schulz), (a.unfused_residual, use_unfused_residual),
                      (a.mlx_gelu, use_mlx_gelu), (a.mlx_concatenate, use_mlx_concatenate),
                      (a.mlx_qkv_join, use_mlx_qkv_join)):
        if flag:
            use()
    if a.ln_launch:
        cuda_kernels.LN_WARPS, cuda_kernels.LN_ROWS_PER_WARP = (int(v) for v in a.ln_launch.split(":"))


def main() -> None:
    a = parse_args()
    if a.per_tensor and a.optimizer == "muon":
        raise SystemExit("train_step.py: --per-tensor measures MLX's AdamW only, not --optimizer muon")
    shape = get_preset(a.preset)
    apply_variants(a)
    mx.random.seed(0)
    build = per_tensor_step if a.per_tensor else compiled_step
    muon = {"muon_lr": 0.02} if a.optimizer == "muon" else {}
    step, _, state = build(model.GPT(shape, a.dtype, a.checkpoint_activations), a.grad_clip, **muon)
    x, y = fixed_batch(shape, a.batch, a.seq)
    for _ in range(a.warmup):
        mx.eval(step(x, y), state)
    mx.reset_peak_memory()
    t = time.perf_counter()
    host = 0.0  # time Python spends building each step's graph: the device idles through it with --sync

    def build():
        nonlocal host
        t0 = time.perf_counter()
        out = step(x, y)
        host += time.perf_counter() - t0
        return out

    ahead = None
    for i in range(a.steps):  # as the trainer does: the next step is queued before this one is read
        loss, _ = ahead or build()
        mx.async_eval(loss, state)
        ahead = build() if i + 1 < a.steps and not a.sync else None
        if ahead:
            mx.async_eval(ahead, state)
        loss.item()
    dt = (time.perf_counter() - t) / a.steps
    tok_s = a.batch * a.seq / dt
    info = device_info()
    peak = a.peak_tflops * 1e12 if a.peak_tflops else peak_flops(info)
    print(json.dumps({
        "fw": "acm", "preset": a.preset, "dtype": a.dtype, "checkpoint_activations": a.checkpoint_activations,
        "autodiff": a.autodiff, "per_tensor": a.per_tensor,
        "mlx_layer_norm": a.mlx_layer_norm, "mlx_layer_norm_forward": a.mlx_layer_norm_forward,
        "addmm_bias": a.addmm_bias, "unfused_residual": a.unfused_residual, "mlx_gelu": a.mlx_gelu,
        "mlx_concatenate": a.mlx_concatenate, "mlx_qkv_join": a.mlx_qkv_join,
        "ln_launch": f"{cuda_kernels.LN_WARPS}:{cuda_kernels.LN_ROWS_PER_WARP}",
        "sync": a.sync, "grad_clip": a.grad_clip, "optimizer": a.optimizer, "elementwise_ns": a.elementwise_ns,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MLX_")},
        "device": info.get("device_name", str(mx.default_device())),
        "params_M": round(shape.param_count() / 1e6, 1), "batch": a.batch, "seq": a.seq,
        "ms_step": round(dt * 1e3, 2), "host_ms_step": round(host / a.steps * 1e3, 2), "tok_s": round(tok_s),
        "mfu": round(shape.flops_per_token(a.seq) * tok_s / peak, 4) if peak else None,
        "loss": round(float(loss.item()), 3), "steps": a.steps + a.warmup,
        "peak_mem_gb": round(mx.get_peak_memory() / 2**30, 2),
    }), flush=True)


if __name__ == "__main__":
    main()

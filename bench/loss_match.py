"""Does acm's training step learn as PyTorch's does? Both train the same model, from the same
initial weights, on the same batches of real token shards, with the same optimizer and schedule.

usage: python bench/loss_match.py --tokens data/tokens/language --preset tiny --batch 16 --seq 1024 \
          --steps 300 [--runs acm,torch,acm-seed1] [--no-compile]
Prints one JSON line: each run's loss every --every steps, its mean over the last 20 steps and its
validation loss at the end (fixed held-out batches), and the gaps between runs. `acm-seed1` starts
from other initial weights: the gap it opens is the noise that the acm-PyTorch gap is compared to.

acm: the product's compiled step (core/train/step.py build_steps: flat AdamW with decay on matrices, betas
0.9/0.95, clipping at 1.0), float32 weights and --dtype compute (bfloat16 as acm.toml's default).
PyTorch: the same GPT-2 block written with torch.nn (biases, tanh GELU, tied head where the preset
ties it), float32 weights, bf16 autocast (or none with --dtype float32), AdamW with the same
groups, the same clipping and learning rate per step.
Batches come from the product's sampler (core/train/batches.py), a pure function of (seed, step).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from core.hardware import configure_mlx
from core.model.gpt import GPT
from core.presets import ModelShape, get_preset
from core.tokenizer.shards import map_split
from core.train.batches import Batches
from core.train.optimizer import FlatAdamW
from core.train.schedule import lr_at
from core.train.step import build_steps

LAST = 20  # steps averaged for the final training loss


def initial_weights(shape: ModelShape, seed: int) -> dict[str, np.ndarray]:
    mx.random.seed(seed)
    return {k: np.array(v) for k, v in tree_flatten(GPT(shape).parameters())}


def train_acm(shape, weights, a, batches, val) -> dict:
    model = GPT(shape, a.dtype)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    opt = FlatAdamW(model.parameters(), a.lr, a.weight_decay, model.compute_dtype)
    state = [opt.state]
    step, _, _, eval_loss = build_steps(model, opt, grad_clip=a.grad_clip)
    losses = []
    for s in range(a.steps):
        opt.learning_rate = lr_at(s, a.lr, a.warmup, a.steps, a.min_lr_ratio)
        x, y = batches.train(s)
        loss, _ = step(mx.array(x), mx.array(y))
        mx.eval(loss, state)
        losses.append(loss.item())
    vals = [eval_loss(*(mx.array(t) for t in val.val(i))).item() for i in range(a.val_batches)]
    return {"losses": losses, "val": float(np.mean(vals))}


def torch_gpt(shape):
    """The same GPT written for PyTorch (parameter names as acm's), as a class."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    class Attention(tnn.Module):
        def __init__(s):
            super().__init__()
            s.c_attn = tnn.Linear(shape.n_embd, 3 * shape.n_embd)
            s.c_proj = tnn.Linear(shape.n_embd, shape.n_embd)

        def forward(s, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, shape.n_head, -1).transpose(1, 2) for t in s.c_attn(x).split(C, dim=-1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return s.c_proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(tnn.Module):
        def __init__(s):
            super().__init__()
            s.c_fc = tnn.Linear(shape.n_embd, shape.n_ffn)
            s.c_proj = tnn.Linear(shape.n_ffn, shape.n_embd)

        def forward(s, x):
            return s.c_proj(F.gelu(s.c_fc(x), approximate="tanh"))

    class Block(tnn.Module):
        def __init__(s):
            super().__init__()
            s.ln_1, s.ln_2 = tnn.LayerNorm(shape.n_embd, shape.norm_eps), tnn.LayerNorm(shape.n_embd, shape.norm_eps)
            s.attn, s.mlp = Attention(), MLP()

        def forward(s, x):
            x = x + s.attn(s.ln_1(x))
            return x + s.mlp(s.ln_2(x))

    class TorchGPT(tnn.Module):
        def __init__(s):
            super().__init__()
            s.wte = tnn.Embedding(shape.vocab_size, shape.n_embd)
            s.wpe = tnn.Embedding(shape.n_ctx, shape.n_embd)
            s.h = tnn.ModuleList([Block() for _ in range(shape.n_layer)])
            s.ln_f = tnn.LayerNorm(shape.n_embd, shape.norm_eps)
            if not shape.tie_embeddings:
                s.lm_head = tnn.Linear(shape.n_embd, shape.vocab_size, bias=False)

        def forward(s, idx):
            x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in s.h:
                x = block(x)
            head = s.wte.weight if shape.tie_embeddings else s.lm_head.weight
            return F.linear(s.ln_f(x), head)

    return TorchGPT


def train_torch(shape, weights, a, batches, val) -> dict:
    import torch
    import torch.nn.functional as F

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_gpt(shape)().to(dev)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        sys.exit(f"loss_match: weight names differ between acm and the PyTorch model: {missing or unexpected}")
    params = dict(model.named_parameters())
    groups = [{"params": [p for p in params.values() if p.ndim >= 2], "weight_decay": a.weight_decay},
              {"params": [p for p in params.values() if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=dev == "cuda")
    forward = torch.compile(model) if a.compile else model

    def loss_of(x, y):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16"):
            logits = forward(torch.from_numpy(x).to(dev))
        return F.cross_entropy(logits.float().view(-1, shape.vocab_size), torch.from_numpy(y).to(dev).long().view(-1))

    losses = []
    for s in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(s, a.lr, a.warmup, a.steps, a.min_lr_ratio)
        loss = loss_of(*batches.train(s))
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    with torch.no_grad():
        vals = [loss_of(*val.val(i)).item() for i in range(a.val_batches)]
    return {"losses": losses, "val": float(np.mean(vals))}


def main() -> None:
    configure_mlx()
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=Path, default=Path("data/tokens/language"), help="a prepared token shard folder")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: a tenth of --steps)")
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="compute dtype (PyTorch: bf16 autocast or none); weights stay float32")
    p.add_argument("--val-batches", type=int, default=10)
    p.add_argument("--every", type=int, default=25, help="print the loss every this many steps")
    p.add_argument("--runs", default="acm,torch,acm-seed1")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="PyTorch eager")
    a = p.parse_args()
    a.warmup = a.steps // 10 if a.warmup is None else a.warmup
    if not (a.tokens / "manifest.json").exists():
        sys.exit(f"loss_match: no token shards in {a.tokens}: run `acm prepare` first")
    manifest = json.loads((a.tokens / "manifest.json").read_text())
    train, val = (map_split(a.tokens, manifest, split, a.tokens.name) for split in ("train", "val"))
    shape = get_preset(a.preset).with_vocab(int(train.manifest["vocab_size"]))
    batches = Batches(train, a.seq, a.batch, seed=0)
    val_batches = Batches(val, a.seq, a.batch, seed=0, what="val shards")
    trainers = {"acm": train_acm, "torch": train_torch}
    out = {"preset": shape.name, "vocab": shape.vocab_size, "batch": a.batch, "seq": a.seq, "steps": a.steps,
           "dtype": a.dtype, "lr": a.lr, "warmup": a.warmup, "tokens": str(a.tokens), "runs": {}}
    for name in a.runs.split(","):
        framework, _, seed = name.partition("-seed")
        if framework not in trainers:
            sys.exit(f"loss_match: unknown run {name!r} (acm, torch, acm-seedN, torch-seedN)")
        t = time.perf_counter()
        r = trainers[framework](shape, initial_weights(shape, int(seed or 0)), a, batches, val_batches)
        losses = r.pop("losses")
        out["runs"][name] = {"last": round(float(np.mean(losses[-LAST:])), 4), "val": round(r["val"], 4),
                             "loss_every": [round(v, 3) for v in losses[::a.every]] + [round(losses[-1], 3)],
                             "seconds": round(time.perf_counter() - t, 1)}
    runs = out["runs"]
    for x, y in (("acm", "torch"), ("acm", "acm-seed1")):
        if x in runs and y in runs:
            out[f"gap_{x}_{y}"] = {"last": round(runs[x]["last"] - runs[y]["last"], 4),
                                   "val": round(runs[x]["val"] - runs[y]["val"], 4)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

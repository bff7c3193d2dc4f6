"""`acm model test`: the original log's architecture test, for any preset.

Builds the model, runs one (batch, seq) forward pass, and reports shapes, parameter count,
memory footprint, forward time and tokens/s. Runs on the engine thread in the TUI.
"""
from __future__ import annotations

import time

import mlx.core as mx

from core.model.gpt import GPT
from core.presets import ModelShape


def architecture_test(shape: ModelShape, batch: int = 2, seq: int = 128, compute_dtype: str = "float32",
                      repeats: int = 3, seed: int = 0) -> dict:
    seq = min(seq, shape.n_ctx)
    mx.random.seed(seed)
    t0 = time.perf_counter()
    model = GPT(shape, compute_dtype)
    mx.eval(model.parameters())
    build_s = time.perf_counter() - t0
    idx = mx.random.randint(0, shape.vocab_size, (batch, seq))
    mx.eval(model(idx))  # first call: allocation and kernel setup
    t0 = time.perf_counter()
    for _ in range(repeats):
        logits = model(idx)
        mx.eval(logits)
    forward_s = (time.perf_counter() - t0) / repeats
    expected = (batch, seq, shape.vocab_size)
    return {
        "preset": shape.name,
        "compute_dtype": compute_dtype,
        "device": str(mx.default_device()),
        "input_shape": [batch, seq],
        "output_shape": list(logits.shape),
        "shape_ok": tuple(logits.shape) == expected,
        "parameters": model.num_params(),
        "memory_bytes": model.nbytes(),
        "build_s": build_s,
        "forward_ms": forward_s * 1e3,
        "tokens_per_s": batch * seq / forward_s,
        "peak_memory_bytes": mx.get_peak_memory(),
    }

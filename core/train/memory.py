"""A training step's memory, reckoned before anything is built: what readying a step, reading
validation batches several at a time and refusing a step that cannot fit go by."""
from __future__ import annotations

from core.config import StageConfig
from core.presets import ModelShape

MEMORY_SHARE = 0.75  # the most of the device's memory a step readied or widened may be reckoned to take


def reckoned_bytes(shape: ModelShape, sc: StageConfig, compute_dtype: str) -> int:
    """A generous reckoning of a training step's peak memory: weights, moments, gradients and
    compute copies (16 bytes a parameter; 8 more for the float32 sums of accumulated gradients),
    the blocks' activations and the logits. Above the measured peaks on an H200 by 17-20% (tiny
    at batch 16, medium at batch 8: 8.3 and 13.4 GB)."""
    tokens = sc.batch_size * sc.seq_len
    wide = 2 if compute_dtype == "float32" else 1
    per_param = 16 + (8 if sc.grad_accum > 1 else 0)
    return per_param * shape.param_count() + wide * tokens * (40 * shape.n_layer * shape.n_embd
                                                              + 8 * shape.vocab_size)

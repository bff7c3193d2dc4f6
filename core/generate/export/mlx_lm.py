"""The mlx-lm folder: weights under mlx-lm's names, config.json, the tokenizer.

A tied head (nano, micro, tiny) is mlx-lm's `gpt2`: the same architecture, exactly. mlx-lm's gpt2
always ties the head, so an untied one (medium) is `gpt_bigcode` with multi_query off: the same
blocks (learned positions, pre-LayerNorm, biases, fused q/k/v, FFN of n_inner) and its own
`lm_head`, but an exact (erf) GELU where acm uses GPT-2's tanh approximation. That is the closest
type mlx-lm has; logits differ by little (README, "Export").
"""
from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from core.generate.decode import LoadedModel
from core.generate.export import tokenizer_files


def write(lm: LoadedModel, folder, dtype: str) -> dict:
    s, target = lm.model.shape, getattr(mx, dtype)
    params = dict(tree_flatten(lm.model.parameters()))
    if s.tie_embeddings:
        model_type, weights = "gpt2", {f"model.{k}": v for k, v in params.items()}
    else:
        model_type = "gpt_bigcode"
        weights = {(k if k == "lm_head.weight" else f"transformer.{k}"): v for k, v in params.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(target) for k, v in weights.items()},
                        metadata={"format": "mlx"})
    config = tokenizer_files.gpt2_config(lm, dtype, s.tie_embeddings) | {"model_type": model_type}
    if model_type == "gpt_bigcode":
        config |= {"multi_query": False, "architectures": ["GPTBigCodeForCausalLM"]}
    else:
        config |= {"architectures": ["GPT2LMHeadModel"]}
    tokenizer_files.write_json(folder / "config.json", config)
    tokenizer_files.write(lm, folder)
    return {"model_type": model_type}

"""The Hugging Face transformers folder: GPT2LMHeadModel.

GPT-2's projections are Conv1D layers, whose weights are stored (in, out): the transpose of acm's
(out, in) Linear weights. An untied head is `lm_head.weight` with tie_word_embeddings false.
"""
from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from core.generate.decode import LoadedModel
from core.generate.export import tokenizer_files

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_weights(lm: LoadedModel) -> dict[str, mx.array]:
    """acm's parameters under transformers' GPT-2 names and layouts."""
    out = {}
    for name, value in tree_flatten(lm.model.parameters()):
        if name == "lm_head.weight":
            out[name] = value
        else:
            out[f"transformer.{name}"] = value.T if name.endswith(CONV1D) else value
    return out


def write(lm: LoadedModel, folder, dtype: str) -> dict:
    target = getattr(mx, dtype)
    weights = {k: mx.contiguous(v.astype(target)) for k, v in hf_weights(lm).items()}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    config = tokenizer_files.gpt2_config(lm, dtype, lm.model.shape.tie_embeddings) | {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "scale_attn_weights": True,
        "use_cache": True}
    tokenizer_files.write_json(folder / "config.json", config)
    tokenizer_files.write_json(folder / "generation_config.json",
                               {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0})
    tokenizer_files.write(lm, folder)
    return {"model_type": "gpt2"}

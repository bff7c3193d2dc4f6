"""The Hugging Face transformers folder: GPT2LMHeadModel.

GPT-2's projections are Conv1D layers, whose weights are stored (in, out): the transpose of acm's
(out, in) Linear weights. An untied head is `lm_head.weight` with tie_word_embeddings false; a
tied one is `transformer.wte.weight` alone, which transformers ties to the head.
"""
from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from core.generate.decode import LoadedModel
from core.generate.export import tokenizer_files
from core.tokenizer.bpe import BOS_ID, EOS_ID, PAD_ID

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
    # max_length: generate() with no max_new_tokens stops at the context instead of past it
    tokenizer_files.write_json(folder / "generation_config.json",
                               {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
                                "max_length": lm.model.shape.n_ctx})
    tokenizer_files.write(lm, folder)
    return {"model_type": "gpt2"}

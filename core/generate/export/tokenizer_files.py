"""The tokenizer as Hugging Face's loaders read it: tokenizer.json, its config and special tokens."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.atomic import write_text
from core.generate.decode import LoadedModel
from core.tokenizer.bpe import SPECIAL_TOKENS


def write(lm: LoadedModel, folder: Path) -> None:
    shutil.copyfile(lm.tokenizer.path, folder / "tokenizer.json")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": lm.model.shape.n_ctx,
        "pad_token": SPECIAL_TOKENS[0], "unk_token": SPECIAL_TOKENS[1], "bos_token": SPECIAL_TOKENS[2],
        "eos_token": SPECIAL_TOKENS[3], "add_bos_token": False, "clean_up_tokenization_spaces": False,
    }
    write_json(folder / "tokenizer_config.json", tok_config)
    write_json(folder / "special_tokens_map.json",
               {k: tok_config[k] for k in ("pad_token", "unk_token", "bos_token", "eos_token")})


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def gpt2_config(lm: LoadedModel, dtype: str, tied: bool) -> dict:
    """GPT-2's config.json fields for this model (transformers and mlx-lm read the same names)."""
    s = lm.model.shape
    return {
        "n_ctx": s.n_ctx, "n_positions": s.n_ctx, "n_embd": s.n_embd, "n_head": s.n_head, "n_layer": s.n_layer,
        "n_inner": s.n_ffn, "vocab_size": s.vocab_size, "layer_norm_epsilon": s.norm_eps,
        "activation_function": "gelu_new", "tie_word_embeddings": tied,
        "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0, "torch_dtype": dtype,
        "acm": {"preset": s.name, "run": lm.run, "stage": lm.stage, "step": lm.step},
    }

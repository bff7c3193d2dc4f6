"""The tokenizer as Hugging Face's loaders read it: tokenizer.json, its config and special tokens.

acm puts `<BOS>` before every prompt itself (generation, evaluation, the shards), so its own
tokenizer.json adds nothing. The exported copy makes every client do the same by default: a
`<BOS> $A` template post-processor in tokenizer.json (what `tokenizers`, transformers and mlx-lm
apply) and `add_bos_token` in tokenizer_config.json. Its ByteLevel decoder is wrapped in a
Sequence: the same text, but mlx-lm then decodes a stream with the tokenizer itself instead of its
BPE streaming detokenizer, which drops the continuation's leading space.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, processors

from core.atomic import write_text
from core.generate.decode import LoadedModel
from core.tokenizer.bpe import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS

BOS = SPECIAL_TOKENS[BOS_ID]


def exported_tokenizer(path: Path) -> str:
    """acm's tokenizer.json with `<BOS>` added to every encoding (a pair gets one before each text)."""
    tok = Tokenizer.from_file(str(path))
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1",
                                                       special_tokens=[(BOS, BOS_ID)])
    tok.decoder = decoders.Sequence([decoders.ByteLevel()])
    return tok.to_str()


def write(lm: LoadedModel, folder: Path) -> None:
    write_text(folder / "tokenizer.json", exported_tokenizer(lm.tokenizer.path))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": lm.model.shape.n_ctx,
        "pad_token": SPECIAL_TOKENS[0], "unk_token": SPECIAL_TOKENS[1], "bos_token": SPECIAL_TOKENS[2],
        "eos_token": SPECIAL_TOKENS[3], "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    write_json(folder / "tokenizer_config.json", tok_config)
    write_json(folder / "special_tokens_map.json",
               {k: tok_config[k] for k in ("pad_token", "unk_token", "bos_token", "eos_token")})


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def gpt2_config(lm: LoadedModel, dtype: str, tied: bool) -> dict:
    """GPT-2's config.json fields for this model (transformers and mlx-lm read the same names); the
    context under each name a client reads it by."""
    s = lm.model.shape
    return {
        "n_ctx": s.n_ctx, "n_positions": s.n_ctx, "max_position_embeddings": s.n_ctx, "n_embd": s.n_embd,
        "n_head": s.n_head, "n_layer": s.n_layer, "n_inner": s.n_ffn, "vocab_size": s.vocab_size,
        "layer_norm_epsilon": s.norm_eps, "activation_function": "gelu_new", "tie_word_embeddings": tied,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "torch_dtype": dtype,
        "acm": {"preset": s.name, "run": lm.run, "stage": lm.stage, "step": lm.step},
    }

"""One GGUF file (GPT-2 architecture, the tokenizer inside) for llama.cpp and the tools built on it.

Written with the `gguf` package (the optional extra `acm[gguf]`). Tensors keep acm's (out, in)
orientation, which is what llama.cpp's GPT-2 expects; norms and biases stay float32 as llama.cpp's
own converter writes them. The tokenizer is byte-level BPE with GPT-2's split regex, so its
pre-tokenizer is declared as "gpt-2": llama.cpp applies that regex, and no hash check of an unknown
tokenizer is involved (that check belongs to llama.cpp's converter, which this file does not go through).
"""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from core.errors import AcmError
from core.generate.decode import LoadedModel
from core.tokenizer.bpe import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID

FILE = "model.gguf"
BLOCK = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
         "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
TOP = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm", "lm_head": "output"}


def gguf_name(name: str) -> str:
    """acm's parameter name as llama.cpp's GPT-2 tensor name (h.3.attn.c_attn.weight -> blk.3.attn_qkv.weight)."""
    stem, kind = name.rsplit(".", 1)
    if stem.startswith("h."):
        _, block, layer = stem.split(".", 2)
        return f"blk.{block}.{BLOCK[layer]}.{kind}"
    return f"{TOP[stem]}.{kind}"


def _module():
    try:
        import gguf
    except ImportError:
        raise AcmError("GGUF export needs the gguf package: pip install 'acm[gguf]'") from None
    return gguf


def write(lm: LoadedModel, folder, dtype: str) -> dict:
    gguf = _module()
    s = lm.model.shape
    w = gguf.GGUFWriter(str(folder / FILE), "gpt2")
    w.add_name(f"acm {s.name} {lm.run} {lm.stage} step {lm.step}")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ffn)
    w.add_block_count(s.n_layer)
    w.add_head_count(s.n_head)
    w.add_layer_norm_eps(s.norm_eps)
    file_type = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
                 "bfloat16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    w.add_file_type(file_type)
    _add_tokenizer(w, gguf, lm)
    for name, value in tree_flatten(lm.model.parameters()):  # a tied head is wte alone
        _add_tensor(w, gguf, gguf_name(name), value, dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"model_type": "gpt2 (GGUF)", "file": FILE}


def _add_tensor(w, gguf, name: str, value: mx.array, dtype: str) -> None:
    if value.ndim == 1 or dtype == "float32":
        w.add_tensor(name, np.array(value.astype(mx.float32)))
    elif dtype == "float16":
        w.add_tensor(name, np.array(value.astype(mx.float16)))
    else:  # bfloat16: numpy has no such dtype; its bits travel as uint16
        bits = np.array(value.astype(mx.bfloat16).view(mx.uint16))
        w.add_tensor(name, bits, raw_dtype=gguf.GGMLQuantizationType.BF16)


def _add_tokenizer(w, gguf, lm: LoadedModel) -> None:
    spec = json.loads(lm.tokenizer.path.read_text(encoding="utf-8"))
    ids = dict(spec["model"]["vocab"]) | {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    tokens = [f"<unused{i}>" for i in range(lm.model.shape.vocab_size)]
    for token, i in ids.items():
        tokens[i] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_pad_token_id(PAD_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_uint32(gguf.Keys.Tokenizer.FIM_PAD_ID, EOS_ID)  # else llama.cpp finds "<PAD>" and ends generation at it
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

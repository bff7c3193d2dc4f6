"""`acm export`: a folder that mlx-lm loads as-is (`mlx_lm.load`, `mlx_lm.generate`).

mlx-lm's `gpt2` model: learned positions, pre-LayerNorm, GELU (tanh), biases, FFN of 4 x hidden
and a tied output head. acm's weights keep GPT-2's names, so the export writes them under the
`model.` prefix mlx-lm uses (already in its orientation), with config.json and the tokenizer.
A preset that gpt2 cannot express (an untied head, another FFN width) is refused in one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from core.atomic import write_text
from core.config import Config
from core.errors import AcmError
from core.generate.decode import load_model
from core.tokenizer.bpe import SPECIAL_TOKENS


def export_checkpoint(cfg: Config, to: Path, run: str | None = None, stage: str | None = None,
                      which: str = "best", dtype: str = "float32") -> dict:
    lm = load_model(cfg, run, stage, which, master_weights=True)  # exported in the dtype asked for
    s = lm.model.shape
    if not s.tie_embeddings:
        raise AcmError(f"preset {s.name!r} has an untied output head, which mlx-lm's gpt2 cannot load "
                       "(it always ties the head to the embedding): export a tied preset (nano, micro, tiny)")
    if s.n_ffn != 4 * s.n_embd:
        raise AcmError(f"preset {s.name!r} has FFN {s.n_ffn}, but mlx-lm's gpt2 fixes it at 4 x hidden "
                       f"({4 * s.n_embd})")
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise AcmError(f"{to} exists{' and is not empty' if to.is_dir() else ' and is a file'}: choose a new folder")
    tmp = to.with_name(f".{to.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    target = getattr(mx, dtype)
    weights = {f"model.{k}": v.astype(target) for k, v in tree_flatten(lm.model.parameters())}
    mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_ctx": s.n_ctx, "n_positions": s.n_ctx, "n_embd": s.n_embd, "n_head": s.n_head, "n_layer": s.n_layer,
        "n_inner": s.n_ffn, "vocab_size": s.vocab_size, "layer_norm_epsilon": s.norm_eps,
        "activation_function": "gelu_new", "tie_word_embeddings": True,
        "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0, "torch_dtype": dtype,
        "acm": {"preset": s.name, "run": lm.run, "stage": lm.stage, "step": lm.step},
    }
    write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
    shutil.copyfile(lm.tokenizer.path, tmp / "tokenizer.json")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": s.n_ctx,
        "pad_token": SPECIAL_TOKENS[0], "unk_token": SPECIAL_TOKENS[1], "bos_token": SPECIAL_TOKENS[2],
        "eos_token": SPECIAL_TOKENS[3], "add_bos_token": False, "clean_up_tokenization_spaces": False,
    }
    write_text(tmp / "tokenizer_config.json", json.dumps(tok_config, indent=2) + "\n")
    write_text(tmp / "special_tokens_map.json", json.dumps(
        {k: tok_config[k] for k in ("pad_token", "unk_token", "bos_token", "eos_token")}, indent=2) + "\n")
    if to.exists():
        to.rmdir()
    tmp.rename(to)
    return {"folder": str(to), "checkpoint": str(lm.checkpoint), "preset": s.name, "dtype": dtype}

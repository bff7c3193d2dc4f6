"""`acm export`: a checkpoint as a folder in the format people run it with, plus a model card.

- `mlx` (default): what `mlx_lm.load` reads as-is (gpt2, or gpt_bigcode for an untied head);
- `hf`: what `transformers` loads as GPT2LMHeadModel;
- `gguf`: one GPT-2 GGUF file with the tokenizer inside, for llama.cpp and the tools built on it.

The folder is built aside (`.NAME.partial`) and renamed into place, so a failed export leaves
nothing half-written, and an existing non-empty folder is never overwritten.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from core.config import Config
from core.errors import AcmError
from core.generate.decode import LoadedModel, load_model
from core.generate.export import card, gguf_file, hf, mlx_lm

FORMATS = ("mlx", "hf", "gguf")
DTYPES = ("float32", "bfloat16", "float16")
WRITERS = {"mlx": mlx_lm.write, "hf": hf.write, "gguf": gguf_file.write}


def export_checkpoint(cfg: Config, to: Path, run: str | None = None, stage: str | None = None,
                      which: str = "best", dtype: str = "float32", fmt: str = "mlx") -> dict:
    """Export a run's checkpoint (read in its float32 master weights); what was written."""
    if fmt not in FORMATS:
        raise AcmError(f"unknown export format {fmt!r}: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise AcmError(f"unknown dtype {dtype!r}: {', '.join(DTYPES)}")
    target = _check_target(Path(to))
    lm = load_model(cfg, run, stage, which, master_weights=True)
    return export_model(lm, target, dtype, fmt, card.facts(cfg, lm))


def export_model(lm: LoadedModel, to: Path, dtype: str, fmt: str, facts: dict | None = None) -> dict:
    to = _check_target(Path(to))
    tmp = to.with_name(f".{to.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        detail = WRITERS[fmt](lm, tmp, dtype)
        card.write(tmp, lm, fmt, dtype, detail, facts or {})
        if to.exists():
            to.rmdir()
        tmp.rename(to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": str(to), "checkpoint": str(lm.checkpoint), "preset": lm.model.shape.name, "dtype": dtype,
            "format": fmt, "files": sorted(p.name for p in to.iterdir())} | detail


def _check_target(to: Path) -> Path:
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise AcmError(f"{to} exists{' and is not empty' if to.is_dir() else ' and is a file'}: choose a new folder")
    return to

"""The model card (README.md) every export carries: what the model is, what it learned from, how
long, and how well it writes bash, as a reader of a Hugging Face model page expects."""
from __future__ import annotations

from pathlib import Path

from mlx.utils import tree_flatten

from core.atomic import read_json, write_text
from core.config import Config
from core.generate.decode import LoadedModel
from core.paths import Paths

LIBRARY = {"mlx": "mlx", "hf": "transformers", "gguf": "gguf"}


def _read(path: Path) -> dict:
    return read_json(path) or {}


def facts(cfg: Config, lm: LoadedModel) -> dict:
    """What the card says beyond the model itself: data, checkpoint state, evaluation."""
    where = cfg.locations
    corpora = {}
    for kind in ("language", "code"):
        manifest = _read(where.corpus_manifest(kind))
        shards = _read(where.shards_manifest(kind))
        tokens = sum(c.get("tokens", {}).get("train", 0) for c in shards.get("chunks", []))
        corpora[kind] = {"source": manifest.get("source", getattr(cfg.data, kind).source),
                         "documents": manifest.get("stats", {}).get("documents"), "train_tokens": tokens,
                         "licences": manifest.get("report", {}).get("by_licence", {})}
    state = _read(lm.checkpoint / "state.json")
    run = where.run(lm.run)
    return {"corpora": corpora, "tokens_seen": state.get("tokens_seen"), "val_loss": state.get("val_loss"),
            "eval": _read(Paths.eval_results(run)), "config": state.get("config", {})}


def write(folder: Path, lm: LoadedModel, fmt: str, dtype: str, detail: dict, facts: dict) -> None:
    write_text(folder / "README.md", render(lm, fmt, dtype, detail, facts))


def render(lm: LoadedModel, fmt: str, dtype: str, detail: dict, facts: dict) -> str:
    s = lm.model.shape
    params = sum(v.size for _, v in tree_flatten(lm.model.parameters()))
    lines = ["---", f"library_name: {LIBRARY[fmt]}", "pipeline_tag: text-generation",
             "tags: [acm, bash, code, gpt2" + (", mlx" if fmt == "mlx" else "") + (", gguf" if fmt == "gguf" else "")
             + "]", "---", "",
             f"# acm {s.name}: a small model that writes bash", "",
             f"Trained from scratch with acm (MLX): pretrained on language, fine-tuned on bash scripts. "
             f"This is run `{lm.run}`, stage `{lm.stage}`, step {lm.step:,}, exported as {fmt} "
             f"({detail.get('model_type', '')}, {dtype}).", "",
             "## Model", "",
             "| | |", "|---|---|",
             f"| preset | {s.name} |", f"| parameters | {params / 1e6:.1f}M |",
             f"| layers / heads / hidden / FFN | {s.n_layer} / {s.n_head} / {s.n_embd} / {s.n_ffn} |",
             f"| context | {s.n_ctx} tokens |",
             f"| output head | {'tied to the embedding' if s.tie_embeddings else 'untied'} |",
             "", "## Tokenizer", "",
             f"Byte-level BPE, {lm.tokenizer.vocab_size:,} tokens with `<PAD>` (0) `<UNK>` (1) `<BOS>` (2) "
             "`<EOS>` (3); "
             f"sha256 `{lm.tokenizer.sha256[:16]}…`. A script starts with `<BOS>` and ends at `<EOS>`.", "",
             *_data(facts), *_training(lm, facts), *_evaluation(facts), *_usage(fmt)]
    return "\n".join(lines) + "\n"


def _data(facts: dict) -> list[str]:
    rows = ["## Data", "", "| corpus | source | documents | training tokens |", "|---|---|---|---|"]
    for kind, c in facts.get("corpora", {}).items():
        docs = f"{c['documents']:,}" if c.get("documents") is not None else "–"
        rows.append(f"| {kind} | {c['source']} | {docs} | {c['train_tokens']:,} |")
    return rows + ["", "Bash scripts were validated with `bash -n` and deduplicated (exact and near-duplicate).", "",
                   *_licences(facts.get("corpora", {}).get("code", {}).get("licences", {}))]


def _licences(counts: dict) -> list[str]:
    """The bash corpus's licences (SPDX ids, NOASSERTION where unknown) with their documents, the largest first."""
    if not counts:
        return []
    rows = ["Licences of the bash scripts (each script carries its repository's):", "",
            "| licence | documents |", "|---|---|"]
    rows += [f"| {name} | {n:,} |" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return rows + [""]


def _training(lm: LoadedModel, facts: dict) -> list[str]:
    train = facts.get("config", {}).get("train", {}).get(lm.stage, {})
    seen = facts.get("tokens_seen")
    rows = ["## Training", "", f"- stage: {lm.stage}, step {lm.step:,}" + (f", {seen:,} tokens seen" if seen else "")]
    if train:
        rows.append(f"- batch {train.get('batch_size')} x {train.get('seq_len')} tokens, peak learning rate "
                    f"{train.get('learning_rate')}, AdamW, cosine schedule")
    if facts.get("val_loss") is not None:
        rows.append(f"- validation loss at this checkpoint: {facts['val_loss']:.4f}")
    return rows + [""]


def _evaluation(facts: dict) -> list[str]:
    stages = facts.get("eval", {}).get("stages", {})
    if not stages:
        return ["## Evaluation", "", "Not evaluated yet (`acm eval` writes the table this card shows).", ""]
    rows = ["## Evaluation (`acm eval`)", "",
            "| checkpoint | language ppl | code ppl | parses (complete) | parses (all) | relevant | relevant & parses "
            "| truncated | distinct-2 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in stages.items():
        g = r.get("code_generation", {})
        rows.append(f"| {name} | {_num(r.get('language', {}).get('perplexity'))} | "
                    f"{_num(r.get('code', {}).get('perplexity'))} | {_pct(g.get('parse_rate_complete'))} | "
                    f"{_pct(g.get('parse_rate'))} | {_pct(g.get('relevant'))} | {_pct(g.get('relevant_and_parses'))} | "
                    f"{_pct(g.get('truncated'))} | {_num(g.get('distinct_2'))} |")
    return rows + ["", "Relevant: the share of samples that use what their task's prompt asks for (`eval.tasks`: "
                   "`pg_dump` for a PostgreSQL backup); relevant & parses: those that also parse with `bash -n`.",
                   ""]


def _num(v) -> str:
    return "–" if v is None else f"{v:,.2f}"


def _pct(v) -> str:
    return "–" if v is None else f"{v:.0%}"


def _usage(fmt: str) -> list[str]:
    # single quotes: pasted into bash, "#!..." would be history expansion (`event not found`)
    prompt = "'#!/bin/bash\\n# Back up a directory\\n'"
    how = {
        "mlx": ["```bash", f"mlx_lm.generate --model . --prompt {prompt} --max-tokens 200", "```"],
        "hf": ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
               "tok = AutoTokenizer.from_pretrained('.')", "model = AutoModelForCausalLM.from_pretrained('.')",
               f"ids = tok({prompt}, return_tensors='pt').input_ids",
               "print(tok.decode(model.generate(ids, max_new_tokens=200, do_sample=True)[0]))", "```"],
        "gguf": ["```bash", f"llama-cli -m model.gguf -p {prompt} -n 200 --temp 0.8", "```"],
    }[fmt]
    return ["## Use", "", *how, "", "Generated scripts are untested code: read them before running them."]

"""The model card (README.md) every export carries: what the model is, what it learned from, how
long, and how well it writes bash, as a reader of a Hugging Face model page expects."""
from __future__ import annotations

from pathlib import Path

from mlx.utils import tree_flatten

from core.atomic import read_json, write_text
from core.config import Config
from core.errors import READ_BACK_ERRORS
from core.generate.cut import cut_note, drawn_of_asked
from core.generate.decode import LoadedModel
from core.generate.export import commands
from core.generate.sampling import PENALTY_WINDOW
from core.paths import Paths

LIBRARY = {"mlx": "mlx", "hf": "transformers", "gguf": "gguf"}


def _read(path: Path) -> dict:
    return read_json(path) or {}


def facts(cfg: Config, lm: LoadedModel) -> dict:
    """What the card says beyond the model itself: data, checkpoint state, evaluation; where a file
    they come from reads in the wrong shape (damaged by hand), the card leaves them out rather than
    the export failing."""
    try:
        return _facts(cfg, lm)
    except READ_BACK_ERRORS:
        return {"sampling": _sampling(cfg)}


def _sampling(cfg: Config) -> dict:
    g = cfg.generate
    return {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p, "min_p": g.min_p,
            "repetition_penalty": g.repetition_penalty, "max_tokens": g.max_tokens}


def _facts(cfg: Config, lm: LoadedModel) -> dict:
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
            "eval": _read(Paths.eval_results(run)), "config": state.get("config", {}), "sampling": _sampling(cfg)}


def write(folder: Path, lm: LoadedModel, fmt: str, dtype: str, detail: dict, facts: dict) -> None:
    try:
        text = render(lm, fmt, dtype, detail, facts)
    except READ_BACK_ERRORS:  # a fact of the wrong shape (an eval.json damaged by hand): the card without them
        text = render(lm, fmt, dtype, detail, {"sampling": facts.get("sampling", {})})
    write_text(folder / "README.md", text)


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
             *_data(facts), *_training(lm, facts), *_evaluation(facts, (lm.stage, lm.step)),
             *_usage(lm, fmt, dtype, detail, facts)]
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
        warmup = train.get("warmup_steps")
        rows.append(f"- batch {train.get('batch_size')} x {train.get('seq_len')} tokens, {_optimizer(train)}, "
                    + (f"linear warmup over {warmup:,} steps, then cosine decay" if warmup else "cosine decay"))
    if facts.get("val_loss") is not None:
        rows.append(f"- validation loss at this checkpoint: {facts['val_loss']:.4f}")
    return rows + [""]


def _optimizer(train: dict) -> str:
    """The stage's optimizer as its saved settings name it (a run saved before Muon names none: AdamW)."""
    if train.get("optimizer") == "muon":
        return (f"Muon on the blocks' matrices (peak learning rate {train.get('muon_learning_rate')}) and AdamW on "
                f"the embeddings, head, norms and biases (peak learning rate {train.get('learning_rate')})")
    return f"AdamW, peak learning rate {train.get('learning_rate')}"


def _evaluation(facts: dict, exported: tuple[str, int] | None = None) -> list[str]:
    """The run's `acm eval` table, each row's checkpoint named with its step, and said in bold where
    none of them is the checkpoint `exported` (its stage and step: the run trained on, or another
    was chosen, since; a path would differ once the run is renamed or the project moved)."""
    results = facts.get("eval", {})
    stages = results.get("stages", {})
    if not stages:
        return ["## Evaluation", "", "Not evaluated yet (`acm eval` writes the table this card shows).", ""]
    rows = ["## Evaluation (`acm eval`)", "",
            "| checkpoint | samples | language ppl | code ppl | parses (complete) | parses (all) | relevant "
            "| relevant & parses | truncated | distinct-2 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in stages.items():
        g = r.get("code_generation", {})
        step = f" (step {r['step']:,})" if isinstance(r.get("step"), int) else ""
        rows.append(f"| {name}{step} | {drawn_of_asked(results, g)} | "
                    f"{_num(r.get('language', {}).get('perplexity'))} | "
                    f"{_num(r.get('code', {}).get('perplexity'))} | {_pct(g.get('parse_rate_complete'))} | "
                    f"{_pct(g.get('parse_rate'))} | {_pct(g.get('relevant'))} | {_pct(g.get('relevant_and_parses'))} | "
                    f"{_pct(g.get('truncated'))} | {_num(g.get('distinct_2'))} |")
    cut = cut_note(results)
    measured = {(name.split("+")[0], r.get("step")) for name, r in stages.items()}
    other = [] if exported is None or exported in measured else [
        f"**These figures are of other checkpoints than the one exported ({exported[0]}, step {exported[1]:,}): "
        "`acm eval` measures the run's best checkpoints again.**", ""]
    return rows + ["", *other, *([f"**{cut[0].upper()}{cut[1:]}.**", ""] if cut else []),
                   "Samples: scripts generated and scored, of those asked for. Relevant: the share of samples that "
                   "use what their task's prompt asks for (`eval.tasks`: `pg_dump` for a PostgreSQL backup); "
                   "relevant & parses: those that also parse with `bash -n`.", ""]


def _num(v) -> str:
    return "–" if v is None else f"{v:,.2f}"


def _pct(v) -> str:
    return "–" if v is None else f"{v:.0%}"


def _usage(lm: LoadedModel, fmt: str, dtype: str, detail: dict, facts: dict) -> list[str]:
    p = commands.plan(lm, facts.get("sampling", {}))
    how = {
        "mlx": ["```bash", commands.mlx_cli(p), "```", "",
                "`mlx_lm.generate` has no repetition penalty; mlx-lm's Python API passes acm's, over the same "
                "window:", "", "```python", *commands.mlx_python(p), "```", "",
                "An OpenAI-style endpoint: `mlx_lm.server` serves the folder,", "",
                "```bash", commands.mlx_server(p)[0], "```", "",
                "and, from a second shell, `POST /v1/completions` continues a prompt (`repetition_penalty` and "
                "`repetition_context_size` are mlx-lm's own fields):", "",
                "```bash", commands.mlx_server(p)[1], "```"],
        "hf": ["```python", *commands.hf_python(p), "```", "",
               "transformers applies the repetition penalty to the whole sequence: acm's window when the context "
               f"holds at most {PENALTY_WINDOW:,} tokens, as this one's {p.n_ctx:,} "
               + ("does." if p.n_ctx <= PENALTY_WINDOW else "does not (past that, it also penalises older tokens).")],
        "gguf": ["```bash", commands.llama_cpp(p), "```", "",
                 "(`llama-completion` is llama.cpp's plain-text completion; builds before December 2025 call it "
                 "`llama-cli`.)"],
    }[fmt]
    return ["## Use", "",
            "The model continues a bash script: give it the start of one. Every client below puts `<BOS>` before the "
            "prompt, as acm does, and stops at `<EOS>`. The context is "
            f"{p.n_ctx:,} tokens, prompt included; this prompt takes {p.prompt_tokens} with its `<BOS>`, so the "
            f"commands ask for at most {p.new_tokens:,} new ones (past the context the learned positions run out: "
            "llama.cpp aborts, transformers raises an IndexError, mlx-lm reads past its table of positions).", "",
            *how, "", *_matching(p, fmt, dtype, detail.get("model_type", "")), "",
            "Generated scripts are untested code: read them before running them."]


def _matching(p: commands.Plan, fmt: str, dtype: str, model_type: str) -> list[str]:
    """What it takes to get what `acm generate` gives."""
    s = p.sampling
    order = ("" if fmt == "hf" else
             f" {'mlx-lm' if fmt == 'mlx' else 'llama.cpp'} applies top-p and min-p before the temperature, acm "
             "after it: with top-p below 1 (or min-p above 0) it samples from a slightly different distribution.")
    if fmt == "mlx":
        order += " It also writes out a special token generated mid-text (`<BOS>`), which acm leaves out."
    whole = ", the whole context" if p.n_ctx <= PENALTY_WINDOW else ""
    return ["### As acm samples", "",
            f"These are acm's settings: temperature {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}, "
            f"min-p {s.min_p:g}, and a repetition penalty of {s.repetition_penalty:g} on every token among the last "
            f"{PENALTY_WINDOW:,} (the prompt and its `<BOS>` included; {p.window:,} here{whole}). "
            "Sampled text still differs from acm's, which draws its own random numbers." + order,
            "", "At temperature 0 (greedy) the client computes acm's logits to within rounding"
            + (" (within 0.002 here: mlx-lm's gpt_bigcode, which holds an untied head, uses the exact GELU where acm "
               "uses the tanh one)" if model_type == "gpt_bigcode" else "")
            + ", so it picks acm's tokens but where two are all but tied. acm decodes in the dtype its run trained "
            "in (bfloat16 by default): `acm generate --temp 0 --dtype float32` is what a float32 export gives"
            + ("." if dtype == "float32" else f"; this one holds {dtype}, which rounds the weights.")]

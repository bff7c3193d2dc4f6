"""The tables both the CLI (rich) and the TUI (DataTable) show: one definition of each table's
columns and of how a record becomes a row of strings (with rich markup where noted)."""
from __future__ import annotations

import functools
from collections.abc import Callable

from rich.text import Text

from core.devices import Device, Reading
from core.errors import READ_BACK_ERRORS
from core.escapes import visible
from core.generate.cut import drawn_of_asked
from core.pipeline.doctor import Check
from core.presets import ModelShape, human_count

CORPUS_COLUMNS = ("dataset", "documents", "words", "tokens (est)", "size", "lines", "avg lines")
TOKENIZER_COLUMNS = ("tokenizer", "code share", "chars/token language", "chars/token bash")
SOURCE_COLUMNS = ("source", "documents", "raw", "rejected", "examples dropped")
SHARD_COLUMNS = ("corpus", "train tokens", "val tokens", "train docs", "val docs", "dtype")
EVAL_COLUMNS = ("stage", "step", "samples", "lang ppl", "code ppl", "parses (complete)", "parses (all)", "relevant",
                "relevant & parses", "truncated", "shellcheck clean", "mean lines", "dist-2")
PRESET_COLUMNS = ("preset", "params", "layers", "hidden", "heads", "FFN", "context", "vocab", "tied")
DOCTOR_COLUMNS = ("check", "found", "status")
DEVICE_COLUMNS = ("device", "name", "memory used", "memory total", "utilisation", "power")
# how a pipeline stage's state is coloured
STATE_STYLES = {"done": "green", "stale": "yellow", "running": "bold cyan", "paused": "cyan", "starting": "cyan",
          "interrupted": "magenta", "failed": "red", "stopped": "yellow"}


def plain(cell: str) -> Text:
    """A table cell read from disk (a run's name, a licence): its control characters escaped and its
    brackets not read as markup, in rich's tables and the app's alike (both read a str as markup)."""
    return Text(visible(cell))


def _tolerant(columns: tuple[str, ...], what: str, many: bool = False) -> Callable:
    """Rows from a file acm wrote: one of the wrong shape (hand-edited, damaged) shows as a row saying
    so, where a pane or table would otherwise end in a KeyError."""
    def wrap(rows: Callable) -> Callable:
        @functools.wraps(rows)
        def safe(*args):
            try:
                return rows(*args)
            except READ_BACK_ERRORS:
                row = [f"{what} is damaged", *["–"] * (len(columns) - 1)]
                return [row] if many else row
        return safe
    return wrap


@_tolerant(CORPUS_COLUMNS, 'its manifest')
def corpus_row(kind: str, s: dict) -> list[str]:
    return [f"{kind} ({s['source']})", f"{s['documents']:,}", f"{s['words']:,}", f"{s['estimated_tokens']:,}",
            f"{s['bytes'] / 2**20:.2f} MB", f"{s['lines']:,}", f"{s['avg_lines']}"]


def code_report_line(r: dict) -> str:
    return (f"bash scripts: {r['raw']:,} raw → {r['valid']:,} valid → {r['unique']:,} unique "
            f"({r['exact_duplicates']} exact, {r['near_duplicates']} near duplicates removed)")


@_tolerant(SOURCE_COLUMNS, 'the corpus manifest', many=True)
def source_rows(r: dict) -> list[list[str]]:
    """The bash corpus's documents per source (github, local, builtin, tldr, nl2bash), most first:
    kept, found, rejected and, for comment-to-command sources, examples dropped by `bash -n`."""
    raw, rejected, dropped = (r.get(k, {}) for k in ("raw_by_source", "rejected_by_source", "examples_dropped"))
    names = sorted(set(r["by_source"]) | set(raw), key=lambda n: (-r["by_source"].get(n, 0), n))
    return [[n, f"{r['by_source'].get(n, 0):,}", f"{raw[n]:,}" if n in raw else "–", f"{rejected.get(n, 0):,}",
             f"{dropped[n]:,}" if n in dropped else "–"] for n in names]


def sources_line(r: dict) -> str:
    return "by source: " + ", ".join(f"{row[0]} {row[1]}" for row in source_rows(r))


@_tolerant(TOKENIZER_COLUMNS, 'tokenizer-meta.json', many=True)
def tokenizer_rows(meta: dict) -> list[list[str]]:
    def row(name: str, part: dict) -> list[str]:
        return [name, f"{part['mix']['code_share']:.1%}", str(part["chars_per_token"]["language"]),
                str(part["chars_per_token"]["code"])]

    rows = [row("acm", meta)]
    if "original_mix" in meta:
        rows.append(row("original mix", meta["original_mix"]))
    return rows


@_tolerant(SHARD_COLUMNS, 'the shard manifest')
def shard_row(kind: str, m: dict) -> list[str]:
    return [kind, f"{m['tokens']['train']:,}", f"{m['tokens']['val']:,}", f"{m['documents']['train']:,}",
            f"{m['documents']['val']:,}", m["dtype"]]


def _share(value: float | None, missing: str = "–") -> str:
    return missing if value is None else f"{value:.0%}"


@_tolerant(EVAL_COLUMNS, 'eval.json', many=True)
def eval_rows(results: dict) -> list[list[str]]:
    """One row per stage (and the fine-tuned model with syntax-checked sampling); samples are those
    drawn of those asked (fewer where a time budget cut them: `cut_note` says so); relevance is –
    where no task has an expectation (or the evaluation predates relevance)."""
    rows = []
    for stage, r in results["stages"].items():
        g = r["code_generation"]
        rows.append([stage, str(r["step"]), drawn_of_asked(results, g), str(r["language"]["perplexity"]),
                     str(r["code"]["perplexity"]), _share(g.get("parse_rate_complete"), "no complete"),
                     _share(g["parse_rate"]),
                     _share(g.get("relevant")), _share(g.get("relevant_and_parses")),
                     _share(g.get("truncated")), _share(g.get("shellcheck_clean"), "not installed"),
                     str(g.get("mean_lines", "–")), str(g["distinct_2"])])
    return rows


def preset_row(p: ModelShape, selected: bool = False) -> list[str]:
    return [("*" if selected else "") + p.name, human_count(p.param_count()), str(p.n_layer), str(p.n_embd),
            str(p.n_head), str(p.n_ffn), str(p.n_ctx), str(p.vocab_size), "yes" if p.tie_embeddings else "no"]


def doctor_row(c: Check) -> list[Text]:
    """Its cells as text, never markup (a value such as `.[shellcheck]`); its status coloured: green ok,
    red MISSING, yellow warn."""
    style = "green" if c.ok else ("red" if c.required else "yellow")
    return [plain(c.name), plain(c.value), Text(c.status, style=style)]


TOKEN_COLOURS = ["on dark_blue", "on dark_green", "on dark_red", "on purple4", "on dark_cyan"]


def coloured_tokens(pieces: list[str]) -> Text:
    """Each token on its own background; newlines and tabs shown as ↵ and →."""
    out = Text()
    for i, piece in enumerate(pieces):
        shown = piece.replace("\n", "↵\n").replace("\t", "→")
        out.append(shown or "·", style=TOKEN_COLOURS[i % len(TOKEN_COLOURS)])
    return out


def device_cells(d: Device) -> list[str]:
    """A device's row of `acm devices` (and the Setup pane's)."""
    def gib(n: int | None) -> str:
        return "–" if n is None else f"{n / 2**30:.1f} GiB"

    power = "–" if d.power is None else f"{d.power:.0f}" + (f"/{d.power_limit:.0f}" if d.power_limit else "") + " W"
    util = "–" if d.utilisation is None else f"{d.utilisation:.0f}%"
    return [d.label, d.name, gib(d.memory_used), gib(d.memory_total), util, power]


def devices_source(reading: Reading) -> str:
    """Where a reading's figures come from."""
    return "nvidia-smi" if reading.source == "nvidia-smi" else "MLX: this process's memory"

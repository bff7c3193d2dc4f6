"""Every file acm reads back, fed malformed, wrong-typed, truncated, non-UTF-8 and huge content: the
command that reads it says one `acm: error:` line and exits 2 (or, where acm reads the file as
optional, treats it as absent and goes on), never a traceback, and writes nothing; the app stays up.

Deterministic: every mutation is a pure function of the file's own bytes and a fixed seed."""
from __future__ import annotations

import json
import random
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from core import cli, config
from core.runs import checkpoint

from .helpers import copy_project

HUGE = 4_000_000  # bytes of nesting: deep enough to break a recursive parser, big enough to be slow to read


@dataclass(frozen=True)
class Read:
    """A file acm reads back, the commands that read it, and whether they need it (exit 2) or may
    go on without it (exit 0, the file read as absent)."""
    path: str
    form: str  # json, jsonl, toml, safetensors
    commands: tuple[tuple[str, ...], ...]
    needed: bool
    valid_when_empty: bool = False  # an empty acm.toml means every default


GENERATE = ("generate", "#!/bin/bash", "--max-tokens", "2", "--seed", "1")
READS = {
    "acm.toml": Read("acm.toml", "toml", (("config", "check"), ("runs",)), True, valid_when_empty=True),
    "repos file": Read("repos.toml", "toml", (("data", "fetch", "code"),), True),
    "run settings": Read("runs/m/config.toml", "toml", (("runs",), ("runs", "--json")), False),
    "metrics.jsonl": Read("runs/m/pretrain/metrics.jsonl", "jsonl", (
        ("runs", "metrics", "m", "--stage", "pretrain", "--csv"),
        ("runs", "metrics", "m", "--stage", "pretrain", "--json"), ("runs", "metrics", "m", "--stage", "pretrain")),
        False),
    "status.json": Read("runs/m/finetune/status.json", "json", (("runs",), ("runs", "--json"), ("pipeline",)), False),
    "state.json": Read("{best}/state.json", "json", (GENERATE, ("runs", "--json")), False),
    "checkpoint weights": Read("{best}/model.safetensors", "safetensors", (GENERATE,), True),
    "token manifest": Read("data/tokens/language/manifest.json", "json",
                           (("train", "pretrain", "--run", "fuzz", "--max-steps", "1"),), True),
    "corpus manifest": Read("data/code/manifest.json", "json", (("data", "show", "code", "0"),), True),
    "corpus manifest, as its hash": Read("data/code/manifest.json", "json", (("pipeline",), ("prepare",)), False),
    "tokenizer.json": Read("data/tokenizer/tokenizer.json", "json", (("tokenizer", "probe", "echo hi"),), True),
    "tokenizer-meta.json": Read("data/tokenizer/tokenizer-meta.json", "json", (("tokenizer", "info"),
                                                                               ("pipeline",)), False),
    "eval.json": Read("runs/m/eval.json", "json", (("pipeline",), ("runs", "--json")), False),
}
REPOS = b'[[repo]]\nname = "someone/scripts"\nurl = "file:///nowhere/scripts"\ncategory = "tools"\nlicence = "MIT"\n'
EVAL = {"stages": {"finetune": {"checkpoint": "step-0000010", "step": 10, "language": {"perplexity": 80.5},
                                "code": {"perplexity": 40.25},
                                "code_generation": {"parse_rate": 0.5, "relevant": 0.25}}},
        "seconds": 1.5}


def swapped(value):
    """Every leaf of a JSON value with a wrong type: numbers become text, text numbers, and so on."""
    if isinstance(value, dict):
        return {k: swapped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [swapped(v) for v in value[:50]] or {"0": 1}
    return {str: 7, bool: "yes", int: "7", float: [], type(None): {}}[type(value)]


def mutations(original: bytes, form: str, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    cut = len(original) // 2
    if form == "toml":  # inside a string: a cut between lines could still be valid settings
        cut = original.index(b'= "', cut) + 3
    out = {"empty": b"", "truncated": original[:cut], "random bytes": rng.randbytes(4096),
           "non-UTF-8": original[:cut] + b"\xff\xfe\xc3(" + original[cut:]}
    if form in ("json", "jsonl"):
        records = [json.loads(line) for line in original.splitlines()] if form == "jsonl" else [json.loads(original)]
        out["wrong top-level type"] = b'["not", "an", "object"]\n' * (1 if form == "json" else 3)
        out["wrong field types"] = b"".join(json.dumps(swapped(r)).encode() + b"\n" for r in records)
        out["NaN and infinite numbers"] = re.sub(rb"(?<=:)\s*-?\d+(\.\d+)?(e-?\d+)?", lambda m: rng.choice(
            [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"99999999999999999999999"]), original)
        out["huge"] = b'{"a": ' + b"[" * HUGE + b"\n"
        if form == "jsonl":  # lines a hand added: not objects, a report without its step, a step in words
            out["odd records"] = original + (b'null\n[1, 2]\n{"type": "metrics"}\n{"type": "eval", "step": "x"}\n'
                                             b'{"type": "metrics", "step": true, "loss": 1.0}\n'
                                             b'{"type": "metrics", "step": 11}\n')
    elif form == "toml":
        out["wrong top-level type"] = b'model = "nano"\nrepo = 3\ndata = [1, 2]\n'
        out["wrong field types"] = re.sub(rb"(?m)^(\s*[\w.\"-]+\s*=\s*).*$", rb'\g<1>[1, {a = 2}]', original)
        out["huge"] = b"a = " + b"[" * HUGE + b"\n"
    else:  # safetensors: an 8-byte header length, a JSON header, the data
        n = int.from_bytes(original[:8], "little")
        header = json.loads(original[8:8 + n])
        wrong = {k: (v if k == "__metadata__" else v | {"shape": [1] * len(v["shape"]), "data_offsets": [0, 4]})
                 for k, v in header.items()}
        body = json.dumps(wrong).encode()
        out["wrong top-level type"] = len(body).to_bytes(8, "little") + body + original[8 + n:]
        body = json.dumps(swapped(header)).encode()
        out["wrong field types"] = len(body).to_bytes(8, "little") + body + original[8 + n:]
        out["huge"] = (2**62).to_bytes(8, "little") + original[8:]
    return out


COMMON = ["empty", "truncated", "random bytes", "non-UTF-8", "wrong top-level type", "wrong field types", "huge"]
MUTATIONS = {"json": [*COMMON, "NaN and infinite numbers"],
             "jsonl": [*COMMON, "NaN and infinite numbers", "odd records"],
             "toml": COMMON, "safetensors": COMMON}
CASES = [(what, m) for what, r in READS.items() for m in MUTATIONS[r.form]]


@pytest.fixture(scope="module")
def fuzzed_project(model_template, tmp_path_factory) -> Path:
    """The nano project with a trained run, a repos file and an eval.json, built once for the module."""
    root = copy_project(model_template, tmp_path_factory.mktemp("fuzz") / "proj")
    (root / "repos.toml").write_bytes(REPOS)
    (root / "runs" / "m" / "eval.json").write_text(json.dumps(EVAL, indent=1) + "\n")
    cfg = config.load(root / "acm.toml")
    cfg.data.code.source, cfg.data.code.repos_file = "github", "repos.toml"
    config.save(cfg, root / "acm.toml")
    return root


def target(project: Path, read: Read) -> Path:
    best = checkpoint.best(project / "runs" / "m" / "finetune" / "checkpoints")
    return project / read.path.format(best=best.path.relative_to(project))


def tree(root: Path, leave_out: Path) -> dict[str, tuple[int, int] | str]:
    """Every path under root with its size and modification time: what a command wrote shows here."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in root.rglob("*") if p != leave_out and not p.is_symlink()}


def run(project: Path, argv: tuple[str, ...], capsys) -> tuple[int, str]:
    try:
        rc = cli.main(["-c", str(project / "acm.toml"), *argv])
    except SystemExit as e:  # argparse alone exits; nothing here should reach it
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("what,mutation", CASES, ids=lambda v: v.replace(" ", "-"))
def test_a_damaged_file_is_one_line_and_writes_nothing(fuzzed_project, capsys, what, mutation):
    read = READS[what]
    path = target(fuzzed_project, read)
    original = path.read_bytes()
    path.write_bytes(mutations(original, read.form, zlib.crc32(what.encode()))[mutation])
    before = tree(fuzzed_project, path)
    try:
        for argv in read.commands:
            rc, err = run(fuzzed_project, argv, capsys)
            lines = [line for line in err.splitlines() if line.startswith("acm: error: ")]
            assert "Traceback" not in err and "internal error" not in err, err
            needed = read.needed and not (read.valid_when_empty and mutation == "empty")
            assert rc == 2 if needed else rc in (0, 2), (argv, rc, err)
            assert rc == 0 or len(lines) == 1, (argv, err)
            assert tree(fuzzed_project, path) == before, argv
    finally:
        path.write_bytes(original)
        shutil.rmtree(fuzzed_project / "runs" / "fuzz", ignore_errors=True)


APP_READS = ["acm.toml", "tokenizer-meta.json", "token manifest", "metrics.jsonl", "eval.json", "status.json",
             "state.json"]


async def test_the_app_stays_up_over_damaged_files(fuzzed_project):
    """Every file the panes show, each with every field of the wrong type, all at once (one app start
    keeps it fast); every pane is opened and the stage list read again."""
    from textual.widgets import DataTable

    from acm_tui.app import AcmApp

    originals = {}
    for what in APP_READS:
        path = target(fuzzed_project, READS[what])
        originals[path] = path.read_bytes()
        path.write_bytes(mutations(originals[path], READS[what].form, zlib.crc32(what.encode()))["wrong field types"])
    before = tree(fuzzed_project, fuzzed_project / "acm.toml")
    app = AcmApp(fuzzed_project / "acm.toml")
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            for pane in "234561":
                await pilot.press(pane)
                await pilot.pause()
            assert app.failure is None and app.is_running and app.query_one("#pipeline", DataTable).row_count == 7
            assert app.config_error is not None  # it opened on defaults and said why
        assert tree(fuzzed_project, fuzzed_project / "acm.toml") == before
    finally:
        for path, original in originals.items():
            path.write_bytes(original)

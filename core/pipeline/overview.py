"""The whole pipeline at a glance: each stage's state, read from what is on disk.

So the overview is right after a restart, and a stage whose input changed since it ran reads as
"stale". `run_stage` runs one stage by name (the TUI's "run all remaining" chains them).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core import runs
from core.atomic import read_json
from core.config import Config
from core.data.corpus import corpus_hashes, sha256_file
from core.errors import READ_BACK_ERRORS
from core.generate.cut import cut_note
from core.locks import held_alone
from core.paths import CORPORA, Paths
from core.progress import Progress, within_reach
from core.runs import checkpoint
from core.runs.events import Event, Metrics
from core.tokenizer.bpe import load_meta
from core.tokenizer.shards import read_manifest
from core.train.budget import describe_seconds

PIPELINE_STAGES = [("data-language", "data: language"), ("data-code", "data: bash scripts"), ("tokenizer", "tokenizer"),
                   ("prepare", "token shards"), ("pretrain", "pretrain"), ("finetune", "fine-tune"),
                   ("evaluate", "evaluate")]  # (name, label), in order; the training ones are runs.TRAINING_STAGES


@dataclass
class StageStatus:
    name: str
    label: str
    state: str  # not started, done, stale, running, paused, interrupted, stopped, failed
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.state == "done"


def _sha(path: Path) -> str | None:
    """The file's hash; None where there is none to read (missing, or not a regular file: the stage
    that reads it says why)."""
    try:
        return sha256_file(path) if path.exists() else None
    except OSError:
        return None


def _corpus_hashes(manifest: Path) -> tuple[str, ...]:
    """`corpus_hashes`, none where the manifest cannot be read (its data stage then reads as damaged)."""
    try:
        return corpus_hashes(manifest)
    except OSError:
        return ()


LABELS = dict(PIPELINE_STAGES)


def _status(name: str, state: str, detail: str = "") -> StageStatus:
    return StageStatus(name, LABELS[name], state, detail)


def pipeline_status(cfg: Config) -> list[StageStatus]:
    """Every stage's state, read from disk; a stage whose input changed since it ran is "stale"."""
    corpus = {kind: _corpus_hashes(cfg.locations.corpus_manifest(kind)) for kind in CORPORA}  # read once
    tok_sha = _sha(cfg.locations.tokenizer_file)
    out = [_guarded(f"data-{kind}", _corpus_status, cfg, kind) for kind in CORPORA]
    out += [_guarded("tokenizer", _tokenizer_status, cfg, corpus, tok_sha),
            _guarded("prepare", _shards_status, cfg, corpus, tok_sha)]
    run = runs.newest_run(cfg)  # the run the pipeline follows
    out += [_guarded(stage, _training_status, cfg, run, stage, LABELS[stage], tok_sha)
            for stage in runs.TRAINING_STAGES]
    return out + [_guarded("evaluate", _eval_status, run, LABELS["evaluate"])]


def _guarded(name: str, status: Callable[..., StageStatus], *args) -> StageStatus:
    """A stage's status; a file it wrote that reads back in the wrong shape makes it "damaged"."""
    try:
        return status(*args)
    except READ_BACK_ERRORS:
        return _status(name, "damaged", "a file it wrote is damaged: run the stage again")


def _corpus_status(cfg: Config, kind: str) -> StageStatus:
    path = cfg.locations.corpus_manifest(kind)
    m = read_json(path)
    if not m:
        if path.exists() or path.is_symlink():  # there, but not a manifest acm could have written
            return _status(f"data-{kind}", "damaged", "its manifest is damaged: fetch the corpus again")
        return _status(f"data-{kind}", "not started")
    return _status(f"data-{kind}", "done", f"{m['stats']['documents']:,} documents, "
                   f"{m['stats']['bytes'] / 2**20:.1f} MB ({m.get('source')})")


def _tokenizer_status(cfg: Config, corpus: dict, tok_sha: str | None) -> StageStatus:
    meta = load_meta(cfg)
    if meta is None or tok_sha is None:
        return _status("tokenizer", "not started")
    changed = [f"{k} corpus changed" for k in CORPORA
               if meta["corpora"].get(k, {}).get("manifest_sha256") not in corpus[k]]
    if meta.get("vocab_target", meta["vocab_size"]) != cfg.vocab_target():  # older tokenizers reached theirs
        changed.append(f"the vocabulary to aim for is now {cfg.vocab_target():,}")
    detail = f"vocab {meta['vocab_size']:,}, bash {meta['chars_per_token']['code']} chars/token"
    return _status("tokenizer", "stale" if changed else "done", "; ".join([detail, *changed]))


def _shards_status(cfg: Config, corpus: dict, tok_sha: str | None) -> StageStatus:
    shards = {k: read_manifest(cfg, k) for k in CORPORA}
    if not all(shards.values()):
        return _status("prepare", "not started")
    stale = [k for k, m in shards.items()
             if m["tokenizer_sha256"] != tok_sha or m["corpus_manifest_sha256"] not in corpus[k]]
    total = sum(m["tokens"]["train"] + m["tokens"]["val"] for m in shards.values())
    return _status("prepare", "stale" if stale else "done",
                   f"{total:,} tokens" + (f"; {', '.join(stale)} out of date" if stale else ""))


def _training_status(cfg: Config, run: Path | None, stage: str, label: str, tok_sha: str | None) -> StageStatus:
    """A training stage's state in the newest run, the one training goes on in and evaluation reads:
    a stage done in an older run does not count for a newer one (its fine-tune is still to come)."""
    state = runs.stage_state(run, stage) if run is not None else "not started"
    if run is None or state == "not started":
        return StageStatus(stage, label, "not started")
    last = checkpoint.latest(Paths.checkpoints(run, stage))
    st = runs.read_status(run, stage) or {}
    step, total = st.get("step") or (last.step if last else 0), st.get("total") or getattr(cfg.train, stage).steps
    detail = f"run {run.name}, step {step:,}/{total:,}"
    check = runs.best_check(run, stage)  # the lowest check's, as `acm runs` shows it
    if check is not None:
        detail += f", best val loss {check[1]:.3f}"
    if state == "failed":
        detail += f": {st.get('error', '')}"
    if state in ("running", "paused", "starting"):
        detail += f" ({round(100 * step / max(total, 1))}%{_eta(run, stage)})"
    elif last is not None and last.state.get("tokenizer_sha256") != tok_sha:
        state = "stale"
        detail += "; the tokenizer changed since"
    elif state in ("stopped", "done") and step >= total:
        state = "done"
    return StageStatus(stage, label, state, detail)


def _eta(run: Path, stage: str) -> str:
    """", ETA ..." of a running stage, from its newest report."""
    eta = (runs.last_report(run, stage) or {}).get("eta_s")
    return f", ETA {describe_seconds(eta)}" if eta is not None else ""


def _eval_status(run: Path | None, label: str) -> StageStatus:
    if run is None:
        return StageStatus("evaluate", label, "not started")
    ev = Paths.eval_results(run)
    result = read_json(ev)
    if result is None:
        return StageStatus("evaluate", label, "not started", f"run {run.name}")
    newest = max((c.path.stat().st_mtime for st in runs.TRAINING_STAGES
                  for c in checkpoint.list_checkpoints(Paths.checkpoints(run, st))), default=0)
    parts = [f"{st}: bash parses {r['code_generation']['parse_rate']:.0%}" for st, r in result["stages"].items()]
    cut = cut_note(result)  # a budget's short evaluation says so wherever it is listed
    return StageStatus("evaluate", label, "stale" if newest > ev.stat().st_mtime else "done",
                       f"run {run.name}: " + ", ".join(parts) + (f"; {cut}" if cut else ""))


def run_stage(cfg: Config, name: str, report, cancel, on_engine: Callable[..., Any], train_emit=None,
              train_control=None) -> Any:
    """Run one pipeline stage; MLX stages go through `on_engine(fn, *args)`."""
    from core.data.code import fetch_code
    from core.data.language import fetch_language
    from core.generate.evaluate import evaluate_run
    from core.tokenizer.bpe import train_tokenizer
    from core.tokenizer.shards import prepare
    from core.train.ranks import in_group, train_on_ranks
    from core.train.target import training_target
    from core.train.trainer import check_inputs
    from core.train.trainer import train_stage as train

    if name == "data-language":
        return fetch_language(cfg, report, cancel)
    if name == "data-code":
        return fetch_code(cfg, report, cancel)
    if name == "tokenizer":  # a cancel or a Ctrl-C does not wait for the merges, which see neither
        return within_reach(lambda: train_tokenizer(cfg, report, cancel), cancel)
    if name == "prepare":  # shards of an older tokenizer are rebuilt, others resumed
        from core.tokenizer.bpe import load_tokenizer

        sha = load_tokenizer(cfg).sha256
        made = [read_manifest(cfg, k) for k in ("language", "code")]
        return prepare(cfg, report, cancel, force=any(m and m["tokenizer_sha256"] != sha for m in made))
    if name in runs.TRAINING_STAGES:
        target = training_target(cfg, name, unfinished=True)  # a stage left short of its plan continues
        run, resume = target.run, target.resume
        if cfg.train.ranks > 1 and not in_group():  # processes of their own, rank 0's events relayed
            check_inputs(cfg, name, run, resume)
            return train_on_ranks(cfg, name, run, resume, train_emit, train_control, cfg.train.ranks)
        return on_engine(train, cfg, name, run, train_emit, train_control, resume)
    if name == "evaluate":
        return on_engine(evaluate_run, cfg, report, cancel)
    raise ValueError(name)


def disk_stamp(cfg: Config, all_runs: list[Path]) -> tuple:
    """A cheap fingerprint of everything the panes show from disk (corpora, tokenizer, shards,
    runs, their stages' status and checkpoints, evaluations): it changes when any stage ends or
    moves on, wherever it ran (the app, a background process, the CLI)."""
    loc = cfg.locations
    paths = [loc.corpus_manifest(k) for k in CORPORA] + [loc.tokenizer_meta]
    paths += [loc.shards_manifest(k) for k in CORPORA] + [loc.runs]
    for run in all_runs:
        paths += [run, Paths.eval_results(run)]
        for stage in runs.TRAINING_STAGES:
            paths += [Paths.status(run, stage), Paths.checkpoints(run, stage)]
    return tuple((str(p), _mtime(p)) for p in paths)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


TIME_SHARES = {"pretrain": 0.6, "finetune": 0.25, "evaluate": 0.15}  # of a pipeline's time budget


def with_time(cfg: Config, stage: str, seconds: float) -> Config:
    """The settings with a stage's time budget set (the caller's copy is left alone)."""
    text = f"{max(seconds, 5.0):.0f}s"
    if stage == "evaluate":
        return replace(cfg, eval=replace(cfg.eval, time=text))
    return replace(cfg, train=replace(cfg.train, **{stage: replace(getattr(cfg.train, stage), time=text)}))


def training_progress(report) -> Callable[[Event], None]:
    """A training stage's reports as progress (step of total, with the loss), so a chain's bar
    shows the running stage, not the last finished one."""
    def emit(event: Event) -> None:
        if isinstance(event, Metrics):
            report(Progress(STAGE_TASKS.get(event.stage, event.stage), event.step, event.total,
                            note=f"loss {event.loss:.3f}"))
    return emit


STAGE_TASKS = {"pretrain": "pretraining", "finetune": "fine-tuning"}


StageScope = Callable[[StageStatus, int, int], AbstractContextManager]  # (status, number, count of stages)


def _no_scope(status: StageStatus, number: int, count: int) -> AbstractContextManager:
    return nullcontext()


def readies_beside(cfg: Config, stage: str, todo: list[StageStatus]) -> bool:
    """Whether the engine readies the training step beside this stage: the shards' (the CPU's work
    just before training, the tokenizer's shapes settled), with a training stage still to run."""
    return (stage == "prepare" and cfg.train.ready_in_pipeline
            and any(s.name in runs.TRAINING_STAGES for s in todo))


def remaining(cfg: Config, done: list[str]) -> list[StageStatus]:
    """The stages still to run, in order. An evaluation that is done counts among them once a
    training stage does (the training makes it stale), so the time budget keeps its share for it and
    the headings count it from the start."""
    statuses = [s for s in pipeline_status(cfg) if s.name not in done]
    todo = [s for s in statuses if not s.complete]
    if any(s.name in runs.TRAINING_STAGES for s in todo):
        todo += [s for s in statuses if s.name == "evaluate" and s.complete]
    return todo


def run_remaining(cfg: Config, report, cancel, on_engine, train_emit=None, train_control=None,
                  time_s: float | None = None, stage_scope: StageScope | None = None,
                  ready: Callable[[Config], Any] | None = None) -> list[str]:
    """Run, in order, every stage that is not done, each at most once, reading the stages' states
    again after each (a new tokenizer makes the shards and training after it stale); returns the
    names run. With `time_s`, the training stages share what is left of it when each starts
    (TIME_SHARES; evaluation keeps its share), after whatever the data stages took.
    `stage_scope(status, number, count)` is entered around each stage (the command line opens a
    stage's display in it, and closes it after). `ready(cfg)`, which must not wait, starts the
    engine's readying of the training step (`core.train.ready`): called as the shards stage starts
    with training after it (`train.ready_in_pipeline`), so the engine readies while the CPU works."""
    # one pipeline in a project at a time: a second would run its stages over the first's (fetching a
    # corpus again, then failing on a lock it never expected)
    with held_alone(cfg.locations.pipeline_lock, ONE_PIPELINE):
        return _run_stages(cfg, report, cancel, on_engine, train_emit, train_control, time_s, stage_scope, ready)


ONE_PIPELINE = ("a pipeline is running in this project already (acm pipeline run, or the app's a in the Setup "
                "pane): let it end, or stop it (Ctrl-C there, x in the app)")


def _run_stages(cfg: Config, report, cancel, on_engine, train_emit, train_control, time_s: float | None,
                stage_scope: StageScope | None, ready: Callable[[Config], Any] | None) -> list[str]:
    done, started, number = [], time.monotonic(), 0
    while True:
        todo = remaining(cfg, done)
        if not todo:
            break
        cancel.check()
        if train_control is not None and train_control.stopping:
            break
        status, number = todo[0], number + 1
        stage_cfg = cfg
        if time_s is not None and status.name in TIME_SHARES:
            ahead = sum(TIME_SHARES.get(s.name, 0.0) for s in todo)
            left = time_s - (time.monotonic() - started)
            stage_cfg = with_time(cfg, status.name, left * TIME_SHARES[status.name] / ahead)
        with (stage_scope or _no_scope)(status, number, number - 1 + len(todo)):
            if ready is not None and readies_beside(cfg, status.name, todo):
                ready(cfg)
            run_stage(stage_cfg, status.name, report, cancel, on_engine, train_emit, train_control)
        done.append(status.name)
    return done

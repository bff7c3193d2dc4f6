"""Run folders: runs/<run>/ holds config.toml (the resolved settings) and one folder per stage
(pretrain/, finetune/) with metrics.jsonl, train.log and checkpoints/.

metrics.jsonl gets one JSON object per line, flushed as it is written, so other tools (and a
later acm-tui) can read it while training goes on.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from core import config
from core.atomic import fits, open_regular, read_json, read_regular, write_text
from core.errors import AcmError, os_error_text
from core.paths import Paths, check_run_name
from core.runs.checkpoint import COUNT_LIMIT, best, latest, list_checkpoints
from core.runs.writer import alone, holder

TRAINING_STAGES = ("pretrain", "finetune")  # the stages with a folder in a run


def new_run_name(cfg: config.Config) -> str:
    return f"{cfg.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def existing_run(cfg: config.Config, name: str) -> Path:
    """The folder of the run a user named, refused in one line naming it when there is no such run
    (rather than a message about checkpoints, which would send them to train a new one)."""
    path = cfg.locations.run(name)
    if not Paths.run_config(path).exists():
        raise AcmError(f"run {name!r} {not_a_run(path)}; `acm runs` lists the runs")
    return path


def not_a_run(path: Path) -> str:
    """Why `path`, holding no config.toml, is no run: a folder whose settings went (said as such, to
    be restored), or none at all (a folder holding only a writer's lock counts as none)."""
    if path.is_dir() and any(stage_state(path, stage) == "starting" for stage in TRAINING_STAGES):  # `--detach`
        return "is starting in the background (its settings are written once its stage has begun): try again shortly"
    if path.is_dir() and any(p.name != Paths.writer_lock(path).name for p in path.iterdir()):
        return f"has no {Paths.run_config(path)} (its settings, which make a folder a run): restore it"
    return f"does not exist in {path.parent}"


def run_to_train(cfg: config.Config, name: str) -> Path:
    """The folder of the run a user named to train in: an existing run as it is named (an older acm
    allowed any folder name), a new one only under a name check_run_name allows."""
    path = cfg.locations.run(name)
    if not Paths.run_config(path).exists():
        check_run_name(name)
        others = _not_of_a_run(path)
        if others:
            raise AcmError(f"run {name!r}: {path} is a folder that is no run (no config.toml) and holds "
                           f"{others[0]!r}{' and more' if len(others) > 1 else ''}: name another run, or move "
                           f"the folder aside (deleting the run would delete what it holds)")
    return path


def _not_of_a_run(path: Path) -> list[str]:
    """What a folder without config.toml holds that no run makes (its stages' folders, its locks,
    its evaluation; hidden files such as a Finder's .DS_Store or a killed write's temporary): a
    user's own folder that a new run must not take over."""
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError:
        return []  # none, or a file: said where the run is made
    ours = {*TRAINING_STAGES, *(f(path).name for f in (Paths.writer_lock, Paths.use_lock, Paths.eval_lock,
                                                       Paths.eval_results))}
    return [n for n in names if n not in ours and not n.startswith(".")]


def list_runs(cfg: config.Config) -> list[Path]:
    """Run folders, newest first: the run a stage last started in (its config.toml is written then)
    comes first, so evaluating or exporting an older run never makes it "the latest run"."""
    folder = cfg.locations.runs
    if not folder.exists():
        return []
    try:
        runs = [d for d in folder.iterdir()
                if d.is_dir() and Paths.run_config(d).exists() and not _being_deleted(d.name)]
    except OSError as e:  # a file, or a folder acm may not read
        raise AcmError(f"cannot read the runs folder {folder} (paths.runs): {e.strerror or e}") from None
    return sorted(runs, key=_started, reverse=True)


def _being_deleted(name: str) -> bool:
    return name.startswith(DELETING)


def newest_run(cfg: config.Config) -> Path | None:
    """The latest run (list_runs' rule), the one the pipeline follows and defaults pick; None without runs."""
    return next(iter(list_runs(cfg)), None)


def _started(run: Path) -> float:
    try:
        return Paths.run_config(run).stat().st_mtime
    except OSError:  # gone meanwhile
        return 0.0


def latest_run_with(cfg: config.Config, stage: str) -> Path | None:
    for r in list_runs(cfg):
        if list_checkpoints(Paths.checkpoints(r, stage)):
            return r
    return None


def finished_plan(run: Path, stage: str) -> int | None:
    """The steps a stage planned, when its latest checkpoint completed them (resuming it would do
    nothing; going further is the user's explicit choice), else None."""
    ck = latest(Paths.checkpoints(run, stage))
    planned = ck.state.get("planned_steps") if ck else None
    return planned if planned and ck.step >= planned else None


def model_identity(cfg: config.Config) -> dict:
    """What must match for a run folder to be continued with these settings."""
    return {"preset": cfg.model.preset, "vocab_size": cfg.tokenizer.vocab_size}


def prepare_run(cfg: config.Config, run: Path, stage: str | None = None) -> None:
    """Create the run folder with its resolved settings, or check an existing one matches them.
    Starting `stage` in an existing run records its settings and keeps the other stage's as that
    stage trained (a pipeline's time share, a learning rate changed since), so config.toml says
    what each stage ran with."""
    saved = Paths.run_config(run)
    if saved.exists():
        try:
            old = config.load(saved, written=True)
        except AcmError as e:
            raise AcmError(f"run {run.name}: its config.toml is unreadable ({e})") from None
        if model_identity(old) != model_identity(cfg):
            raise AcmError(f"run {run.name} was made with preset {old.model.preset!r} (vocab "
                           f"{old.tokenizer.vocab_size}), not {cfg.model.preset!r} (vocab {cfg.tokenizer.vocab_size}): "
                           f"choose another --run")
        if stage in TRAINING_STAGES:
            kept = {other: getattr(old.train, other) for other in TRAINING_STAGES if other != stage}
            cfg = replace(cfg, train=replace(cfg.train, **kept))
    run.mkdir(parents=True, exist_ok=True)
    config.save(cfg, saved)


RECORDS_LIMIT = 512 << 20  # bytes: a metrics.jsonl report takes about 450 bytes, one every log_every steps: a
# million reports and more, past any run; a samples.jsonl line, a sample, is sparser still


def read_metrics(run: Path, stage: str) -> list[dict]:
    """Every complete line of a stage's metrics.jsonl (a line being written is skipped); none where
    it cannot be read, is no regular file or is over RECORDS_LIMIT."""
    try:
        return parse_records(read_regular(Paths.metrics(run, stage), RECORDS_LIMIT).splitlines())
    except OSError:
        return []


def last_report(run: Path, stage: str, tail_bytes: int = 16384) -> dict | None:
    """The newest metrics report of a stage, read from the end of metrics.jsonl (cheap at any size)."""
    try:
        with open_regular(Paths.metrics(run, stage)) as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().splitlines()
    except OSError:
        return None
    reports = [r for r in parse_records(lines) if r.get("type") == "metrics"]
    return reports[-1] if reports else None


NUMBER = (int, float)
RECORD_SHAPE = {"type": str, "step": (int, None), "total": (int, None), "loss": NUMBER, "val_loss": (*NUMBER, None),
                "best_val_loss": (*NUMBER, None), "lr": NUMBER, "tokens_per_s": NUMBER, "tokens_seen": int}
STEPPED = ("metrics", "eval")  # records read by step: a report's and a validation check's


def parse_records(lines: list[bytes]) -> list[dict]:
    """The JSON objects among metrics.jsonl lines that read as acm writes them: a line still being
    written, or one damaged by hand (not an object, a step that is not a number), is skipped."""
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if (isinstance(record, dict) and fits(record, RECORD_SHAPE) and isinstance(record.get("type"), str)
                and (record["type"] not in STEPPED or isinstance(record.get("step"), int))):
            out.append(record)
    return out


def is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < COUNT_LIMIT


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v) -> bool:
    return is_number(v) and math.isfinite(v)


def figure(value, spec: str) -> str:
    """A figure read back from a run's files, formatted; "–" for one that is missing or is not a
    number (a file edited by hand: a record reads leniently, core.runs.events)."""
    return format(value, spec) if is_number(value) else "–"


def val_checks(records: list[dict]) -> dict[int, float]:
    """The validation checks among a stage's records: val loss by step (a step checked twice, as
    after a resume, keeps its newest check)."""
    return {r["step"]: float(r["val_loss"]) for r in records
            if r.get("type") == "eval" and is_count(r.get("step")) and is_finite(r.get("val_loss"))}


_CHECKS: dict[Path, tuple[tuple[int, int], int, bytes, dict[int, float]]] = {}
_TAIL = 64  # bytes of what was read that must be found again for a file to count as appended to


def appended_checks(path: Path) -> dict[int, float]:
    """A metrics.jsonl's validation checks (val_checks), parsing only what was appended since the
    last call: the app asks each time a stage's status changes, and a long stage's file is large.
    A file replaced, cut or rewritten (its last bytes read no longer where they were) is read anew;
    at most RECORDS_LIMIT bytes a call (the rest waits for the next), none of what is no regular file."""
    try:
        st = path.stat()
    except OSError:
        _CHECKS.pop(path, None)
        return {}
    identity = (st.st_dev, st.st_ino)
    seen, offset, tail, checks = _CHECKS.get(path, (identity, 0, b"", {}))
    try:
        with open_regular(path) as f:
            f.seek(offset - len(tail))
            if seen != identity or f.read(len(tail)) != tail:
                offset, tail, checks = 0, b"", {}
                f.seek(0)
            data = f.read(RECORDS_LIMIT)
    except OSError:  # a folder, a FIFO, no permission: no checks, as a missing file
        _CHECKS.pop(path, None)
        return {}
    end = data.rfind(b"\n") + 1  # complete lines only: the one being written waits for the next call
    if end:
        lines = [line for line in data[:end].splitlines() if b'"eval"' in line]
        checks = checks | val_checks(parse_records(lines))
        tail = (tail + data[:end])[-_TAIL:]
        offset += end
    _CHECKS[path] = (identity, offset, tail, checks)
    return dict(checks)


def best_check(run: Path, stage: str) -> tuple[int, float] | None:
    """(step, val loss) of the stage's lowest validation check, whether or not a checkpoint was kept
    at that step (checks come every eval_every steps, checkpoints on their own schedule); a
    checkpoint's own val loss counts too, for a metrics.jsonl lost or cut short. None: no check."""
    checks = appended_checks(Paths.metrics(run, stage))
    for ck in list_checkpoints(Paths.checkpoints(run, stage)):
        if is_finite(ck.val_loss) and ck.step not in checks:
            checks[ck.step] = float(ck.val_loss)
    return min(checks.items(), key=lambda c: (c[1], c[0]), default=None)


# ---------------------------------------------------------------- status and control across processes

COMMANDS = ("pause", "resume", "stop", "save")  # what a control file may ask, in the order ranks agree on
LIVE = ("starting", "running", "paused")


def write_status(run: Path, stage: str, state: str, **fields) -> None:
    """The stage's state for other processes: what it is doing, and who is doing it."""
    folder = Paths.stage(run, stage)
    folder.mkdir(parents=True, exist_ok=True)
    status = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()} | fields
    write_text(Paths.status(run, stage), json.dumps(status) + "\n")


STATUS_SHAPE = {"state": str, "pid": int, "host": str, "time": (int, float), "step": (int, None),
                "total": (int, None), "error": (str, None)}


def read_status(run: Path, stage: str) -> dict | None:
    """The stage's status, or None where there is none or it is damaged (it reads as not started):
    its pid must be one a process can have (0 or -1 would ask about acm's own group, or all)."""
    st = read_json(Paths.status(run, stage), STATUS_SHAPE)
    return st if st is None or {"state", "pid"} <= st.keys() and is_pid(st["pid"]) else None


def is_pid(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31


def process_alive(pid: int, host: str | None = None) -> bool:
    if host and host != socket.gethostname():
        return True  # another machine's process: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_state(run: Path, stage: str) -> str:
    """running / paused (a live process that holds the run's writer lock: a process of the same
    number after a reboot does not; any holder counts, as the lock does not say which of the run's
    stages it trains), interrupted (it died mid-run), done / stopped / failed, or "not started"."""
    st = read_status(run, stage)
    if st is None:
        return "not started" if latest(Paths.checkpoints(run, stage)) is None else "stopped"
    if st["state"] in LIVE:
        # a launch locks once its process runs: "starting" goes by the process alone
        live = process_alive(st["pid"], st.get("host")) and (st["state"] == "starting" or holder(run) is not None)
        return st["state"] if live else "interrupted"
    return st["state"]


def send_command(run: Path, stage: str, command: str) -> None:
    if command not in COMMANDS:
        raise AcmError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}")
    state = stage_state(run, stage)
    if state not in ("running", "paused"):
        raise AcmError(f"{stage} of run {run.name} is {state}: nothing to {command}")
    write_text(Paths.control(run, stage), json.dumps({"command": command, "time": time.time()}) + "\n")


def send_once_taken(run: Path, stage: str, command: str, done: threading.Event | None = None,
                    every: float = 0.2) -> bool:
    """send_command, again every `every` seconds while the stage cannot take it (its process is
    still starting, or the write failed), until it does or `done` is set; whether it was sent."""
    pause = done.wait if done is not None else time.sleep
    while True:
        try:
            send_command(run, stage, command)
            return True
        except (AcmError, OSError):
            if pause(every):
                return False


def take_command(run: Path, stage: str, since: float = 0.0) -> str | None:
    """The pending command, removed as it is read (each command acts once). One sent before `since`
    (the process's start) was meant for a process that died before it read it: dropped, not obeyed
    (send_command takes a command only while the stage's status names a live process)."""
    path = Paths.control(run, stage)
    request = read_json(path)
    if request is None:
        return None
    path.unlink(missing_ok=True)
    if not isinstance(request, dict):
        return None
    sent, command = request.get("time"), request.get("command")
    if not is_number(sent) or sent < since:
        return None
    return command if command in COMMANDS else None


def active_stage(run: Path) -> str | None:
    """The stage most recently worked on (fine-tune once it has begun)."""
    for stage in reversed(TRAINING_STAGES):
        if read_status(run, stage) is not None or latest(Paths.checkpoints(run, stage)) is not None:
            return stage
    return None


def live_stage(cfg: config.Config) -> tuple[Path, str] | None:
    """(run, stage) of a stage training now in this project, by any process, if there is one."""
    for run in list_runs(cfg):
        for stage in TRAINING_STAGES:
            if stage_state(run, stage) in LIVE:
                return run, stage
    return None


def newest_stage(cfg: config.Config) -> tuple[Path, str] | None:
    """(run, stage) of the newest run's most recent stage, if any run has begun one."""
    for run in list_runs(cfg):
        stage = active_stage(run)
        if stage:
            return run, stage
    return None


def recorded_preset(run: Path) -> str:
    """The preset the run's config.toml records; "?" where it records none that loads (acm writes
    every setting: an empty file, or one of comments, holds none, not this machine's default)."""
    path = Paths.run_config(run)
    try:
        table = config.read_table(path)
        if "preset" not in (table.get("model") if isinstance(table.get("model"), dict) else {}):
            return "?"
        return config.from_dict(table, source=str(path), root=run, written=True).model.preset
    except AcmError:
        return "?"


def summary(run: Path) -> dict:
    """One run, as the run list shows it: each stage's best val loss is its lowest validation
    check's; best_checkpoint is the checkpoint generation and export take as the best, which may
    hold a higher one (no checkpoint was saved at that check)."""
    out = {"name": run.name, "preset": recorded_preset(run), "modified": run.stat().st_mtime, "stages": {}}
    for stage in TRAINING_STAGES:
        ck_dir = Paths.checkpoints(run, stage)
        last, top = latest(ck_dir), best(ck_dir)
        st = read_status(run, stage) or {}
        if last is None and not st:
            continue
        check = best_check(run, stage)
        out["stages"][stage] = {
            "state": stage_state(run, stage), "step": (st.get("step") if st.get("step") is not None
                                                       else (last.step if last else 0)),
            "total": st.get("total"), "best_val_loss": check[1] if check else None,
            "best_val_step": check[0] if check else None,
            "best_checkpoint": {"step": top.step, "val_loss": top.val_loss} if top else None,
            "checkpoints": len(list_checkpoints(ck_dir)), "error": st.get("error"),
            "latest_checkpoint": last.step if last else None,  # where a resume goes on from
        }
    return out


def resumes_from(st: dict) -> str:
    """" (resumes at 70)" for a stage that ended past its latest checkpoint (killed between two),
    where a resume goes on from; "" where it is there."""
    ck, step = st.get("latest_checkpoint"), st.get("step")
    if st.get("state") in LIVE or ck is None or not isinstance(step, int) or step <= ck:
        return ""
    return f" (resumes at {ck})"


def best_val_cell(stage: dict) -> str:
    """A stage summary's best val loss as the run tables show it: the lowest check's, followed by
    the best checkpoint's where that is another (the weights `acm generate` takes), "" without a check."""
    if stage.get("best_val_loss") is None:
        return ""
    text = f"{stage['best_val_loss']:.4f}"
    top = stage.get("best_checkpoint")
    if top is not None and top["val_loss"] != stage["best_val_loss"]:
        text += f" (checkpoint {'–' if top['val_loss'] is None else format(top['val_loss'], '.4f')})"
    return text


def delete_run(run: Path) -> str:
    """Delete a run that is not training; what was done, in a line. The run is first renamed out of
    the list (one step the system does whole or not at all), then removed: a delete refused (a
    folder acm may not change) leaves the run whole, never a run emptied of its checkpoints. A run
    that is a symbolic link loses the link only: the folder it points to is outside the runs
    folder, and left as it is."""
    for stage in TRAINING_STAGES:
        if stage_state(run, stage) in LIVE:
            raise AcmError(f"run {run.name} is training ({stage}): stop it first")
    try:
        if run.is_symlink():
            target = os.readlink(run)
            run.unlink()
            return f"deleted run {run.name}, a link: the folder it pointed to ({target}) is left as it was"
        with alone(run, "deleted"):
            doomed = run.rename(run.with_name(f"{DELETING}{uuid.uuid4().hex[:8]}"))  # any run's name fits
    except OSError as e:
        raise AcmError(f"cannot delete run {run.name}: {os_error_text(e)}") from None
    try:
        shutil.rmtree(doomed)
    except OSError as e:
        raise AcmError(f"run {run.name} is deleted, but not all of its files could be removed from {doomed}: "
                       f"{os_error_text(e)}") from None
    return f"deleted run {run.name}"


DELETING = ".acm-deleting-"  # a run being deleted: `.acm-deleting-1a2b3c4d`, listed as no run


def rename_run(run: Path, new_name: str) -> Path:
    check_run_name(new_name)
    target = run.parent / new_name
    if target.exists() or target.is_symlink():
        what = "a run" if Paths.run_config(target).exists() else "a folder that is no run"
        raise AcmError(f"{what} named {new_name} exists in {run.parent} already: choose another name")
    for stage in TRAINING_STAGES:
        if stage_state(run, stage) in LIVE:
            raise AcmError(f"run {run.name} is training ({stage}): stop it first")
    try:
        with alone(run, "renamed"):
            run.rename(target)
    except OSError as e:
        raise AcmError(f"cannot rename run {run.name} to {new_name}: {e.strerror or e}") from None
    return target

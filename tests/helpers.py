"""What several test modules share: waiting on the app, reading what it draws, project set-ups."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from textual.errors import NoWidget
from textual.widgets import Static

from core import config
from core.paths import Paths
from core.runs import read_metrics
from core.runs.events import Eval, Recorder, event_from_json

from .stand_ins import HF_ROWS, make_hf_dataset, script, write_tree

ROOT = Path(__file__).resolve().parent.parent  # the checkout: README.md, acm.toml, PYTHONPATH of child processes

# ------------------------------------------------------------ the app under Textual's pilot


async def wait_until(pilot, predicate, timeout=30.0, poll=0.02):
    """Let the app run until predicate() holds; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(poll)


def text_of(app, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def shown_in_full(app, selector: str) -> bool:
    """The widget is on screen with none of it scrolled away or cut off: what a user sees."""
    try:
        geometry = app.screen.find_widget(app.query_one(selector))
    except NoWidget:
        return False
    return bool(geometry.region) and geometry.visible_region == geometry.region


def toasts(app) -> list[str]:
    """The notifications on screen, drawn as the user sees them (title, then message)."""
    return [str(toast.render()) for toast in app.screen.query("Toast")]


async def notified(pilot, text: str) -> None:
    """Wait for a notification that reads `text` to be drawn (run_test(notifications=True))."""
    await wait_until(pilot, lambda: any(text in toast for toast in toasts(pilot.app)))


# ------------------------------------------------------------ projects


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def cfg_for(project: Path, **sections) -> config.Config:
    """The project's settings with `sections` set, each named by its dotted path with `__` for dots."""
    base = config.load(project / "acm.toml").to_dict()
    for dotted, value in sections.items():
        *parents, leaf = dotted.split("__")
        node = base
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config.from_dict(base, root=project)


def with_pairs(project: Path, tmp_path: Path, **code) -> config.Config:
    """The project's settings with a one-script local bash corpus and `code` (data.code settings)."""
    scripts = write_tree(tmp_path / "scripts", {"deploy.sh": script("deploy")})
    table = config.read_table(project / "acm.toml")
    table.setdefault("data", {})["code"] = {"source": "local", "local_paths": [str(scripts)], **code}
    cfg = config.from_dict(table, root=project)
    config.save_settings(cfg, project / "acm.toml")
    return cfg


def fake_run(project: Path, name: str, reports: list[tuple[int, int, float]], checks: list[tuple[int, float]],
             stage: str = "pretrain", **settings) -> Path:
    """runs/<name>/ with config.toml (the project's settings with `settings`, as cfg_for takes them)
    and a stage's metrics.jsonl: reports (step, tokens seen, loss) and val checks (step, val loss)."""
    run = project / "runs" / name
    config.save(cfg_for(project, **settings), run / "config.toml")
    records = [{"type": "metrics", "stage": stage, "step": s, "tokens_seen": t, "loss": loss} for s, t, loss in reports]
    records += [{"type": "eval", "stage": stage, "step": s, "val_loss": v} for s, v in checks]
    (run / stage).mkdir(parents=True, exist_ok=True)
    (run / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def edit_state(ck: Path, key: str, value) -> None:
    """A checkpoint's state.json edited by hand: the value at dotted `key` (config.model.preset) set."""
    state = json.loads((ck / "state.json").read_text())
    *parents, last = key.split(".")
    table = state
    for name in parents:
        table = table[name]
    table[last] = value
    (ck / "state.json").write_text(json.dumps(state))


def check_between_checkpoints(run: Path, stage: str, step: int, val_loss: float) -> None:
    """A validation check recorded as the trainer records one, at a step where no checkpoint was kept
    (checks come every eval_every steps, checkpoints on their own schedule)."""
    recorder = Recorder(run, stage, 20)
    recorder(Eval(stage=stage, step=step, val_loss=val_loss, val_ppl=math.exp(val_loss), best_val_loss=val_loss))
    recorder.close()


HF_SOURCE = "huggingface:hf-stand-in"


def hf_project(project: Path, rows=HF_ROWS, schema: str = "codeparrot", **code) -> config.Config:
    """The project's bash corpus pointed at a stand-in dataset in project/hf-stand-in."""
    data_dir = "data/shell" if schema == "the-stack" else "data"
    make_hf_dataset(project / "hf-stand-in", rows, schema, data_dir)
    table = config.read_table(project / "acm.toml")
    table.setdefault("data", {})["code"] = {"source": "huggingface", "hf_dataset": "hf-stand-in",
                                            "hf_data_dir": data_dir, **code}
    cfg = config.from_dict(table, root=project)
    config.save_settings(cfg, project / "acm.toml")
    return cfg


@contextlib.contextmanager
def unless_stuck(seconds: int = 60):
    """A read that would wait forever (a FIFO without a writer) fails the test instead of freezing
    the suite: a guard against a hang, not a measure of speed."""
    def stuck(*_):
        raise AssertionError(f"still waiting after {seconds} s on a file that is no regular one")
    before = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


class SteppingClock:
    """A clock that moves on a fixed tick each time it is read: a stage's timing, with no real time in it."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def losses(run: Path, stage: str = "pretrain") -> list[float]:
    """A stage's reported training losses, in order."""
    return [e["loss"] for e in read_metrics(run, stage) if e["type"] == "metrics"]


# a metrics record as the trainer has always written it, keys in order
METRICS = {"type": "metrics", "stage": "pretrain", "step": 20, "total": 400, "loss": 5.25, "lr": 0.0003,
           "grad_norm": 1.5, "tokens_per_s": 12345.5, "tokens_seen": 40960, "epoch": 0.125, "mfu": None,
           "ranks": 1, "memory_active": 1024, "memory_peak": 2048, "memory_cache": 512, "memory_limit": 4096,
           "eta_s": 65.0, "time": 1700000000.25}


HELD_WRITER_LOCKS: list = []  # taken by live_stage, released as each test ends (tests/conftest.py)


def live_stage(project: Path, devices: list | None = None):
    """A run whose pretrain this process trains (its status names this pid, and this process holds
    the run's writer lock until the test ends), with one report."""
    from core.runs.writer import RunLock

    cfg = config.load(project / "acm.toml")
    run = cfg.runs_dir / "r"
    Paths.stage(run, "pretrain").mkdir(parents=True)
    config.save(cfg, Paths.run_config(run))
    HELD_WRITER_LOCKS.append(RunLock(run).acquire("pretrain"))
    report = event_from_json(METRICS | ({"ranks": len(devices), "devices": devices} if devices else {}))
    recorder = Recorder(run, "pretrain", 400)
    recorder(report)
    recorder.close()
    return report


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Linux's /proc: its caught-signals mask); a
    process not yet at its handler (the interpreter starting) dies of SIGTERM instead."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def sigint_at_default() -> None:
    """A child's preexec_fn where the test sends it Ctrl-C or a hang-up: SIGINT and SIGHUP at their
    defaults, as a terminal's command starts. A pytest started with them ignored (`nohup ... &` from
    a script) passes that on, and the child's Python then never raises KeyboardInterrupt (nor takes
    a hang-up, which acm leaves ignored where it finds it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def interrupt_once(proc: subprocess.Popen, line_seen: str, sig: int = signal.SIGINT,
                   timeout: float = 120) -> tuple[int, str]:
    """Ctrl-C (or `sig`) to `proc` once its stderr has said a line starting with `line_seen`: its exit
    status and the rest of its stderr, whitespace folded (the process is killed however the wait ends)."""
    try:
        for line in proc.stderr:
            if line.startswith(line_seen):
                break
        proc.send_signal(sig)
        status = proc.wait(timeout=timeout)
    finally:
        proc.kill()
    return status, " ".join(proc.stderr.read().split())


def eventually(condition, seconds: float = 60.0) -> bool:
    """Whether `condition()` came true within `seconds` (polled every 0.1 s): a bound past which a
    test fails rather than hangs, never a timing the test asserts."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def process_gone(pid: int) -> bool:
    """Whether process `pid` has ended: no such process, or (Linux) a zombie waiting for its parent
    to read it (an orphan's new parent may be a container's init that never does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return proc_stat(pid)[:1] == ["Z"]


def proc_stat(pid: int | str) -> list[str]:
    """Linux's /proc/PID/stat after the command's name: state, parent pid, ... ([] when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


@contextlib.contextmanager
def ports_taken(*ports: int):
    """These ports of this host listened on, as another program (or another run's ranks) would: one
    taken already is as good."""
    held = []
    for port in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            s.close()
            continue
        held.append(s)
    try:
        yield
    finally:
        for s in held:
            s.close()


def set_weight(project: Path, value: float) -> None:
    """One weight of the run's checkpoint (the one acm picks by default) shifted by `value`."""
    import mlx.core as mx

    from core.generate.decode import find_checkpoint

    ck, _, _ = find_checkpoint(config.load(project / "acm.toml"))
    params = mx.load(str(ck.path / "model.safetensors"))
    params["wpe.weight"] = params["wpe.weight"].at[0, 0].add(value)
    mx.save_safetensors(str(ck.path / "model.safetensors"), params)

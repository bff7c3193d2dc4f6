"""Training on several ranks of this host: the same training process (core.train.worker, reading
one snapshot of the settings) started once per rank by MLX's launcher (`mlx.launch`), one rank per
NVIDIA GPU over NCCL, or processes over the ring backend where there is no NVIDIA GPU (the path
several Macs take, tried on one).

Each rank joins the group through the environment the launcher gives it; only rank 0 writes the
run. Several Macs are launched by hand with `mlx.launch --hostfile` (README, "Several Macs").
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import mlx.core as mx

from core import atomic, config, runs
from core.errors import AcmError
from core.paths import Paths
from core.runs.events import Event, Log, event_from_json
from core.train import snapshot

SOURCE = str(Path(__file__).resolve().parents[2])  # on the children's PYTHONPATH: acm runs from a checkout too
MOST_RING_RANKS = 64  # train.ranks' cap; on the ring backend also one rank a CPU core (at least 2)
PORT_TRIES = 32  # picks of a free stretch of ports before giving up
RANK_DEATH_GRACE_S = 10.0  # how long the ranks left may take to end once one died, before the launcher kills them
PORT_RANGE = (20000, 32000)  # where they are picked: below where systems pick ports for outgoing connections


def in_group() -> bool:
    """Whether this process is a rank started by the launcher (which must not launch again)."""
    return "MLX_RANK" in os.environ


def join_group() -> mx.distributed.Group:
    """This process's group of ranks. A rank the launcher started (or mpirun, which says so in Open
    MPI's OMPI_COMM_WORLD_SIZE) joins MLX's group; a lone process takes MLX's group of one without
    trying its backends in turn, since their turn includes starting MPI, which costs a lone process
    0.4-0.7 s where Open MPI is installed (bench/RESULTS.md)."""
    if in_group() or os.environ.get("OMPI_COMM_WORLD_SIZE", "1") != "1":
        try:
            return mx.distributed.init()
        except RuntimeError as e:  # a port taken between the launcher's pick and the rank's listen
            raise AcmError(f"the ranks could not join their group ({e}): start the stage again") from None
    return mx.distributed.init(backend="ring")  # needs MLX_RANK to connect: a group of one here


def backend(ranks: int) -> str:
    """NCCL with one GPU a rank on an NVIDIA host, the ring backend over localhost elsewhere; more
    ranks than the host has GPUs (NVIDIA) or CPU cores (elsewhere) refused in one line."""
    if not mx.cuda.is_available():
        most = ring_ranks_here()
        if ranks > most:
            raise AcmError(f"{ranks} ranks on this host: at most {most}, one a CPU core (train.ranks, --ranks)")
        return "ring"
    gpus = mx.device_count(mx.gpu)
    if ranks > gpus:
        raise AcmError(f"{ranks} ranks need {ranks} NVIDIA GPUs; this host has {gpus} "
                       "(train.ranks, --ranks)")
    return "nccl"


def ring_ranks_here() -> int:
    """The most ranks the ring backend runs on this host: one a CPU core this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(max(2, cores), MOST_RING_RANKS)


def launcher_argv(ranks: int, command: list[str], parent: int | None = None) -> list[str]:
    """The command line that starts `command` (arguments after the Python interpreter) on
    `ranks` ranks of this host; with `parent`, the launcher and ranks end once that process is gone."""
    ties = (["--parent", str(parent)] if parent else []) + ["--grace", str(RANK_DEATH_GRACE_S)]
    kind = backend(ranks)
    # the ring's ranks listen on 127.0.0.1 (MLX's launcher's address for this host), NCCL's rank 0 on all
    ports = (["--starting-port", str(free_ports(ranks, "127.0.0.1"))] if kind == "ring"
             else ["--nccl-port", str(free_ports(1, ""))])
    return [sys.executable, "-m", "core.train.launch", *ties, "-n", str(ranks), "--backend", kind, *ports, "--",
            sys.executable, *command]


def free_ports(count: int, address: str) -> int:
    """The first of `count` consecutive ports that nothing holds on `address` now ("": any of this
    host's), picked at random below the ranges systems give outgoing connections (Linux from 32768,
    macOS from 49152), where MLX's own fixed ports sit: with those fixed ports (32323 and up for the
    ring, 12345 for NCCL) a second run's ranks, or any program on them, stopped a group's start."""
    for _ in range(PORT_TRIES):
        base = random.randrange(*PORT_RANGE)
        if all(_bindable(address, port) for port in range(base, base + count)):
            return base
    raise AcmError(f"no {count} free ports in a row on this host for the ranks to meet on: try again")


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def launcher_env(extra_path: str | None = None) -> dict[str, str]:
    """The ranks' environment: acm importable, and NVLink multicast off (NCCL's NVLS needs
    fabric support these hosts do not promise; off costs nothing measurable at this size)."""
    env = dict(os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return env


def describe(ranks: int) -> str:
    kind = backend(ranks)
    return f"{ranks} ranks ({'one NVIDIA GPU each, NCCL' if kind == 'nccl' else 'ring backend on this host'})"


def parse_event(line: str) -> Event:
    """One line of rank 0's output (core.train.worker's JSON lines) as an event (other lines as log
    lines)."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    return event_from_json(record) or Log(text=line.rstrip("\n"))


def train_on_ranks(cfg: config.Config, stage: str, run: Path, resume: bool, emit, control, ranks: int,
                   max_steps: int | None = None, started=None, steps: int | None = None) -> dict:
    """Train `stage` of `run` on `ranks` ranks of this host and wait: rank 0's events go to `emit`,
    a stop asked of `control` reaches every rank through the run's control file; `started` gets
    the launcher's process. The last event of each type; a rank's refusal raised as its one line."""
    # more ranks than the host runs, or no ports to meet on: refused before anything is written
    argv = launcher_argv(ranks, snapshot.command(snapshot.location(run, stage)), parent=os.getpid())
    before = _Undo(run, stage)
    log = Paths.ranks_log(run, stage)
    atomic.check_appendable(log)  # refused before anything is written
    snapshot.write(cfg, snapshot.Launch(stage, run.name, resume, steps, max_steps), run)
    with atomic.open_appending(log) as errors:  # the ranks' own messages (a traceback of a rank) land here
        start = errors.tell()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
                                env=launcher_env(SOURCE), start_new_session=True,  # Ctrl-C is the caller's
                                cwd=str(cfg.root.resolve()))
    if started:
        started(proc)
    done = threading.Event()
    threading.Thread(target=_relay_stop, args=(control, run, stage, done), daemon=True).start()
    last: dict = {}
    try:
        for line in proc.stdout:
            event = parse_event(line)
            last[event.type] = event
            if emit:
                emit(event)
    finally:
        done.set()
        proc.wait()
    said = _said(log, start)
    refusal = next((line.removeprefix(REFUSAL) for line in said if line.startswith(REFUSAL)), None)
    if refusal is not None:  # a rank refused (a resume it cannot make, a damaged checkpoint)
        before.restore(start)  # before it wrote anything: the run is left as it was
        raise AcmError(refusal)
    failed = proc.returncode or any(WARNING in line for line in said)  # the launcher exits 0 whatever a rank did
    if failed:
        raise AcmError(f"{stage} on {ranks} ranks failed: {said[-1] if said else 'no message'} "
                       f"(all of it in {log}); the last checkpoint stays loadable: resume it")
    return last


class _Undo:
    """What a ranks command writes before its ranks start (the snapshot they read, their log), taken
    back when they refuse: a refused command leaves the run's files as they were."""

    def __init__(self, run: Path, stage: str):
        self.run, self.folder, self.toml = run, Paths.stage(run, stage), snapshot.location(run, stage)
        self.log = Paths.ranks_log(run, stage)
        self.created = next((p for p in (run, self.folder) if not p.exists()), None)
        self.settings = atomic.read_regular(self.toml, config.SETTINGS_LIMIT) if self.toml.exists() else None

    def restore(self, log_start: int) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        toml, log = self.toml, self.log
        if self.settings is None:
            toml.unlink(missing_ok=True)
        else:
            atomic.write_bytes(toml, self.settings)
        if log_start:
            os.truncate(log, log_start)
        else:
            log.unlink(missing_ok=True)


REFUSAL = "acm: error: "  # how a rank (core.train.worker) says why it refused
RANK_ENDED_BADLY = "Node with rank"  # how MLX's launcher says a rank exited with an error or was killed
WARNING = f"[WARN] {RANK_ENDED_BADLY}"  # ... as its log shows it


def _said(log: Path, start: int) -> list[str]:
    """The lines the launcher and ranks wrote to `log` from byte `start` (this call's), colours off."""
    with atomic.open_regular(log) as f:  # a FIFO put there is not waited on
        f.seek(start)
        text = f.read().decode(errors="replace")
    return [ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _relay_stop(control, run: Path, stage: str, done: threading.Event) -> None:
    """A stop asked of `control` sent to the ranks once they can take it (a Ctrl-C or SIGTERM may
    come while they are still starting), unless they end first."""
    while not done.wait(0.2):
        if control is not None and control.stopping:
            runs.send_once_taken(run, stage, "stop", done)
            return

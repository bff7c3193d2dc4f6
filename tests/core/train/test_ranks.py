"""Ranks a host cannot run are refused, a rank's refusal is the command's, and no rank outlives a
killed `acm`."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from core import cli, config
from core.paths import Paths
from core.train.ranks import join_group, ring_ranks_here
from tests.helpers import ROOT, eventually, process_gone, unless_stuck


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("acm: error: "), err
    return err[0]


@pytest.mark.parametrize("ranks", ["65", "1000", "99999999999999999999"])
def test_the_ranks_flag_has_the_settings_cap(project, capsys, ranks):
    with pytest.raises(SystemExit) as e:
        cli.main(["-c", str(project / "acm.toml"), "train", "pretrain", "--ranks", ranks])
    assert e.value.code == 2
    assert "allowed: 1 to 64, as train.ranks" in one_error_line(capsys)
    assert not (project / "runs").exists()


@pytest.mark.skipif(mx.cuda.is_available(), reason="the ring backend's limit: one rank a CPU core")
def test_more_ranks_than_the_host_runs_are_refused_before_anything_is_written(prepared, capsys):
    too_many = ring_ranks_here() + 1
    if too_many > 64:
        pytest.skip("this host runs as many ranks as train.ranks allows")
    c = str(prepared / "acm.toml")
    for detach in ([], ["--detach"]):
        assert cli.main(["-c", c, "train", "pretrain", "--run", "many", "--ranks", str(too_many), *detach]) == 2
        assert f"{too_many} ranks on this host: at most {too_many - 1}" in one_error_line(capsys)
        assert not (prepared / "runs" / "many").exists()


def run_files(run: Path) -> dict[Path, bytes]:
    """Every file of a run and its bytes, but the writers' lock (whoever held it last)."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "writer.lock"}


def test_a_ranks_refusal_is_the_commands_one_line_and_leaves_the_run_as_it_was(prepared, capsys):
    """A run of 3 sequences a step resumed on 2 ranks of batch 3 cannot keep its global batch: each
    rank refuses, and that reason (not exit 0, not only ranks.log) reaches the user."""
    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.batch_size = 3
    config.save(cfg, prepared / "acm.toml")
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "odd", "--max-steps", "2"]) == 0
    run = prepared / "runs" / "odd"
    before = run_files(run)
    capsys.readouterr()
    assert cli.main(["-c", c, "train", "pretrain", "--run", "odd", "--resume", "--ranks", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("acm: error: run odd trains on 3 sequences a step"), err
    assert not any(line.startswith("acm: error:") for line in err[:-1])
    assert run_files(run) == before  # no ranks.toml, no ranks.log


@pytest.mark.parametrize("detach", [[], ["--detach"]])
def test_a_fifo_where_a_stage_s_log_goes_is_one_line_not_a_wait(prepared, capsys, detach):
    """The ranks' log (`--ranks 2`) and a background stage's log (`--detach`) were opened to append
    to with a plain open, which waits for a FIFO's reader forever."""
    c, run = str(prepared / "acm.toml"), prepared / "runs" / "logs"
    assert cli.main(["-c", c, "train", "pretrain", "--run", "logs", "--max-steps", "1"]) == 0
    log = Paths.detached_log(run, "pretrain") if detach else Paths.ranks_log(run, "pretrain")
    os.mkfifo(log)
    before = run_files(run)
    capsys.readouterr()
    with unless_stuck():
        assert cli.main(["-c", c, "train", "pretrain", "--run", "logs", "--resume", "--ranks", "2", *detach]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # under the plan's line, one error
    assert err[-1] == f"acm: error: a FIFO, not a regular file: {log}" and "acm: error:" not in " ".join(err[:-1])
    assert run_files(run) == before


# ---------------------------------------------------------------- a killed acm

def children() -> dict[int, int]:
    """pid -> parent pid of every process (Linux's /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        found[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    return found


def descendants(pid: int) -> set[int]:
    parents, found, todo = children(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through Linux's /proc")
def test_kill_9_of_acm_ends_its_launcher_and_ranks(prepared):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    acm = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(prepared / "acm.toml"), "train", "pretrain",
                            "--run", "k", "--ranks", "2", "--steps", "100000"], env=env, cwd=prepared,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = prepared / "runs" / "k" / "pretrain" / "metrics.jsonl"
    family: set[int] = set()
    try:
        assert eventually(lambda: metrics.exists() and b'"metrics"' in metrics.read_bytes()), "the ranks never trained"
        family = descendants(acm.pid)  # the launcher, and the ranks under it
        assert len(family) >= 3
        acm.send_signal(signal.SIGKILL)
        acm.wait()
        assert eventually(lambda: all(map(process_gone, family)), 30), \
            f"still running after acm's kill -9: {sorted(pid for pid in family if not process_gone(pid))}"
    finally:
        for pid in family | {acm.pid}:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_lone_process_takes_a_group_of_one_without_trying_mlxs_backends(monkeypatch, lone_group_asks):
    """MLX's default init tries its backends in turn, MPI among them (0.4-0.7 s where Open MPI is
    installed); a process no launcher started asks for the ring backend, which is one rank without
    MLX_RANK. A rank, or a process mpirun started, joins through MLX's default (for real in the
    two-rank tests)."""
    asked = lone_group_asks
    group = join_group()
    assert (group.size(), group.rank()) == (1, 0)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # mpirun with one process: alone too
    join_group()
    assert asked == [{"backend": "ring"}] * 2
    asked.clear()
    monkeypatch.setattr(mx.distributed, "init", lambda **kw: asked.append(kw))  # a real group needs its launcher
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    join_group()
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("MLX_RANK", "0")
    join_group()
    assert asked == [{}, {}]


A_RANK_WHOSE_PORT_IS_TAKEN = """
import json, os, socket, sys
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
port = taken.getsockname()[1]
with open(sys.argv[1], "w") as f:
    json.dump([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]], f)
os.environ.update(MLX_RANK="0", MLX_HOSTFILE=sys.argv[1])
from core.errors import AcmError
from core.train.ranks import join_group
try:
    join_group()
except AcmError as e:
    print(e)
"""


def test_a_rank_that_cannot_listen_on_its_port_says_so_in_one_line(tmp_path):
    """The launcher picks ports free at its start; one taken before the rank listens (another program
    was quicker) is the rank's refusal, which the command shows, not an internal error."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", A_RANK_WHOSE_PORT_IS_TAKEN, str(tmp_path / "hosts.json")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("the ranks could not join their group ([ring] Couldn't bind socket"), r
    assert r.stdout.rstrip().endswith("start the stage again")


@contextlib.contextmanager
def listening():
    """A port of this host another program listens on: its number."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


A_PORT_TAKEN_AFTER_THE_PICK = """
import os, sys
from core.train import ranks
ranks.free_ports = lambda count, address: int(os.environ["TAKEN_PORT"])  # taken a moment after acm picked it
ranks.RANK_DEATH_GRACE_S = 1.0
from core.cli import main
sys.exit(main(["-c", sys.argv[1], "train", "pretrain", "--run", "late", "--max-steps", "2", "--ranks", "2",
               *sys.argv[2:]]))
"""


@pytest.mark.skipif(mx.cuda.is_available(), reason="two ranks of the ring backend on this host")
def test_a_rank_that_fails_to_start_ends_the_others_and_the_command_says_why(prepared):
    """Rank 0 cannot listen; rank 1 reached the other program and waits inside MLX for a group that
    never forms, where no signal's handler runs: the launcher's SIGTERM to it was waited on for ever,
    and the command with it. Once the launcher says a rank died, the ranks left have a grace period
    (10 s; 1 s here) to end, then the launcher's process group is killed: the command ends with the
    rank's one line, and the run is left as it was."""
    with listening() as port:  # another program, on rank 0's port
        env = dict(os.environ, PYTHONPATH=str(ROOT), TAKEN_PORT=str(port))
        r = subprocess.run([sys.executable, "-c", A_PORT_TAKEN_AFTER_THE_PICK, str(prepared / "acm.toml")], env=env,
                           cwd=prepared, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stderr.strip().splitlines()[-1].startswith("acm: error: the ranks could not join their group ([ring] "
                                                         "Couldn't bind socket"), r.stderr
    assert not (prepared / "runs" / "late").exists()


@pytest.mark.skipif(mx.cuda.is_available(), reason="a rank of the ring backend on this host")
def test_a_rank_that_refuses_writes_its_line_into_the_ranks_log_itself(prepared, tmp_path):
    """The launcher relays a rank's stderr into the stage's ranks.log, but a rank that dies ends the
    launcher, sometimes before the line is relayed: the command then said only "rank 0 exited with
    code 2". The rank writes its line there itself, whatever becomes of its stderr."""
    import json

    from core.paths import Paths
    from core.train import snapshot

    cfg = config.load(prepared / "acm.toml")
    run = cfg.locations.run("late")
    snapshot.write(cfg, snapshot.Launch("pretrain", "late", False, None, 2), run)
    with listening() as port:  # rank 0's own address, taken
        hosts = tmp_path / "hosts.json"
        hosts.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
        env = dict(os.environ, PYTHONPATH=str(ROOT), MLX_RANK="0", MLX_HOSTFILE=str(hosts))
        r = subprocess.run([sys.executable, "-m", "core.train.worker", str(snapshot.location(run, "pretrain"))],
                           env=env, cwd=prepared, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 2
    log = (Paths.stage(run, "pretrain") / "ranks.log").read_text()
    assert log.startswith("acm: error: the ranks could not join their group ([ring] Couldn't bind socket"), log


@pytest.mark.skipif(mx.cuda.is_available() or not Path("/proc/self/stat").exists(),
                    reason="two ranks of the ring backend on this host; finds the ranks through Linux's /proc")
def test_a_detached_group_whose_rank_fails_to_start_ends_too(prepared):
    """In the background no one waits on the launcher: it ends its group itself, the rank's line in
    the stage's log, where the launcher and a rank were left running for good."""
    with listening() as port:
        env = dict(os.environ, PYTHONPATH=str(ROOT), TAKEN_PORT=str(port))
        r = subprocess.run([sys.executable, "-c", A_PORT_TAKEN_AFTER_THE_PICK, str(prepared / "acm.toml"), "--detach"],
                           env=env, cwd=prepared, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r
        launcher = int(r.stdout.split("(pid ")[1].split(")")[0])
        family = {launcher} | descendants(launcher)
        assert eventually(lambda: all(map(process_gone, family)), 30), [p for p in family if not process_gone(p)]
    log = (prepared / "runs" / "late" / "pretrain" / "detached.log").read_text()
    assert "acm: error: the ranks could not join their group" in log


def test_ports_are_picked_free_on_the_address_the_ranks_listen_on(monkeypatch):
    """NCCL's rank 0 listens on all of this host's addresses: a port another program holds on any of
    them is passed over, as one held on 127.0.0.1 is for the ring."""
    from core.train import ranks

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        other = free.getsockname()[1]  # free a moment ago, as the system says
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.2", 0))  # a loopback address of its own (Linux has them all; macOS only 127.0.0.1)
        except OSError:
            pytest.skip("no second loopback address on this host")
        port = held.getsockname()[1]
        picks = iter([port, other])
        monkeypatch.setattr(ranks.random, "randrange", lambda *_: next(picks))
        assert ranks.free_ports(1, "") == other
        monkeypatch.setattr(ranks.random, "randrange", lambda *_: port)
        assert ranks.free_ports(1, "127.0.0.1") == port  # the ring's address is another one

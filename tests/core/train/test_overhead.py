"""The stage's timings (core/train/timings.py) and checkpoints written in the background."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from core import config
from core.errors import AcmError
from core.paths import Paths
from core.runs import checkpoint, read_metrics
from core.runs.background import Background
from core.train.optimizer import FlatAdamW
from core.train.timings import PARTS, Timings
from core.train.trainer import Control, Throughput, train_stage
from tests.helpers import SteppingClock


def load(project: Path) -> config.Config:
    return config.load(project / "acm.toml")


def test_tokens_per_second_go_by_when_steps_were_read_not_when_they_were_reported():
    """A report made late (the thread held up after reading its step's loss) while the next step,
    queued, ran on: its one-step window at a stage's end read 47,820 tokens/s among 2,900s."""
    now = [0.0]
    meter = Throughput(1000, lambda: now[0])
    for t in (0.5, 1.0):
        now[0] = t
        meter.step()
    now[0] = 1.45  # the report, late: the next step has nearly run meanwhile
    assert meter.take() == (2000.0, 0.5)
    now[0] = 1.5
    meter.step()
    assert meter.take() == (2000.0, 0.5)  # its window began at 1.0, when the last one's step was read
    now[0] = 3.0
    meter.restart()  # a check: not training time
    now[0] = 3.25
    meter.step()
    assert meter.take() == (4000.0, 0.25)


def test_a_stage_s_last_report_gives_the_rate_of_the_one_before_it():
    """Where queuing a step runs it (MLX on a CPU), a step's loss is read only after the next step
    has run: the last step's loss is read at once, and its one-step window read 47,614 tokens/s
    among 2,900s. The last report gives the window before it; after a check, its own."""
    now = [0.0]
    meter = Throughput(1000, lambda: now[0])
    for i in range(1, 11):
        now[0] = 0.5 * i
        meter.step()
    assert meter.take() == (2000.0, 0.5)
    now[0] = 5.02
    meter.step()
    assert meter.take(last=True) == (2000.0, 0.5)
    now[0] = 6.0
    meter.restart()  # a check
    now[0] = 6.25
    meter.step()
    assert meter.take(last=True) == (4000.0, 0.25)  # no report since the check: its own


def test_the_parts_add_up_to_the_wall_and_each_lands_where_it_was_spent():
    now = [0.0]
    t = Timings(lambda: now[0])
    t.begin(0.0)
    now[0] = 3.0
    t.loop()  # setup 3
    now[0] = 5.0
    with t.aside("validation"):  # 1 s of validation among the first steps
        now[0] = 6.0
    now[0] = 8.0
    t.first_steps_done(2)  # 2 steps in 8 - 3 - 1 = 4 s
    with t.aside("checkpoints", saves=1):
        now[0] = 8.5
    with t.aside("samples"):
        now[0] = 8.75
    with t.aside("paused"):
        now[0] = 10.75
    now[0] = 20.0
    t.loop_done(39)  # 37 steady steps in 20 - 8 - 0.5 - 0.25 - 2 = 9.25 s: 0.25 s a step
    with t.aside("checkpoints"):  # the last write's wait
        now[0] = 21.0
    now[0] = 21.5
    t.end()
    parts = t.seconds()  # the first 2 steps at the steady rate are 0.5 s of steps; the rest of their 4 s compiled
    assert parts == {"setup": 3.0, "compile": 3.5, "steps": 9.75, "validation": 1.0, "samples": 0.25,
                     "checkpoints": 1.5, "other": 2.5}
    assert t.line("pretrain") == ("pretrain: 22 s: setup 3.0 s, compile 3.5 s, steps 9.8 s, validation 1.0 s, "
                                  "samples 0.2 s, checkpoints 1.5 s, other 2.5 s")
    assert t.record()["saves"] == 1 and t.record()["wall_s"] == 21.5
    assert t.record()["each_s"] == {"validation": [1.0], "samples": [0.25], "checkpoints": [0.5, 1.0]}


def test_a_loop_too_short_to_time_its_first_steps_counts_as_steps():
    now = [0.0]
    t = Timings(lambda: now[0])
    t.begin(0.0)
    now[0] = 1.0
    t.loop()
    with t.aside("validation"):
        now[0] = 1.5
    now[0] = 4.0
    t.loop_done(2)
    t.end()
    assert t.seconds() == {"setup": 1.0, "compile": 0.0, "steps": 2.5, "validation": 0.5, "samples": 0.0,
                           "checkpoints": 0.0, "other": 0.0}


def test_a_loop_no_longer_than_its_timing_compiles_only_what_the_first_steps_took_beyond_the_timed_rate():
    now = [0.0]
    t = Timings(lambda: now[0])
    t.begin(0.0)
    now[0] = 1.0
    t.loop()
    now[0] = 9.0
    t.first_steps_done(4, step_s=1.5)  # 4 steps in 8 s, timed at 1.5 s a step once compiled
    t.loop_done(4)
    now[0] = 9.5
    t.end()
    assert t.seconds() == {"setup": 1.0, "compile": 2.0, "steps": 6.0, "validation": 0.0, "samples": 0.0,
                           "checkpoints": 0.0, "other": 0.5}


def test_a_stage_ends_with_its_timings_line_and_file(prepared):
    cfg = load(prepared)
    cfg.train.samples = 1
    run = cfg.runs_dir / "timed"
    clock = SteppingClock(0.1)
    train_stage(cfg, "pretrain", run, max_steps=20, clock=clock)
    record = json.loads((Paths.stage(run, "pretrain") / "timings.json").read_text())
    parts = record["parts_s"]
    assert list(parts) == list(PARTS) and all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(record["wall_s"], abs=0.01)
    assert record["wall_s"] <= clock.now - 1000.0  # read inside the run, on its clock
    assert parts["steps"] > 0 and parts["validation"] > 0 and parts["samples"] > 0 and parts["checkpoints"] > 0
    assert record["saves"] == 2  # steps 10 and 20
    assert len(record["each_s"]["checkpoints"]) == 3  # two saves and the last one's wait
    assert sum(record["each_s"]["validation"]) == pytest.approx(parts["validation"], abs=0.01)
    log = Paths.train_log(run, "pretrain").read_text().splitlines()
    line = next(t for t in log if " pretrain: " in t and "setup" in t)
    assert all(part in line for part in PARTS)


def test_a_checkpoint_written_in_the_background_holds_what_a_synchronous_save_holds(prepared, tmp_path):
    cfg = load(prepared)
    run = cfg.runs_dir / "bg"
    train_stage(cfg, "pretrain", run, max_steps=10)
    ck = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    params, opt = checkpoint.load_weights(ck), checkpoint.load_optimizer(ck)
    with_mlx = tmp_path / "mlx"
    with_mlx.mkdir()  # the same arrays through MLX's own writer
    mx.save_safetensors(str(with_mlx / "model.safetensors"), dict(tree_flatten(params)))
    mx.save_safetensors(str(with_mlx / "optimizer.safetensors"),
                        {k: v for k, v in tree_flatten(opt) if isinstance(v, mx.array)})
    (with_mlx / "state.json").write_text(json.dumps(ck.state))
    synced = checkpoint.Checkpoint(with_mlx, ck.state)
    sync_params, sync_opt = checkpoint.load_weights(synced), checkpoint.load_optimizer(synced)
    for ours, theirs in ((params, sync_params), (opt, sync_opt)):
        a, b = dict(tree_flatten(ours)), dict(tree_flatten(theirs))
        assert a.keys() == b.keys()
        assert all(a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item() for k in a)
    assert opt["step"].dtype == mx.uint64 and int(opt["step"].item()) == 10


def test_bfloat16_arrays_and_any_layout_keep_their_values_through_a_checkpoint(tmp_path):
    params = {"w": mx.random.normal((3, 4)).astype(mx.bfloat16), "b": mx.arange(5, dtype=mx.int32),
              "t": mx.arange(6.0).reshape(2, 3).T, "wide": mx.broadcast_to(mx.array([1.0, 2.0]), (3, 2)),
              "none": mx.zeros((0, 4))}
    checkpoint.save(tmp_path, 1, params, {"step": mx.array(1, mx.uint64)}, {"config": {}})
    got = checkpoint.load_weights(checkpoint.latest(tmp_path))
    assert got["w"].dtype == mx.bfloat16
    for name, a in params.items():
        assert got[name].shape == a.shape and mx.array_equal(got[name], a).item()


def test_a_snapshot_keeps_its_step_s_weights_while_later_steps_update_them_in_place(tmp_path):
    opt = FlatAdamW({"w": mx.random.normal((8, 1024)), "b": mx.zeros((8,))}, 1e-2, 0.1, mx.bfloat16)
    grads = {g: mx.ones_like(a) for g, a in opt.state["params"].items()}

    def step():
        opt.clip_and_update(opt.pack_gradients(opt._unpack(grads), mx.bfloat16), 1.0)
        mx.eval(opt.state)

    step()
    then = {k: np.array(v) for k, v in tree_flatten(opt.parameters())}
    snap = checkpoint.snapshot(opt.parameters(), opt.checkpoint_state())
    live = [np.frombuffer(memoryview(a), np.uint8) for a in (*opt.state["params"].values(), *opt.state["m"].values())]
    for blob in (snap.model, snap.optimizer):  # buffers of their own: only the writer reads them
        assert not any(np.shares_memory(np.frombuffer(memoryview(c), np.uint8), b) for c in blob.chunks for b in live)
    for _ in range(3):  # the update writes the weights' buffers in place
        step()
    writer = Background("writer")  # read on another thread, as the trainer's writer does
    writer.start(lambda: checkpoint.write(tmp_path, 1, snap, {"config": {}}))
    writer.take()
    last = checkpoint.latest(tmp_path)
    got, state = checkpoint.load_weights(last), checkpoint.load_optimizer(last)
    now = dict(tree_flatten(opt.parameters()))
    for name, a in tree_flatten(got):
        assert np.array_equal(np.array(a), then[name]) and not np.array_equal(np.array(now[name]), then[name])
    assert int(state["step"].item()) == 1 and int(opt.state["step"].item()) == 4


def test_a_failing_background_write_is_one_line_at_the_stage_s_end(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "blocked"
    train_stage(cfg, "pretrain", run, max_steps=10)
    folder = Paths.checkpoints(run, "pretrain")
    (folder / ".tmp-step-0000020").write_text("")  # a file where the next checkpoint is assembled
    with pytest.raises(AcmError) as e:
        train_stage(cfg, "pretrain", run, resume=True, max_steps=10)
    message = str(e.value)
    assert "\n" not in message and "could not write checkpoint step-0000020" in message
    assert "step-0000010, is intact" in message
    assert [c.step for c in checkpoint.list_checkpoints(folder)] == [10]


def test_a_failing_background_write_surfaces_at_the_next_save(prepared, monkeypatch):
    cfg = load(prepared)
    run = cfg.runs_dir / "next"
    real, calls = checkpoint.write, []

    def fails_once(folder, step, arrays, state):
        calls.append(step)
        if step == 10:
            raise AcmError(f"disk full: could not write checkpoint step-{step:07d} into {folder}")
        return real(folder, step, arrays, state)

    monkeypatch.setattr(checkpoint, "write", fails_once)
    with pytest.raises(AcmError, match="no earlier checkpoint exists"):
        train_stage(cfg, "pretrain", run, max_steps=30)
    assert calls == [10]  # raised before the next write began


def test_resume_after_background_saves_matches_an_uninterrupted_run(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.save_every = 3  # saves in flight while later steps run
    train_stage(cfg, "pretrain", cfg.runs_dir / "straight", max_steps=16)
    train_stage(cfg, "pretrain", cfg.runs_dir / "parts", max_steps=7)
    train_stage(cfg, "pretrain", cfg.runs_dir / "parts", resume=True, max_steps=9)

    def losses(run):
        return [e["loss"] for e in read_metrics(run, "pretrain") if e["type"] == "metrics"]

    straight, parts = losses(cfg.runs_dir / "straight"), losses(cfg.runs_dir / "parts")
    assert len(straight) == len(parts) == 16
    assert parts == pytest.approx(straight, rel=1e-5, abs=1e-6)


def arrays_written(folder: Path, step: int, polls: int = 3000) -> bool:
    """Whether checkpoint `step`'s weights appear in `folder` (assembled or in place) within `polls`
    short waits: the writer runs on its own thread."""
    for _ in range(polls):
        if any((folder / f"{prefix}step-{step:07d}" / "optimizer.safetensors").exists() for prefix in (".tmp-", "")):
            return True
        threading.Event().wait(0.01)
    return False


def test_a_save_due_at_a_validation_check_writes_the_weights_while_it_runs(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.eval_every = cfg.train.pretrain.save_every = 10
    run = cfg.runs_dir / "early"
    folder, seen, said = Paths.checkpoints(run, "pretrain"), {}, {}

    def on(event):
        if event.type == "eval":  # the check is running: the step's weights are already being written
            seen[event.step] = (event.val_loss, arrays_written(folder, event.step))
        if event.type == "checkpoint":
            said[event.step] = event.val_loss

    train_stage(cfg, "pretrain", run, emit=on, max_steps=20)
    assert {step: written for step, (_, written) in seen.items()} == {10: True, 20: True}
    assert said == {step: loss for step, (loss, _) in seen.items()}  # each announced with its check's loss
    for ck in checkpoint.list_checkpoints(folder):  # and each records it
        assert ck.val_loss == pytest.approx(seen[ck.step][0])


def stage_in_thread(*args, **kw) -> BaseException | None:
    """train_stage on a thread of its own (as the engine runs it), its error returned; a stage that
    has not ended after a generous wait fails the test instead of hanging it."""
    out: list = []

    def run():
        try:
            train_stage(*args, **kw)
            out.append(None)
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(300)
    assert out, "the stage hung"
    return out[0]


def test_a_check_that_fails_abandons_its_step_s_checkpoint_and_keeps_the_earlier_ones(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.eval_every = cfg.train.pretrain.save_every = 10
    run = cfg.runs_dir / "abandoned"

    def on(event):
        if event.type == "eval" and event.step == 20:
            raise KeyboardInterrupt  # a stop while the check runs

    assert isinstance(stage_in_thread(cfg, "pretrain", run, emit=on, max_steps=30), KeyboardInterrupt)
    folder = Paths.checkpoints(run, "pretrain")
    assert [c.step for c in checkpoint.list_checkpoints(folder)] == [10]
    assert not list(folder.glob(".tmp-step-*")) and not (folder / "step-0000020").exists()


def test_a_stop_asked_for_during_a_check_keeps_that_step_s_checkpoint_with_its_loss(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.eval_every = cfg.train.pretrain.save_every = 10
    run, control, said, losses = cfg.runs_dir / "stopped", Control(), [], {}

    def on(event):
        if event.type == "eval":
            losses[event.step] = event.val_loss
            if event.step == 20:
                control.stop()
        if event.type == "checkpoint":
            said.append((event.step, event.val_loss))

    assert stage_in_thread(cfg, "pretrain", run, emit=on, control=control, max_steps=30) is None
    assert said == [(10, losses[10]), (20, losses[20])]  # step 20 saved once, with its check's loss
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).val_loss == pytest.approx(losses[20])


def test_a_late_state_is_asked_for_once_the_arrays_are_written(tmp_path):
    params = {"w": mx.arange(6.0).reshape(2, 3)}
    folder = tmp_path / "cks"

    class Probe(checkpoint.LateState):
        def __call__(self):
            self.files = sorted(p.name for p in (folder / ".tmp-step-0000001").iterdir())
            return super().__call__()

    late = Probe()
    late.give({"val_loss": 1.5, "config": {}})
    checkpoint.write(folder, 1, checkpoint.snapshot(params, {}), late)
    assert late.files == ["model.safetensors", "optimizer.safetensors"]
    assert checkpoint.latest(folder).val_loss == 1.5
    abandoned = checkpoint.LateState()
    abandoned.abandon()
    with pytest.raises(RuntimeError, match="abandoned"):
        checkpoint.write(folder, 2, checkpoint.snapshot(params, {}), abandoned)
    assert [c.step for c in checkpoint.list_checkpoints(folder)] == [1] and not list(folder.glob(".tmp-*"))


def test_a_file_of_one_array_is_snapshotted_into_a_buffer_of_its_own():
    w = mx.arange(8.0)
    mx.eval(w)
    snap = checkpoint.snapshot({"w": w}, {})
    (chunk,) = snap.model.chunks
    mx.eval(chunk)
    mine = np.frombuffer(memoryview(chunk), np.uint8)
    assert not np.shares_memory(mine, np.frombuffer(memoryview(w), np.uint8))
    assert mine.view(np.float32).tolist() == list(range(8)) and snap.optimizer.chunks == []


def test_files_larger_than_a_buffer_may_hold_are_written_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 64)  # MLX's buffers stop at 2 GiB; medium's AdamW state is 3 GB
    params = {"big": mx.arange(40.0).reshape(5, 8).T, "small": mx.arange(3, dtype=mx.int32),
              "half": mx.arange(20.0).astype(mx.bfloat16), "none": mx.zeros((0, 2))}
    snap = checkpoint.snapshot(params, {"step": mx.array(7, mx.uint64)})
    assert len(snap.model.chunks) > 3 and all(c.nbytes <= 64 for c in snap.model.chunks)
    checkpoint.write(tmp_path, 1, snap, {"config": {}})
    last = checkpoint.latest(tmp_path)
    got, opt = checkpoint.load_weights(last), checkpoint.load_optimizer(last)
    for name, a in params.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape and mx.array_equal(got[name], a).item()
    assert int(opt["step"].item()) == 7

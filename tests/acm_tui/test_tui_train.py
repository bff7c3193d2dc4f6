from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import pytest

from acm_tui.panes.train import CHARTS, CHARTS_S, STATUS_S, TrainPane
from core import cli, config, runs
from core.paths import Paths
from core.runs import checkpoint, list_runs
from core.runs.events import Recorder, Sample, State, event_from_json
from core.train.trainer import train_stage
from tests.helpers import METRICS, ROOT, live_stage, notified, shown_in_full, text_of, wait_until
from tests.pane_host import PaneHost
from tests.terminal import AppOnATerminal


async def test_train_pane_without_shards_says_to_make_them_first(project):
    app = PaneHost(TrainPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        assert "no runs yet: prepare the token shards" in text_of(app, "#train-status")


def endless_pretrain(prepared) -> PaneHost:
    """The Train pane in a small app, on a project whose pretrain runs until it is stopped."""
    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps = 100000
    config.save(cfg, prepared / "acm.toml")
    return PaneHost(TrainPane, prepared / "acm.toml")


async def test_train_pane_charts_update_and_keys_steer(prepared, keys_while_training):
    app = endless_pretrain(prepared)
    async with app.run_test(size=(120, 50), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        assert "no runs yet: press p to pretrain" in text_of(app, "#train-status")  # the shards are made
        await pilot.press("p")
        await wait_until(pilot, lambda: len(pane.history) >= 3, timeout=60)
        def charted() -> bool:  # braille points of the train loss: drawn within CHARTS_S
            drawn = str(app.query_one("#chart-loss").render())
            return "train" in drawn and any(0x2800 < ord(ch) <= 0x28FF for ch in drawn)

        await wait_until(pilot, lambda: "tok/s" in text_of(app, "#train-status") and charted())
        assert "running" in text_of(app, "#train-status") and "ETA" in text_of(app, "#train-status")
        drawn, t0 = pane.redraws, asyncio.get_running_loop().time()
        await pilot.pause(1.0)
        rate = (pane.redraws - drawn) / (asyncio.get_running_loop().time() - t0)
        assert rate <= 12  # coalesced: at most ~10 redraws a second
        await pilot.press("space")
        await wait_until(pilot, lambda: pane.state == "paused")
        paused_at = pane.history[-1].step
        await pilot.pause(0.3)
        assert pane.history[-1].step == paused_at
        await pilot.press("g")
        assert pane.log_scale
        await pilot.press("space")
        await wait_until(pilot, lambda: pane.state == "running")
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.state == "stopped" and pane.control is None, timeout=60)
        await notified(pilot, f"pretrain stopped at step {pane.history[-1].step} (run ")
        await wait_until(pilot, lambda: "stopped" in text_of(app, "#train-status"))
        assert "ETA" not in text_of(app, "#train-status")  # a stage that ended has no time left
        run = list_runs(app.cfg)[0]
        last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
        assert last.step == pane.history[-1].step or last.step >= paused_at


async def test_stop_when_nothing_trains_says_so_and_the_plan_line_shows_at_80x24(with_model):
    (with_model / "runs" / "m").rename(with_model / "runs" / "[m]")  # brackets are a name, not markup
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: pane.state == "done" and text_of(app, "#train-log"))
        assert shown_in_full(app, "#train-log")  # above the charts, not below them
        await pilot.press("s")
        await notified(pilot, "finetune of run [m] is done: nothing to stop")
        assert app.is_running


async def test_the_log_chart_survives_a_zoom_a_resize_and_the_key_list(with_model):
    """plotext's own log scale took the logarithm again at each build: a second build crashed."""
    status = with_model / "runs" / "m" / "finetune" / "status.json"
    status.write_text(status.read_text().replace('"done"', '"done[/]"'))  # text from disk, not markup
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: "done[/]" in text_of(app, "#train-status") and len(pane.history) > 1)
        await pilot.press("g", "z", "question_mark", "question_mark", "z", "z", "z", "z")
        await pilot.resize_terminal(100, 30)
        await pilot.pause(0.2)
        assert app.is_running and "loss (log" in str(app.query_one("#chart-loss").render())
        await pilot.press("c")
        await notified(pilot, "finetune of run m is done[/]: nothing to save")
        assert not any("checkpoint will be written" in n.message for n in app._notifications)


async def test_the_log_scale_says_so_at_80x24(with_model):
    """At 80x24 the loss chart's title with its scale and smoothing was wider than the chart, and
    plotext left it out: nothing told that `g` had put the chart on a log scale."""
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: len(pane.history) > 1)
        await pilot.press("m")  # smoothing 0.6 -> 0.8: the longest title
        await pilot.press("g")
        await notified(pilot, "loss chart: log scale")
        await pilot.pause(0.2)
        assert "fine-tune loss (log, smoothed" in str(app.query_one("#chart-loss").render())
        await pilot.press("g")
        await notified(pilot, "loss chart: linear scale")


async def test_records_edited_by_hand_show_as_dashes_and_leave_the_charts_drawn(with_model):
    stage = with_model / "runs" / "m" / "finetune"
    last = json.loads((stage / "metrics.jsonl").read_text().splitlines()[-2])
    with open(stage / "metrics.jsonl", "a") as f:
        for record in ({**last, "step": 11, "total": None, "epoch": "x", "memory_active": None, "time": None},
                       {"type": "eval", "stage": "finetune", "step": 11, "val_loss": float("inf")},
                       {"type": "state", "stage": "finetune", "state": ["a"]},  # of no type acm writes: skipped
                       {"type": "log", "stage": "finetune", "text": {"a": 1}},
                       {"type": "metrics", "stage": "finetune", "step": 12, "loss": 1.0, "grad_norm": "big"}):
            f.write(json.dumps(record) + "\n")
    (stage / "samples.jsonl").write_text('{"type": "sample", "stage": "finetune", "step": 10}\n')
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await wait_until(pilot, lambda: "step 12/–  epoch –" in text_of(app, "#train-status"))
        assert "val loss inf (best –)" in text_of(app, "#train-status")
        assert "lr –" in text_of(app, "#train-status") and "grad norm" in text_of(app, "#train-health")
        await pilot.press("g", "x", "x", "z", "v")
        await pilot.pause(0.2)
        assert app.is_running and "samples at step 10 (– s)" in text_of(app, "#train-samples-text")


async def test_failed_stage_shows_its_error(prepared):
    import shutil

    shutil.rmtree(prepared / "data" / "tokens")
    app = PaneHost(TrainPane, prepared / "acm.toml")
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("4", "p")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: pane.state == "failed")
        assert "run `acm prepare` first" in text_of(app, "#train-log")


async def test_quitting_mid_run_stops_with_a_checkpoint(prepared, keys_while_training):
    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps, cfg.train.pretrain.save_every = 100000, 100000
    config.save(cfg, prepared / "acm.toml")
    app = PaneHost(TrainPane, prepared / "acm.toml")
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("4", "p")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: len(pane.history) >= 2, timeout=60)
        await pilot.press("q")  # asks first: a stage runs in the app
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        assert "Quit anyway? (training stops at the next step and writes a checkpoint)" in text_of(app.screen, "Static")
        assert app.is_running
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ != "Confirm")
        assert app.is_running and pane.control is not None
        await pilot.press("q", "y")
    run = list_runs(app.cfg)[0]
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).step >= 2


async def test_resuming_a_finished_stage_asks_before_training_on(prepared):
    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps = 4
    train_stage(cfg, "pretrain", cfg.runs_dir / "done")
    app = PaneHost(TrainPane, prepared / "acm.toml")
    folder = Paths.checkpoints(cfg.runs_dir / "done", "pretrain")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4", "R")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "Confirm"
        assert "already finished its 4 steps. Train it on to 8 steps" in text_of(app.screen, "Static")
        await pilot.press("n")
        await pilot.pause()
        pane = app.query_one("#train-pane")
        assert pane.control is None and checkpoint.latest(folder).step == 4
        await pilot.press("R", "y")
        await wait_until(pilot, lambda: pane.control is None and checkpoint.latest(folder).step == 8, timeout=60)
    live_stage(prepared)  # a stage this process trains elsewhere: R is refused before it asks anything
    async with PaneHost(TrainPane, prepared / "acm.toml").run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("4", "R")
        await notified(pilot, "training is already running")
        assert pilot.app.screen.__class__.__name__ != "Confirm"


async def test_smoothing_key_redraws_and_saves_the_setting_and_x_cycles_the_axis(with_model):
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: pane.history and pane.state == "done")
        assert pane.smoothing == 0.6 and "grad norm" in text_of(app, "#train-health")
        drawn = pane.redraws
        path = with_model / "acm.toml"
        assert cli.main(["-c", str(path), "config", "set", "generate.top_k", "7"]) == 0  # another acm, meanwhile
        await pilot.press("m")
        assert pane.redraws > drawn and "smoothed 0.8" in str(app.query_one("#chart-loss").render())
        await notified(pilot, "smoothing 0.8 (saved as ui.smoothing)")
        assert app.cfg.ui.smoothing == 0.8 and config.load(path).ui.smoothing == 0.8
        assert config.load(path).generate.top_k == 7 == app.cfg.generate.top_k  # the file's edit kept
        for axis, words in (("tokens", "tokens seen"), ("time", "time"), ("step", "step")):
            await pilot.press("x")
            assert pane.axis == axis and words in str(app.query_one("#chart-loss").render())


async def test_z_shows_one_chart_over_the_grid_in_turn_then_all_four(with_model):
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        grid, charts = app.query_one("#train-charts"), {n: app.query_one(f"#chart-{n}") for n in CHARTS}
        quarter = charts["loss"].size
        for name in (*CHARTS, None):
            await pilot.press("z")
            await pilot.pause()
            assert [n for n, c in charts.items() if c.display] == ([name] if name else list(CHARTS))
            assert grid.has_class("zoomed") == (name is not None)
            if name:
                assert charts[name].size.width > quarter.width and charts[name].size.height > quarter.height


async def test_an_alert_in_the_stage_log_is_highlighted_and_notified(with_model):
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: pane.state == "done")
        assert not app.query_one("#train-alert").display
        with open(Paths.train_log(pane.attached, pane.stage), "a", encoding="utf-8") as log:
            log.write("2026-01-01 00:00:00 alert: step 7: loss is nan\n")
        await notified(pilot, "alert: step 7: loss is nan")
        assert app.query_one("#train-alert").display and "step 7" in text_of(app, "#train-alert")


async def test_v_shows_the_latest_checks_samples_with_their_verdicts_at_80x24(with_model):
    run = with_model / "runs" / "m"
    lines = [Sample(stage="finetune", step=s, prompt="#!/bin/bash\n# Back up /etc\n", text=text, parses=ok,
                    shellcheck_errors=None, complete=ok, relevant=False, seconds=0.25).to_json()
             for s, text, ok in ((5, "old sample\n", True), (10, "tar czf /tmp/etc.tgz /etc\n", True),
                                 (10, "if then fi (\n", False))]
    Paths.samples(run, "finetune").write_text("".join(json.dumps(line) + "\n" for line in lines))
    app = PaneHost(TrainPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: pane.state == "done")
        assert not app.query_one("#train-samples").display
        await pilot.press("v")
        await pilot.pause()
        assert app.query_one("#train-samples").display and not app.query_one("#train-charts").display
        shown = text_of(app, "#train-samples-text")
        assert "samples at step 10" in shown and "old sample" not in shown
        assert "tar czf /tmp/etc.tgz /etc" in shown and "✓ parses  ✓ complete  ✗ relevant" in shown
        assert "✗ parses  ✗ complete  ✗ relevant" in shown
        assert app.query_one("#train-samples").size.height >= 8
        await pilot.press("v")
        await pilot.pause()
        assert app.query_one("#train-charts").display and not app.query_one("#train-samples").display


async def test_while_a_stage_trains_reports_are_shown_at_most_every_second_and_charts_every_two(project):
    """Drawing every report costs an in-app trainer its tokens/s: the status waits STATUS_S, the charts
    CHARTS_S (on the pane's clock); a changed state shows at once."""
    live_stage(project)
    app = PaneHost(TrainPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        pane = app.query_one(TrainPane)
        await wait_until(pilot, lambda: pane.state == "running" and pane.history)
        now = [0.0]
        pane.clock = lambda: now[0]
        pane.shown_at = pane.plotted_at = 0.0
        drawn = pane.redraws
        recorder = Recorder(pane.attached, "pretrain", 400)
        recorder(event_from_json(METRICS | {"step": 30, "loss": 4.5}))
        await wait_until(pilot, lambda: len(pane.history) == 2)
        await pilot.pause(0.3)
        assert "step 20/" in text_of(app, "#train-status") and pane.redraws == drawn
        now[0] = STATUS_S
        await wait_until(pilot, lambda: "step 30/" in text_of(app, "#train-status"))
        assert pane.redraws == drawn
        now[0] = CHARTS_S
        await wait_until(pilot, lambda: pane.redraws == drawn + 1)
        recorder(event_from_json(METRICS | {"step": 40}))
        recorder(State(stage="pretrain", state="paused", step=40, total=400))
        recorder.close()
        await wait_until(pilot, lambda: "paused" in text_of(app, "#train-status"))
        assert "step 40/" in text_of(app, "#train-status") and pane.redraws == drawn + 2


@pytest.mark.parametrize("how", ["hang-up", "SIGTERM", "SIGINT"])
def test_a_dropped_connection_or_a_polite_kill_stops_the_app_s_stage_with_a_checkpoint(prepared, how):
    """acm-tui on a terminal of its own, training in the app: the terminal closing under it (an SSH
    connection dropped: SIGHUP), `kill` or `kill -INT` ends the app as `q` then `y` does, with a
    checkpoint, and the signal's status (129, 143, 130), as `acm` ends."""
    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps, cfg.train.pretrain.save_every = 100000, 100000
    config.save(cfg, prepared / "acm.toml")
    app = AppOnATerminal(prepared, 120, 40)
    try:
        deadline, pressed = time.monotonic() + 120, -1.0
        while not (list_runs(cfg) and (runs.read_status(list_runs(cfg)[0], "pretrain") or {}).get("step", 0) >= 2):
            assert time.monotonic() < deadline, "the stage never started"
            if app.seen and time.monotonic() - pressed > 1:  # the Train pane's p, again while nothing started:
                os.write(app.fd, b"4p")                      # keys sent as the app starts are lost (a p while
                pressed = time.monotonic()                   # the stage starts is refused: one at a time)
            time.sleep(0.1)
        if how == "hang-up":
            app.hang_up()
        else:
            os.kill(app.pid, getattr(signal, how))
        code = app.exit_code(120)
    finally:
        app.close()
    run = list_runs(cfg)[0]
    status = runs.read_status(run, "pretrain")
    assert status["state"] == "stopped" and checkpoint.latest(Paths.checkpoints(run, "pretrain")).step == status["step"]
    assert code == 128 + {"hang-up": signal.SIGHUP, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}[how]


@pytest.fixture
def held_readying(monkeypatch):
    """The readying at the app's start held before its first step until the test lets it go."""
    from core.train import ready

    release, run_step = threading.Event(), ready.run_step
    monkeypatch.setattr(ready, "run_step", lambda *a, **kw: release.wait(60) and run_step(*a, **kw))
    yield release
    release.set()


def readying_app(project):
    """The app on `project` with ui.ready_at_start on."""
    from acm_tui.app import AcmApp

    cfg = config.load(project / "acm.toml")
    cfg.ui.ready_at_start = True
    config.save(cfg, project / "acm.toml")
    return AcmApp(project / "acm.toml")


async def pretrain_while_readying(pilot, app) -> TrainPane:
    """Once the header says the engine readies the step, p in the Train pane; the pane."""
    await wait_until(pilot, lambda: "readying the training step…" in app.sub_title)
    await pilot.press("4")
    pane = app.query_one("#train-pane")
    await wait_until(pilot, lambda: app.focused is pane)
    await pilot.press("p")
    await wait_until(pilot, lambda: pane.state == "starting")  # the key handled (the pilot may return before)
    return pane


async def test_the_app_readies_the_training_step_at_its_start_and_a_stage_asked_for_meanwhile_waits(
        prepared, held_readying, keys_while_training):
    app = readying_app(prepared)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await pretrain_while_readying(pilot, app)
        assert app.engine.running == "ready"  # the stage is queued behind the readying, held open
        await pilot.pause(0.3)
        assert pane.state == "starting" and not list_runs(app.cfg)  # and waits: nothing trained yet
        held_readying.set()
        await wait_until(pilot, lambda: app.readied is not None, timeout=60)
        assert app.readied.stages == ("pretrain",) and app.readied.cut  # the stage queued behind it cut it short
        assert "readying" not in app.sub_title
        await wait_until(pilot, lambda: pane.state == "done" and pane.control is None, timeout=120)
    assert checkpoint.latest(Paths.checkpoints(list_runs(app.cfg)[0], "pretrain")).step == 40


async def test_a_quit_does_not_wait_for_the_readying_and_a_stage_queued_behind_it_never_starts(
        prepared, held_readying):
    app = readying_app(prepared)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await pretrain_while_readying(pilot, app)
        run = pane.attached
        await pilot.press("q", "y")  # asks first: a stage was asked for in the app
    assert app.engine.busy and app.engine.running == "ready"  # left to end with the process
    held_readying.set()
    assert app.engine._stopped.wait(60)
    assert app.engine.running is None and not app.engine.busy
    assert runs.stage_state(run, "pretrain") == "not started"  # cancelled, never begun


async def test_the_app_says_nothing_of_a_readying_it_skips(project):
    from acm_tui.app import AcmApp

    class Recording(AcmApp):
        """Every header the app shows, from its first."""
        CSS_PATH = ROOT / "acm_tui" / AcmApp.CSS_PATH
        headers: list[str] = []

        def show_where(self, run: str | None = None) -> None:
            super().show_where(run)
            self.headers.append(self.sub_title)

    app = Recording(project / "acm.toml")  # no tokenizer: no stage could start
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.readied is not None and app.device)
        assert app.readied.why == "no tokenizer yet"
    assert app.headers and not any("readying" in h for h in app.headers)


async def test_the_runs_pane_fine_tunes_and_resumes_the_run_it_has_selected(prepared):
    """The Train pane's f and R take the newest run: an older run could be fine-tuned or resumed only
    from the command line (`--run`). The Runs pane's f and R take its selected run."""
    from textual.widgets import DataTable

    from acm_tui.app import AcmApp

    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps = cfg.train.finetune.steps = 4
    cfg.ui.ready_at_start = False
    config.save(cfg, prepared / "acm.toml")
    for name in ("older", "newer"):
        train_stage(cfg, "pretrain", cfg.runs_dir / name)
    app = AcmApp(prepared / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        await pilot.press("6")
        table = app.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        table.move_cursor(row=table.get_row_index("older"))
        await pilot.press("f")
        older = Paths.checkpoints(cfg.runs_dir / "older", "finetune")
        pane = app.query_one("#train-pane", TrainPane)
        await wait_until(pilot, lambda: pane.control is None and getattr(checkpoint.latest(older), "step", 0) == 4,
                         timeout=60)
        assert checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "newer", "finetune")) is None
        await pilot.press("6")
        table.move_cursor(row=table.get_row_index("older"))
        await pilot.press("R")  # its latest stage, the fine-tune, finished its plan: asked first
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        assert "finetune of run older already finished its 4 steps" in text_of(app.screen, "Static")
        await pilot.press("n")
        await pilot.press("6")
        table.move_cursor(row=table.get_row_index("newer"))
        await pilot.press("R")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        assert "pretrain of run newer already finished its 4 steps" in text_of(app.screen, "Static")


async def test_a_stop_pressed_while_the_stage_starts_stops_it(prepared, keys_while_training):
    """`s` went through the stage's control file, which a stage still starting (no status yet) cannot
    take: "nothing to stop", and the stage trained on. A stage the app trains takes it at once."""
    app = endless_pretrain(prepared)
    async with app.run_test(size=(120, 50), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: pane.has_focus_within)
        held = threading.Event()
        app.engine.submit(held.wait)  # the engine busy: the stage stays queued, starting, until it is let go
        await pilot.press("p")
        await wait_until(pilot, lambda: pane.state == "starting" and pane.control is not None)
        await pilot.press("s")
        held.set()
        await wait_until(pilot, lambda: pane.state == "stopped" and pane.control is None, timeout=60)
    run = list_runs(app.cfg)[0]
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    assert last is None or last.step <= 1  # stopped before its steps, or at its first


async def test_N_pretrains_a_new_run_under_the_name_typed_as_train_pretrain_run_does(prepared, keys_while_training):
    """`acm train pretrain --run NAME` in the app: the name typed, checked as the command line checks it."""
    from textual.widgets import Input

    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps, cfg.train.pretrain.save_every = 100000, 100000
    config.save(cfg, prepared / "acm.toml")
    (prepared / "runs" / "notes").mkdir(parents=True)
    (prepared / "runs" / "notes" / "todo.txt").write_text("mine")
    app = PaneHost(TrainPane, prepared / "acm.toml")
    async with app.run_test(size=(120, 50), notifications=True) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        for name, says in (("a b", "invalid run name 'a b'"), ("notes", "is a folder that is no run")):
            await pilot.press("N")
            await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Ask")
            app.screen.query_one("#answer", Input).value = name
            await pilot.press("enter")
            await notified(pilot, says)
        await pilot.press("N")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Ask")
        app.screen.query_one("#answer", Input).value = "baseline"
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.attached == cfg.runs_dir / "baseline" and len(pane.history) >= 2,
                         timeout=60)
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.state == "stopped", timeout=60)
    assert [r.name for r in list_runs(cfg)] == ["baseline"] and (prepared / "runs" / "notes" / "todo.txt").exists()

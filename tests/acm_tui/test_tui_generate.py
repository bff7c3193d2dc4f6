from __future__ import annotations

import json
import os
import re
import shutil
import threading

import mlx.core as mx
import pytest
from textual.widgets import DataTable, Input, Select

from acm_tui.panes.generate import GeneratePane
from core import config
from core.errors import AcmError
from core.paths import Paths
from tests.helpers import notified, shown_in_full, text_of, wait_until
from tests.pane_host import PaneHost


async def test_repl_streams_keeps_history_and_badges_bash(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5", "i")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-temperature", Input).value = "0"
        app.query_one("#gen-max_tokens", Input).value = "12"
        prompt = app.query_one("#gen-prompt", Input)
        prompt.focus()
        await pilot.press(*"#!/bin/bash\\necho", "enter")
        await wait_until(pilot, lambda: pane.stop_event is None and pane.transcript)
        out = text_of(app, "#gen-output")
        assert out.startswith("#!/bin/bash\necho") and "parses" in out and "shellcheck" in out
        assert "tok/s" in text_of(app, "#gen-status") and "m / finetune / step 10" not in out
        await pilot.press("up")
        assert prompt.value == "#!/bin/bash\\necho"
        await pilot.press("down")
        assert prompt.value == ""


async def test_the_latest_run_is_followed_and_a_checkpoint_kept_loaded_is_reused(with_model):
    cfg = config.load(with_model / "acm.toml")
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5", "i")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-max_tokens", Input).value = "2"

        async def generated() -> str:
            await pilot.press("x", "enter")
            await wait_until(pilot, lambda: pane.stop_event is None and pane.transcript)
            return text_of(app, "#gen-status")

        assert (await generated()).startswith("m / finetune / step 10:")
        first = pane.loaded
        assert (await generated()).startswith("m / finetune / step 10:") and pane.loaded.model is first.model
        newer = shutil.copytree(cfg.runs_dir / "m", cfg.runs_dir / "m2")  # a run started since
        later = Paths.run_config(cfg.runs_dir / "m").stat().st_mtime + 10
        os.utime(Paths.run_config(newer), (later, later))
        assert (await generated()).startswith("m2 / finetune / step 10:")
        assert pane.loaded.model is not first.model and pane.loaded.run == "m2"


async def test_the_prompt_reads_escapes_as_generate_e_does(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5", "i")  # i: the prompt has the focus
        pane, prompt = app.query_one("#generate-pane"), app.query_one("#gen-prompt", Input)
        app.query_one("#gen-max_tokens", Input).value = "1"
        prompt.value = "\\x4"
        await pilot.press("enter")
        await pilot.pause()
        assert pane.stop_event is None and not pane.transcript
        assert prompt.value == "\\x4"  # refused, and kept to be put right
        prompt.value = "\\x41\\u00e9\\nB"
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.stop_event is None and pane.transcript)
        assert text_of(app, "#gen-output").startswith("A\u00e9\nB")


@pytest.mark.parametrize("n", [1, 4])
async def test_escape_stops_a_long_generation(with_model, n):
    """One sample says it was cancelled; a batch, how many of those asked it gave (as `acm generate
    --n` says `(stopped: 2 of 8 printed)`)."""
    cfg = config.load(with_model / "acm.toml")
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-max_tokens", Input).value = "100000"
        app.query_one("#gen-n", Input).value = str(n)
        prompt = app.query_one("#gen-prompt", Input)
        prompt.focus()
        busy = threading.Event()
        app.engine.submit(busy.wait)  # hold the engine so the stop lands mid-request, deterministically
        await pilot.press("x", "enter")
        assert pane.stop_event is not None
        await pilot.press("escape")
        busy.set()
        await wait_until(pilot, lambda: pane.stop_event is None, timeout=60)
        if n == 1:
            assert "stopped: cancelled" in text_of(app, "#gen-status")
        else:
            await wait_until(pilot, lambda: "asked)" in text_of(app, "#gen-status"))
            assert re.search(r": [0-3] results \(stopped: [0-3] of 4 asked\)", text_of(app, "#gen-status"))
        assert cfg.generate.max_tokens == 256  # the settings file is untouched


async def test_bad_setting_is_refused_and_eval_fills_the_table(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-top_k", Input).value = "lots"
        prompt = app.query_one("#gen-prompt", Input)
        prompt.focus()
        await pilot.press("x", "enter")
        await pilot.pause()
        assert pane.stop_event is None and not pane.transcript
        app.query_one("#gen-top_k", Input).value = "50"
        pane.focus()
        config_run = config.load(with_model / "acm.toml")
        assert config_run.generate.top_k == 50
        await pilot.press("e")
        table = app.query_one("#eval-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 3, timeout=120)
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == ["pretrain", "finetune", "finetune+checked"]


async def test_sampling_values_out_of_range_get_the_settings_messages(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        for field, value, message in (("temperature", "-1", "generate.temperature = -1.0 is out of range"),
                                      ("top_p", "0", "generate.top_p = 0.0 is out of range; allowed: above 0.0"),
                                      ("seed", "-7", None)):
            app.query_one(f"#gen-{field}", Input).value = value
            if message is None:
                assert pane.read_params()[0].seed == -7  # any integer seeds the generator
            else:
                with pytest.raises(AcmError, match=message):
                    pane.read_params()
            app.query_one(f"#gen-{field}", Input).value = {"temperature": "0.8", "top_p": "0.95"}.get(field, "0")


async def test_n_that_is_not_a_count_of_candidates_is_refused_and_nothing_runs(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50), notifications=True) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        for value in ("\u00b2", "0", "-1", "1e3", "257", "1" * 5000):
            app.query_one("#gen-n", Input).value = value
            await pilot.press("i", "l", "s", "enter")
            await notified(pilot, f"n = {value[:20]!r}: give a whole number of candidates from 1 to 256")
            assert pane.stop_event is None and app.is_running
            await pilot.press("escape")


async def test_a_generation_behind_a_stage_in_the_app_says_it_waits_and_escape_leaves_the_prompt(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50), notifications=True) as pilot:
        await pilot.press("5")
        pane, release = app.query_one("#generate-pane"), threading.Event()
        app.engine.submit_named("train", release.wait)  # a stage holding the engine, as a training does
        await wait_until(pilot, lambda: app.engine.running == "train")
        await pilot.press("i", "l", "s", "enter")
        await notified(pilot, "generate waits for the stage under way in the app")
        prompt = app.query_one("#gen-prompt", Input)
        await pilot.press("escape")
        assert pane.stop_event.is_set() and prompt.has_focus  # the first escape stops it
        await pilot.press("escape")
        assert not prompt.has_focus  # the second leaves the prompt: k, e, i and the panes' keys act again
        await pilot.press("e")  # an evaluation behind it says so too
        await notified(pilot, "evaluating waits for the stage under way in the app")
        pane.step_cancel.cancel()
        release.set()
        await wait_until(pilot, lambda: pane.stop_event is None and app.engine.running is None, timeout=60)
        await wait_until(pilot, lambda: pane.step_cancel is None, timeout=60)


async def test_n_candidates_from_one_batch_and_syntax_checked_sampling(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(120, 60)) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-n", Input).value = "3"
        app.query_one("#gen-max_tokens", Input).value = "12"
        app.query_one("#gen-prompt", Input).focus()
        await pilot.press(*"#!/bin/bash\\n", "enter")
        await wait_until(pilot, lambda: pane.stop_event is None and len(pane.transcript) == 3, timeout=60)
        out = text_of(app, "#gen-output")
        assert "1/3" in out and "3/3" in out and ("truncated" in out or "complete" in out)
        pane.focus()
        await pilot.press("k")
        assert pane.syntax_check
        app.query_one("#gen-n", Input).value = "1"
        app.query_one("#gen-prompt", Input).focus()
        await pilot.press(*"#!/bin/bash\\n", "enter")
        await wait_until(pilot, lambda: pane.stop_event is None and len(pane.transcript) == 4, timeout=60)
        assert re.search(r"[123] tried", text_of(app, "#gen-output"))  # generate.candidates = 3 here


async def test_escape_leaves_the_prompt_so_k_toggles_and_its_state_stays_in_view_at_80x24(project):
    app = PaneHost(GeneratePane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5", "i")
        pane = app.query_one("#generate-pane")
        prompt = app.query_one("#gen-prompt", Input)
        assert prompt.has_focus and not pane.syntax_check
        assert prompt.border_subtitle == "k syntax check: off"
        await pilot.press("escape", "k")  # no generation runs: escape leaves the prompt, k is the pane's
        assert not prompt.has_focus and prompt.value == "" and pane.syntax_check
        assert prompt.border_subtitle == "k syntax check: on" and shown_in_full(app, "#gen-prompt")
        await pilot.press("i", "k")
        assert prompt.value == "k"  # in the prompt, k is typed


async def test_a_task_prompt_is_told_whether_its_script_uses_what_the_task_expects(with_model):
    cfg = config.load(with_model / "acm.toml")
    cfg.eval.tasks = [config.EvalTask("#!/bin/bash\n# Back up a database\n", "^")]
    config.save(cfg, with_model / "acm.toml")
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        columns = [str(c.label) for c in app.query_one("#eval-table", DataTable).columns.values()]
        assert "relevant" in columns and "relevant & parses" in columns
        app.query_one("#gen-max_tokens", Input).value = "6"
        prompt = app.query_one("#gen-prompt", Input)
        prompt.focus()
        prompt.value = "#!/bin/bash\\n# Back up a database\\n"  # typing is the REPL test's
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.stop_event is None and pane.transcript)
        assert "uses what the task expects: yes (^)" in text_of(app, "#gen-output")
        prompt.focus()
        prompt.value = "#!/bin/bash\\n# Back up\\n"  # not a task's prompt
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.stop_event is None and len(pane.transcript) == 2)
        assert text_of(app, "#gen-output").count("uses what the task expects") == 1


async def test_the_evaluation_view_says_what_a_time_budget_cut(with_model):
    cfg = config.load(with_model / "acm.toml")
    cfg.eval.samples, cfg.eval.max_tokens = 2, 4
    config.save(cfg, with_model / "acm.toml")
    row = {"step": 10, "language": {"perplexity": 9.0, "batches": 1, "batches_asked": 20},
           "code": {"perplexity": 7.0, "batches": 3, "batches_asked": 20},
           "code_generation": {"samples": 8, "samples_asked": 64, "parse_rate": 0.5, "distinct_2": 0.8}}
    cut = {"run": "m", "samples": 64, "time_budget": "2m", "stages": {"finetune": row}}
    (with_model / "runs" / "m" / "eval.json").write_text(json.dumps(cut))
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5")
        table = app.query_one("#eval-table", DataTable)
        columns = [str(c.label) for c in table.columns.values()]
        assert str(table.get_row_at(0)[columns.index("samples")]) == "8/64"
        assert text_of(app, "#eval-note") == ("cut by its time budget (2m): 8 samples a checkpoint instead of 64, "
                                              "validation on 1 to 3 batches a split instead of 20")
        assert shown_in_full(app, "#eval-note")
        await pilot.press("e")  # eval.time unset: every sample and batch asked for
        await wait_until(pilot, lambda: table.row_count == 3, timeout=120)
        assert [str(table.get_row_at(i)[columns.index("samples")]) for i in range(3)] == ["2/2"] * 3
        assert not app.query_one("#eval-note").display


async def test_the_evaluation_shown_is_the_chosen_runs(with_model):
    """The table showed the newest run's eval.json whichever run the checkpoint list had chosen, the
    run `e` evaluates."""
    import shutil

    from textual.widgets import Select

    row = {"step": 10, "code_generation": {"samples": 8, "samples_asked": 8, "parse_rate": 0.5}}
    (with_model / "runs" / "m" / "eval.json").write_text(json.dumps({"run": "m", "stages": {"finetune": row}}))
    shutil.copytree(with_model / "runs" / "m", with_model / "runs" / "n")
    (with_model / "runs" / "n" / "eval.json").unlink()
    (with_model / "runs" / "n" / "config.toml").touch()  # n is the newest run
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("5")
        table = app.query_one("#eval-table", DataTable)
        assert table.row_count == 0 and text_of(app, "#eval-note") == "run n: not evaluated yet (e evaluates it)"
        app.query_one("#gen-checkpoint", Select).value = "m|finetune|best"
        await wait_until(pilot, lambda: table.row_count == 1)
        assert "not evaluated" not in text_of(app, "#eval-note")
        app.query_one("#gen-checkpoint", Select).value = "n|pretrain|latest"
        await wait_until(pilot, lambda: table.row_count == 0 and "run n: not evaluated" in text_of(app, "#eval-note"))


async def test_stop_strings_the_decode_dtype_and_the_candidates_tried_as_generate_takes_them(with_model):
    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(100, 50), notifications=True) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-temperature", Input).value = "0"
        app.query_one("#gen-max_tokens", Input).value = "12"

        async def generated() -> str:
            app.query_one("#gen-prompt", Input).focus()
            before = len(pane.transcript)
            await pilot.press("x", "enter")
            await wait_until(pilot, lambda: pane.stop_event is None and len(pane.transcript) > before, timeout=60)
            entry = pane.transcript[-1].plain
            return entry[1:entry.rindex("  [")]  # the continuation, between the prompt and its verdicts

        whole = await generated()
        assert len(whole) >= 4 and pane.loaded.model.compute_dtype == mx.float32  # the run's dtype
        first_model = pane.loaded.model
        stop = whole[2:4]
        app.query_one("#gen-stop", Input).value = json.dumps(stop) + ', "never in it \\u00e9\\u00e9"'
        app.query_one("#gen-dtype", Select).value = "bfloat16"
        cut = await generated()
        assert cut == whole[:whole.index(stop)] and "stopped: stop" in text_of(app, "#gen-status")
        assert pane.transcript[-1].plain.endswith("complete]")  # ended where its user said: not truncated
        assert pane.loaded.model is not first_model and pane.loaded.model.compute_dtype == mx.bfloat16
        app.query_one("#gen-dtype", Select).value = "auto"
        app.query_one("#gen-stop", Input).value = ""
        assert await generated() == whole and pane.loaded.model.compute_dtype == mx.float32

        app.query_one("#gen-candidates", Input).value = "0"  # tried only when syntax-checked: no matter here
        assert await generated() == whole
        for box, value, message in (("stop", '"a", 1', "stop: give one string, or several in double quotes"),
                                    ("stop", '"a', "stop: give one string"), ("stop", "\\", "stop: invalid escape"),
                                    ("candidates", "0", "generate.candidates = 0 is out of range")):
            if box == "candidates":
                pane.focus()
                await pilot.press("k")
            app.query_one(f"#gen-{box}", Input).value = value
            before = len(pane.transcript)
            await pilot.press("i", "l", "s", "enter")
            await notified(pilot, message)
            assert pane.stop_event is None and len(pane.transcript) == before
            app.query_one(f"#gen-{box}", Input).value = {"stop": "", "candidates": "2"}[box]
            await pilot.press("escape")
        app.query_one("#gen-max_tokens", Input).value = "2"  # greedy candidates, none complete: every one tried
        await generated()
        assert "; 2 tried" in pane.transcript[-1].plain  # cand's 2, not generate.candidates (3 here)


async def test_the_prompt_stays_in_view_at_80x24_and_a_chosen_checkpoint_that_goes_is_said(with_model):
    """The output grows above the prompt: at 80x24 it pushed the prompt typed into off the screen. A
    run renamed under the checkpoint chosen falls back to the latest run's best, said, never silently."""
    from core import runs

    app = PaneHost(GeneratePane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("5")
        pane = app.query_one("#generate-pane")
        app.query_one("#gen-max_tokens", Input).value = "24"
        prompt = app.query_one("#gen-prompt", Input)
        for _ in range(3):
            prompt.focus()
            before = len(pane.transcript)
            await pilot.press(*"#!/bin/bash\\n", "enter")
            await wait_until(pilot, lambda before=before: pane.stop_event is None and len(pane.transcript) > before,
                             timeout=60)
            await pilot.pause(0.2)
            where = app.screen.find_widget(prompt)
            assert where.visible_region == where.region and where.region.bottom <= 23  # above the footer
        app.query_one("#gen-checkpoint", Select).value = "m|pretrain|latest"
        runs.rename_run(with_model / "runs" / "m", "m2")
        pane.refresh_checkpoints()
        await notified(pilot, "the checkpoint chosen (m / pretrain / latest) is gone: generating from the latest")
        assert app.query_one("#gen-checkpoint", Select).value == "auto"

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from textual.widgets import DataTable

from acm_tui.app import AcmApp
from core import cli, config
from core.data.code import fetch_code
from core.pipeline.overview import pipeline_status
from core.tokenizer.shards import prepare
from tests.helpers import interrupt_once, notified, sigint_at_default, text_of, wait_until
from tests.terminal import run_acm


def states(cfg) -> dict[str, str]:
    return {s.name: s.state for s in pipeline_status(cfg)}


def test_states_come_from_disk(project, trained):
    assert set(states(config.load(project / "acm.toml")).values()) == {"not started"}
    cfg = config.load(trained / "acm.toml")
    s = states(cfg)
    assert s["data-language"] == s["data-code"] == s["tokenizer"] == "done"
    assert s["prepare"] == s["pretrain"] == "not started"
    prepare(cfg)
    assert states(cfg)["prepare"] == "done"
    assert_a_fetch_of_the_same_scripts_leaves_them_done(cfg)
    (trained / "scripts" / "extra.sh").write_text("#!/bin/bash\necho a brand new script with new words\n")
    fetch_code(cfg)  # the code corpus changed: what was built from it is stale
    s = states(cfg)
    assert s["tokenizer"] == "stale" and s["prepare"] == "stale"


def assert_a_fetch_of_the_same_scripts_leaves_them_done(cfg) -> None:
    """A fetch of the same scripts writes a new manifest (its time, its shard folder's name): the
    tokenizer and the token shards made from the corpus before stay up to date."""
    from core.tokenizer.bpe import train_tokenizer

    fetch_code(cfg)  # this project's own paths in the manifest (the fixture's were its template's)
    train_tokenizer(cfg)
    prepare(cfg)
    shards = cfg.locations.shards_manifest("code").read_bytes()
    fetch_code(cfg)
    assert states(cfg)["tokenizer"] == states(cfg)["prepare"] == "done"
    prepare(cfg)
    assert cfg.locations.shards_manifest("code").read_bytes() == shards  # nothing was rebuilt
    from core.data.corpus import sha256_file  # made before: the manifest file's whole hash recorded

    whole = sha256_file(cfg.locations.corpus_manifest("code"))
    for path, keys in ((cfg.locations.tokenizer_meta, ("corpora", "code", "manifest_sha256")),
                       (cfg.locations.shards_manifest("code"), ("corpus_manifest_sha256",))):
        table = json.loads(path.read_text())
        node = table
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = whole
        path.write_text(json.dumps(table))
    shards = cfg.locations.shards_manifest("code").read_bytes()
    assert states(cfg)["tokenizer"] == states(cfg)["prepare"] == "done"
    prepare(cfg)
    assert cfg.locations.shards_manifest("code").read_bytes() == shards


def test_cli_pipeline_status_and_run(with_model, capsys):

    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "pipeline", "--json"]) == 0
    before = {s["name"]: s["state"] for s in json.loads(capsys.readouterr().out)}
    assert before["pretrain"] == "stopped" and before["evaluate"] == "not started"
    assert cli.main(["-c", c, "pipeline", "run"]) == 0
    out, err = capsys.readouterr()
    assert "ran: pretrain, evaluate" in out  # the unfinished pretrain resumed
    assert set(states(config.load(with_model / "acm.toml")).values()) == {"done"}
    # not a terminal: plain lines in order, no redraws, and the evaluation table `acm eval` prints
    assert in_order(err, "── 1/2 pretrain", "step 21/40", "step 30 val loss", "pretrain done at step 40",
                    "── 2/2 evaluate", "  evaluating: 1,200/1,200 in ") and "\x1b[" not in err
    assert in_order(out, "ran: pretrain, evaluate", "Evaluation of run m", "mean lines", "finetune+checked")


def test_a_pipeline_s_first_training_stage_trains_on_the_model_readied_beside_its_shards(prepared, monkeypatch,
                                                                                         capsys):
    import threading

    import core.train.ready_step
    import core.train.trainer
    from core.pipeline import overview

    built, build = [], core.train.trainer.build_steps
    monkeypatch.setattr(core.train.trainer, "build_steps", lambda *a: built.append(a) or build(*a))
    kept, keep, run_stage = threading.Event(), core.train.ready_step.keep, overview.run_stage
    monkeypatch.setattr(core.train.ready_step, "keep", lambda b: (keep(b), kept.set()))
    # the shards end once the readying has run the pretrain's step, however fast they are made
    monkeypatch.setattr(overview, "run_stage", lambda cfg, name, *a: (
        run_stage(cfg, name, *a), name != "prepare" or kept.wait(60))[0])
    path = prepared / "acm.toml"
    cfg, _ = config.with_value(config.load(path), "tokenizer.vocab_size", "900")  # the shards to make again
    cfg.train.pretrain.steps = cfg.train.finetune.steps = 4
    cfg.train.finetune.batch_size = 2  # a step of its own, readied too, and built by its stage
    cfg.eval.samples, cfg.eval.max_tokens = 1, 4
    config.save_settings(cfg, path)
    assert cli.main(["-c", str(path), "pipeline", "run"]) == 0
    assert "ran: tokenizer, prepare, pretrain, finetune, evaluate" in capsys.readouterr().out
    assert len(built) == 1  # the fine-tune's alone


def in_order(text: str, *parts: str) -> bool:
    """Whether every part is in text, each after the one before."""
    at = 0
    for part in parts:
        found = text.find(part, at)
        if found < 0:
            raise AssertionError(f"{part!r} is missing after position {at} of:\n{text}")
        at = found + len(part)
    return True


SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")


def test_pipeline_run_on_a_terminal_reads_as_one_program(trained):
    """`acm pipeline run` in a terminal, from the bash corpus on: each stage under its heading, its
    bars stopped and left as lines, the training's plan and val checks kept above its bar, and the
    evaluation table at the end."""
    cfg = config.load(trained / "acm.toml")
    shutil.rmtree(cfg.locations.corpus("code"))
    shutil.rmtree(cfg.locations.tokenizer)
    for stage, steps in (("pretrain", 8), ("finetune", 4)):
        sc = getattr(cfg.train, stage)
        sc.seq_len, sc.batch_size, sc.steps, sc.warmup_steps = 32, 4, steps, 2
        sc.log_every, sc.eval_every, sc.eval_batches, sc.save_every = 2, 4, 2, steps
    cfg.train.pretrain.time = "2s"  # the steps are fitted to it, and said, once the first are timed
    cfg.model.compute_dtype = "float32"
    cfg.eval.samples, cfg.eval.max_tokens = 2, 8
    config.save(cfg, trained / "acm.toml")
    code, written, shown = run_acm(["-c", str(trained / "acm.toml"), "pipeline", "run"], cols=160)
    assert code == 0, written[-3000:]
    assert in_order(shown, "── 1/6 data: bash scripts", "✓ scanning", "✓ validating", "✓ deduplicating",
                    "── 2/6 tokenizer", "✓ training", "── 3/6 token shards", "✓ language", "✓ code",
                    "── 4/6 pretrain", "pretrain: time budget 2 s:", " val loss ", "pretrain done at step",
                    "✓ pretrain", "── 5/6 fine-tune", "step 4 val loss", "✓ finetune", "── 6/6 evaluate",
                    "✓ evaluating", "ran: data-code, tokenizer, prepare, pretrain, finetune, evaluate",
                    "Evaluation of run", "mean lines", "finetune+checked")
    assert not SPINNER & set(shown)  # every spinner stopped with its stage
    assert re.search(r"\bstep readied in \d+\.\d s", shown)  # the engine, beside the shards
    bar = next(line for line in shown.splitlines() if line.startswith("✓ pretrain"))
    assert "loss " in bar and " tok/s" in bar
    counts = [(int(d), int(t)) for d, t in re.findall(r"training +[━╸╺ ]+(\d+)/(\d+)", written)]
    assert counts and all(done <= total for done, total in counts) and counts[-1][0] == counts[-1][1]


def test_training_states(with_model):
    cfg = config.load(with_model / "acm.toml")
    by_name = {s.name: s for s in pipeline_status(cfg)}
    assert by_name["pretrain"].state == "stopped"  # 20 of 40 steps
    assert "run m, step 20/40" in by_name["pretrain"].detail
    assert by_name["finetune"].state == "done" and by_name["evaluate"].state == "not started"


def test_the_pipeline_follows_the_newest_run(with_model):
    """A newer run's pretrain does not take an older run's fine-tune as its own: the pipeline reads
    one run, the newest, the one `pipeline run` fine-tunes next and `acm eval` reads."""
    from core.train.target import training_target

    cfg = config.load(with_model / "acm.toml")
    runs_dir = cfg.locations.runs
    shutil.copytree(runs_dir / "m", runs_dir / "b")
    shutil.rmtree(runs_dir / "b" / "finetune")
    newer = (runs_dir / "m" / "config.toml").stat().st_mtime + 60
    os.utime(runs_dir / "b" / "config.toml", (newer, newer))  # a stage started there last
    by_name = {s.name: s for s in pipeline_status(cfg)}
    assert by_name["pretrain"].state == "stopped" and by_name["pretrain"].detail.startswith("run b, step 20/40")
    assert by_name["finetune"].state == "not started"  # run m's fine-tune is done, run b's is to come
    assert by_name["evaluate"].state == "not started"
    assert training_target(cfg, "finetune", unfinished=True).run.name == "b"


def test_the_pipeline_resumes_a_stage_stopped_short_of_its_own_plan_whatever_the_settings_now_say(with_model):
    """`acm train pretrain --steps 40` stopped at 20 goes on to 40 in `pipeline run`, though
    train.pretrain.steps says 10: a resume trains to the plan its checkpoint keeps."""
    from core.train.target import training_target

    cfg = config.load(with_model / "acm.toml")
    cfg.train.pretrain.steps = 10
    target = training_target(cfg, "pretrain", unfinished=True)
    assert (target.run.name, target.resume) == ("m", True)


def test_pipeline_run_leaves_a_stage_training_elsewhere_alone(with_model, capsys):
    from core.runs import write_status
    from core.runs.writer import RunLock

    run = with_model / "runs" / "m"
    writer = RunLock(run).acquire("pretrain")  # this process stands for the other one
    write_status(run, "pretrain", "running", step=25, total=40)
    before = sorted(p.name for p in (with_model / "runs").iterdir())
    try:
        assert cli.main(["-c", str(with_model / "acm.toml"), "pipeline", "run"]) == 2
    finally:
        writer.release()
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("acm: error: pretrain of run m is training in another process") and "acm runs stop m" in err
    assert sorted(p.name for p in (with_model / "runs").iterdir()) == before  # no second run beside it


@pytest.mark.parametrize("pid", [0, -1, True, 10**20])
def test_a_live_status_naming_no_possible_process_reads_as_damaged(with_model, capsys, pid):
    """A hand-edited status.json whose pid no process can have (0 and -1 would ask about acm's own
    group, or every process) is damaged: the stage is not held as training, and nothing fails."""
    from core.runs import stage_state

    run = with_model / "runs" / "m"
    status = run / "pretrain" / "status.json"
    status.write_text(json.dumps({"state": "running", "pid": pid, "time": 0}) + "\n")
    assert stage_state(run, "pretrain") == "stopped"  # its checkpoints remain
    c = str(with_model / "acm.toml")
    for command in (["runs"], ["pipeline"]):
        assert cli.main(["-c", c, *command]) == 0
    assert cli.main(["-c", c, "runs", "rename", "m", "n"]) == 0
    assert "internal error" not in capsys.readouterr().err


def test_ctrl_c_in_pipeline_run_names_the_checkpoint_it_goes_on_from(prepared):
    import signal
    import subprocess
    import sys
    import time

    from core.paths import Paths
    from core.runs import checkpoint, last_report, list_runs

    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps = 100000
    config.save(cfg, prepared / "acm.toml")
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(prepared / "acm.toml"), "pipeline", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_at_default)
    try:
        deadline = time.monotonic() + 120
        while not (list_runs(cfg) and last_report(list_runs(cfg)[0], "pretrain")) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the pretrain reports a step: Ctrl-C lands in training
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, proc.stderr.read()[-1500:]
    finally:
        proc.kill()
    run = list_runs(cfg)[0]
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    err = " ".join(proc.stderr.read().split())
    assert last is not None and err.endswith(
        f"interrupted: finished stages are kept; pretrain of run {run.name} goes on from its checkpoint "
        f"{last.path.name}; `acm pipeline run` continues")


HELD_READYING = """
import sys, threading
import core.cli
import core.train.ready

def held(*args, **kwargs):  # a readying that takes minutes, as MLX compiling its kernels on a fresh NVIDIA machine
    print("readying", file=sys.stderr, flush=True)
    threading.Event().wait()

core.train.ready.ready_engine = held
sys.exit(core.cli.main(sys.argv[1:]))
"""


def test_ctrl_c_as_the_shards_are_made_is_not_held_up_by_the_engine_readying(trained):
    """The readying beside the shards is not waited for: the command says what it kept and ends."""
    import subprocess
    import sys

    cfg = config.load(trained / "acm.toml")
    cfg.train.pretrain.steps = cfg.train.finetune.steps = 4  # were the readying not held, a short pipeline
    config.save(cfg, trained / "acm.toml")
    proc = subprocess.Popen([sys.executable, "-c", HELD_READYING, "-c", str(trained / "acm.toml"), "pipeline", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_at_default)
    status, err = interrupt_once(proc, "readying\n")
    assert status == 130 and err.endswith("interrupted: finished stages are kept; `acm pipeline run` continues"), \
        err[-1500:]


def test_a_done_evaluation_still_counts_among_the_remaining_while_training_does(with_model):
    """The training it follows makes it stale: counted from the start, it keeps its share of a time
    budget and its place in the headings (before: `── 1/1 fine-tune`, then `── 2/2 evaluate`)."""
    from core.generate.evaluate import evaluate_run
    from core.pipeline.overview import remaining

    cfg = config.load(with_model / "acm.toml")
    evaluate_run(cfg, samples=2, max_tokens=4)
    assert states(cfg)["evaluate"] == "done" and states(cfg)["pretrain"] == "stopped"
    assert [s.name for s in remaining(cfg, [])] == ["pretrain", "evaluate"]
    assert [s.name for s in remaining(cfg, ["pretrain"])] == []  # no training left to run: it stays done


async def test_end_to_end_on_the_offline_default(tmp_path, keys_while_training):
    """The real app, driven from the keyboard: data -> tokenizer -> prepare -> pretrain -> fine-tune
    -> evaluate with "run all remaining", then a generation, on the nano preset and built-in data."""
    cfg = config.from_dict({
        "model": {"preset": "nano", "compute_dtype": "float32"},
        "tokenizer": {"vocab_size": 1024},
        "data": {"language": {"max_documents": 150}},
        "generate": {"candidates": 3},
        "eval": {"samples": 2, "max_tokens": 8},
        "train": {stage: {"seq_len": 32, "batch_size": 4, "steps": steps, "warmup_steps": 2, "log_every": 2,
                          "eval_every": steps, "eval_batches": 2, "save_every": steps}
                  for stage, steps in (("pretrain", 8), ("finetune", 4))},
    }, root=tmp_path)
    config.save(cfg, tmp_path / "acm.toml")
    app = AcmApp(tmp_path / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        setup = app.query_one("#setup-pane")
        await pilot.press("1", "a")
        await pilot.press("a")  # the chain once: neither a second one nor a stage of its own beside it
        await notified(pilot, "the remaining stages are running already: stop them with x")
        await pilot.press("enter")
        await notified(pilot, "the remaining stages are running (a): wait for them")
        await wait_until(pilot, lambda: "ran:" in text_of(app, "#setup-pane .step-status")
                         or "failed" in text_of(app, "#setup-pane .step-status"), timeout=300)
        assert "data-language, data-code, tokenizer, prepare, pretrain, finetune, evaluate" in \
            text_of(app, "#setup-pane .step-status")
        assert set(states(app.cfg).values()) == {"done"}
        assert app.readied.stages  # nothing to ready at the start; readied beside the shards
        setup.refresh_pipeline()
        train = app.query_one("#train-pane")
        await wait_until(pilot, lambda: len(train.history) >= 2)  # the chain's training reached the Train pane's charts
        await pilot.press("2")  # the Data pane shows what the chain fetched, without a restart
        stats = app.query_one("#corpus-stats", DataTable)
        await wait_until(pilot, lambda: stats.row_count == 2 and all(
            stats.get_row_at(i)[1] != "not fetched" for i in range(2)), timeout=10)
        await pilot.press("5", "i")
        gen = app.query_one("#generate-pane")
        await pilot.press(*"#!/bin/bash\\n", "enter")
        await wait_until(pilot, lambda: gen.stop_event is None and gen.transcript, timeout=60)
        assert "tok/s" in text_of(app, "#gen-status")


def test_the_pipeline_trains_on_the_configured_ranks(prepared):
    """train.ranks = 2: the pipeline's training stage runs as two ranks (ring backend here), with
    the in-memory settings it was given (a shorter run), rank 0's events relayed to the caller."""
    from core.engine import Engine
    from core.pipeline.overview import run_stage
    from core.progress import CancelToken
    from core.runs import latest_run_with
    from core.train.trainer import Control

    cfg = config.load(prepared / "acm.toml")
    cfg.train.ranks, cfg.train.pretrain.batch_size, cfg.train.pretrain.steps = 2, 2, 6  # not saved
    events, engine = [], Engine()
    try:
        last = run_stage(cfg, "pretrain", lambda p: None, CancelToken(), engine.call, events.append, Control())
    finally:
        engine.shutdown()
    assert last["state"].state == "done" and last["state"].step == 6
    assert {e.ranks for e in events if e.type == "metrics"} == {2}
    run = latest_run_with(cfg, "pretrain")
    assert (run / "pretrain" / "launch.toml").exists() and config.load(prepared / "acm.toml").train.ranks == 1


def test_the_model_takes_the_vocabulary_the_tokenizer_reached(trained, capsys):
    """A corpus too small for the vocabulary aimed for (as the offline data is for medium's 32K):
    the tokenizer stops short, and the shards, the model and generation follow its size."""
    from core.generate.decode import generate_text, load_model
    from core.generate.sampling import SamplingParams
    from core.tokenizer.bpe import train_tokenizer
    from core.train.trainer import train_stage

    path = trained / "acm.toml"
    cfg, _ = config.with_value(config.load(path), "tokenizer.vocab_size", "60000")
    config.save_settings(cfg, path)
    assert states(cfg)["tokenizer"] == "stale"  # trained toward 1,024
    meta = train_tokenizer(cfg)
    assert meta["vocab_target"] == 60000 and 1024 < meta["vocab_size"] < 60000
    assert cli.main(["-c", str(path), "tokenizer", "info"]) == 0
    assert f"vocab {meta['vocab_size']:,} (of 60,000 aimed for" in capsys.readouterr().out
    prepare(cfg)
    cfg.train.pretrain.steps, cfg.train.pretrain.seq_len = 2, 32
    train_stage(cfg, "pretrain", cfg.runs_dir / "v")
    recorded = config.load(cfg.runs_dir / "v" / "config.toml")
    assert recorded.tokenizer.vocab_size == meta["vocab_size"] and recorded.model.preset == "nano"
    lm = load_model(cfg, "v")
    assert lm.model.wte.weight.shape[0] == lm.tokenizer.vocab_size == meta["vocab_size"]
    generate_text(lm, "#!/bin/bash\n", SamplingParams(max_tokens=5))  # every id the model can draw decodes
    assert states(config.load(path))["tokenizer"] == "done"


def test_the_engine_is_readied_as_the_shards_are_made_where_training_follows(prepared, monkeypatch):
    """Once, as the shards stage starts (the tokenizer settled), never where no shards are made or
    the settings say not to."""
    from core.pipeline import overview
    from core.progress import CancelToken

    real = overview.run_stage
    monkeypatch.setattr(overview, "run_stage", lambda cfg, name, *a: real(cfg, name, *a)
                        if name in ("tokenizer", "prepare") else None)  # training: not here
    path = prepared / "acm.toml"
    cfg, _ = config.with_value(config.load(path), "tokenizer.vocab_size", "900")
    config.save_settings(cfg, path)
    seen = []  # the stages' states at each call
    done = overview.run_remaining(cfg, lambda p: None, CancelToken(), None, ready=lambda c: seen.append(states(c)))
    assert done == ["tokenizer", "prepare", "pretrain", "finetune", "evaluate"]
    assert [(s["tokenizer"], s["prepare"]) for s in seen] == [("done", "stale")]
    seen.clear()
    assert overview.run_remaining(cfg, lambda p: None, CancelToken(), None, ready=seen.append) == [
        "pretrain", "finetune", "evaluate"] and seen == []  # the shards were done: nothing to ready beside
    cfg, _ = config.with_value(cfg, "tokenizer.vocab_size", "800")
    cfg.train.ready_in_pipeline = False
    assert overview.run_remaining(cfg, lambda p: None, CancelToken(), None, ready=seen.append)[:2] == [
        "tokenizer", "prepare"] and seen == []


def test_a_run_reads_the_states_again_after_each_stage(prepared, monkeypatch):
    """A new vocabulary makes the tokenizer stale while the shards still read as done; once the
    tokenizer is retrained they are stale too, and the same run rebuilds them and goes on."""
    from core.pipeline import overview
    from core.progress import CancelToken

    path = prepared / "acm.toml"
    cfg, _ = config.with_value(config.load(path), "tokenizer.vocab_size", "900")
    config.save_settings(cfg, path)
    assert (states(cfg)["tokenizer"], states(cfg)["prepare"]) == ("stale", "done")
    ran, real = [], overview.run_stage

    def run_stage(cfg, name, *args):
        ran.append(name)
        return real(cfg, name, *args) if name in ("tokenizer", "prepare") else None  # training: not here

    monkeypatch.setattr(overview, "run_stage", run_stage)
    done = overview.run_remaining(cfg, lambda p: None, CancelToken(), lambda fn, *a: fn(*a))
    assert done == ran == ["tokenizer", "prepare", "pretrain", "finetune", "evaluate"]
    assert states(cfg)["prepare"] == "done"


async def test_a_second_pipeline_in_a_project_is_refused_at_once_in_the_cli_and_the_app(project, capsys):
    """One pipeline at a time: a second (another `acm pipeline run`, or the app's a) is refused before
    it runs any stage, where it used to fetch a corpus again and fail on a lock it never expected."""
    from core.locks import Flock

    cfg = config.load(project / "acm.toml")
    with Flock(cfg.locations.pipeline_lock) as first:
        assert first.try_acquire()  # as the first pipeline holds it
        assert cli.main(["-c", str(project / "acm.toml"), "pipeline", "run"]) == 2
        assert capsys.readouterr().err.startswith("acm: error: a pipeline is running in this project already")
        app = AcmApp(project / "acm.toml")
        async with app.run_test(size=(100, 40), notifications=True) as pilot:
            await pilot.press("1", "a")
            await notified(pilot, "a pipeline is running in this project already")
            await wait_until(pilot, lambda: app.query_one("#setup-pane").step_cancel is None)
    assert not cfg.locations.corpus_manifest("language").exists()  # no stage ran

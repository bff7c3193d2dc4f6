from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from core import cli, config, runs
from core.errors import AcmError
from core.generate.batch import generate_batch
from core.generate.decode import generate_text, load_model, stream_generate
from core.generate.evaluate import distinct_n, evaluate_run
from core.generate.sampling import (
    SamplingParams,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    sample,
)
from core.generate.verdicts import shellcheck_errors, shellcheck_path
from core.runs.writer import in_use
from core.tokenizer.bpe import BOS_ID
from tests.helpers import SteppingClock, edit_state, set_weight


@pytest.fixture(scope="module")
def lm(model_template):
    return load_model(config.load(model_template / "acm.toml"))


def test_loads_the_finetuned_best_by_default(lm):
    assert (lm.run, lm.stage, lm.step) == ("m", "finetune", 10)


def test_greedy_streaming_equals_full_forward_argmax(lm):
    prompt = "#!/bin/bash\n"
    text, last = generate_text(lm, prompt, SamplingParams(temperature=0, max_tokens=12))
    ids = [BOS_ID] + lm.tokenizer.encode(prompt)
    for _ in range(12):  # the slow way: a full forward pass per token, no cache
        nxt = int(mx.argmax(lm.model(mx.array([ids]))[0, -1]).item())
        if nxt == 3:
            break
        ids.append(nxt)
    expected = lm.tokenizer.decode(ids[1 + len(lm.tokenizer.encode(prompt)):])
    assert text == expected and last.finish_reason in ("length", "eos")


def test_seed_makes_sampling_repeatable(lm):
    p = SamplingParams(temperature=1.0, top_k=50, max_tokens=20, seed=7)
    a, _ = generate_text(lm, "echo", p)
    b, _ = generate_text(lm, "echo", p)
    c, _ = generate_text(lm, "echo", SamplingParams(**{**p.__dict__, "seed": 8}))
    assert a == b and a != c


def test_filters():
    lp = mx.log(mx.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    keep = lambda x: np.isfinite(np.array(x)).tolist()  # noqa: E731
    assert keep(filter_top_k(lp, 2)) == [True, True, False, False, False]
    assert keep(filter_top_p(lp, 0.7)) == [True, True, False, False, False]
    assert keep(filter_top_p(lp, 0.1)) == [True, False, False, False, False]  # the top token always stays
    assert keep(filter_min_p(lp, 0.4)) == [True, True, False, False, False]
    greedy = sample(mx.array([0.1, 3.0, 0.2]), SamplingParams(temperature=0), None, mx.random.key(0))
    assert greedy.item() == 1
    penalised = sample(mx.array([0.1, 3.0, 2.9]), SamplingParams(temperature=0, repetition_penalty=1.5),
                       mx.array([1]), mx.random.key(0))
    assert penalised.item() == 2
    draws = {sample(mx.array([0.0, 0.0, -50.0]), SamplingParams(temperature=1.0), None, mx.random.key(i)).item()
             for i in range(40)}
    assert draws == {0, 1}


def test_stop_strings_and_long_prompts(lm):
    text, last = generate_text(lm, "#!/bin/bash\n", SamplingParams(temperature=0, max_tokens=60, stop=("e",)))
    assert "e" not in text and last.finish_reason in ("stop", "eos", "length")
    long_prompt = "echo hello world\n" * 200  # far beyond the 128-token context
    chunks = list(stream_generate(lm, long_prompt, SamplingParams(temperature=0, max_tokens=300)))
    assert any("cut to its last" in c.notice for c in chunks)
    assert chunks[-1].finish_reason in ("context", "eos")
    batch, _ = generate_batch(lm, [long_prompt, "#!/bin/bash\n"], SamplingParams(temperature=0, max_tokens=4))
    assert "cut to its last" in batch[0].notice and batch[1].notice == ""  # a batch says it too, row by row


def test_evaluate_compares_pretrain_and_finetune(with_model):
    cfg = config.load(with_model / "acm.toml")
    results = evaluate_run(cfg, samples=3, max_tokens=30)
    assert set(results["stages"]) == {"pretrain", "finetune", "finetune+checked"}
    for r in results["stages"].values():
        assert r["language"]["val_loss"] > 0 and r["code"]["perplexity"] > 1
        g = r["code_generation"]
        assert 0 <= g["parse_rate"] <= 1 and 0 < g["distinct_2"] <= 1 and g["mean_tokens"] > 0
        assert g["samples"] == 3 and 0 <= g["truncated"] <= 1 and g["shellcheck_clean"] is not None
        complete = [e for e in r["examples"] if e["complete"]]
        assert all(e["verdict"].endswith("complete" if e["complete"] else "truncated") for e in r["examples"])
        assert (g["parse_rate_complete"] is None) == (not complete and g["truncated"] == 1)
    saved = json.loads((cfg.runs_dir / "m" / "eval.json").read_text())
    assert saved["stages"]["finetune"]["step"] == 10
    assert not saved["cut"] and saved["time_budget"] is None  # no budget: every sample and batch asked for
    assert all(r["code_generation"]["samples_asked"] == 3 and r["code"]["batches"] == r["code"]["batches_asked"] == 2
               for r in saved["stages"].values())
    assert distinct_n([[1, 2, 1, 2]], 2) == round(2 / 3, 4)


def test_cli_generate_json_gives_each_script_apart(with_model, capsys):
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "generate", "#!/bin/bash\n", "--n", "2", "--max-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone: each script apart
    assert (out["run"], out["stage"], out["asked"], out["stopped"]) == ("m", "finetune", 2, False)
    assert [(s["prompt"], s["tried"], type(s["parses"])) for s in out["scripts"]] == [("#!/bin/bash\n", 1, bool)] * 2
    assert cli.main(["-c", c, "generate", "#!/bin/bash\n", "--syntax-check", "--candidates", "4", "--max-tokens", "8",
                     "--json"]) == 0
    assert [s["tried"] for s in json.loads(capsys.readouterr().out)["scripts"]] == [4]
    long_prompt = "echo hello world\n" * 200  # beyond the context: cut, and said so
    assert cli.main(["-c", c, "generate", long_prompt, "--n", "2", "--max-tokens", "4"]) == 0
    assert " ".join(capsys.readouterr().err.split()).count("cut to its last") == 1  # once for the batch
    assert cli.main(["-c", c, "generate", long_prompt, "--max-tokens", "4", "--json"]) == 0
    assert "cut to its last" in json.loads(capsys.readouterr().out)["scripts"][0]["prompt_notice"]


def test_cli_generate_chat_eval_export(with_model, capsys, tmp_path):
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "generate", "-e", "#!/bin/bash\\n", "--max-tokens", "8", "--temp", "0"]) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())  # the console wraps
    assert captured.out.startswith("#!/bin/bash\n") and "tok/s" in err
    assert "parses" in err and "shellcheck error" in err and ("truncated" in err or "complete" in err)
    assert cli.main(["-c", c, "generate", "#!/bin/bash\n", "--n", "3", "--max-tokens", "8"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert all(f"── {i}/3" in err for i in (1, 2, 3))
    assert cli.main(["-c", c, "generate", "#!/bin/bash\n", "--syntax-check", "--candidates", "4",
                     "--max-tokens", "8"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "── 1/1" in err and "4 tried" in err
    r = subprocess.run([sys.executable, "-m", "core.cli", "-c", c, "chat", "--max-tokens", "5"],
                       input="echo\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "5 tokens" in r.stderr
    assert cli.main(["-c", c, "eval", "--samples", "2", "--max-tokens", "10", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["stages"]) == {"pretrain", "finetune", "finetune+checked"}
    assert cli.main(["-c", c, "export", "m", "--to", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "model.safetensors").exists() and (tmp_path / "e" / "tokenizer_config.json").exists()


def test_weights_a_generation_cannot_use_are_one_line_never_sampled_noise(with_model, capsys):
    """A checkpoint of a diverged stage (NaN weights) is refused by generate, eval and export alike,
    and one whose weights float16 cannot hold is refused where it would be decoded in float16."""
    c = str(with_model / "acm.toml")
    set_weight(with_model, 70_000.0)
    assert cli.main(["-c", c, "generate", "x", "--max-tokens", "2", "--dtype", "float16"]) == 2
    assert "has weights up to 70,0" in capsys.readouterr().err
    assert cli.main(["-c", c, "generate", "x", "--max-tokens", "2", "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    set_weight(with_model, float("nan"))  # the fine-tune's best
    for argv in (["generate", "x", "--max-tokens", "2"], ["generate", "--json", "--n", "2", "x"]):
        assert cli.main(["-c", c, *argv]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("acm: error: ") and "holds NaN or infinite weights (its training diverged)" in err
        assert len(err.splitlines()) == 1 and out == ""
    assert cli.main(["-c", c, "generate", "x", "--max-tokens", "2", "--stage", "pretrain"]) == 0
    capsys.readouterr()
    assert cli.main(["-c", c, "eval", "--samples", "1", "--max-tokens", "2", "--json"]) == 0  # the other stage
    results = json.loads(capsys.readouterr().out)
    assert set(results["stages"]) == {"pretrain"}
    assert "finetune: not evaluated, " in results["passed_over"][0] and "holds NaN" in results["passed_over"][0]


def test_an_evaluation_without_the_project_s_tokenizer_says_it_is_missing_or_damaged(with_model, capsys):
    """The run's own copy still decodes, but the shards are the project tokenizer's: what is wrong
    with that one is said, not that the run had another tokenizer."""
    tok = config.load(with_model / "acm.toml").locations.tokenizer_file
    good = tok.read_bytes()
    for state, says in ((None, f"the project's tokenizer {tok} is missing (acm tokenizer train makes one"),
                        (b"garbage", "the project's tokenizer is damaged (")):
        tok.unlink(missing_ok=True)
        if state is not None:
            tok.write_bytes(state)
        assert cli.main(["-c", str(with_model / "acm.toml"), "eval", "--samples", "1", "--max-tokens", "2"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"acm: error: {says}") and len(err.splitlines()) == 1, err
    tok.write_bytes(good)


def test_json_output_is_strict_json_a_diverged_loss_null(with_model, capsys):
    """`NaN` is Python's, no JSON reader's: a loss a diverged stage recorded prints as null."""
    from core.paths import Paths

    run = with_model / "runs" / "m"
    with open(Paths.metrics(run, "pretrain"), "a") as f:
        f.write('{"type": "metrics", "stage": "pretrain", "step": 21, "tokens_seen": 1, "loss": NaN}\n')
        f.write('{"type": "eval", "stage": "pretrain", "step": 21, "val_loss": Infinity}\n')
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs", "metrics", "m", "--stage", "pretrain", "--json"]) == 0
    records = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    diverged = {r["type"]: r for r in records if r["step"] == 21}
    assert diverged["metrics"]["loss"] is None and diverged["eval"]["val_loss"] is None
    with open(Paths.metrics(run, "pretrain"), "a") as f:  # a resume trains step 21 again, and reports it anew
        f.write('{"type": "metrics", "stage": "pretrain", "step": 21, "tokens_seen": 1, "loss": 4.5}\n')
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs", "metrics", "m", "--stage", "pretrain", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    steps = [(r["type"], r["step"]) for r in records]
    assert len(steps) == len(set(steps)) and [r["loss"] for r in records if r["step"] == 21 and "loss" in r] == [4.5]
    assert [s for t, s in steps if t == "metrics"] == sorted(s for t, s in steps if t == "metrics")


def test_no_checkpoint_is_one_line(prepared, capsys):
    assert cli.main(["-c", str(prepared / "acm.toml"), "generate", "x"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_a_checkpoint_whose_state_is_damaged_is_named_not_called_missing(with_model, capsys):
    c = str(with_model / "acm.toml")
    cks = sorted((with_model / "runs" / "m" / "pretrain" / "checkpoints").glob("step-*"))
    (cks[-1] / "state.json").write_text("{damaged")
    latest = ["--stage", "pretrain", "--checkpoint", "latest"]
    assert cli.main(["-c", c, "generate", "x", *latest, "--max-tokens", "2"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    said = "passed over as damaged (no readable state.json):"
    assert f"{said} {cks[-1].name}; using m/pretrain {cks[-2].name}" in err
    assert cli.main(["-c", c, "export", "m", *latest, "--to", str(with_model / "e")]) == 0
    assert f"{said} {cks[-1].name};" in " ".join(capsys.readouterr().err.split())
    for ck in (with_model / "runs" / "m" / "finetune" / "checkpoints").glob("step-*"):
        (ck / "state.json").write_text("{}")
    assert cli.main(["-c", c, "export", "--to", str(with_model / "e2")]) == 0  # no run, no stage named
    err = " ".join(capsys.readouterr().err.split())
    assert f"{said} m/finetune: step-0000010; {cks[-1].name}; using m/pretrain" in err
    for ck in cks:
        (ck / "state.json").unlink()
    assert cli.main(["-c", c, "generate", "x", "--stage", "pretrain"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{cks[-1].name} and {len(cks) - 1} more have a missing or damaged state.json" in err
    assert "no readable checkpoint in" in err and "train a model first" not in err


def test_a_checkpoint_pruned_while_it_is_read_is_chosen_again_not_called_damaged(with_model, monkeypatch, capsys):
    """The run's training keeps its latest checkpoints only: one an evaluation or a generation chose
    can go while its weights are read. The choice is made again (the one the pruning kept)."""
    from core.runs import checkpoint

    cks = sorted((with_model / "runs" / "m" / "pretrain" / "checkpoints").glob("step-*"))
    real, pruned = checkpoint.load_weights, []

    def pruned_while_read(ck):  # as the training's prune, in another process, at that moment
        if not pruned:
            pruned.append(ck.path)
            shutil.rmtree(ck.path)
        return real(ck)

    monkeypatch.setattr(checkpoint, "load_weights", pruned_while_read)
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "generate", "x", "--stage", "pretrain", "--checkpoint", "latest",
                     "--max-tokens", "2"]) == 0
    assert pruned == [cks[-1]] and f"m / pretrain / step 10 ({cks[-2].name}, " in capsys.readouterr().err
    moved = []

    def gone_each_time_it_is_read(ck):  # each choice pruned as it is read (the one before it back)
        if moved:
            aside = moved.pop()
            aside.rename(aside.with_name(moved.pop()))
        moved[:] = [ck.path.name, ck.path.rename(ck.path.with_name("aside"))]
        return real(ck)

    monkeypatch.setattr(checkpoint, "load_weights", gone_each_time_it_is_read)
    assert cli.main(["-c", c, "generate", "x", "--max-tokens", "2"]) == 2  # the fine-tune's, then the pretrain's
    err = capsys.readouterr().err
    assert "was removed while it was read (its run is training and keeps train.finetune.keep_last" in err
    assert "damaged" not in err and err.count("\n") == 1


def test_a_checkpoint_whose_step_is_no_checkpoint_s_is_passed_over(with_model, capsys):
    """A negative step in state.json: that checkpoint is damaged, passed over, and named where it is
    the only one."""
    c, run = str(with_model / "acm.toml"), with_model / "runs" / "m"
    only, = sorted((run / "finetune" / "checkpoints").glob("step-*"))
    edit_state(only, "step", -5)
    assert cli.main(["-c", c, "generate", "x", "--run", "m", "--max-tokens", "2"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"passed over as damaged (no readable state.json): m/finetune: {only.name}; using m/pretrain" in err
    assert cli.main(["-c", c, "export", "m", "--to", str(with_model / "e")]) == 0
    assert "m/finetune: step-0000010; using m/pretrain" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["-c", c, "generate", "x", "--run", "m", "--stage", "finetune"]) == 2
    err = capsys.readouterr().err
    assert f"{only} has a missing or damaged state.json" in " ".join(err.split()) and "acm.toml" not in err
    shutil.rmtree(run / "finetune" / "checkpoints")  # a run with a pretrain only: the fine-tune is what is missing
    assert cli.main(["-c", c, "generate", "x", "--run", "m", "--stage", "finetune"]) == 2
    assert capsys.readouterr().err == ("acm: error: run m has no finetune checkpoint: train it first "
                                       "(acm train finetune --run m)\n")


@pytest.mark.parametrize("key, value, said", [
    ("config.model.preset", "huge", "model.preset = 'huge' is not valid"),
    ("config.tokenizer.vocab_size", 7, "tokenizer.vocab_size = 7 is out of range")])
def test_settings_a_checkpoint_was_trained_with_that_do_not_load_are_blamed_on_its_state_json(with_model, capsys,
                                                                                           key, value, said):
    """The model is built from them: one line naming that state.json, never acm.toml."""
    c, run = str(with_model / "acm.toml"), with_model / "runs" / "m"
    only, = sorted((run / "finetune" / "checkpoints").glob("step-*"))
    edit_state(only, key, value)
    for command in (["generate", "x", "--run", "m", "--max-tokens", "2"],
                    ["export", "m", "--to", str(with_model / "e")]):
        assert cli.main(["-c", c, *command]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"acm: error: {only / 'state.json'}: ") and said in err and "acm.toml" not in err


@pytest.mark.parametrize("key, value", [("config.train.finetune.grad_accum", 5000),
                                        ("config.train.finetune.batch_size", 0), ("config.eval", 3)])
def test_a_checkpoint_whose_training_settings_are_out_of_today_s_bounds_still_loads(with_model, capsys, key, value):
    """Only the model's settings (model, tokenizer) build it: a training setting beyond a bound added
    since, or damaged, leaves the checkpoint readable by generate and export."""
    c, run = str(with_model / "acm.toml"), with_model / "runs" / "m"
    only, = sorted((run / "finetune" / "checkpoints").glob("step-*"))
    args = ["-c", c, "generate", "-e", "#!/bin/bash\\n", "--run", "m", "--max-tokens", "4", "--temp", "0"]
    assert cli.main(args) == 0
    before = capsys.readouterr().out
    edit_state(only, key, value)
    assert cli.main(args) == 0
    assert capsys.readouterr().out == before
    assert cli.main(["-c", c, "export", "m", "--to", str(with_model / "e")]) == 0


def test_a_run_keeps_its_tokenizer_through_a_retrained_one(with_model, capsys):
    """Each stage keeps a copy of the tokenizer it trained with: generation from a run goes on with it
    after the project's tokenizer changes; a run without its copy is refused in one line."""
    c, run = str(with_model / "acm.toml"), with_model / "runs" / "m"
    project_tok = with_model / "data" / "tokenizer" / "tokenizer.json"
    for stage in ("pretrain", "finetune"):
        assert (run / stage / "tokenizer.json").read_bytes() == project_tok.read_bytes()
    args = ["-c", c, "generate", "-e", "#!/bin/bash\\n", "--max-tokens", "8", "--temp", "0"]
    assert cli.main(args) == 0
    before = capsys.readouterr().out
    project_tok.write_text(json.dumps(json.loads(project_tok.read_text()), indent=1))  # another file, so "retrained"
    assert cli.main(args) == 0
    assert capsys.readouterr().out == before
    assert cli.main(["-c", c, "eval", "--samples", "1", "--max-tokens", "4"]) == 2
    assert "trained with another tokenizer" in " ".join(capsys.readouterr().err.split())
    resume = ["-c", c, "train", "finetune", "--run", "m", "--resume", "--steps", "11"]
    assert cli.main(resume) == 2  # said before the shards the retrained tokenizer made stale
    err = " ".join(capsys.readouterr().err.split())
    assert (f"was trained with another tokenizer than the project's (retrained since): copy its run's "
            f"{run / 'finetune' / 'tokenizer.json'} back to {project_tok} and run `acm prepare --force`") in err
    kept = project_tok.read_bytes()
    shutil.copy(run / "finetune" / "tokenizer.json", project_tok)  # the way back it gives
    assert cli.main(["-c", c, "prepare", "--force"]) == 0 and cli.main(resume) == 0
    capsys.readouterr()
    project_tok.write_bytes(kept)
    (run / "finetune" / "tokenizer.json").write_text("{damaged")
    assert cli.main(args + ["--stage", "finetune"]) == 0  # the pretrain's copy is the same tokenizer
    assert capsys.readouterr().out == before
    (run / "pretrain" / "tokenizer.json").unlink()
    assert cli.main(args + ["--stage", "finetune"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"nor a readable copy in its run holds ({run / 'finetune' / 'tokenizer.json'};" in err


def test_chat_refuses_a_line_that_is_not_utf8_and_goes_on(with_model):
    r = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(with_model / "acm.toml"), "chat", "--max-tokens",
                        "5"], input=b"caf\xe9\xff\necho\n", capture_output=True, timeout=120,
                       env=os.environ | {"PYTHONIOENCODING": "utf-8:strict"})  # as a UTF-8 locale reads stdin
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "acm: error: the prompt is not UTF-8: the byte 0xe9" in err
    assert "5 tokens" in err and "Traceback" not in err  # the next line was answered


def blocked_mask(task: Path) -> str:
    """A thread's blocked signals, as Linux's /proc shows them (hexadecimal)."""
    return next(line.split()[1] for line in (task / "status").read_text().splitlines() if line.startswith("SigBlk:"))


def test_a_polite_kill_ends_a_chat_where_ctrl_c_only_clears_the_line(with_model):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(with_model / "acm.toml"), "chat"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.read(2) == "> "  # waiting at its first prompt
        # only the main thread takes Ctrl-C, SIGTERM and SIGHUP: the engine's, MLX's and those that
        # imports started (NumPy's BLAS pool) block them
        wanted = (1 << signal.SIGINT - 1) | (1 << signal.SIGTERM - 1) | (1 << signal.SIGHUP - 1)
        tasks = Path(f"/proc/{proc.pid}/task")
        others = [t for t in tasks.iterdir() if t.name != str(proc.pid)]
        assert others and all(int(blocked_mask(t), 16) & wanted == wanted for t in others)
        proc.send_signal(signal.SIGTERM)  # at once, before or while it reads: the chat ends
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
        proc.communicate()


def test_ctrl_c_in_chat_stops_the_generation_before_the_next_prompt(with_model, capsys):
    import signal
    import threading
    import time

    from core.cli.generate import chat_turn
    from core.engine import Engine

    engine = Engine()
    # Ctrl-C as `acm chat` has it (an app test's event loop may have left a handler of its own)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        lm = engine.call(load_model, config.load(with_model / "acm.toml"))

        stop = threading.Event()

        def waiting_in_the_turn() -> bool:  # the main thread blocks in chat_turn, on its job's result
            frame, names = sys._current_frames().get(threading.main_thread().ident), []
            while frame is not None:
                names, frame = names + [frame.f_code.co_name], frame.f_back
            return "chat_turn" in names and names[0] == "wait"

        def ctrl_c_while_waiting():  # the user presses Ctrl-C while the turn waits for its tokens
            deadline = time.monotonic() + 60
            while not waiting_in_the_turn() and time.monotonic() < deadline:
                time.sleep(0.01)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            assert stop.wait(60)  # the turn's generation starts only once the Ctrl-C was taken

        engine.submit(ctrl_c_while_waiting)
        chat_turn(engine, lm, "#!/bin/bash\n", SamplingParams(temperature=0, max_tokens=100), stop)
        captured = capsys.readouterr()
        assert captured.out.rstrip().endswith("(stopped)") and "stop: cancelled" in captured.err
        assert engine.submit(time.monotonic).result(timeout=5)  # nothing of the turn still runs
    finally:
        signal.signal(signal.SIGINT, handler)
        engine.shutdown()


def test_the_first_ctrl_c_stops_generate_of_any_size_and_prints_what_it_has(with_model, capsys):
    """`acm generate --n 64` waits for its batch on the engine; the first Ctrl-C ends the batch at
    the next token, its candidates are printed, and the command exits 130 (not at the end, not 0)."""
    import signal
    import threading
    import time

    def waiting_in_generate() -> bool:  # the main thread waits for the batch's result (the model loaded)
        frame, names = sys._current_frames().get(threading.main_thread().ident), []
        while frame is not None:
            names, frame = names + [frame.f_code.co_name], frame.f_back
        batch = "wait_or_stop" in names or ("call" in names and "_loaded" not in names)  # (main's Engine.call)
        return "cmd_generate" in names and batch and names[0] == "wait" and decoding()

    def decoding() -> bool:  # the engine is inside the batch's decoding: a stop before it would print nothing
        for frame in sys._current_frames().values():
            while frame is not None:
                if frame.f_code.co_name == "decode_batch":
                    return True
                frame = frame.f_back
        return False

    def ctrl_c_while_waiting():
        deadline = time.monotonic() + 60
        while not waiting_in_generate() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_while_waiting, daemon=True).start()
        rc = cli.main(["-c", str(with_model / "acm.toml"), "generate", "#!/bin/bash\\n", "-e", "--n", "64",
                       "--max-tokens", "100000", "--temp", "1"])
    finally:
        signal.signal(signal.SIGINT, handler)
    err = capsys.readouterr().err
    assert rc == 130 and "(stopped: 64 of 64 printed)" in err and "── 64/64" in err


def test_a_run_under_evaluation_is_neither_renamed_nor_deleted_and_its_results_stay_in_it(with_model, capsys):
    cfg = config.load(with_model / "acm.toml")
    run, c = cfg.runs_dir / "m", str(with_model / "acm.toml")
    refused = []

    def meanwhile(progress) -> None:  # another command, while the evaluation reads the run
        if not refused:
            refused.append((cli.main(["-c", c, "runs", "rename", "m", "m2"]),
                            cli.main(["-c", c, "runs", "delete", "m", "--yes"]),
                            cli.main(["-c", c, "eval", "--samples", "1", "--max-tokens", "2"])))

    evaluate_run(cfg, report=meanwhile, samples=1, max_tokens=4)
    err = capsys.readouterr().err
    assert refused == [(2, 2, 2)] and err.count("run m is being evaluated: it can be") == 2
    assert "acm: error: run m is being evaluated already (another acm eval, or the app's e)" in err  # one writer
    assert (run / "eval.json").is_file() and not (cfg.runs_dir / "m2").exists()
    (run / "use.lock").unlink()  # as in a run no evaluation has held
    modified = run.stat().st_mtime_ns - 10**9  # a second ago: a lock made now would show
    os.utime(run, ns=(modified, modified))
    with in_use(run, "evaluated"):  # an evaluation that writes nothing (cancelled at once)
        assert (run / "use.lock").exists()
    assert run.stat().st_mtime_ns == modified  # the lock it took changes no date shown
    assert cli.main(["-c", c, "runs", "rename", "m", "m2"]) == 0  # once it has ended
    assert (cfg.runs_dir / "m2").stat().st_mtime_ns == modified  # the lock taken for it changes no date shown
    with pytest.raises(AcmError, match="run m was renamed or deleted as it was to be evaluated"):
        with in_use(run, "evaluated"):  # the old name, after the rename
            pass
    assert not run.exists()  # nothing made again under the old name


def test_ctrl_c_stops_an_evaluation_at_its_next_token_and_writes_no_results(with_model, capsys):
    """`acm eval` waits for the evaluation on the engine: Ctrl-C (or SIGTERM) cancels it there, so
    it ends at the next token rather than after every part, and eval.json is not written."""
    import signal
    import threading
    import time

    from core.paths import Paths

    def decoding_while_waiting() -> bool:
        frames = sys._current_frames()
        names = []
        frame = frames.get(threading.main_thread().ident)
        while frame is not None:
            names, frame = names + [frame.f_code.co_name], frame.f_back
        engine_decodes = False
        for ident, frame in frames.items():
            while frame is not None and ident != threading.main_thread().ident:
                engine_decodes = engine_decodes or frame.f_code.co_name == "decode_batch"
                frame = frame.f_back
        return "cmd_eval" in names and "wait_for" in names and engine_decodes

    def ctrl_c_while_decoding():
        deadline = time.monotonic() + 60
        while not decoding_while_waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    results = Paths.eval_results(config.load(with_model / "acm.toml").runs_dir / "m")
    assert not results.exists()
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_while_decoding, daemon=True).start()
        rc = cli.main(["-c", str(with_model / "acm.toml"), "eval", "--samples", "256", "--max-tokens", "4096"])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert rc == 130 and capsys.readouterr().err.endswith("acm: interrupted\n") and not results.exists()


def test_a_batch_of_prompts_of_different_lengths_decodes_as_each_alone(with_model):
    lm = load_model(config.load(with_model / "acm.toml"))
    prompts = ["#!/bin/bash\n", "#!/usr/bin/env bash\nset -euo pipefail\necho start\n", "x"]
    params = SamplingParams(temperature=0, max_tokens=12)
    batch, stats = generate_batch(lm, prompts, params)
    for prompt, row in zip(prompts, batch):
        alone, last = generate_text(lm, prompt, params)
        assert row.text == alone and row.finish_reason == last.finish_reason
    assert stats.generated == sum(len(r.tokens) + (r.finish_reason == "eos") for r in batch)


def test_batched_sampling_rows_differ_and_stop_strings_end_their_row(with_model):
    from core.generate.batch import generate_batch

    lm = load_model(config.load(with_model / "acm.toml"))
    batch, _ = generate_batch(lm, ["#!/bin/bash\n"] * 8, SamplingParams(temperature=1.0, max_tokens=20, seed=3))
    assert len({r.text for r in batch}) > 1  # independent samples from one generator
    greedy = generate_text(lm, "#!/bin/bash\n", SamplingParams(temperature=0, max_tokens=20))[0]
    stop = greedy[3:6]
    rows, _ = generate_batch(lm, ["#!/bin/bash\n"] * 2, SamplingParams(temperature=0, max_tokens=20, stop=(stop,)))
    assert all(r.finish_reason == "stop" and r.text == greedy[: greedy.index(stop)] for r in rows)


def test_syntax_checked_sampling_returns_a_parsing_candidate_when_there_is_one(with_model):
    from core.generate.checked import checked_generate

    lm = load_model(config.load(with_model / "acm.toml"))
    prompts = ["#!/bin/bash\n", "echo ("]
    chosen = checked_generate(lm, prompts, SamplingParams(temperature=1.0, max_tokens=24, seed=5), 6, 5.0)
    assert [c.sample.prompt for c in chosen] == prompts
    for c in chosen:  # judged in order until a clean and complete one: the rest are not looked at
        assert 1 <= c.tried <= 6 and sum(c.rejected.values()) == c.tried - 1
        assert c.tried == 6 or (c.verdict.clean and c.verdict.complete)
        assert c.verdict.parses or c.rejected["does not parse"] == 5  # one that parses whenever one did


def test_a_bf16_model_is_served_in_bf16_and_exported_from_its_float32_weights(prepared):
    from mlx.utils import tree_flatten

    from core.train.trainer import train_stage

    cfg = config.load(prepared / "acm.toml")
    cfg.model.compute_dtype = "bfloat16"
    train_stage(cfg, "pretrain", cfg.runs_dir / "b", max_steps=2)
    served = load_model(cfg, "b")
    assert {v.dtype for _, v in tree_flatten(served.model.parameters())} == {mx.bfloat16}
    master = load_model(cfg, "b", master_weights=True)
    assert {v.dtype for _, v in tree_flatten(master.model.parameters())} == {mx.float32}
    text, last = generate_text(served, "#!/bin/bash\n", SamplingParams(temperature=0, max_tokens=4))
    assert last.generated >= 1


def test_an_evaluation_budget_bounds_the_samples_never_cuts_one_and_says_so(with_model, capsys):
    from core.cli.generate import print_eval_table
    from core.generate.cut import cut_note

    cfg = config.load(with_model / "acm.toml")
    cfg.eval.samples, cfg.eval.max_tokens, cfg.eval.time = 24, 8, "1s"
    results = evaluate_run(cfg, clock=SteppingClock(10.0))  # each part's slot is spent at once: one batch each
    for row in results["stages"].values():  # whole batches of 8 prompts (of 3 candidates, checked), at least one
        assert (row["code_generation"]["samples"], row["code_generation"]["samples_asked"]) == (8, 24)
        assert [(row[k]["batches"], row[k]["batches_asked"]) for k in ("language", "code")] == [(1, 2), (1, 2)]
    assert results["cut"] and results["time_budget"] == "1s"
    saved = json.loads((cfg.runs_dir / "m" / "eval.json").read_text())
    assert saved["cut"] and saved["stages"] == results["stages"]
    note = ("cut by its time budget (1s): 8 samples a checkpoint instead of 24, "
            "validation on 1 batch a split instead of 2")
    assert cut_note(saved) == note
    print_eval_table(saved)
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("│ 8/24 │") == 3 and note in out


def test_a_cut_evaluation_is_marked_wherever_it_is_listed(with_model):
    """Written before evaluations recorded what each part asked for, an eval.json still shows its
    samples' cut, from the samples the evaluation asked for; one with all of them shows none."""
    from core.generate.cut import cut_note
    from core.generate.export.card import _evaluation
    from core.pipeline.overview import pipeline_status
    from core.pipeline.tables import EVAL_COLUMNS, eval_rows

    row = {"step": 10, "language": {"perplexity": 9.0}, "code": {"perplexity": 7.0},
           "code_generation": {"samples": 16, "parse_rate": 0.5, "distinct_2": 0.8}}
    older = {"run": "m", "samples": 64, "stages": {"pretrain": row, "finetune": row}}
    (with_model / "runs" / "m" / "eval.json").write_text(json.dumps(older))
    note = "cut by its time budget: 16 samples a checkpoint instead of 64"
    assert cut_note(older) == note
    assert [dict(zip(EVAL_COLUMNS, r))["samples"] for r in eval_rows(older)] == ["16/64", "16/64"]
    card = "\n".join(_evaluation({"eval": older}))
    assert "| finetune (step 10) | 16/64 | 9.00 |" in card and f"**C{note[1:]}.**" in card
    (status,) = [s for s in pipeline_status(config.load(with_model / "acm.toml")) if s.name == "evaluate"]
    assert status.detail == f"run m: pretrain: bash parses 50%, finetune: bash parses 50%; {note}"
    whole = older | {"samples": 16}
    assert cut_note(whole) == "" and "Cut by" not in "\n".join(_evaluation({"eval": whole}))
    drawn = {**row, "code_generation": {**row["code_generation"], "samples": 64}}
    partly = {"run": "m", "samples": 64, "stages": {"pretrain": drawn, "finetune": row}}  # one row cut: named
    assert cut_note(partly) == "cut by its time budget: finetune: 16 samples instead of 64"
    split = {"perplexity": 7.0, "batches": 2, "batches_asked": 2}
    short = {**drawn, "language": split, "code": {**split, "batches": 1}}
    checked = {"run": "m", "samples": 64, "stages": {"pretrain": {**drawn, "language": split, "code": split},
                                                     "finetune": short, "finetune+checked": short}}
    assert cut_note(checked) == "cut by its time budget: validation on finetune code: 1 batch instead of 2"
    assert cut_note({"stages": []}).startswith("whether a time budget cut this evaluation is unknown")


def test_an_evaluation_says_which_stage_it_left_out_as_damaged(with_model):
    from core.errors import AcmError
    from core.generate.cut import cut_note

    cfg = config.load(with_model / "acm.toml")
    cfg.eval.samples, cfg.eval.max_tokens = 2, 4
    run = with_model / "runs" / "m"
    for ck in (run / "finetune" / "checkpoints").glob("step-*"):
        (ck / "state.json").write_text("[]")
    results = evaluate_run(cfg)
    assert set(results["stages"]) == {"pretrain", "pretrain+checked"}
    assert cut_note(results) == "finetune: not evaluated, no readable checkpoint (step-0000010: damaged state.json)"
    shutil.rmtree(run / "finetune" / "checkpoints")  # gone: the stage trained all the same
    assert cut_note(evaluate_run(cfg)) == ("finetune: not evaluated, it is done but holds no checkpoint "
                                           f"({run / 'finetune' / 'checkpoints'} is empty or gone)")
    runs.write_status(run, "finetune", "failed", step=3, total=10)
    assert cut_note(evaluate_run(cfg)) == "finetune: not evaluated, it failed before its first checkpoint"
    for ck in (run / "pretrain" / "checkpoints").glob("step-*"):
        (ck / "state.json").unlink()
    with pytest.raises(AcmError, match="no readable checkpoint in run m"):
        evaluate_run(cfg)


def test_an_evaluations_progress_names_the_part_under_way_and_moves_as_it_decodes():
    """Counted in rows x tokens (what its time goes to), each part said as it begins: counting
    parts named the one that had ended and held its ETA still through the longest."""
    from core.generate.evaluate import Decoding

    reports = []
    decoding = Decoding(reports.append, [4, 12], max_tokens=10, interval=0)
    said = lambda: (reports[-1].note, reports[-1].done, reports[-1].total)  # noqa: E731
    decoding.say("pretrain: code val loss")
    assert said() == ("pretrain: code val loss", 0, 160)
    stop = decoding.part(4, "pretrain: 4 samples", lambda: False, None)
    assert said() == ("pretrain: 4 samples", 0, 160)
    assert [stop(), stop(), stop()] == [False] * 3 and said() == ("pretrain: 4 samples", 12, 160)
    stop = decoding.part(12, "finetune: 4 x 3 syntax-checked", lambda: True, None)  # the batch ended early
    assert said() == ("finetune: 4 x 3 syntax-checked", 40, 160)
    assert stop() is True and said()[1] == 52
    decoding.finish()
    assert (reports[-1].done, reports[-1].finished) == (160, True)
    from core.generate.checked import Deadline

    decoding = Decoding(reports.append, [12], max_tokens=10, interval=0)  # a time budget: batches of 2 x 3
    stop = decoding.part(12, "finetune: 4 x 3 syntax-checked", lambda: False, Deadline(until=1.0, rows=2), 3)
    assert [stop(), stop()] == [False, False] and reports[-1].done == 12
    count = len(reports)
    decoding.finish()
    assert len(reports) == count + 2  # the jump to the end, then the finish: once each


def test_an_evaluation_under_a_time_budget_counts_the_work_its_pace_gets_done_in_time():
    """Its ETA says when the budget ends it, not when all the samples asked for would be done."""
    from core.generate.checked import Deadline
    from core.generate.evaluate import Decoding, Slots

    now = [0.0]
    reports = []
    slots = Slots(10.0, 1, clock=lambda: now[0])  # a budget of 10 s
    decoding = Decoding(reports.append, [12], max_tokens=10, interval=0, slots=slots)  # 120 rows x tokens asked
    stop = decoding.part(12, "finetune: 12 samples", lambda: False, Deadline(until=10.0, rows=2))
    for _ in range(5):  # 2 rows x tokens a second
        now[0] += 1.0
        stop()
    assert (reports[-1].done, reports[-1].total) == (10, 20)  # 5 s left at 2 a second: 10 more
    now[0] += 3.0  # slower: 12 in 8 s, 2 s left at 1.5 a second: 3 more
    stop()
    assert (reports[-1].done, reports[-1].total) == (12, 15)
    now[0] += 5.0  # the budget spent: one more batch owed, never shown as all done before the end
    stop()
    assert (reports[-1].done, reports[-1].total) == (14, 15)
    decoding.finish()  # the budget ended the part: what it cut was never asked
    assert (reports[-1].done, reports[-1].total, reports[-1].finished) == (14, 14, True)
    unbounded = Decoding(reports.append, [12], max_tokens=10, interval=0, slots=Slots(None, 1))
    unbounded.part(12, "finetune: 12 samples", lambda: False, None)()
    assert (reports[-1].done, reports[-1].total) == (12, 120)  # no budget: all that was asked


@pytest.mark.skipif(shellcheck_path() is None, reason="no shellcheck")
def test_shellcheck_counts_a_script_s_errors_read_from_its_input(tmp_path, monkeypatch):
    """shellcheck reads the script on its standard input: a named temporary copy of it was left in
    $TMPDIR by a process killed meanwhile. A stand-in shellcheck lists the temporary folder as it
    starts and finds it empty."""
    import stat
    import tempfile

    assert shellcheck_errors("#!/bin/bash\necho hi\n") == 0
    assert shellcheck_errors("#!/bin/bash\necho $((1 + ))\n") >= 1
    scratch, seen, stand_in = tmp_path / "tmp", tmp_path / "seen.txt", tmp_path / "shellcheck"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    stand_in.write_text(f'#!/bin/sh\nls -A "{scratch}" > "{seen}"\nexec "{shellcheck_path()}" "$@"\n')
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    assert shellcheck_errors("#!/bin/bash\necho $((1 + ))\n", program=str(stand_in)) >= 1
    assert seen.read_text() == ""


def test_a_stop_string_across_tokens_is_never_streamed_in_part(with_model):
    """A stop string that began in one token and ended in a later one: the stream had printed its
    beginning (`/nodejs/` for `js/no`, where `--json` gave `/node`). What may begin a stop string is
    held back until the next tokens tell; the stream cuts where the stop string begins, as the batch
    does."""
    lm = load_model(config.load(with_model / "acm.toml"))
    params = SamplingParams(temperature=1.0, max_tokens=60, seed=5)  # the same draws, stop string or not
    pieces = [c.text for c in stream_generate(lm, "#!/bin/bash\n", params) if c.text]
    whole = "".join(pieces)
    at = next(i for i in range(1, len(pieces)) if len(pieces[i - 1]) > 1 and pieces[i])  # a piece boundary
    start = sum(map(len, pieces[:at])) - 1
    stop = whole[start:start + 2]  # the last character of one piece and the first of the next
    chunks = list(stream_generate(lm, "#!/bin/bash\n", replace(params, stop=(stop,))))
    assert "".join(c.text for c in chunks) == whole[: whole.index(stop)] and chunks[-1].finish_reason == "stop"
    held = list(stream_generate(lm, "#!/bin/bash\n", replace(params, stop=(whole[-1] + "\x00",))))
    assert "".join(c.text for c in held) == whole  # held back, then given once no stop followed


def test_a_full_context_ends_the_stream_where_the_batch_and_the_exports_end(with_model):
    """With the context full, the stream gave one token more than `--json`, `--n` and the
    evaluation: the context holds the prompt and every new token, as a client of the exports feeds
    them."""
    from core.generate.batch import generate_batch

    lm = load_model(config.load(with_model / "acm.toml"))
    prompt = "echo hello world\n" * 200
    params = SamplingParams(temperature=0, max_tokens=300, repetition_penalty=1.0)
    chunks = list(stream_generate(lm, prompt, params))
    rows, _ = generate_batch(lm, [prompt], params)
    assert chunks[-1].finish_reason in ("context", "eos")
    assert "".join(c.text for c in chunks) == rows[0].text
    if chunks[-1].finish_reason == "context":
        assert chunks[-1].prompt_tokens + chunks[-1].generated == lm.model.shape.n_ctx


def test_one_token_is_said_in_the_singular_with_no_rate_two_with_one(with_model, capsys):
    """A rate is timed from the first token: one token has none (it read `1 tokens, 0.0 tok/s`)."""
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "generate", "x", "--max-tokens", "1", "--temp", "0"]) == 0
    said = capsys.readouterr().err
    assert "1 token, first token " in said and "tok/s" not in said
    assert cli.main(["-c", c, "generate", "x", "--max-tokens", "2", "--temp", "0"]) == 0
    assert re.search(r"2 tokens, [\d,.]+ tok/s, first token \d+ ms", capsys.readouterr().err)


def test_e_reads_the_stop_strings_escapes_as_the_prompt_s(with_model, capsys):
    """`--stop '\\n'` is the two characters as typed; with `-e`, a new line, as the Generate pane's
    stop box reads it."""
    c = str(with_model / "acm.toml")
    argv = ["-c", c, "generate", "-e", "#!/bin/bash\\n", "--max-tokens", "40", "--temp", "0", "--json", "--stop"]
    assert cli.main([*argv, "\\n"]) == 0
    escaped = json.loads(capsys.readouterr().out)["scripts"][0]
    assert cli.main([*argv, "\\\\n"]) == 0  # -e reads `\\n` as the two characters
    literal = json.loads(capsys.readouterr().out)["scripts"][0]
    assert "\n" not in escaped["text"] and escaped["finish_reason"] == "stop"
    assert escaped["complete"] and not literal["complete"]  # a script ended where its user said is complete
    assert literal["text"].startswith(escaped["text"]) and "\n" in literal["text"]

"""Live samples at validation checks (train.samples): generated, judged, recorded, bounded, and
harmless to training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import cli, config
from core.cli.progress import describe
from core.runs.events import Log, Sample, StageFollower, event_from_json
from core.train.samples import LiveSampler, sample_prompts
from core.train.trainer import train_stage
from tests.helpers import SteppingClock, losses


def train(project: Path, run: str, clock=None, **settings) -> list:
    """Train the fixture's pretrain stage with these train.* settings; the events it emitted."""
    cfg = config.load(project / "acm.toml")
    for key, value in settings.items():
        setattr(cfg.train, key, value)
    events = []
    train_stage(cfg, "pretrain", cfg.runs_dir / run, emit=events.append, **({"clock": clock} if clock else {}))
    return events


def test_checks_sample_with_verdicts_and_training_is_unchanged(prepared):
    sampled = train(prepared, "on", samples=2, sample_tokens=16, sample_share=1.0)
    samples = [e for e in sampled if isinstance(e, Sample)]
    assert [s.step for s in samples] == [10, 10, 20, 20, 30, 30, 40, 40]  # eval_every 10, 40 steps
    cfg = config.load(prepared / "acm.toml")
    assert [s.prompt for s in samples[:2]] == [t.prompt for t in cfg.eval.tasks[:2]]  # the first two eval tasks
    assert all(judged(s) for s in samples)
    costs = [e.text for e in sampled if isinstance(e, Log) and e.text.startswith("samples at step")]
    assert len(costs) == 4 and "of the stage so far" in costs[0]
    run = cfg.runs_dir / "on"
    assert [e for e in StageFollower(run, "pretrain").poll() if isinstance(e, Sample)] == samples

    plain = train(prepared, "off", samples=0)
    assert not any(isinstance(e, Sample) for e in plain)
    assert not (cfg.runs_dir / "off" / "pretrain" / "samples.jsonl").read_text()
    assert losses(run) == losses(cfg.runs_dir / "off")  # sampling draws nothing training uses


def judged(s: Sample) -> bool:
    """Every verdict given: parses, complete and relevant (the default prompts are tasks with an
    expectation), shellcheck's where installed, and the marks that show them."""
    given = all(isinstance(v, bool) for v in (s.parses, s.complete, s.relevant))
    linted = s.shellcheck_errors is None or s.shellcheck_errors >= 0
    return given and linted and s.seconds >= 0 and "parses" in s.marks() and "relevant" in s.marks()


def test_sampling_keeps_to_its_share_and_the_last_check_samples_anyway(prepared):
    events = train(prepared, "bounded", clock=SteppingClock(0.01), samples=1, sample_tokens=8, sample_share=1e-6)
    assert [e.step for e in events if isinstance(e, Sample)] == [40]  # the stage's last check (40 steps)
    skips = [e.text for e in events if isinstance(e, Log) and e.text.startswith("samples skipped")]
    assert len(skips) == 1 and "from step 10" in skips[0] and "train.sample_share" in skips[0]
    assert "reckoned at 1 s until one is measured" in skips[0] and "the stage's last check samples" in skips[0]


def test_an_early_stops_check_samples_whatever_the_share(prepared):
    cfg = config.load(prepared / "acm.toml")
    run = cfg.runs_dir / "early"
    train_stage(cfg, "pretrain", run, max_steps=4)
    ft = cfg.train.finetune  # learns nothing: checks at 2 (the best), 4 and 6, then an early stop
    ft.steps, ft.eval_every, ft.save_every, ft.patience, ft.learning_rate, ft.warmup_steps = 40, 2, 100, 2, 0.0, 0
    cfg.train.samples, cfg.train.sample_tokens, cfg.train.sample_share = 1, 8, 1e-6
    events = []
    assert train_stage(cfg, "finetune", run, emit=events.append, clock=SteppingClock(0.01)).step == 6
    assert [e.step for e in events if isinstance(e, Sample)] == [6]


def test_a_check_is_reckoned_at_the_last_ones_cost(project):
    cfg = config.load(project / "acm.toml")
    cfg.train.sample_share = 0.02
    sampler = LiveSampler(cfg, "pretrain", seed=0)
    assert not sampler.due(48.0) and sampler.due(49.0)  # the first check reckoned at 1 s: 2% of 50 s
    assert sampler.due(0.0, last_check=True)
    sampler.spent = sampler.last = 1.0
    assert not sampler.due(60.0)  # 1 s spent is under 2% of 60 s, but another 1 s would be over it
    assert sampler.due(99.0)  # 2 s of 100 s
    assert sampler.due(60.0, last_check=True)
    [skip] = sampler.check(None, {}, None, 30, 60.0)  # not due: nothing is decoded
    assert "from step 30: with this check's (about 1.00 s, as the last one) the sampling would take 2.00 s" in skip.text


def test_sample_prompts_cycle_the_setting_and_keep_task_expectations(project):
    cfg = config.load(project / "acm.toml")
    task = cfg.eval.tasks[3]
    cfg.train.samples, cfg.train.sample_prompts = 3, [task.prompt, "#!/bin/bash\n# anything\n"]
    prompts, expected = sample_prompts(cfg)
    assert prompts == [task.prompt, "#!/bin/bash\n# anything\n", task.prompt]
    assert expected[task.prompt].pattern == task.expect and "#!/bin/bash\n# anything\n" not in expected


def test_an_empty_sample_prompt_is_refused():
    with pytest.raises(config.ConfigError, match="train.sample_prompts holds an empty prompt"):
        config.from_dict({"train": {"sample_prompts": ["#!/bin/bash\n", " "]}})


def test_the_cli_prints_samples_as_they_come_and_as_recorded(prepared, capsys):
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "config", "set", "train.samples", "2"]) == 0
    assert cli.main(["-c", c, "train", "pretrain", "--run", "c", "--max-steps", "10", "--json"]) == 0
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    samples = [event_from_json(e) for e in said if e["type"] == "sample"]
    assert [s.step for s in samples] == [10, 10]
    line = describe(samples[0])
    assert line.startswith("step 10 sample: ") and samples[0].marks() in line and "\n" not in line

    assert cli.main(["-c", c, "runs", "samples", "c", "--json"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert [(r["type"], r["step"]) for r in recorded] == [("sample", 10)] * 2
    assert cli.main(["-c", c, "runs", "samples", "c", "--last"]) == 0
    out = capsys.readouterr().out
    assert out.count("── step 10  ") == 2 and recorded[0]["prompt"].splitlines()[1] in out

    assert cli.main(["-c", c, "runs", "samples", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acm: error:") and len(err.strip().splitlines()) == 1

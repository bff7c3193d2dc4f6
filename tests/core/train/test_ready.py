"""The engine readied at the app's start: each distinct step run once on a throwaway model, skipped
where no stage could start or a step may not fit, nothing written, the memory given back."""
from __future__ import annotations

import gc
import threading
import time

import mlx.core as mx
import pytest

from core import config
from core.engine import Engine
from core.model import model_shape
from core.presets import get_preset
from core.tokenizer.bpe import load_tokenizer
from core.train.memory import MEMORY_SHARE, reckoned_bytes
from core.train.ready import Readied, ready_engine
from core.train.ready_step import run_step
from tests.helpers import live_stage, losses

PLENTY = 1 << 40  # a device's memory no nano step comes near


def files_under(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def settled_memory() -> int:
    """MLX's active memory once nothing else changes it: arrays earlier tests left in garbage cycles
    freed, and an earlier test's abandoned job (a readying left to end on its own, on a thread of
    this process) done with its arrays, which a loaded machine lets run on into this test."""
    gc.collect()
    last = mx.get_active_memory()
    for _ in range(100):
        time.sleep(0.05)
        gc.collect()
        if (now := mx.get_active_memory()) == last:
            return now
        last = now
    return last


def test_each_distinct_step_is_run_once_and_nothing_is_written_or_kept(prepared):
    cfg = config.load(prepared / "acm.toml")
    cfg.train.samples = 2  # the live samples' decoding is readied with the first step
    before = files_under(prepared)
    readied = ready_engine(cfg, PLENTY)
    assert readied.stages == ("pretrain",)  # the fine-tune's step is the pretrain's: run once
    assert readied.describe().startswith("pretrain step readied in ")
    assert files_under(prepared) == before
    assert mx.get_cache_memory() == 0
    active = settled_memory()  # MLX's own lasting state (its random key) made by the first
    ready_engine(cfg, PLENTY)
    assert settled_memory() == active and mx.get_cache_memory() == 0  # nothing of it kept

    cfg.train.finetune.batch_size = 2  # another shape
    assert ready_engine(cfg, PLENTY).stages == ("pretrain", "finetune")
    cfg.train.finetune.batch_size, cfg.train.finetune.grad_accum = cfg.train.pretrain.batch_size, 2
    assert ready_engine(cfg, PLENTY).stages == ("pretrain", "finetune")  # accumulation: other graphs
    cfg.train.finetune.grad_accum, cfg.train.finetune.optimizer = 1, "muon"
    assert ready_engine(cfg, PLENTY).stages == ("pretrain", "finetune")
    assert files_under(prepared) == before


def test_a_pipeline_s_first_stage_trains_on_the_model_its_readying_kept(prepared, monkeypatch):
    """With `keep` (a pipeline's readying, its stage next on the engine) the pretrain's model and
    compiled steps serve the stage, which learns as one built afresh; the model goes with its use."""
    import core.train.trainer
    from core.train.trainer import train_stage

    cfg = config.load(prepared / "acm.toml")
    cfg.train.finetune.batch_size = 2  # two distinct steps: the first, the pretrain's, is kept
    built, build = [], core.train.trainer.build_steps
    monkeypatch.setattr(core.train.trainer, "build_steps", lambda *a: built.append(a) or build(*a))
    shape = model_shape(cfg, load_tokenizer(cfg))
    both = sum(reckoned_bytes(shape, getattr(cfg.train, s), cfg.model.compute_dtype) for s in ("pretrain", "finetune"))
    engine = Engine()
    try:
        assert engine.call(ready_engine, cfg, PLENTY, keep=True).stages == ("pretrain", "finetune")
        engine.call(train_stage, cfg, "pretrain", cfg.runs_dir / "kept", max_steps=4)
        assert built == []
        engine.call(train_stage, cfg, "pretrain", cfg.runs_dir / "fresh", max_steps=4)
        assert len(built) == 1
        # where the kept model and the next step's are not reckoned to fit together, none is kept
        tight = int(both / MEMORY_SHARE) - 1
        assert engine.call(ready_engine, cfg, tight, keep=True).stages == ("pretrain", "finetune")
        engine.call(train_stage, cfg, "pretrain", cfg.runs_dir / "tight", max_steps=4)
        assert len(built) == 2
    finally:
        engine.shutdown()
    assert losses(cfg.runs_dir / "kept") == losses(cfg.runs_dir / "fresh") and len(losses(cfg.runs_dir / "kept")) == 4


def test_a_job_waiting_behind_it_cuts_it_short_after_the_part_under_way(prepared):
    cfg = config.load(prepared / "acm.toml")
    cfg.train.samples, cfg.train.finetune.batch_size = 2, 2  # two distinct steps, and samples to decode
    asked = []

    def waited_for_after(n):  # a stage's job queued once readying has asked n times
        return lambda: asked.append(1) or len(asked) > n

    readied = ready_engine(cfg, PLENTY, waited_for=waited_for_after(0))
    assert (readied.stages, readied.why, readied.cut) == ((), "a stage was waiting", True)
    for n, stages in ((1, ("pretrain",)), (2, ("pretrain",)), (3, ("pretrain",)), (4, ("pretrain", "finetune"))):
        asked.clear()
        readied = ready_engine(cfg, PLENTY, waited_for=waited_for_after(n))
        assert readied.stages == stages and readied.cut  # after the step, the validation, the samples
        assert readied.describe().endswith("; the rest left to the stage that came meanwhile")
    asked.clear()
    readied = ready_engine(cfg, PLENTY, waited_for=waited_for_after(99))
    assert readied.stages == ("pretrain", "finetune") and not readied.cut and len(asked) == 5
    assert not readied.describe().endswith("meanwhile")


def test_the_readying_decodes_a_checks_samples_at_once(prepared):
    """At 0 s into a stage no check is within train.sample_share, but the readying decodes as a
    stage's last check does, whatever the share: its decode is what it readies."""
    cfg = config.load(prepared / "acm.toml")
    cfg.train.samples, cfg.train.sample_tokens = 2, 4
    tok = load_tokenizer(cfg)
    decoded = []

    class Counted:  # the project's tokenizer, its decodes counted
        def __getattr__(self, name):
            return getattr(tok, name)

        def decode(self, ids):
            decoded.append(ids)
            return tok.decode(ids)

    shape = cfg.model.shape().with_vocab(tok.vocab_size)
    assert run_step(cfg, cfg.train.pretrain, shape, Counted, waited_for=lambda: False)
    assert len(decoded) >= cfg.train.samples


def why_skipped(cfg, limit=PLENTY) -> str:
    readied = ready_engine(cfg, limit)
    assert readied.stages == () and readied.describe().startswith("the training step was not readied: ")
    return readied.why


def test_skipped_without_a_tokenizer(project):
    assert why_skipped(config.load(project / "acm.toml")) == "no tokenizer yet"


def test_skipped_without_token_shards_unless_they_are_on_their_way(trained):
    cfg = config.load(trained / "acm.toml")
    assert why_skipped(cfg) == "the pretrain's token shards are not prepared"
    cfg.train.pretrain.seq_len = cfg.train.finetune.seq_len = 32
    assert ready_engine(cfg, PLENTY, shards_due=True).stages == ("pretrain",)  # a pipeline makes them meanwhile
    assert not cfg.locations.shards_manifest("language").exists()


def test_skipped_on_ranks_while_a_stage_trains_or_where_a_step_may_not_fit(prepared):
    cfg = config.load(prepared / "acm.toml")
    cfg.train.ranks = 2
    assert why_skipped(cfg) == "stages train on several ranks, in processes of their own"
    cfg.train.ranks = 1
    assert why_skipped(cfg, limit=1 << 20).startswith("a step may take 0.0 GB, more than 75% of the device's 0.0 GB")
    assert ready_engine(cfg, limit=0).stages == ("pretrain",)  # the device's memory unknown: not held back
    live_stage(prepared)
    assert why_skipped(cfg) == "a stage is training"


def test_the_memory_reckoning_is_above_the_measured_peaks_by_at_most_a_quarter():
    """bench/RESULTS.md: on an H200, bf16, tiny at batch 16 x 1024 peaked at 8.33 GB, medium at
    batch 8 x 1024 at 13.35 GB (over a 16,000 and a 32,000-token vocabulary)."""
    for preset, vocab, batch, peak in (("tiny", 16000, 16, 8.33e9), ("medium", 32000, 8, 13.35e9)):
        sc = config.StageConfig(batch_size=batch, seq_len=1024)
        reckoned = reckoned_bytes(get_preset(preset).with_vocab(vocab), sc, "bfloat16")
        assert peak < reckoned < 1.25 * peak
    sc = config.StageConfig(batch_size=8, seq_len=1024)
    tiny = get_preset("tiny")
    assert reckoned_bytes(tiny, sc, "float32") > reckoned_bytes(tiny, sc, "bfloat16")


def test_a_shutdown_leaves_the_abandoned_job_alone_and_waits_for_any_other():
    engine, release, started = Engine("test-engine"), threading.Event(), threading.Event()
    engine.submit_named("ready", lambda: started.set() or release.wait())
    started.wait()
    behind = engine.submit_named("train", lambda: "trained")
    engine.shutdown(wait=True, abandon="ready")  # returns with the job under way
    assert engine.busy and engine.abandoned and not engine.stopped
    release.set()
    engine._stopped.wait(10)
    assert engine.stopped and not engine.busy and not engine.abandoned
    assert behind.cancelled()  # never started

    engine, release, started = Engine("test-engine"), threading.Event(), threading.Event()
    engine.submit_named("train", lambda: started.set() or release.wait())
    started.wait()
    waiter = threading.Thread(target=engine.shutdown, kwargs={"wait": True, "abandon": "ready"})
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # a stage is waited for
    release.set()
    waiter.join(10)
    assert not waiter.is_alive() and engine.stopped


@pytest.mark.parametrize("stages, why, text", [
    (("pretrain", "finetune"), "", "pretrain and finetune step readied in 1.2 s"),
    ((), "no tokenizer yet", "the training step was not readied: no tokenizer yet"),
])
def test_what_readying_says(stages, why, text):
    assert Readied(stages, 1.23, why).describe() == text


ABANDONING = """
import sys, threading
from core.engine import Engine, exit_past_abandoned_work
engine, started = Engine(), threading.Event()
exit_past_abandoned_work(5, [engine])  # nothing abandoned: it returns
engine.submit(lambda: None).result()
engine.submit_named("ready", lambda: started.set() or threading.Event().wait())
started.wait()
engine.shutdown(abandon="ready")
print("said before the end", end="")
exit_past_abandoned_work(7, [engine])
sys.exit(0)
"""


def test_a_process_ends_at_once_past_an_abandoned_job_its_output_flushed():
    """acm and acm-tui end this way when they stop while the engine readies the step (a job that is
    not abandoned, a stage, is waited for: above)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", ABANDONING], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (7, "said before the end"), done.stderr[-2000:]

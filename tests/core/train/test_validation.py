"""A validation check's batches read several to a forward pass on an NVIDIA GPU (core/train/validation.py)."""
from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

import core.train.validation
from core import config
from core.config import Config
from core.presets import get_preset
from core.runs import read_metrics
from core.train.memory import MEMORY_SHARE, reckoned_bytes
from core.train.step import build_steps, new_model
from core.train.trainer import train_stage
from core.train.validation import group_most, group_of, mean_loss

PLENTY = 1 << 40


@pytest.mark.parametrize("batches, most, size", [(20, 4, 4), (7, 4, 1), (6, 4, 3), (9, 4, 3), (10, 4, 2),
                                                 (20, 1, 1), (3, 4, 3), (1, 4, 1)])
def test_a_pass_reads_the_most_batches_that_divide_the_check_evenly(batches, most, size):
    assert group_of(batches, most) == size


@pytest.fixture
def as_on_nvidia(monkeypatch):
    monkeypatch.setattr(core.train.validation, "on_nvidia", lambda: True)


def test_batches_are_read_one_at_a_time_off_nvidia_or_where_memory_is_unknown(monkeypatch):
    cfg, shape = Config(), get_preset("tiny").with_vocab(16_000)
    monkeypatch.setattr(core.train.validation, "on_nvidia", lambda: False)
    assert group_most(shape, cfg.train.pretrain, "bfloat16", PLENTY) == 1
    monkeypatch.setattr(core.train.validation, "on_nvidia", lambda: True)
    assert group_most(shape, cfg.train.pretrain, "bfloat16", 0) == 1


def test_a_pass_widens_only_as_far_as_a_step_of_its_batches_would_fit(as_on_nvidia):
    sc, shape = Config().train.pretrain, get_preset("tiny").with_vocab(16_000)
    assert group_most(shape, sc, "bfloat16", PLENTY) == 4
    two = reckoned_bytes(shape, replace(sc, batch_size=2 * sc.batch_size), "bfloat16")
    assert group_most(shape, sc, "bfloat16", int(two / MEMORY_SHARE) + 1) == 2
    assert group_most(shape, sc, "bfloat16", int(two / MEMORY_SHARE) - 1) == 1
    assert group_most(shape, sc, "bfloat16", PLENTY, world=2) == 1  # every rank makes the same passes


def test_the_mean_loss_is_the_same_read_four_at_a_time_in_passes_of_one_shape():
    cfg = Config()
    cfg.model.compute_dtype = "float32"
    sc = replace(cfg.train.pretrain, batch_size=2, seq_len=16)
    shape = get_preset("nano").with_vocab(300)
    mx.random.seed(0)
    model, opt = new_model(cfg, shape, sc)
    mx.eval(opt.state)
    model.update(opt.parameters())
    eval_loss = build_steps(model, opt, sc.grad_clip)[3]
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 300, (2, 16), dtype=np.int32), rng.integers(0, 300, (2, 16), dtype=np.int32))
               for _ in range(8)]
    shapes = []

    def seen(x, y):
        shapes.append(x.shape)
        return eval_loss(x, y)

    one, four = (mean_loss(seen, batches.__getitem__, 8, most).item() for most in (1, 4))
    assert four == pytest.approx(one, rel=1e-6) and one == pytest.approx(
        float(np.mean([eval_loss(mx.array(x), mx.array(y)).item() for x, y in batches])), rel=1e-6)
    assert shapes == [(2, 16)] * 8 + [(8, 16)] * 2


def test_a_long_check_is_summed_as_it_goes_and_its_mean_is_the_same(monkeypatch):
    """A check of many batches queued every pass before evaluating any (eval_batches = 2**31 filled a
    machine's memory at 370 MB/s): now each QUEUED_PASSES passes are summed and evaluated, and the
    mean is still every batch's; more than 10000 batches a check is refused."""
    from core.errors import ConfigError

    losses = np.random.default_rng(1).random(150).astype(np.float32)
    evaluated, real_eval = [], mx.eval
    monkeypatch.setattr(core.train.validation.mx, "eval", lambda *a: evaluated.append(len(a)) or real_eval(*a))
    got = mean_loss(lambda x, y: x[0], lambda i: (losses[i:i + 1], losses[i:i + 1]), 150, 1)
    assert got.item() == pytest.approx(float(np.mean(losses)), rel=1e-6)
    assert len(evaluated) == 150 // core.train.validation.QUEUED_PASSES
    with pytest.raises(ConfigError, match="eval_batches"):
        config.from_dict({"train": {"pretrain": {"eval_batches": 10_001}}})


def test_a_stage_on_nvidia_validates_as_one_reading_a_batch_at_a_time(prepared, monkeypatch):
    import core.train.trainer

    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.eval_batches = 4
    val, rows, real = {}, {}, core.train.trainer.mean_loss

    def passes_seen(eval_loss, draw, batches, most):
        seen = rows.setdefault(name, [])
        return real(lambda x, y: (seen.append(x.shape[0]), eval_loss(x, y))[1], draw, batches, most)

    monkeypatch.setattr(core.train.trainer, "mean_loss", passes_seen)
    for name, nvidia in (("wide", True), ("one", False)):
        monkeypatch.setattr(core.train.validation, "on_nvidia", lambda nvidia=nvidia: nvidia)
        train_stage(cfg, "pretrain", cfg.runs_dir / name, max_steps=20)
        val[name] = [e["val_loss"] for e in read_metrics(cfg.runs_dir / name, "pretrain") if e["type"] == "eval"]
    batch = cfg.train.pretrain.batch_size
    assert rows == {"wide": [4 * batch] * 2, "one": [batch] * 8}  # two checks of four batches
    assert len(val["wide"]) == 2 and val["wide"] == pytest.approx(val["one"], rel=1e-5)

"""Shared fixtures: a project folder in tmp_path with its own acm.toml."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import textual.app
import textual.pilot
from textual._wait import wait_for_idle

from core import config
from core.data.code import fetch_code
from core.data.language import fetch_language
from core.tokenizer.bpe import train_tokenizer

from .helpers import HELD_WRITER_LOCKS, copy_project
from .stand_ins import script

TOPICS = ["deploy", "backup", "install", "monitor", "rotate-logs", "build", "release", "cleanup", "sync", "migrate",
          "provision", "healthcheck", "restart", "package", "bootstrap", "lint", "archive", "notify", "scale", "audit"]


@pytest.fixture(autouse=True)
def _writer_locks_released():
    """The runs' writer locks a test took to stand for a trainer (live_stage) go with the test."""
    yield
    while HELD_WRITER_LOCKS:
        HELD_WRITER_LOCKS.pop().release()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder holding a default acm.toml on the nano preset."""
    cfg = config.from_dict({"model": {"preset": "nano"}, "tokenizer": {"vocab_size": 1024},
                            "train": {"pretrain": {"seq_len": 64}, "finetune": {"seq_len": 64}}},
                           root=tmp_path)
    config.save(cfg, tmp_path / "acm.toml")
    return tmp_path


def nano_config(root: Path, scripts: Path) -> config.Config:
    return config.from_dict({
        "model": {"preset": "nano"},
        "tokenizer": {"vocab_size": 1024, "code_weight": 0.3},
        "prepare": {"val_fraction": 0.2},
        "data": {"language": {"max_documents": 80},
                 "code": {"source": "local", "local_paths": [str(scripts)]}},
        "train": {"pretrain": {"seq_len": 64}, "finetune": {"seq_len": 64}},
        "generate": {"candidates": 3},
        "eval": {"samples": 6, "max_tokens": 40},
    }, root=root)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory) -> Path:
    """A project with both corpora fetched (offline) and a nano tokenizer trained, built once."""
    root = tmp_path_factory.mktemp("template")
    scripts = root / "scripts"
    scripts.mkdir()
    for i, topic in enumerate(TOPICS):
        (scripts / f"{topic}.sh").write_text(script(topic, lines=10 + 3 * i))
    cfg = nano_config(root, scripts)
    config.save(cfg, root / "acm.toml")
    fetch_language(cfg)
    fetch_code(cfg)
    train_tokenizer(cfg)
    return root


@pytest.fixture
def trained(trained_template, tmp_path) -> Path:
    """A private copy of the trained template project."""
    dest = copy_project(trained_template, tmp_path / "proj")
    cfg = config.load(dest / "acm.toml")
    cfg.data.code.local_paths = [str(dest / "scripts")]
    config.save(cfg, dest / "acm.toml")
    return dest


# AdamW in both stages: at this rate and warmup Muon's first fine-tune steps trip the gradient-norm
# alert on nano (Muon stages are tested on their own: tests/core/train/test_train.py)
TRAIN = {"seq_len": 32, "batch_size": 4, "steps": 40, "warmup_steps": 2, "learning_rate": 3e-3, "log_every": 1,
         "eval_every": 10, "eval_batches": 2, "save_every": 10, "keep_last": 2, "optimizer": "adamw",
         "min_lr_ratio": 0.1}


@pytest.fixture(scope="session")
def prepared_template(trained_template, tmp_path_factory) -> Path:
    """The trained template with token shards and small, fast training settings."""
    from core.tokenizer.shards import prepare

    root = copy_project(trained_template, tmp_path_factory.mktemp("prepared") / "proj")
    cfg = config.load(root / "acm.toml")
    for stage in (cfg.train.pretrain, cfg.train.finetune):
        for k, v in TRAIN.items():
            setattr(stage, k, v)
    cfg.train.finetune.steps = 10
    cfg.train.samples = 0  # live samples are tested on their own (tests/core/train/test_samples.py)
    cfg.ui.ready_at_start = False  # tested on its own (tests/core/train/test_ready.py, the app's tests)
    cfg.train.ready_in_command = False  # tested on its own (tests/core/cli/test_early.py)
    cfg.model.compute_dtype = "float32"
    config.save(cfg, root / "acm.toml")
    prepare(cfg)
    return root


@pytest.fixture
def prepared(prepared_template, tmp_path) -> Path:
    return copy_project(prepared_template, tmp_path / "proj")


@pytest.fixture(scope="session")
def model_template(prepared_template, tmp_path_factory) -> Path:
    """The prepared template with a run `m`: 20 pretrain steps, then 10 fine-tune steps."""
    from core.train.trainer import train_stage

    root = copy_project(prepared_template, tmp_path_factory.mktemp("model") / "proj")
    cfg = config.load(root / "acm.toml")
    train_stage(cfg, "pretrain", cfg.runs_dir / "m", max_steps=20)
    train_stage(cfg, "finetune", cfg.runs_dir / "m")
    return root


@pytest.fixture
def with_model(model_template, tmp_path) -> Path:
    return copy_project(model_template, tmp_path / "proj")


@pytest.fixture
def keys_while_training(monkeypatch):
    """Keys pressed while a stage trains go through without waiting a second each. Textual's pilot
    waits after every key (and in pause()) for the process to go idle, for up to a second; while
    the engine trains it never does, so that wait always ran to its end and tested nothing."""
    quick = partial(wait_for_idle, max_sleep=0.05)
    monkeypatch.setattr(textual.app, "wait_for_idle", quick)
    monkeypatch.setattr(textual.pilot, "wait_for_idle", quick)


@pytest.fixture
def lone_group_asks(monkeypatch) -> list[dict]:
    """What this process asks mx.distributed.init for (each call's keywords, in order; MLX still
    answers), in a process no launcher started."""
    import mlx.core as mx

    asked, init = [], mx.distributed.init
    monkeypatch.setattr(mx.distributed, "init", lambda **kw: asked.append(kw) or init(**kw))
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return asked

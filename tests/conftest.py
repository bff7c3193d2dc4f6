"""Shared fixtures: a project folder in tmp_path with its own acm.toml."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import config


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder holding a default acm.toml on the nano preset."""
    cfg = config.from_dict({"model": {"preset": "nano"}, "tokenizer": {"vocab_size": 1024},
                            "train": {"pretrain": {"seq_len": 64}, "finetune": {"seq_len": 64}}},
                           root=tmp_path)
    config.save(cfg, tmp_path / "acm.toml")
    return tmp_path

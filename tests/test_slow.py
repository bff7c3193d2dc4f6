"""Long tests (deselected by default; `make test-all` runs them)."""
from __future__ import annotations

import pytest

from core import cli, config
from core.data.code import fetch_code
from core.data.language import fetch_language
from core.tokenizer.bpe import train_tokenizer


@pytest.mark.slow
def test_full_offline_default_tokenizer_beats_the_original_mix_on_bash(tmp_path):
    cfg = config.from_dict({}, root=tmp_path)  # the shipped defaults: medium, 32K vocab, code_weight 0.3
    fetch_language(cfg)
    fetch_code(cfg)
    meta = train_tokenizer(cfg, compare=True)
    ours, original = meta["chars_per_token"], meta["original_mix"]["chars_per_token"]
    assert abs(meta["mix"]["code_share"] - 0.3) < 0.01
    assert ours["code"] > original["code"] * 1.02  # bash tokenizes better
    assert ours["language"] > original["language"] * 0.97  # at little or no cost to language


@pytest.mark.slow
def test_tiny_architecture_test_from_the_cli(capsys):
    assert cli.main(["model", "test", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "Output shape: (2, 128, 16000)" in out and "Total parameters: 98.9M" in out

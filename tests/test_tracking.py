"""Training curves on request: TensorBoard event files, W&B offline, CSV for spreadsheets."""
from __future__ import annotations

import csv
import io
import struct

import pytest

from core import cli, config
from core.errors import ConfigError
from core.train.runs import read_metrics
from core.train.trainer import run_stage


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a folder of TensorBoard event files (TFRecord: length, crc, Event, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_gets_the_curves_metrics_jsonl_gets_and_csv_exports_them(prepared, capsys):
    cfg = config.load(prepared / "acm.toml")
    cfg.train.report_to = ["tensorboard"]
    config.save(cfg, prepared / "acm.toml")
    run = cfg.runs_dir / "tb"
    run_stage(cfg, "pretrain", run, max_steps=6)
    recorded = [e for e in read_metrics(run, "pretrain") if e["type"] == "metrics"]
    seen = tensorboard_scalars(run / "tensorboard" / "pretrain")
    assert [s for s, _ in seen["pretrain/loss"]] == [e["step"] for e in recorded]
    assert [v for _, v in seen["pretrain/loss"]] == pytest.approx([e["loss"] for e in recorded], rel=1e-6)
    assert "pretrain/val_loss" in seen and "pretrain/tokens_per_s" in seen
    assert cli.main(["-c", str(prepared / "acm.toml"), "runs", "metrics", "tb", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["step"]) for r in rows] == [e["step"] for e in recorded]
    assert float(rows[-1]["loss"]) == pytest.approx(recorded[-1]["loss"]) and rows[-1]["val_loss"] != ""


def test_tracking_is_off_by_default_and_names_are_checked(prepared, capsys):
    cfg = config.load(prepared / "acm.toml")
    assert cfg.train.report_to == []
    run_stage(cfg, "pretrain", cfg.runs_dir / "plain", max_steps=2)
    assert not (cfg.runs_dir / "plain" / "tensorboard").exists() and not (cfg.runs_dir / "plain" / "wandb").exists()
    with pytest.raises(ConfigError, match="train.report_to = \\['mlflow'\\] is not valid; each one of: tensorboard"):
        config.from_dict({"model": {"preset": "nano"}, "tokenizer": {"vocab_size": 1024},
                          "train": {"report_to": ["mlflow"]}})
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "config", "set", "train.report_to", "mlflow"]) == 2
    assert "each one of: tensorboard, wandb" in capsys.readouterr().err
    assert cli.main(["-c", c, "config", "set", "train.report_to", "tensorboard,wandb"]) == 0
    assert config.load(prepared / "acm.toml").train.report_to == ["tensorboard", "wandb"]


def test_wandb_runs_offline_without_a_key(prepared, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = config.load(prepared / "acm.toml")
    cfg.train.report_to = ["wandb"]
    run_stage(cfg, "pretrain", cfg.runs_dir / "wb", max_steps=2)
    offline = list((cfg.runs_dir / "wb" / "wandb").glob("offline-run-*/run-wb-pretrain.wandb"))
    assert len(offline) == 1, wandb.__version__  # nothing was sent: `wandb sync` would upload it
    logged = offline[0].read_bytes()
    assert b"pretrain/loss" in logged and b"pretrain/val_loss" in logged

"""Training curves on request: TensorBoard event files, W&B offline, CSV for spreadsheets."""
from __future__ import annotations

import csv
import io
import struct
import sys
import types

import pytest

from core import cli, config
from core.errors import ConfigError
from core.runs import read_metrics
from core.train.trainer import train_stage


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
    train_stage(cfg, "pretrain", run, max_steps=6)
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
    train_stage(cfg, "pretrain", cfg.runs_dir / "plain", max_steps=2)
    assert not (cfg.runs_dir / "plain" / "tensorboard").exists() and not (cfg.runs_dir / "plain" / "wandb").exists()
    with pytest.raises(ConfigError, match="train.report_to = \\['mlflow'\\] is not valid; each one of: tensorboard"):
        config.from_dict({"model": {"preset": "nano"}, "tokenizer": {"vocab_size": 1024},
                          "train": {"report_to": ["mlflow"]}})
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "config", "set", "train.report_to", "mlflow"]) == 2
    assert "each one of: tensorboard, wandb" in capsys.readouterr().err
    assert cli.main(["-c", c, "config", "set", "train.report_to", "tensorboard,wandb"]) == 0
    assert config.load(prepared / "acm.toml").train.report_to == ["tensorboard", "wandb"]


class RecordingWandB(types.ModuleType):
    """A stand-in for the `wandb` module that keeps what acm hands it (the real one writes its run
    file from a service process, after `finish()` returns)."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished += 1


@pytest.mark.parametrize("env, mode", [({}, "offline"), ({"WANDB_API_KEY": "k"}, "online"),
                                       ({"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, "disabled")])
def test_wandb_runs_offline_unless_a_key_or_mode_says_otherwise(prepared, monkeypatch, env, mode):
    recording = RecordingWandB()
    monkeypatch.setitem(sys.modules, "wandb", recording)
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = config.load(prepared / "acm.toml")
    cfg.train.report_to = ["wandb"]
    train_stage(cfg, "pretrain", cfg.runs_dir / "wb", max_steps=2)
    (init,) = recording.inits
    assert init["mode"] == mode and init["dir"] == str(cfg.runs_dir / "wb") and init["id"] == "wb-pretrain"
    recorded = [e for e in read_metrics(cfg.runs_dir / "wb", "pretrain") if e["type"] in ("metrics", "eval")]
    assert {e["type"] for e in recorded} == {"metrics", "eval"}
    sent = {(step, key): value for step, values in recording.logged for key, value in values.items()}
    for e in recorded:
        key = "pretrain/loss" if e["type"] == "metrics" else "pretrain/val_loss"
        assert sent[(e["step"], key)] == pytest.approx(e["loss" if e["type"] == "metrics" else "val_loss"])
    assert recording.finished == 1


def test_a_report_streamed_by_train_json_is_strict_json_a_diverged_figure_null(capsys):
    """`acm train --json` streams every event as a JSON line: an infinite gradient norm (the trainer
    checks the loss alone) is null there, never Python's `Infinity`, which no other reader takes."""
    import json

    from core.runs.events import event_from_json
    from core.train.worker import print_event
    from tests.helpers import METRICS

    print_event(event_from_json(METRICS | {"grad_norm": float("inf"), "mfu": float("nan")}))
    line = capsys.readouterr().out
    said = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}"))
    assert said["grad_norm"] is None and said["mfu"] is None and said["loss"] == METRICS["loss"]

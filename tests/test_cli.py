from __future__ import annotations

import json
import os

from core import cli


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_doctor_json(project, capsys):
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor", "--json")
    report = json.loads(out)
    names = {c["name"] for c in report["checks"]}
    assert {"mlx", "device", "device name", "device memory", "python", "numpy", "tokenizers", "textual",
            "free disk (data)", "free disk (runs)"} <= names
    assert rc == 0 and report["ok"] is True


def test_doctor_shows_mlx_environment_settings(project, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("MLX_")]:
        monkeypatch.delenv(key)
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor")
    assert rc == 0 and "MLX environment" not in out
    monkeypatch.setenv("MLX_MAX_MB_PER_BUFFER", "400")
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor")
    assert rc == 0 and "MLX_MAX_MB_PER_BUFFER=400" in out


def test_doctor_fails_with_one_line_fix_when_required_tool_missing(project, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(project))  # no bash, no git on PATH
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor")
    assert rc == 1
    assert "bash: install bash" in out and "not ready" in out


def test_presets_json_and_table(capsys):
    rc, out, _ = run(capsys, "presets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and rows["tiny"]["parameters"] == 98_916_864 and rows["medium"]["n_ctx"] == 4096
    rc, out, _ = run(capsys, "presets")
    assert "98.9M" in out and "372.0M" in out


def test_model_info(capsys):
    rc, out, _ = run(capsys, "model", "info", "medium")
    assert rc == 0
    assert "Parameters: 372.0M" in out and "Layers: 24" in out and "FFN dim: 4096" in out


def test_model_info_unknown_preset(capsys):
    rc, _, err = run(capsys, "model", "info", "huge")
    assert rc == 2
    assert err.strip() == "acm: error: unknown model preset 'huge'; valid presets: nano, micro, tiny, medium"


def test_model_test_nano(capsys):
    rc, out, _ = run(capsys, "model", "test", "--preset", "nano")
    assert rc == 0
    assert "Output shape: (2, 128, 1024)" in out and "Tokens/sec" in out and "passed" in out

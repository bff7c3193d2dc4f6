"""The devices' rows: nvidia-smi's output read robustly (a stand-in `nvidia-smi` first on PATH),
MLX's counters with the reason where it is absent, hung or unreadable, never an exception; each
rank's figures and the one line a device the Train pane shows."""
from __future__ import annotations

import json

import mlx.core as mx
import pytest

from core import cli, devices
from core.devices import Device, capped, device_lines, parse_nvidia_smi, rank_figures, ranks_of, read_devices
from core.runs.events import Metrics, event_from_json
from tests.helpers import METRICS
from tests.stand_ins import SMI_TWO_GPUS, fake_nvidia_smi

MIB = 2**20


def test_nvidia_smis_rows_read_with_blanks_for_what_it_cannot_report():
    first, second = parse_nvidia_smi(SMI_TWO_GPUS)
    assert first == Device(label="gpu0", name="NVIDIA H200", memory_used=12595 * MIB, memory_total=143771 * MIB,
                           utilisation=97.0, power=520.31, power_limit=700.0)
    assert (second.label, second.utilisation, second.power, second.power_limit) == ("gpu1", None, None, None)
    assert second.memory_used == 1024 * MIB
    odd, = parse_nvidia_smi("\n3, Tesla T4, [Not Supported], 27.5, 70, 0, 15360\n\n")
    assert (odd.label, odd.name, odd.utilisation, odd.power) == ("gpu3", "Tesla T4", None, 27.5)


@pytest.mark.parametrize("garbage", ["", "No devices were found", "0, NVIDIA H200, 97", "x, a, 1, 2, 3, 4, 5"])
def test_output_of_another_shape_is_refused(garbage):
    with pytest.raises(ValueError):
        parse_nvidia_smi(garbage)


def test_the_stand_in_nvidia_smi_gives_every_gpus_row(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    reading = read_devices()
    assert reading.source == "nvidia-smi" and reading.note is None
    assert [d.label for d in reading.devices] == ["gpu0", "gpu1"]


@pytest.mark.parametrize("body, reason", [
    ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver'; exit 9",
     "nvidia-smi failed: NVIDIA-SMI has failed because it could not communicate"),
    ("echo 'garbage, out'", "nvidia-smi's output could not be read"),
    ("exec sleep 30", "nvidia-smi gave no answer within 0.2 s"),
])
def test_a_failing_hung_or_garbled_nvidia_smi_gives_mlxs_row_and_the_reason(tmp_path, monkeypatch, body, reason):
    monkeypatch.setattr(devices, "SMI_TIMEOUT_S", 0.2)
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, body)
    reading = read_devices()
    assert reading.source == "mlx" and len(reading.devices) == 1
    assert reason in reading.note


def test_without_nvidia_smi_the_note_says_what_is_not_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    reading = read_devices()
    assert reading.devices[0].label == ("gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu")
    expected = devices.NO_ROOT if mx.metal.is_available() else "not reported (nvidia-smi not found)"
    assert expected in reading.note


def test_one_line_a_gpu_with_its_rank_and_ranks_beyond_the_gpus_on_their_own():
    gpus = parse_nvidia_smi(SMI_TWO_GPUS)[:1]
    ranks = [{"rank": 0, "memory_active": 12 * 2**30, "memory_peak": 14 * 2**30, "tokens_per_s": 505_000.0,
              "mfu": 0.36},
             {"rank": 1, "memory_active": 3 * 2**30, "memory_peak": 2**31, "tokens_per_s": 9_000.0, "mfu": None}]
    assert device_lines(gpus, ranks) == [
        "gpu0 H200  rank 0: 505k tok/s  MFU 36%  mem 12.3/140.4 GiB (peak 14.0)  util 97%  520/700 W",
        "rank 1: 9,000 tok/s  mem 3.0 GiB (peak 2.0)"]
    assert capped([str(i) for i in range(6)], 4) == ["0", "1", "2", "+3 more"]
    assert capped(["a", "b"], 4) == ["a", "b"]


def test_one_rank_reports_no_rank_rows_and_its_json_is_unchanged():
    assert rank_figures(mx.distributed.init(), {"active": 1, "peak": 2}, 10.0, 6.0, 1e12) is None
    one = event_from_json(METRICS)
    assert "devices" not in one.to_json()
    assert ranks_of(one) == [{"rank": 0, "memory_active": 1024, "memory_peak": 2048, "tokens_per_s": 12345.5,
                              "mfu": None}]


def test_gathered_rank_rows_read_back_and_damaged_ones_read_as_blanks():
    rows = [{"rank": 0, "memory_active": 5, "memory_peak": 6, "tokens_per_s": 7.0, "mfu": 0.5},
            {"rank": 1, "memory_active": "lots", "tokens_per_s": None}, "junk"]
    report = event_from_json(json.loads(json.dumps(METRICS | {"ranks": 2, "devices": rows})))
    assert isinstance(report, Metrics) and report.to_json()["devices"] == rows
    assert ranks_of(report) == [rows[0], {"rank": 1}]
    assert device_lines([], ranks_of(report))[1] == "rank 1: ? tok/s  mem ? GiB (peak ?)"


def test_cli_devices_prints_the_rows_as_a_table_or_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    assert cli.main(["devices", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "nvidia-smi" and out["devices"][1]["utilisation"] is None
    assert out["devices"][0]["power_limit"] == 700.0
    assert cli.main(["devices"]) == 0
    table = capsys.readouterr().out
    assert "NVIDIA H200" in table and "97%" in table and "520/700 W" in table
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert cli.main(["devices"]) == 0
    assert "utilisation and power: not reported" in capsys.readouterr().out

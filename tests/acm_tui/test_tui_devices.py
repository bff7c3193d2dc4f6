"""The Train pane's devices block: while a stage trains, one line a device read off the UI thread
(a stand-in `nvidia-smi` first on PATH), one line a rank of a multi-rank report; hidden otherwise."""
from __future__ import annotations

from acm_tui.devices import DevicesBlock
from acm_tui.panes.train import TrainPane
from core.runs import write_status
from tests.helpers import live_stage, text_of, wait_until
from tests.pane_host import PaneHost
from tests.stand_ins import fake_nvidia_smi


async def devices_shown(app, pilot) -> tuple[DevicesBlock, list[str]]:
    """The Train pane shown; once its devices block is: the block and its lines."""
    await pilot.press("4")
    block = app.query_one(DevicesBlock)
    await wait_until(pilot, lambda: block.display)
    return block, text_of(app, "#train-devices").splitlines()


async def test_a_live_stage_shows_each_gpus_line_from_nvidia_smi(project, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    live_stage(project)
    app = PaneHost(TrainPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        block, lines = await devices_shown(app, pilot)
        assert lines == ["gpu0 H200  rank 0: 12k tok/s  mem 12.3/140.4 GiB (peak 0.0)  util 97%  520/700 W",
                         "gpu1 H200  mem 1.0/140.4 GiB"]
        pane = app.query_one(TrainPane)
        write_status(pane.attached, "pretrain", "stopped", step=20, total=400)
        await wait_until(pilot, lambda: pane.state == "stopped")
        assert not block.display  # nothing is read while no stage trains
        readings = block.readings
        await pilot.pause(2.5)
        assert block.readings == readings


async def test_a_multi_rank_report_shows_one_line_a_rank(project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-nvidia-smi"))
    ranks = [{"rank": r, "memory_active": (r + 1) * 2**30, "memory_peak": (r + 2) * 2**30,
              "tokens_per_s": 1000.0 * (r + 1), "mfu": 0.1 * (r + 1)} for r in range(3)]
    live_stage(project, ranks)
    app = PaneHost(TrainPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        _, lines = await devices_shown(app, pilot)
        assert lines[:3] == ["rank 0: 1,000 tok/s  MFU 10%  mem 1.0 GiB (peak 2.0)",
                             "rank 1: 2,000 tok/s  MFU 20%  mem 2.0 GiB (peak 3.0)",
                             "rank 2: 3,000 tok/s  MFU 30%  mem 3.0 GiB (peak 4.0)"]
        assert lines[3].startswith("utilisation and power: not reported")

"""`acm devices`: the host's devices once, memory, utilisation and power where the platform reports
them (the Train pane shows the same while a stage trains)."""
from __future__ import annotations

from rich.table import Table

from core.cli.output import console_for, print_json
from core.config import Config
from core.devices import read_devices
from core.pipeline.tables import DEVICE_COLUMNS, device_cells, devices_source


def cmd_devices(args, cfg: Config) -> int:
    reading = read_devices()
    if args.json:
        print_json(reading.to_json())
        return 0
    console = console_for()
    title = f"Devices ({devices_source(reading)})"
    table = Table(*DEVICE_COLUMNS, title=title, title_justify="left")
    for d in reading.devices:
        table.add_row(*device_cells(d))
    console.print(table)
    if reading.note:
        console.print(reading.note, markup=False)
    return 0


def register(sub, add) -> None:
    add(sub, "devices", cmd_devices, "the devices: memory, utilisation and power where the platform reports them")

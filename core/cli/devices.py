"""`acm devices`: the host's devices once, memory, utilisation and power where the platform reports
them (the Train pane shows the same while a stage trains)."""
from __future__ import annotations

import json

from rich.table import Table

from core.cli.output import console_for
from core.config import Config
from core.devices import Device, read_devices

COLUMNS = ("device", "name", "memory used", "memory total", "utilisation", "power")


def cells(d: Device) -> list[str]:
    def gib(n: int | None) -> str:
        return "–" if n is None else f"{n / 2**30:.1f} GiB"

    power = "–" if d.power is None else f"{d.power:.0f}" + (f"/{d.power_limit:.0f}" if d.power_limit else "") + " W"
    util = "–" if d.utilisation is None else f"{d.utilisation:.0f}%"
    return [d.label, d.name, gib(d.memory_used), gib(d.memory_total), util, power]


def cmd_devices(args, cfg: Config) -> int:
    reading = read_devices()
    if args.json:
        print(json.dumps(reading.to_json(), indent=2))
        return 0
    console = console_for()
    title = "Devices (nvidia-smi)" if reading.source == "nvidia-smi" else "Devices (MLX: this process's memory)"
    table = Table(*COLUMNS, title=title, title_justify="left")
    for d in reading.devices:
        table.add_row(*cells(d))
    console.print(table)
    if reading.note:
        console.print(reading.note, markup=False)
    return 0


def register(sub, add) -> None:
    add(sub, "devices", cmd_devices, "the devices: memory, utilisation and power where the platform reports them")

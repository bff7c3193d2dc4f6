"""The devices training runs on, one row each: memory, utilisation and power where the platform
reports them, and each rank's share of a multi-rank run.

On NVIDIA hosts `nvidia-smi` gives every GPU's figures, whichever process uses it. Elsewhere only
MLX's counters of this process are at hand: a Mac reports GPU utilisation and power to root alone
(`sudo powermetrics`), so those stay blank with a note saying why. Reading never raises: a missing
or hung `nvidia-smi`, or output it cannot read, gives the MLX row and the reason.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass

import mlx.core as mx

from core.hardware import device_info, memory_limit, memory_now

SMI_QUERY = "index,name,utilization.gpu,power.draw,power.limit,memory.used,memory.total"
SMI_TIMEOUT_S = 2.0  # a driver in trouble can hang nvidia-smi: the child is killed after this
NO_ROOT = "utilisation and power: not reported without root (sudo powermetrics)"
MIB = 2**20


@dataclass(frozen=True)
class Device:
    """One device's figures; None where the platform does not report one."""
    label: str  # "gpu0", "gpu", "cpu"
    name: str
    memory_used: int | None = None  # bytes
    memory_total: int | None = None
    memory_peak: int | None = None
    utilisation: float | None = None  # percent
    power: float | None = None  # watts
    power_limit: float | None = None


@dataclass(frozen=True)
class Reading:
    """The devices at one moment, where the figures came from, and what is missing and why."""
    devices: list[Device]
    source: str  # "nvidia-smi" (every GPU of the host) or "mlx" (this process's device)
    note: str | None = None

    def to_json(self) -> dict:
        return {"source": self.source, "note": self.note, "devices": [asdict(d) for d in self.devices]}


def _number(text: str) -> float | None:
    """A figure of nvidia-smi's, or None for "[N/A]", "[Not Supported]" and the like."""
    try:
        return float(text)
    except ValueError:
        return None


def _mib(text: str) -> int | None:
    value = _number(text)
    return None if value is None else int(value * MIB)


def parse_nvidia_smi(text: str) -> list[Device]:
    """The rows of `nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`; ValueError
    for output of another shape."""
    rows = []
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 7 or not parts[0].isdigit():
            raise ValueError(f"unexpected line {line[:60]!r}")
        util, power, limit, used, total = parts[-5:]
        rows.append(Device(label=f"gpu{parts[0]}", name=",".join(parts[1:-5]).strip(), memory_used=_mib(used),
                           memory_total=_mib(total), utilisation=_number(util), power=_number(power),
                           power_limit=_number(limit)))
    if not rows:
        raise ValueError("no GPUs listed")
    return rows


def read_nvidia_smi() -> tuple[list[Device], str | None]:
    """(every GPU's row, None), or ([], why there are none)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return [], "nvidia-smi not found"
    try:
        done = subprocess.run([binary, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=SMI_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi gave no answer within {SMI_TIMEOUT_S:g} s"
    except OSError as e:
        return [], f"nvidia-smi could not run: {e.strerror or e}"
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        return [], f"nvidia-smi failed: {said[0][:100] if said else f'exit status {done.returncode}'}"
    try:
        return parse_nvidia_smi(done.stdout), None
    except ValueError as e:
        return [], f"nvidia-smi's output could not be read: {e}"


def mlx_device() -> Device:
    """MLX's counters of this process's device: memory in use and its peak, nothing more."""
    info = device_info()
    gpu = mx.default_device().type == mx.DeviceType.gpu
    mem = memory_now()
    return Device(label="gpu" if gpu else "cpu", name=str(info.get("device_name", "")),
                  memory_used=mem["active"], memory_total=memory_limit(info) or None, memory_peak=mem["peak"])


def read_devices() -> Reading:
    """The host's GPUs from nvidia-smi where it answers; else this process's device from MLX, with
    what cannot be reported and why."""
    rows, why = read_nvidia_smi()
    if rows:
        return Reading(rows, "nvidia-smi")
    note = NO_ROOT if mx.metal.is_available() else f"utilisation and power: not reported ({why})"
    return Reading([mlx_device()], "mlx", note)


# ---------------------------------------------------------------- each rank's share

def rank_figures(group, memory: dict, tokens_per_s: float, flops_per_token: float | None,
                 peak: float | None) -> list[dict] | None:
    """Each rank's memory, tokens/s and MFU at a report, gathered over the group: every rank must
    call this at the same step. None with one rank (its figures are the report's own)."""
    world = group.size()
    if world == 1:
        return None
    mine = mx.array([memory["active"], memory["peak"], tokens_per_s], dtype=mx.float32)
    gathered = mx.distributed.all_gather(mine, group=group).reshape(world, 3).tolist()
    return [{"rank": rank, "memory_active": int(active), "memory_peak": int(top), "tokens_per_s": rate,
             "mfu": rate * flops_per_token / peak if peak and flops_per_token else None}
            for rank, (active, top, rate) in enumerate(gathered)]


def ranks_of(report) -> list[dict]:
    """Per-rank rows of a Metrics report: its gathered figures, or rank 0's own with one rank."""
    if isinstance(report.devices, list) and report.devices:  # a damaged file's rows read as blanks
        return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                for r in report.devices if isinstance(r, dict)]
    return [{"rank": 0, "memory_active": report.memory_active, "memory_peak": report.memory_peak,
             "tokens_per_s": report.tokens_per_s, "mfu": report.mfu}]


# ---------------------------------------------------------------- one line a device

def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"


def _rate(tokens_per_s: float | None) -> str:
    if tokens_per_s is None:
        return "?"
    return f"{tokens_per_s / 1e6:.2f}M" if tokens_per_s >= 1e6 else (
        f"{tokens_per_s / 1e3:.0f}k" if tokens_per_s >= 1e4 else f"{tokens_per_s:,.0f}")


VENDORS = ("NVIDIA ", "Apple ")  # left off a line: the model is what tells devices apart


def device_words(d: Device, rank: dict | None = None) -> str:
    """"gpu0 H200  rank 0: 505k tok/s  MFU 36%  mem 12.3/140.4 GiB (peak 14.0)  util 97%  520/700 W":
    what matters most first, so a narrow terminal cuts the least of it."""
    name = next((d.name[len(v):] for v in VENDORS if d.name.startswith(v)), d.name)
    peak = rank.get("memory_peak", d.memory_peak) if rank else d.memory_peak
    words = [f"{d.label} {name}".strip()] + ([rank_words(rank, False)] if rank else [])
    words.append(f"mem {_gib(d.memory_used)}/{_gib(d.memory_total)} GiB"
                 + (f" (peak {_gib(peak)})" if peak is not None else ""))
    if d.utilisation is not None:
        words.append(f"util {d.utilisation:.0f}%")
    if d.power is not None:
        words.append(f"{d.power:.0f}/{d.power_limit:.0f} W" if d.power_limit is not None else f"{d.power:.0f} W")
    return "  ".join(words)


def rank_words(r: dict, with_memory: bool) -> str:
    """"rank 0: 505k tok/s  MFU 36%", or "rank 1: 12k tok/s  mem 3.1 GiB (peak 3.4)" where no device
    row shows its memory."""
    mfu = f"  MFU {r['mfu']:.0%}" if r.get("mfu") is not None else ""
    memory = (f"  mem {_gib(r.get('memory_active'))} GiB (peak {_gib(r.get('memory_peak'))})"
              if with_memory else "")
    return f"rank {r.get('rank', '?')}: {_rate(r.get('tokens_per_s'))} tok/s{mfu}{memory}"


def device_lines(devices: list[Device], ranks: list[dict]) -> list[str]:
    """One line a device, rank i beside GPU i (the launcher gives each rank the next GPU); ranks
    beyond the devices (Metal, the CPU, several hosts) on lines of their own with their memory."""
    lines = [device_words(d, ranks[i] if i < len(ranks) else None) for i, d in enumerate(devices)]
    return lines + [rank_words(r, True) for r in ranks[len(devices):]]


def capped(lines: list[str], most: int) -> list[str]:
    """At most `most` lines, the last saying how many more there are."""
    return lines if len(lines) <= most else lines[:most - 1] + [f"+{len(lines) - most + 1} more"]

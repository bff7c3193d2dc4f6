"""What the device can do: its peak FLOP/s (for MFU) and its memory limit (for the monitor)."""
from __future__ import annotations

import os

import mlx.core as mx

# Dense peak TFLOP/s: bf16 tensor cores on NVIDIA; Apple GPUs (fp32 = fp16 rate), by chip name.
PEAK_TFLOPS = [
    ("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("RTX 4090", 165.0),
    ("M4 Max", 18.4), ("M4 Pro", 9.2), ("M4", 4.3), ("M3 Ultra", 28.2), ("M3 Max", 14.2), ("M3 Pro", 7.4),
    ("M3", 4.1), ("M2 Ultra", 27.2), ("M2 Max", 13.6), ("M2 Pro", 6.8), ("M2", 3.6), ("M1 Ultra", 21.2),
    ("M1 Max", 10.4), ("M1 Pro", 5.2), ("M1", 2.6),
]


def device_info() -> dict:
    try:
        return dict(mx.device_info())
    except Exception:
        return {}


def peak_flops(info: dict | None = None) -> float | None:
    """Peak FLOP/s of the default device, or None when unknown (then MFU is not shown)."""
    if mx.default_device().type != mx.DeviceType.gpu:
        return None
    name = str((info if info is not None else device_info()).get("device_name", ""))
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def memory_limit(info: dict | None = None) -> int:
    info = info if info is not None else device_info()
    limit = info.get("max_recommended_working_set_size") or info.get("memory_size") or info.get("total_memory")
    if limit:
        return int(limit)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_now() -> dict:
    return {"active": mx.get_active_memory(), "peak": mx.get_peak_memory(), "cache": mx.get_cache_memory()}

"""What the device can do: its peak FLOP/s (for MFU) and its memory limit (for the monitor); acm's
default for MLX's CUDA graph size."""
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


# MLX's CUDA backend holds every buffer a CUDA graph used until the whole graph has run. On Hopper
# and Blackwell GPUs MLX gathers up to 1000 MB of kernel inputs (and 100 kernels) into one graph; at
# 200 MB acm's training step peaks 40-50% lower at the same speed (bench/RESULTS.md, H100). At that
# size, graphs of at most 60 kernels ran the README recipe's steps 2% faster on an H100 than MLX's
# 100, at the same peak. MLX's defaults for other GPUs are 400 MB (A100) or less, and Metal has its own.
CUDA_GRAPH_MB = 200
CUDA_GRAPH_OPS = 60
_MLX_1000_MB = {(9, 0), (10, 0), (12, 0)}  # compute capabilities where MLX's own default is 1000 MB


def configure_mlx() -> None:
    """Set acm's default CUDA graph size (MLX_MAX_MB_PER_BUFFER, MLX_MAX_OPS_PER_BUFFER) where MLX's
    own is 1000 MB, each unless the environment sets it. MLX reads them once, at its first GPU work:
    call this before that."""
    defaults = {"MLX_MAX_MB_PER_BUFFER": CUDA_GRAPH_MB, "MLX_MAX_OPS_PER_BUFFER": CUDA_GRAPH_OPS}
    if all(key in os.environ for key in defaults):
        return
    info = device_info()
    if (info.get("compute_capability_major"), info.get("compute_capability_minor")) in _MLX_1000_MB:
        for key, value in defaults.items():
            os.environ.setdefault(key, str(value))


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


def device_label() -> str:
    """The device training runs on, in a few words ("gpu: Apple M2 Max", "cpu")."""
    kind = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
    name = str(device_info().get("device_name", "")) if kind == "gpu" else ""
    return f"{kind}: {name}" if name else kind


MEDIUM_TRAINING_BYTES = 16 * 2**30  # medium at batch 8 x 1,024 peaked at 13.1 GB (H100, README), plus room


def suggested_preset(info: dict | None = None) -> tuple[str, str]:
    """The preset a fresh project starts with on this machine, and why."""
    if mx.default_device().type != mx.DeviceType.gpu:
        return "micro", ("no GPU for MLX here: training runs on the CPU, where micro trains in minutes "
                         "and medium would take days")
    info = info if info is not None else device_info()
    room = info.get("max_recommended_working_set_size") or info.get("memory_size") or info.get("total_memory") or 0
    if room >= MEDIUM_TRAINING_BYTES:
        return "medium", f"the GPU's {room / 2**30:.0f} GiB hold medium's training (13 GB at batch 8 x 1,024)"
    return "tiny", (f"the GPU's {room / 2**30:.0f} GiB are too few for medium's training (13 GB at batch 8 x "
                    "1,024); tiny fits")

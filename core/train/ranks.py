"""Training on several ranks of this host: the same `acm train` command started once per rank by
MLX's launcher (`mlx.launch`), one rank per NVIDIA GPU over NCCL, or processes over the ring
backend where there is no NVIDIA GPU (the path several Macs take, tried on one).

Each rank joins the group through the environment the launcher gives it; only rank 0 writes the
run. Several Macs are launched by hand with `mlx.launch --hostfile` (README, "Several Macs").
"""
from __future__ import annotations

import os
import sys

import mlx.core as mx

from core.errors import AcmError

LAUNCHER = "from mlx._distributed_utils.launch import main; main()"  # what the `mlx.launch` script runs


def in_group() -> bool:
    """Whether this process is a rank started by the launcher (which must not launch again)."""
    return "MLX_RANK" in os.environ


def backend(ranks: int) -> str:
    """NCCL with one GPU a rank on an NVIDIA host, the ring backend over localhost elsewhere."""
    if not mx.cuda.is_available():
        return "ring"
    gpus = mx.device_count(mx.gpu)
    if ranks > gpus:
        raise AcmError(f"{ranks} ranks need {ranks} NVIDIA GPUs; this host has {gpus} "
                       "(train.ranks, --ranks)")
    return "nccl"


def launcher_argv(ranks: int, command: list[str]) -> list[str]:
    """The command line that starts `command` (arguments after the Python interpreter) on
    `ranks` ranks of this host."""
    return [sys.executable, "-c", LAUNCHER, "-n", str(ranks), "--backend", backend(ranks), "--",
            sys.executable, *command]


def launcher_env(extra_path: str | None = None) -> dict[str, str]:
    """The ranks' environment: acm importable, and NVLink multicast off (NCCL's NVLS needs
    fabric support these hosts do not promise; off costs nothing measurable at this size)."""
    env = dict(os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return env


def describe(ranks: int) -> str:
    kind = backend(ranks)
    return f"{ranks} ranks ({'one NVIDIA GPU each, NCCL' if kind == 'nccl' else 'ring backend on this host'})"

"""acm's default CUDA graph size: set where MLX's own is 1000 MB, never over the user's settings."""
import os

import pytest

from core import hardware

GRAPH_SETTINGS = ("MLX_MAX_MB_PER_BUFFER", "MLX_MAX_OPS_PER_BUFFER")


def unset(monkeypatch, *keys):
    """Each key absent for the test and put back as it was after it (delenv alone records nothing for
    an absent key, so what configure_mlx sets would outlive the test)."""
    for key in keys:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


@pytest.mark.parametrize("capability, expected", [((9, 0), "200"), ((12, 0), "200"), ((8, 0), None),
                                                  ((12, 1), None), ((None, None), None)])
def test_configure_mlx_by_compute_capability(monkeypatch, capability, expected):
    unset(monkeypatch, *GRAPH_SETTINGS)
    major, minor = capability
    monkeypatch.setattr(hardware, "device_info", lambda: {} if major is None else
                        {"compute_capability_major": major, "compute_capability_minor": minor})
    hardware.configure_mlx()
    assert os.environ.get("MLX_MAX_MB_PER_BUFFER") == expected
    assert os.environ.get("MLX_MAX_OPS_PER_BUFFER") == (expected and "60")


@pytest.mark.parametrize("users, ours", [("MLX_MAX_MB_PER_BUFFER", ("MLX_MAX_OPS_PER_BUFFER", "60")),
                                         ("MLX_MAX_OPS_PER_BUFFER", ("MLX_MAX_MB_PER_BUFFER", "200"))])
def test_configure_mlx_keeps_the_users_setting(monkeypatch, users, ours):
    """Each setting is the user's where the environment has it; the other keeps acm's default."""
    unset(monkeypatch, ours[0])
    monkeypatch.setenv(users, "700")
    monkeypatch.setattr(hardware, "device_info", lambda: {"compute_capability_major": 9, "compute_capability_minor": 0})
    hardware.configure_mlx()
    assert os.environ[users] == "700" and os.environ[ours[0]] == ours[1]


def test_configure_mlx_leaves_this_machine_alone(monkeypatch):
    """Here MLX runs on the CPU (or Metal): nothing to set."""
    if "compute_capability_major" in hardware.device_info():
        pytest.skip("an NVIDIA GPU is present")
    unset(monkeypatch, *GRAPH_SETTINGS)
    hardware.configure_mlx()
    assert "MLX_MAX_MB_PER_BUFFER" not in os.environ and "MLX_MAX_OPS_PER_BUFFER" not in os.environ

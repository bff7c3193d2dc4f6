"""The training-step benchmarks run, print one JSON line, and agree with each other."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SMALL = ["--preset", "nano", "--batch", "2", "--seq", "64", "--dtype", "float32"]


def test_fused_step_reaches_the_same_loss_as_plain_autodiff():
    fused = bench("train_step.py", *SMALL, "--steps", "3", "--warmup", "1")
    plain = bench("train_step.py", *SMALL, "--steps", "3", "--warmup", "1", "--autodiff")
    assert (fused["autodiff"], plain["autodiff"]) == (False, True)
    assert fused["steps"] == plain["steps"] == 4
    assert abs(fused["loss"] - plain["loss"]) <= 0.002  # printed to 3 decimals
    assert fused["tok_s"] > 0


def test_profile_reports_each_part():
    out = bench("profile_step.py", *SMALL)
    for part in ("step", "forward_loss", "forward_backward", "optimizer", "loss_head_fwd_bwd"):
        assert out[f"{part}_ms"] > 0
        assert out[f"{part}_peak_gb"] >= 0

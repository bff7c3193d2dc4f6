"""A full disk or a file size limit, hit for real (`ulimit -f` in the `acm` process, SIGXFSZ ignored
so a write returns EFBIG): every writer says it in the same one line, removes what it half wrote,
and a training run's status.json says "failed" with the reason."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.atomic import writing
from core.errors import AcmError, one_line, write_failure

ROOT = Path(__file__).resolve().parent.parent
DISK = "disk full or over the file size limit (ulimit -f)"  # MLX's and NumPy's words carry no errno
TOO_LARGE = "file too large (over the file size limit, ulimit -f)"


def acm_limited(project: Path, argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """The real `acm` in a process whose files may not grow past `limit` bytes."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "core.cli", "-c", str(project / "acm.toml"), *argv],
                          capture_output=True, text=True, preexec_fn=limit_files, cwd=project,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})


def the_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("acm: error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    return errors[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or ".partial" in p.name or ".new" in p.name)


@pytest.mark.parametrize("fmt,why", [("mlx", DISK), ("hf", DISK), ("gguf", TOO_LARGE)], ids=["mlx", "hf", "gguf"])
def test_an_export_over_the_limit_is_one_line_and_leaves_nothing(with_model, fmt, why):
    err = the_error(acm_limited(with_model, ["export", "--to", str(with_model / "out"), "--format", fmt], 20_000))
    assert err.startswith(f"acm: error: {why}: could not write the export ") and "partial files were removed" in err
    assert not (with_model / "out").exists() and hidden(with_model) == []


def test_prepare_over_the_limit_is_one_line_and_keeps_the_shards_in_force(prepared):
    manifest = (prepared / "data" / "tokens" / "language" / "manifest.json").read_text()
    err = the_error(acm_limited(prepared, ["prepare", "--force"], 3000))
    assert err.startswith(f"acm: error: {DISK}: could not write the language token shards")
    assert (prepared / "data" / "tokens" / "language" / "manifest.json").read_text() == manifest
    assert hidden(prepared) == []


def test_a_checkpoint_over_the_limit_fails_the_stage_with_the_reason(with_model):
    run = with_model / "runs" / "m" / "pretrain"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    err = the_error(acm_limited(with_model, ["train", "pretrain", "--run", "m", "--resume", "--steps", "30"], 200_000))
    assert f"{TOO_LARGE}: could not write checkpoint step-0000030" in err  # acm's own writer hears the errno
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # no .tmp-step-* left
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and TOO_LARGE in status["error"]


def test_numpy_short_writes_and_mlx_write_errors_read_as_the_disk_message(tmp_path):
    def numpy_short_write():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
        try:
            with open(tmp_path / "a.npy", "wb") as f:
                np.save(f, np.zeros(10_000))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with pytest.raises(OSError) as e:
            numpy_short_write()
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    assert write_failure(e.value) in (DISK, TOO_LARGE)
    assert one_line(RuntimeError("[write] Unable to write 48265 bytes to file.")) == DISK
    assert write_failure(RuntimeError("[matmul] shapes")) is None and write_failure(OSError(2, "gone")) is None


def test_writing_removes_its_partial_output_and_names_what(tmp_path):
    part = tmp_path / ".x.partial"
    with pytest.raises(AcmError, match=r"^disk full: could not write the thing \(its partial files were removed\)$"):
        with writing("the thing", part):
            part.mkdir()
            (part / "f").write_text("half")
            raise OSError(28, "No space left on device")
    assert not part.exists()
    with pytest.raises(ZeroDivisionError):  # a bug stays a bug
        with writing("the thing"):
            raise ZeroDivisionError

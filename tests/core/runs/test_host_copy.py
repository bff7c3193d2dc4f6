"""A checkpoint's bytes reach the file the same whichever way they come to host memory: views of
MLX's buffers (Apple silicon, the CPU) or copies through a pinned staging buffer (NVIDIA GPUs),
here with a stand-in for the CUDA runtime that copies with memmove."""
from __future__ import annotations

import ctypes

import mlx.core as mx
import pytest

from core.errors import AcmError
from core.runs import checkpoint, host_copy


class HostRuntime:
    """The four CUDA runtime calls the staging buffer makes, on host memory; `fail_copies` makes
    cudaMemcpyAsync return an error status."""

    def __init__(self, fail_copies: bool = False):
        self.buffers, self.copies, self.fail_copies = [], 0, fail_copies

    def cudaStreamCreateWithFlags(self, stream, flags):  # noqa: N802 (the runtime's names)
        return 0

    def cudaMallocHost(self, pointer, size):  # noqa: N802
        self.buffers.append(ctypes.create_string_buffer(size.value))
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_void_p))[0] = ctypes.addressof(self.buffers[-1])
        return 0

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        if self.fail_copies:
            return 700
        self.copies += 1
        ctypes.memmove(dst, src, n.value)
        return 0

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return 0

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return 0


def _chunk(n: int) -> mx.array:
    a = (mx.arange(n) % 251).astype(mx.uint8)
    mx.eval(a)
    return a


@pytest.mark.parametrize("staged", [False, True])
def test_pieces_hold_a_buffer_s_bytes_in_order_and_no_piece_is_larger_than_the_limit(monkeypatch, staged):
    monkeypatch.setattr(host_copy, "PIECE_BYTES", 64)
    runtime = HostRuntime()
    if staged:
        monkeypatch.setattr(host_copy, "_cuda_staging", lambda: host_copy.CudaStaging(runtime, 64))
    chunk = _chunk(1000)
    got = [bytes(p) for p in host_copy.pieces(chunk)]
    assert b"".join(got) == bytes(memoryview(chunk)) and max(map(len, got)) == 64 and len(got) == 16
    assert runtime.copies == (16 if staged else 0)


def test_a_checkpoint_written_through_the_staging_buffer_is_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setattr(host_copy, "PIECE_BYTES", 48)
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 200)
    params = {"w": mx.arange(300.0).reshape(20, 15), "b": mx.arange(7.0).astype(mx.bfloat16)}
    state = {"m": mx.ones((33,)), "step": mx.array(3, mx.uint64)}
    checkpoint.write(tmp_path / "plain", 1, checkpoint.snapshot(params, state), {"config": {}})
    runtime = HostRuntime()
    monkeypatch.setattr(host_copy, "_cuda_staging", lambda: host_copy.CudaStaging(runtime, 48))
    checkpoint.write(tmp_path / "staged", 1, checkpoint.snapshot(params, state), {"config": {}})
    assert runtime.copies > 10
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        plain, staged = (tmp_path / w / "step-0000001" / name for w in ("plain", "staged"))
        assert staged.read_bytes() == plain.read_bytes()
    last = checkpoint.latest(tmp_path / "staged")
    got, opt = checkpoint.load_weights(last), checkpoint.load_optimizer(last)
    for name, a in (params | state).items():
        back = got.get(name, opt.get(name))
        assert back.dtype == a.dtype and mx.array_equal(back, a).item(), name


def test_a_failed_copy_to_host_memory_is_one_line_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(host_copy, "_cuda_staging", lambda: host_copy.CudaStaging(HostRuntime(fail_copies=True), 64))
    snap = checkpoint.snapshot({"w": mx.arange(10.0)}, {})
    why = r"could not copy it to host memory \(CUDA runtime error 700\): could not write checkpoint"
    with pytest.raises(AcmError, match=why) as err:
        checkpoint.write(tmp_path, 1, snap, {"config": {}})
    assert "\n" not in str(err.value)
    assert checkpoint.latest(tmp_path) is None and not list(tmp_path.glob(".tmp-*"))

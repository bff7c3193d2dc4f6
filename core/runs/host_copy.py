"""A device buffer's bytes in host memory, a piece at a time, for writing to disk.

On Apple silicon (and the CPU) an MLX buffer already is host memory: its pieces are views, no copy.
On NVIDIA GPUs MLX's buffer protocol hands over managed memory that still lives on the GPU, and a
CPU reading it moves it a page fault at a time: 0.5-0.9 s for a tiny checkpoint's 1.19 GB on an
H200 machine, most of that save's time. There each piece is copied by the GPU's copy engine into
one pinned host buffer instead (0.02 s for the same bytes; bench/RESULTS.md), through the CUDA
runtime MLX itself runs on, on a stream of its own that never waits for the training steps.
"""
from __future__ import annotations

import ctypes
import errno
import threading
from collections.abc import Iterator
from functools import cache

import mlx.core as mx
import numpy as np

PIECE_BYTES = 64 << 20  # one pinned buffer this size; a write call per piece
USE_CUDA = True  # False: the CPU reads MLX's managed memory itself (the bench's comparison)
_CUDA_LIBRARIES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
_NON_BLOCKING = 1  # cudaStreamNonBlocking
_MEMCPY_DEFAULT = 4  # cudaMemcpyDefault: the pointers say where each side is


class CudaStaging:
    """One pinned host buffer and a non-blocking stream of the CUDA runtime; `copy` fills the buffer
    from a device address. One thread at a time (a lock)."""

    def __init__(self, runtime: ctypes.CDLL, size: int):
        self.rt, self.lock = runtime, threading.Lock()
        self.stream, pinned = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(runtime.cudaStreamCreateWithFlags(ctypes.byref(self.stream), _NON_BLOCKING))
        try:
            self._check(runtime.cudaMallocHost(ctypes.byref(pinned), ctypes.c_size_t(size)))
        except OSError:
            runtime.cudaStreamDestroy(self.stream)
            raise
        self.address = pinned.value
        self.buffer = memoryview((ctypes.c_uint8 * size).from_address(pinned.value)).cast("B")

    def _check(self, status: int) -> None:
        if status != 0:
            raise OSError(errno.EIO, f"the GPU could not copy it to host memory (CUDA runtime error {status})")

    def copy(self, source: int, n: int) -> memoryview:
        """The n bytes at device (or managed) address `source`, in the pinned buffer until the next copy."""
        self._check(self.rt.cudaMemcpyAsync(ctypes.c_void_p(self.address), ctypes.c_void_p(source),
                                            ctypes.c_size_t(n), _MEMCPY_DEFAULT, self.stream))
        self._check(self.rt.cudaStreamSynchronize(self.stream))
        return self.buffer[:n]


@cache
def _cuda_staging() -> CudaStaging | None:
    """The staging buffer where MLX runs on CUDA and the runtime loads; None elsewhere."""
    if not mx.cuda.is_available():
        return None
    for name in _CUDA_LIBRARIES:  # the first that loads: the runtime MLX has loaded, where it has
        try:
            runtime = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            return CudaStaging(runtime, PIECE_BYTES)
        except (OSError, AttributeError):  # no pinned memory to be had: the CPU reads MLX's buffers
            return None
    return None


def pieces(chunk: mx.array) -> Iterator[memoryview]:
    """The bytes of a 1-D uint8 array in order, in pieces of at most PIECE_BYTES. A piece may be
    reused for the next one: use it (write it) before asking for the next."""
    view = memoryview(chunk).cast("B")
    staging = _cuda_staging() if USE_CUDA else None
    if staging is None:
        for start in range(0, len(view), PIECE_BYTES):
            yield view[start:start + PIECE_BYTES]
        return
    base = np.frombuffer(view, np.uint8).ctypes.data if len(view) else 0
    with staging.lock:
        for start in range(0, len(view), PIECE_BYTES):
            yield staging.copy(base + start, min(PIECE_BYTES, len(view) - start))

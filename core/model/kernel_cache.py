"""Hand-written CUDA kernels compiled once per machine, not once per process.

`mx.fast.cuda_kernel` compiles its kernel with NVRTC in every process (MLX keeps its own kernels
on disk, not custom ones): for the two layer-norm kernels that was 2.4-5.8 s of every stage's
first step on an H200. Here a kernel's complete source, which needs no header, is compiled with
the NVRTC library the process already has (MLX's CUDA build loads it) for the GPU's architecture
(0.1-0.2 s), and the binary is kept under ~/.cache/acm/kernels (named by a hash of the source, the
architecture and NVRTC's version, and checked against its own hash when read back) for
`mx.fast.precompiled_cuda_kernel`. Where NVRTC or the driver cannot be reached, or the compile
fails, `binary` says None and the caller compiles through MLX as before.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from core.atomic import read_regular, write_bytes

KERNEL_LIMIT = 256 << 20  # bytes: a compiled kernel takes kilobytes to a few megabytes

Compiler = Callable[[str, str, str], bytes | None]  # (name, source, arch) -> cubin, or None
MAGIC = b"acm kernel 1\n"  # a cache file: this, the binary's sha256, the binary


def cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/acm/kernels or ~/.cache/acm/kernels; None where there is no home to find."""
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acm" / "kernels"
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry (a container's arbitrary user)
        return None


def binary(name: str, source: str, folder: Path | None = None, compile_: Compiler | None = None,
           arch: str | None = None) -> bytes | None:
    """The compiled `source` (kernel `name`) for this GPU: from the cache, or compiled and kept there.
    None when it cannot be compiled here."""
    arch = arch or gpu_arch()
    compile_ = compile_ or nvrtc_compile
    if arch is None:
        return None
    folder = folder or cache_dir()
    if folder is None:
        return compile_(name, source, arch) or None
    key = hashlib.sha256("\0".join((source, arch, nvrtc_version())).encode()).hexdigest()[:32]
    path = folder / f"{name}-{key}.bin"
    try:
        data = _unpack(read_regular(path, KERNEL_LIMIT))  # a FIFO put there is not waited on
        if data is not None:
            return data
    except OSError:
        pass
    data = compile_(name, source, arch)
    if data:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes(path, MAGIC + hashlib.sha256(data).digest() + data)
        except OSError:  # an unwritable cache: compiled again next time
            pass
    return data or None


def _unpack(raw: bytes) -> bytes | None:
    """A cache file's binary, or None where the file is not one acm wrote whole."""
    head = len(MAGIC) + 32
    if not raw.startswith(MAGIC) or len(raw) <= head:
        return None
    data = raw[head:]
    return data if hashlib.sha256(data).digest() == raw[len(MAGIC):head] else None


# ------------------------------------------------------------ the driver and NVRTC, through ctypes

def _loaded(stem: str) -> str | None:
    """The path of a shared library this process has loaded whose name starts with `stem`."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith(stem):
                    return path
    except OSError:
        pass
    return None


def _library(stem: str, names: tuple[str, ...]) -> ctypes.CDLL | None:
    for candidate in (_loaded(stem), *names):
        if candidate:
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    return None


@cache
def _nvrtc() -> ctypes.CDLL | None:
    return _library("libnvrtc.so", ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"))


@cache
def gpu_arch() -> str | None:
    """e.g. "sm_90" for the process's first CUDA device, from the driver; None without one."""
    cuda = _library("libcuda.so", ("libcuda.so.1", "libcuda.so"))
    if cuda is None:
        return None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if (cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(device), 0)
            or cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # compute capability major
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)):  # and minor
        return None
    return f"sm_{major.value}{minor.value}"


@cache
def nvrtc_version() -> str:
    lib = _nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib is None or lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)):
        return "none"
    return f"{major.value}.{minor.value}"


def nvrtc_compile(name: str, source: str, arch: str) -> bytes | None:
    """`source` compiled for `arch` with NVRTC (no headers, no fast math, as MLX compiles), or None."""
    lib = _nvrtc()
    if lib is None:
        return None
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None):
        return None
    try:
        options = (ctypes.c_char_p * 1)(f"--gpu-architecture={arch}".encode())
        size = ctypes.c_size_t()
        if lib.nvrtcCompileProgram(prog, 1, options) or lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)):
            return None
        out = ctypes.create_string_buffer(size.value)
        return None if lib.nvrtcGetCUBIN(prog, out) else out.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))

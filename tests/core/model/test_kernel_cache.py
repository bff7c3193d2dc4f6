"""Hand-written kernels compiled once per machine (core/model/kernel_cache.py): the cache's behaviour,
with a stand-in compiler (the real one needs NVRTC and a GPU; bench/cuda_kernels.py runs it there)."""
from __future__ import annotations

import mlx.core as mx

from core.model import cuda_gelu, cuda_kernels, kernel_cache

CUBIN = b"\x7fELF" + b"\0" * 60


class Compiler:
    """Counts its compiles; returns a binary named after the source, or None when told to fail."""

    def __init__(self, fails: bool = False):
        self.calls: list[tuple[str, str]] = []
        self.fails = fails

    def __call__(self, name: str, source: str, arch: str) -> bytes | None:
        self.calls.append((name, arch))
        return None if self.fails else CUBIN + source.encode()


def test_a_kernel_is_compiled_once_and_read_back_from_the_cache(tmp_path):
    compiler = Compiler()
    first = kernel_cache.binary("k", "source one", tmp_path, compiler, "sm_90")
    again = kernel_cache.binary("k", "source one", tmp_path, compiler, "sm_90")
    assert first == again == CUBIN + b"source one"
    assert compiler.calls == [("k", "sm_90")]
    assert [p.name.startswith("k-") and p.suffix == ".bin" for p in tmp_path.iterdir()] == [True]


def test_another_source_or_architecture_is_another_binary(tmp_path):
    compiler = Compiler()
    kernel_cache.binary("k", "source one", tmp_path, compiler, "sm_90")
    kernel_cache.binary("k", "source two", tmp_path, compiler, "sm_90")
    kernel_cache.binary("k", "source one", tmp_path, compiler, "sm_80")
    assert len(compiler.calls) == 3 and len(list(tmp_path.iterdir())) == 3


def test_a_damaged_cache_file_is_compiled_again_and_replaced(tmp_path):
    compiler = Compiler()
    kernel_cache.binary("k", "src", tmp_path, compiler, "sm_90")
    (path,) = tmp_path.iterdir()
    whole = path.read_bytes()
    for damaged in (b"", whole[:-1], whole[:-1] + bytes([whole[-1] ^ 1]), b"junk" + whole[4:]):
        path.write_bytes(damaged)
        assert kernel_cache.binary("k", "src", tmp_path, compiler, "sm_90") == CUBIN + b"src"
        assert path.read_bytes() == whole
    assert len(compiler.calls) == 5


def test_a_failed_compile_says_none_and_leaves_no_file(tmp_path):
    compiler = Compiler(fails=True)
    assert kernel_cache.binary("k", "src", tmp_path, compiler, "sm_90") is None
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_still_gives_the_binary(tmp_path):
    blocked = tmp_path / "kernels"
    blocked.write_text("a file where the cache folder would be")
    compiler = Compiler()
    assert kernel_cache.binary("k", "src", blocked, compiler, "sm_90") == CUBIN + b"src"
    assert kernel_cache.binary("k", "src", blocked, compiler, "sm_90") == CUBIN + b"src"
    assert len(compiler.calls) == 2


def test_without_a_gpu_nothing_is_compiled(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_cache, "gpu_arch", lambda: None)
    compiler = Compiler()
    assert kernel_cache.binary("k", "src", tmp_path, compiler) is None
    assert compiler.calls == []


def test_the_cache_lives_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel_cache.cache_dir() == tmp_path / "acm" / "kernels"


def test_a_standalone_kernel_names_itself_and_includes_no_header():
    source = cuda_kernels.standalone_source("layer_norm_vjp", "acm_k", mx.bfloat16, mx.float32, 768, 1e-5, 4)
    signature = 'extern "C" __global__ void acm_k(const T* x, const W* w, const T* g, T* dx, float* part, int ROWS)'
    assert signature in source
    assert "typedef acm_bf16 T;" in source and "typedef float W;" in source and "constexpr int C = 768;" in source
    assert "#include" not in source


def test_without_a_home_to_cache_in_the_kernel_is_still_compiled(tmp_path, monkeypatch):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(kernel_cache.Path, "home", staticmethod(no_home))
    assert kernel_cache.cache_dir() is None
    compiler = Compiler()
    assert kernel_cache.binary("k", "src", compile_=compiler, arch="sm_90") == CUBIN + b"src"
    assert compiler.calls == [("k", "sm_90")]


def test_the_residual_kernels_take_their_arrays_in_the_order_mlx_passes_them():
    """Inputs, then outputs, then the row count: a parameter out of place would read the wrong array."""
    signatures = {
        "add_layer_norm": "(const T* x, const T* h, const W* w, const W* b, T* s, T* y, int ROWS)",
        "add_layer_norm_vjp": "(const T* x, const W* w, const T* g, const T* gs, T* dx, float* part, int ROWS)",
        "layer_norm": "(const T* x, const W* w, const W* b, T* y, int ROWS)",
    }
    for kind, params in signatures.items():
        source = cuda_kernels.standalone_source(kind, "acm_k", mx.bfloat16, mx.bfloat16, 768, 1e-5, 4)
        assert f'extern "C" __global__ void acm_k{params}' in source
        assert f"#define RESIDUAL {int(kind.startswith('add_'))}\n" in source


def test_the_gelu_kernels_take_their_arrays_in_the_order_mlx_passes_them():
    for kind, params in (("gelu", "(const T* h, T* a, int N)"),
                         ("gelu_vjp", "(const T* g, const T* h, T* dh, T* a, int N)")):
        source = cuda_gelu.standalone_source(kind, "acm_k", mx.bfloat16)
        assert f'extern "C" __global__ void acm_k{params}' in source
        assert "typedef acm_bf16 T;" in source and "#include" not in source


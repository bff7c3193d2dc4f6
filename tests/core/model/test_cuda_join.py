"""Joins of arrays side by side: the kernel's layout, and the fallback MLX's concatenation gives."""
import mlx.core as mx
import pytest

from core.model import cuda_join


def test_joined_puts_each_row_side_by_side_with_zeros_for_missing_parts():
    a = mx.arange(6, dtype=mx.float32).reshape(3, 2)
    c = mx.arange(100, 109, dtype=mx.float32).reshape(3, 3)
    got = cuda_join.joined([a, None, c], [2, 4, 3], mx.float32)
    expected = mx.concatenate([a, mx.zeros((3, 4)), c], axis=1).reshape(-1)
    assert got.shape == (27,) and mx.array_equal(got, expected).item()


def test_a_missing_first_part_is_zeros_too():
    c = mx.arange(6, dtype=mx.float32).reshape(2, 3)
    got = cuda_join.joined([None, c], [2, 3], mx.float32)
    assert mx.array_equal(got, mx.concatenate([mx.zeros((2, 2)), c], axis=1).reshape(-1)).item()


def test_joined_casts_to_the_dtype_asked_and_all_missing_is_zeros():
    parts = [mx.array([1.5, 2.25]), mx.array([3.0], mx.bfloat16)]
    got = cuda_join.joined(parts, [2, 1], mx.bfloat16)
    assert got.dtype == mx.bfloat16 and got.tolist() == [1.5, 2.25, 3.0]
    assert cuda_join.joined([None, None], [3, 5], mx.float32).tolist() == [0.0] * 8


def test_the_kernel_runs_only_on_cuda_with_whole_16_byte_pieces(monkeypatch):
    x = mx.zeros((4, 8), mx.bfloat16)
    if not cuda_join.cuda_kernels.available():
        assert not cuda_join.covers([x, x], [8, 8], mx.bfloat16)  # CPU and Metal: MLX's concatenation
    monkeypatch.setattr(cuda_join.cuda_kernels, "available", lambda: True)  # as on an NVIDIA GPU
    assert cuda_join.covers([x, None], [8, 8], mx.bfloat16)
    assert not cuda_join.covers([x, x], [8, 4], mx.bfloat16)  # 4 bf16 values: half a piece
    assert not cuda_join.covers([None], [8], mx.bfloat16)  # nothing to read the rows from
    assert not cuda_join.covers([x, x.astype(mx.float32)], [8, 8], mx.bfloat16)
    assert not cuda_join.covers([x, x], [8, 8], mx.float64)
    many = cuda_join.MAX_PARTS + 1  # parts past what a kernel's parameters and constants hold
    assert cuda_join.covers([x] + [None] * (many - 2), [8] * (many - 1), mx.bfloat16)
    assert not cuda_join.covers([x] + [None] * (many - 1), [8] * many, mx.bfloat16)


@pytest.mark.parametrize("present", [(True, True, True), (True, False, True), (False, True, False)])
def test_the_kernel_s_layout_maps_parts_to_their_arguments_and_columns(present):
    """Part j starts at column ACM_START[j]; the body reads it from the argument of the j-th present
    part, and never from an absent one (left as zeros)."""
    header, body = cuda_join._layout((8, 16, 24), present)
    assert "ACM_START[4] = {0LL, 8LL, 24LL, 48LL}" in header and "#define ACM_TOTAL 48LL" in header
    cases = [line.strip() for line in body.splitlines() if line.strip().startswith("case ")]
    args = iter(range(3))
    assert cases == [f"case {j}: src = p{next(args)}; break;" for j in range(3) if present[j]]
    source = cuda_join.standalone_source((8, 16, 24), present, mx.bfloat16)
    assert source.count("const T* p") == sum(present) and "T* out, int ROWS)" in source

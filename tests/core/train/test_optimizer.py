"""FlatAdamW: the same weights as MLX's per-tensor AdamW, from flat buffers."""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from core.train.optimizer import ROW, FlatAdamW, global_norm, reference_adamw


def tree(rng) -> dict:
    return {"w": mx.array(rng.normal(size=(3, 5)), mx.float32),
            "h": [{"b": mx.array(rng.normal(size=(7,)), mx.float32),
                   "g": mx.array(rng.normal(size=(4, 2, 3)), mx.float32)}],
            "s": mx.array(rng.normal(size=(1,)), mx.float32)}


def flat(t: dict) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(t)}


def test_weight_decay_applies_to_matrices_only():
    params = {"w": mx.ones((2, 2)), "b": mx.ones((2,))}
    opt = FlatAdamW(params, 0.1, 0.5)
    opt.clip_and_update(opt.pack_gradients({"w": mx.zeros((2, 2)), "b": mx.zeros((2,))}, mx.float32), 0)
    new = opt.parameters()
    assert mx.allclose(new["w"], mx.full((2, 2), 0.95)).item()  # decayed by lr * wd
    assert mx.allclose(new["b"], mx.ones((2,))).item()  # biases and gains are left alone


def test_adamw_is_bias_corrected_as_pytorchs():
    opt = FlatAdamW({"b": mx.zeros((2,)), "w": mx.ones((2, 2))}, 0.1, 0.5)
    grads = {"b": mx.array([0.5, -2.0]), "w": mx.full((2, 2), 0.25)}
    opt.clip_and_update(opt.pack_gradients(grads, mx.float32), 0)
    new = opt.parameters()
    # step 1 with bias correction: m_hat / sqrt(v_hat) = sign(g), so each entry moves by the full lr
    # (without it, by 0.1 / sqrt(0.05) = 0.45 of it)
    assert mx.allclose(new["b"], mx.array([-0.1, 0.1]), atol=1e-6).item()
    assert mx.allclose(new["w"], mx.full((2, 2), 0.95 - 0.1), atol=1e-6).item()  # decay, then the step


@pytest.mark.parametrize("clip", [0.0, 1.5])
def test_steps_equal_mlx_adamw_tensor_by_tensor(clip):
    rng = np.random.default_rng(0)
    params = tree(rng)
    opt, ref = FlatAdamW(params, 0.05, 0.1), reference_adamw(0.05, 0.1)
    ref_params = params
    for step in range(4):
        grads = tree(rng)
        opt.learning_rate = 0.05 / (step + 1)  # a schedule
        ref.learning_rate = mx.array(0.05 / (step + 1))
        norm = opt.clip_and_update(opt.pack_gradients(grads, mx.float32), clip)
        exact = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in flat(grads).values()))
        assert norm.item() == pytest.approx(exact, rel=1e-5)
        scale = min(1.0, clip / (exact + 1e-6)) if clip else 1.0
        ref_params = ref.apply_gradients({k: v for k, v in _scaled(grads, scale).items()}, ref_params)
    mine, theirs = flat(opt.parameters()), flat(ref_params)
    assert mine.keys() == theirs.keys()
    for k in mine:
        np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-5, atol=1e-6)
    m_mine, m_ref = flat(opt.checkpoint_state()), flat(ref.state)
    for k in m_ref:
        np.testing.assert_allclose(m_mine[k], m_ref[k], rtol=1e-5, atol=1e-7)


def _scaled(t: dict, scale: float) -> dict:
    return tree_map(lambda g: g * scale, t)


def test_checkpoint_state_round_trips_through_mlx_layout():
    rng = np.random.default_rng(1)
    opt = FlatAdamW(tree(rng), 0.01, 0.1)
    for _ in range(2):
        opt.clip_and_update(opt.pack_gradients(tree(rng), mx.float32), 1.0)
    saved_params, saved_state = opt.parameters(), opt.checkpoint_state()
    assert int(saved_state["step"].item()) == 2 and set(saved_state["h"][0]) == {"b", "g"}
    other = FlatAdamW(tree(np.random.default_rng(2)), 0.01, 0.1)
    other.load(saved_params, saved_state)
    grads = tree(rng)
    for o in (opt, other):
        o.clip_and_update(o.pack_gradients(grads, mx.float32), 1.0)
    a, b = flat(opt.parameters()), flat(other.parameters())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # an MLX AdamW state resumes too: same layout
    ref = reference_adamw(0.01, 0.1)
    ref.init(saved_params)
    assert set(flat(ref.state)) - {"step", "learning_rate"} == set(flat(saved_state)) - {"step", "learning_rate"}


def test_buffers_are_whole_rows_and_padding_stays_zero():
    rng = np.random.default_rng(3)
    opt = FlatAdamW(tree(rng), 0.1, 0.5)
    assert all(n % ROW == 0 for n in opt.sizes.values()) and set(opt.sizes) == {"decay", "plain"}
    opt.clip_and_update(opt.pack_gradients(tree(rng), mx.float32), 1.0)
    used = {g: sum(s.size for s in opt.slots if s.group == g) for g in opt.sizes}
    for g, n in used.items():
        assert not np.any(np.array(opt.state["params"][g][n:])) and not np.any(np.array(opt.state["v"][g][n:]))


def test_global_norm_matches_numpy_over_mixed_dtypes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=3 * ROW), rng.normal(size=ROW)
    grads = {"decay": mx.array(a, mx.float32), "plain": mx.array(b).astype(mx.bfloat16)}
    exact = np.sqrt((a**2).sum() + (np.array(grads["plain"].astype(mx.float32)).astype(np.float64) ** 2).sum())
    assert global_norm(grads).item() == pytest.approx(exact, rel=2e-3)  # bf16 row sums


def test_update_writes_the_compute_copy():
    opt = FlatAdamW({"wte": {"weight": mx.ones((4, 3))}, "lin": {"weight": mx.ones((3, 3)), "bias": mx.ones((3,))}},
                    0.1, 0.1, mx.bfloat16)
    views = opt.compute_views()
    assert {v.dtype for _, v in tree_flatten(views)} == {mx.bfloat16} and views["lin"]["weight"].shape == (3, 3)
    grads = {"wte": {"weight": mx.ones((4, 3))}, "lin": {"weight": mx.ones((3, 3)), "bias": -mx.ones((3,))}}
    opt.clip_and_update(opt.pack_gradients(grads, mx.bfloat16), 0)
    master = flat(opt.parameters())
    compute = flat(tree_map(lambda v: v.astype(mx.float32), opt.compute_views()))
    for k in master:
        np.testing.assert_array_equal(np.array(mx.array(master[k]).astype(mx.bfloat16).astype(mx.float32)), compute[k])
    assert master["lin.bias"][0] == pytest.approx(1.1) and master["lin.weight"][0, 0] == pytest.approx(0.99 - 0.1)
    assert not np.array_equal(master["lin.weight"], np.ones((3, 3)))


def muon_tree(rng, blocks: int = 2) -> dict:
    """Blocks whose matrices alternate in shape, as a GPT's do (fc, proj, fc, proj, ...)."""
    return {"wte": {"weight": mx.array(rng.normal(size=(6, 4)), mx.float32)},
            "h": [{"fc": {"weight": mx.array(rng.normal(size=(8, 4)), mx.float32),
                          "bias": mx.array(rng.normal(size=(8,)), mx.float32)},
                   "proj": {"weight": mx.array(rng.normal(size=(4, 8)), mx.float32)}} for _ in range(blocks)]}


def test_muon_steps_equal_mlx_muon_on_the_blocks_and_adamw_elsewhere():
    rng = np.random.default_rng(3)
    params = muon_tree(rng)
    opt = FlatAdamW(params, 0.01, 0.0, muon_lr=0.02)
    ref = optim.MultiOptimizer([optim.Muon(0.02, weight_decay=0.0), reference_adamw(0.01, 0.0)],
                               [lambda path, p: path.startswith("h.") and p.ndim == 2])
    ref_params = params
    for _ in range(3):
        grads = muon_tree(rng)
        opt.clip_and_update(opt.pack_gradients(grads, mx.float32), 0)
        ref_params = ref.apply_gradients(grads, ref_params)
    mine, theirs = flat(opt.parameters()), flat(ref_params)
    for k in mine:
        np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-4, atol=1e-5, err_msg=k)
    state = flat(opt.checkpoint_state())
    assert "h.0.fc.weight.m" in state and "h.0.fc.weight.v" not in state  # Muon keeps one moment
    # the matrices of one shape lie side by side, orthogonalised as one batch
    assert [(r.shape, r.count) for r in opt.muon_runs] == [((8, 4), 2), ((4, 8), 2)]
    assert "wte.weight.v" in state and "h.0.fc.bias.v" in state


def test_muon_follows_the_schedule_and_decays_its_matrices():
    params = {"h": [{"w": mx.ones((2, 2))}], "b": mx.ones((2,))}
    opt = FlatAdamW(params, 0.1, 0.5, muon_lr=0.2)
    opt.learning_rate = 0.05  # half the peak: Muon's rate halves too
    opt.clip_and_update(opt.pack_gradients({"h": [{"w": mx.zeros((2, 2))}], "b": mx.zeros((2,))}, mx.float32), 0)
    assert mx.allclose(opt.parameters()["h"][0]["w"], mx.full((2, 2), 1 - 0.1 * 0.5), atol=1e-6).item()


def test_muon_resumes_from_its_checkpoint_state():
    rng = np.random.default_rng(4)
    opt = FlatAdamW(muon_tree(rng), 0.01, 0.1, muon_lr=0.02)
    opt.clip_and_update(opt.pack_gradients(muon_tree(rng), mx.float32), 0)
    again = FlatAdamW(muon_tree(np.random.default_rng(9)), 0.01, 0.1, muon_lr=0.02)
    again.load(opt.parameters(), opt.checkpoint_state())
    grads = muon_tree(rng)
    for o in (opt, again):
        o.clip_and_update(o.pack_gradients(grads, mx.float32), 0)
    for k, v in flat(opt.parameters()).items():
        np.testing.assert_allclose(flat(again.parameters())[k], v, rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("buckets", [1, 2, 3, 5])
def test_packed_gradients_join_every_piece_in_order_reduced_by_bucket(buckets):
    """Each buffer is its parameters' gradients in slot order, zeros for a missing one (the first of
    its buffer here, and one a bucket starts with) and for the padding to whole rows, each bucket
    passed through `reduce` once."""
    rng = np.random.default_rng(7)
    shapes = {"a": (600, 3), "b": (50, 2), "c": (400, 3), "d": (300, 3), "e": (900,), "f": (1500,), "g": (700,)}
    params = {k: mx.array(rng.normal(size=s), mx.float32) for k, s in shapes.items()}
    opt = FlatAdamW(params, 0.1, 0.0)
    grads = {k: mx.array(rng.normal(size=s), mx.float32) for k, s in shapes.items() if k not in ("a", "c", "e")}
    calls = []

    def reduce(x):
        calls.append(x.size)
        return x * 2

    packed = opt.pack_gradients(grads, mx.float32, reduce, buckets)
    for g, flat_grad in packed.items():
        expected = np.zeros(opt.sizes[g], np.float32)
        for s in (s for s in opt.slots if s.group == g):
            if s.name in grads:
                expected[s.offset:s.offset + s.size] = 2 * np.array(grads[s.name]).reshape(-1)
        assert np.array_equal(np.array(flat_grad), expected)
    assert sum(calls) == sum(opt.sizes.values())
    assert len(opt.sizes) * min(buckets, 2) <= len(calls) <= len(opt.sizes) * buckets  # buckets > 1 split each buffer

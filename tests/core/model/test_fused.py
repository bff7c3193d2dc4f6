"""The hand-written MLP and linear derivatives and the loss agree with plain autodiff."""
import re

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_map

from core.model import fused


def reference_mlp(x, w_fc, b_fc, w_proj, b_proj):
    return mx.addmm(b_proj, nn.gelu_approx(mx.addmm(b_fc, x, w_fc.T)), w_proj.T)


@pytest.mark.parametrize("compiled", [False, True])
def test_mlp_matches_autodiff(compiled):
    mx.random.seed(1)
    args = [mx.random.normal((2, 7, 16)), mx.random.normal((64, 16)) * 0.3, mx.random.normal((64,)),
            mx.random.normal((16, 64)) * 0.3, mx.random.normal((16,))]
    cot = mx.random.normal((2, 7, 16))

    def grads(f):
        g = mx.grad(lambda *a: (f(*a) * cot).sum(), argnums=tuple(range(5)))
        return (mx.compile(g) if compiled else g)(*args)

    assert mx.allclose(fused.mlp(*args)[0], reference_mlp(*args), atol=1e-5)
    for ours, ref in zip(grads(lambda *a: fused.mlp(*a)[0]), grads(reference_mlp)):
        assert ours.shape == ref.shape
        assert mx.allclose(ours, ref, atol=1e-4, rtol=1e-4), mx.abs(ours - ref).max()


@pytest.mark.parametrize("compiled", [False, True])
def test_linear_matches_autodiff(compiled):
    mx.random.seed(4)
    args = [mx.random.normal((2, 7, 16)), mx.random.normal((48, 16)) * 0.3, mx.random.normal((48,))]
    cot = mx.random.normal((2, 7, 48))

    def grads(f):
        g = mx.grad(lambda *a: (f(*a) * cot).sum(), argnums=(0, 1, 2))
        return (mx.compile(g) if compiled else g)(*args)

    plain = lambda x, w, b: mx.addmm(b, x, w.T)  # noqa: E731
    assert mx.allclose(fused.linear(*args), plain(*args), atol=1e-5)
    for ours, ref in zip(grads(fused.linear), grads(plain)):
        assert ours.shape == ref.shape
        assert mx.allclose(ours, ref, atol=1e-4, rtol=1e-4), mx.abs(ours - ref).max()


@pytest.mark.parametrize("compiled", [False, True])
def test_split_qkv_matches_autodiff_of_split(compiled):
    mx.random.seed(5)
    qkv = mx.random.normal((2, 7, 48))
    cots = [mx.random.normal((2, 7, 16)) for _ in range(3)]

    def grad(split):
        g = mx.grad(lambda t: sum((p * c).sum() for p, c in zip(split(t), cots)))
        return (mx.compile(g) if compiled else g)(qkv)

    assert all(mx.array_equal(a, b).item() for a, b in zip(fused.split_qkv(qkv), mx.split(qkv, 3, axis=-1)))
    ours, ref = grad(fused.split_qkv), grad(lambda t: mx.split(t, 3, axis=-1))
    assert ours.shape == qkv.shape and mx.array_equal(ours, ref).item()


def test_mlp_keeps_less_for_backward():
    """What a compiled forward + backward holds per layer of a stack of MLPs: less than autodiff's."""
    def peak(f, n_layers):
        mx.random.seed(2)
        x = mx.random.normal((8, 128, 64))
        layers = [[mx.random.normal((256, 64)) * 0.1, mx.zeros((256,)), mx.random.normal((64, 256)) * 0.1,
                   mx.zeros((64,))] for _ in range(n_layers)]
        mx.eval(x, layers)

        def loss(layers, x):
            for w in layers:
                x = x + f(x, *w)
            return x.sum()

        step = mx.compile(mx.grad(loss))
        mx.eval(step(layers, x))
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(step(layers, x))
        return mx.get_peak_memory() - before

    def per_layer(f):
        return (peak(f, 4) - peak(f, 2)) / 2

    assert per_layer(lambda *a: fused.mlp(*a)[0]) < 0.75 * per_layer(reference_mlp)


def test_cross_entropy_matches_reference_in_low_precision():
    mx.random.seed(3)
    logits = mx.random.normal((3, 5, 100)) * 4
    targets = mx.random.randint(0, 100, (3, 5))
    ref = nn.losses.cross_entropy(logits, targets, reduction="mean")
    assert abs(fused.cross_entropy(logits, targets).item() - ref.item()) < 1e-5
    low = fused.cross_entropy(logits.astype(mx.bfloat16), targets)
    assert low.dtype == mx.float32
    assert abs(low.item() - ref.item()) < 0.02
    g = mx.grad(lambda z: fused.cross_entropy(z, targets))(logits)
    g_ref = mx.grad(lambda z: nn.losses.cross_entropy(z, targets, reduction="mean"))(logits)
    assert mx.allclose(g, g_ref, atol=1e-6)


def test_model_loss_and_gradients_match_plain_autodiff(monkeypatch):
    from mlx.utils import tree_flatten

    from core.model.gpt import GPT, MLP
    from core.presets import get_preset

    shape = get_preset("nano")
    mx.random.seed(0)
    model = GPT(shape)
    idx = mx.random.randint(0, shape.vocab_size, (2, 33))

    def loss_and_grads():
        loss, grads = nn.value_and_grad(model, lambda m, x, y: m.loss(x, y))(model, idx[:, :-1], idx[:, 1:])
        return loss, dict(tree_flatten(grads))

    loss, grads = loss_and_grads()
    monkeypatch.setattr(MLP, "__call__", lambda self, x, decoding=False: self.c_proj(nn.gelu_approx(self.c_fc(x))))
    monkeypatch.setattr(fused, "linear", lambda x, w, b: mx.addmm(b, x, w.T))
    ref_loss, ref_grads = loss_and_grads()
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert mx.allclose(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4), k


def _operations(y: mx.array, tmp_path) -> list[str]:
    """The operations MLX's graph for y holds (a fused kernel is one, "Compiled..."): what decoding
    launches for it."""
    mx.export_to_dot(str(tmp_path / "graph.dot"), y)
    return re.findall(r'label ="([A-Za-z_]+)"', (tmp_path / "graph.dot").read_text())


def test_decoding_s_gelu_is_gelu_approx_in_one_kernel(tmp_path):
    h = mx.random.normal((1, 1, 3072), key=mx.random.key(5)) * 4
    assert mx.allclose(fused.gelu_decoding(h), nn.gelu_approx(h), atol=1e-6, rtol=1e-5)
    low = h.astype(mx.bfloat16)
    mx.eval(low)
    assert len(_operations(fused.gelu_decoding(low), tmp_path)) == 1
    assert len(_operations(fused.gelu(low), tmp_path)) == 2  # what the one kernel saves a layer


def test_decoding_adds_the_mlp_s_bias_with_the_residual_stream(tmp_path):
    """A decoding step's MLP output is the product and the bias, which the next norm adds to the
    stream in one kernel; the logits are those of the forward pass without a cache."""
    from core.model.gpt import GPT
    from core.presets import get_preset

    model = GPT(get_preset("nano"))
    noise = mx.random.key(7)  # biases of GPT-2's init are zero
    model.update(tree_map(lambda p: p + 0.1 * mx.random.normal(p.shape, key=noise), model.parameters()))
    idx = mx.random.randint(0, model.shape.vocab_size, (1, 9), key=mx.random.key(6))
    cache = model.make_cache()
    model(idx[:, :-1], cache)
    step = model(idx[:, -1:], cache)[:, -1]
    assert mx.allclose(step, model(idx)[:, -1], atol=1e-5, rtol=1e-5)
    out, bias = model.h[0].mlp(mx.ones((1, 1, model.shape.n_embd)), decoding=True)
    assert bias is not None and out.shape == (1, 1, model.shape.n_embd)
    rows = model.h[0].mlp(mx.ones((2, 1, model.shape.n_embd)), decoding=True)
    assert isinstance(rows, mx.array)  # a batch keeps the biased product
    ones = mx.ones(4)
    mx.eval(ones)
    assert len(_operations(fused.add_biased(ones, ones, ones), tmp_path)) == 1

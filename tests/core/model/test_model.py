from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten

from core import config
from core.engine import Engine
from core.model import gpt, model_shape
from core.model.check import architecture_test
from core.model.gpt import GPT
from core.presets import PRESETS, get_preset


@pytest.mark.parametrize("name,target", [("tiny", 98.9e6), ("medium", 371e6)])
def test_original_presets_match_the_log(name, target):
    assert abs(get_preset(name).param_count() - target) / target < 0.005


def test_original_shapes_kept():
    tiny, medium = get_preset("tiny"), get_preset("medium")
    assert (tiny.n_layer, tiny.n_head, tiny.vocab_size) == (12, 12, 16000)
    assert (medium.n_layer, medium.n_embd, medium.n_head, medium.n_ffn, medium.n_ctx, medium.vocab_size) == (
        24, 1024, 16, 4096, 4096, 32000)


@pytest.mark.parametrize("name", ["nano", "micro", "tiny"])
def test_built_model_count_equals_formula(name):
    shape = get_preset(name)
    assert GPT(shape).num_params() == shape.param_count()


def test_untied_count_equals_formula():
    shape = get_preset("nano")
    from dataclasses import replace
    untied = replace(shape, tie_embeddings=False)
    assert GPT(untied).num_params() == untied.param_count() == shape.param_count() + 1024 * 64


def test_forward_shape():
    shape = get_preset("nano")
    logits = GPT(shape)(mx.zeros((3, 17), dtype=mx.int32))
    assert logits.shape == (3, 17, shape.vocab_size)


def test_a_model_takes_its_tokenizers_vocabulary_not_the_presets(trained):
    """The preset's vocab is only what tokenizer training aims for: micro's layers over nano's tokenizer."""
    from core.tokenizer.bpe import load_tokenizer

    cfg, _ = config.with_value(config.load(trained / "acm.toml"), "model.preset", "micro")
    tok = load_tokenizer(cfg)
    assert cfg.vocab_target() == get_preset("micro").vocab_size == 2048 != tok.vocab_size == 1024
    shape = model_shape(cfg, tok)
    assert (shape.name, shape.n_layer, shape.n_embd, shape.vocab_size) == ("micro", 4, 128, 1024)
    model = GPT(shape)
    assert model.wte.weight.shape == (1024, 128) and model.num_params() == shape.param_count()
    assert model(mx.array([tok.encode("echo hi")]))[0].shape[-1] == 1024


def test_causality_future_tokens_never_change_earlier_logits():
    mx.random.seed(1)
    model = GPT(get_preset("nano"))
    a = mx.random.randint(0, 1024, (1, 32))
    b = mx.concatenate([a[:, :20], (a[:, 20:] + 7) % 1024], axis=1)
    la, lb = model(a), model(b)
    assert mx.allclose(la[:, :20], lb[:, :20], atol=1e-5).item()
    assert not mx.allclose(la[:, 20:], lb[:, 20:], atol=1e-3).item()


@pytest.mark.parametrize("plain", [True, False])
def test_kv_cache_decoding_equals_full_forward(monkeypatch, plain):
    monkeypatch.setattr(gpt, "PLAIN_PREFILL", 1 << 22 if plain else 0)  # prompts' attention, both ways
    mx.random.seed(2)
    model = GPT(get_preset("nano"))
    idx = mx.random.randint(0, 1024, (2, 40))
    full = model(idx)
    cache = model.make_cache()
    parts = [model(idx[:, :25], cache), model(idx[:, 25:30], cache)]  # a prompt continuing a cache
    parts += [model(idx[:, t:t + 1], cache) for t in range(30, 40)]  # one token at a time
    assert cache[0].offset == 40
    assert mx.allclose(mx.concatenate(parts, axis=1), full, atol=1e-4).item()


def test_plain_attention_is_the_fused_attention_under_either_mask():
    mx.random.seed(4)
    q, k, v = (mx.random.normal((2, 3, T, 8)) for T in (5, 9, 9))
    causal = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal")  # aligned to the last key
    assert mx.allclose(gpt.plain_attention(q, k, v, 0.3, "causal"), causal, atol=1e-6).item()
    _, mask = gpt.padded_positions(4, 5, mx.array([2, 0]))
    padded = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert mx.allclose(gpt.plain_attention(q, k, v, 0.3, mask), padded, atol=1e-6).item()
    half = [t.astype(mx.bfloat16) for t in (q, k, v)]  # float32 throughout: one rounding to bf16, at the end
    exact = mx.fast.scaled_dot_product_attention(*(t.astype(mx.float32) for t in half), scale=0.3, mask=mask)
    got = gpt.plain_attention(*half, 0.3, mask)
    assert got.dtype == mx.bfloat16
    assert mx.all(mx.abs(got.astype(mx.float32) - exact) <= 2**-8 * mx.abs(exact) + 1e-6).item()


def test_only_a_cached_prompt_under_the_limit_takes_the_plain_attention(monkeypatch):
    calls = []
    plain = gpt.plain_attention
    monkeypatch.setattr(gpt, "plain_attention", lambda *a: (calls.append(a[0].shape), plain(*a))[1])
    monkeypatch.setattr(gpt, "PLAIN_PREFILL", 2 * 2 * 16 * 16)  # nano: 2 heads; two prompts of 16 tokens fit
    model = GPT(get_preset("nano"))
    idx = mx.random.randint(0, 1024, (2, 17))
    model(idx[:, :16])  # training and validation: no cache
    model.loss(idx[:, :16], idx[:, 1:])
    assert calls == []
    cache = model.make_cache()
    model(idx[:, :16], cache)  # a prompt: every layer
    assert calls == [(2, 2, 16, 32)] * model.shape.n_layer
    model(idx[:, 16:], cache)  # a decoded token keeps the fused kernel
    assert len(calls) == model.shape.n_layer
    model(mx.concatenate([idx, idx], axis=1)[:, :17], model.make_cache())  # over the limit
    assert len(calls) == model.shape.n_layer


def test_context_overflow_is_refused():
    model = GPT(get_preset("nano"))
    with pytest.raises(ValueError, match="exceed the model's context of 128"):
        model(mx.zeros((1, 129), dtype=mx.int32))


def test_bf16_compute_keeps_fp32_master_weights():
    mx.random.seed(3)
    model = GPT(get_preset("nano"), compute_dtype="bfloat16")
    idx = mx.random.randint(0, 1024, (2, 16))
    assert model(idx).dtype == mx.bfloat16
    assert {p.dtype for _, p in tree_flatten(model.parameters())} == {mx.float32}
    loss, grads = nn.value_and_grad(model, lambda m, x, y: m.loss(x, y))(model, idx[:, :-1], idx[:, 1:])
    assert loss.dtype == mx.float32
    assert {g.dtype for _, g in tree_flatten(grads)} == {mx.float32}
    ref = GPT(get_preset("nano"))
    ref.update(model.parameters())
    assert abs(ref.loss(idx[:, :-1], idx[:, 1:]).item() - loss.item()) < 0.05


def test_nano_overfits_one_batch():
    mx.random.seed(0)
    model = GPT(get_preset("nano"))
    batch = mx.random.randint(0, 1024, (4, 33))
    x, y = batch[:, :-1], batch[:, 1:]
    opt = optim.AdamW(learning_rate=3e-3)
    step = nn.value_and_grad(model, lambda m, a, b: m.loss(a, b))
    first = None
    for _ in range(40):
        loss, grads = step(model, x, y)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        first = loss.item() if first is None else first
    assert loss.item() < first / 2


def test_architecture_test_reports():
    r = architecture_test(PRESETS["nano"], batch=2, seq=128)
    assert r["shape_ok"] and r["output_shape"] == [2, 128, 1024]
    assert r["parameters"] == PRESETS["nano"].param_count()
    assert r["memory_bytes"] == 4 * r["parameters"] and r["tokens_per_s"] > 0


def test_engine_runs_jobs_in_order_on_one_thread():
    import threading
    engine = Engine()
    try:
        seen = [engine.submit(lambda i=i: (i, threading.current_thread().name)) for i in range(5)]
        results = [f.result(5) for f in seen]
        assert [r[0] for r in results] == list(range(5))
        assert {r[1] for r in results} == {"acm-engine"}
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
        assert engine.call(lambda: 2 + 2) == 4  # survives an error
    finally:
        engine.shutdown()
    assert engine.stopped
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(lambda: 1)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    mx.random.seed(4)
    plain = GPT(get_preset("nano"))
    ckpt = GPT(get_preset("nano"), checkpoint_activations=True)
    ckpt.update(plain.parameters())
    idx = mx.random.randint(0, 1024, (2, 33))
    grad = lambda m: nn.value_and_grad(m, lambda m, x, y: m.loss(x, y))(m, idx[:, :-1], idx[:, 1:])  # noqa: E731
    (l1, g1), (l2, g2) = grad(plain), grad(ckpt)
    assert abs(l1.item() - l2.item()) < 1e-6
    for (k, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
        assert mx.allclose(a, b, atol=1e-5).item(), k

"""Exports in the formats people run models with: mlx-lm, transformers, GGUF; a model card; upload."""
from __future__ import annotations

import json
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from core import cli, config
from core.errors import AcmError
from core.generate.decode import LoadedModel, load_model
from core.generate.export import export_checkpoint, export_model
from core.model.gpt import GPT
from core.tokenizer.bpe import BOS_ID

TEXT = "#!/bin/bash\necho $HOME"


def untied(lm: LoadedModel) -> LoadedModel:
    """The trained model with an untied output head (medium's layout, at nano's size)."""
    model = GPT(replace(lm.model.shape, tie_embeddings=False))
    params = dict(tree_flatten(lm.model.parameters()))
    mx.random.seed(5)
    params["lm_head.weight"] = 0.02 * mx.random.normal(params["wte.weight"].shape)
    model.load_weights(list(params.items()))
    return LoadedModel(model, lm.tokenizer, lm.checkpoint, lm.run, lm.stage, lm.step)


def ids_of(lm: LoadedModel) -> list[int]:
    return [BOS_ID] + lm.tokenizer.encode(TEXT)


def test_mlx_export_loads_in_mlx_lm_with_matching_logits_and_carries_a_card(with_model, tmp_path):
    from mlx_lm import generate as mlx_lm_generate
    from mlx_lm import load as mlx_lm_load

    cfg = config.load(with_model / "acm.toml")
    cfg.eval.samples, cfg.eval.max_tokens = 2, 8
    assert cli.main(["-c", str(with_model / "acm.toml"), "eval", "--samples", "2", "--max-tokens", "8"]) == 0
    info = export_checkpoint(cfg, tmp_path / "exported")
    model, tokenizer = mlx_lm_load(str(tmp_path / "exported"))
    ours = load_model(cfg)
    ids = ids_of(ours)
    assert tokenizer.encode(TEXT, add_special_tokens=False) == ids[1:]
    assert mx.allclose(model(mx.array([ids])), ours.model(mx.array([ids])), atol=1e-4).item()
    assert isinstance(mlx_lm_generate(model, tokenizer, "#!/bin/bash\n", max_tokens=5), str)
    assert (info["preset"], info["model_type"]) == ("nano", "gpt2")
    card = (tmp_path / "exported" / "README.md").read_text()
    for fact in ("library_name: mlx", "| preset | nano |", f"step {ours.step}", "| language | builtin |",
                 "## Evaluation (`acm eval`)", "| finetune+checked |", "1,024 tokens", "mlx_lm.generate"):
        assert fact in card, fact
    with pytest.raises(AcmError, match="exists and is not empty"):
        export_checkpoint(cfg, tmp_path / "exported")


def test_an_untied_head_exports_as_gpt_bigcode_that_mlx_lm_loads(with_model, tmp_path):
    from mlx_lm import load as mlx_lm_load

    lm = untied(load_model(config.load(with_model / "acm.toml"), master_weights=True))
    info = export_model(lm, tmp_path / "u", "float32", "mlx")
    assert info["model_type"] == "gpt_bigcode"
    saved = json.loads((tmp_path / "u" / "config.json").read_text())
    assert (saved["tie_word_embeddings"], saved["multi_query"]) == (False, False)
    model, _ = mlx_lm_load(str(tmp_path / "u"))
    ids = mx.array([ids_of(lm)])
    theirs, mine = model(ids), lm.model(ids)
    # gpt_bigcode's GELU is the exact (erf) one, acm's GPT-2's tanh approximation: close, not equal
    assert mx.allclose(theirs, mine, atol=2e-3).item()
    assert (mx.argmax(theirs, -1) == mx.argmax(mine, -1)).all().item()
    assert mx.allclose(model.lm_head.weight, lm.model.lm_head.weight).item()


def gpt2_forward(folder, ids: list[int]) -> np.ndarray:
    """GPT-2 as transformers computes it (Conv1D: x @ W + b), in NumPy, from an hf export."""
    from safetensors.numpy import load_file

    w, cfg = load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text())
    heads, eps = cfg["n_head"], cfg["layer_norm_epsilon"]

    def norm(x, p):
        m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * w[f"{p}.weight"] + w[f"{p}.bias"]

    def conv1d(x, p):
        return x @ w[f"{p}.weight"] + w[f"{p}.bias"]

    t = len(ids)
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:t]
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}"
        q, k, v = np.split(conv1d(norm(x, f"{p}.ln_1"), f"{p}.attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(t, heads, -1).transpose(1, 0, 2) for a in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + np.triu(np.full((t, t), -1e9), 1)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att = (att / att.sum(-1, keepdims=True)) @ v
        x = x + conv1d(att.transpose(1, 0, 2).reshape(t, -1), f"{p}.attn.c_proj")
        h = conv1d(norm(x, f"{p}.ln_2"), f"{p}.mlp.c_fc")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # gelu_new
        x = x + conv1d(h, f"{p}.mlp.c_proj")
    x = norm(x, "transformer.ln_f")
    head = w["transformer.wte.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


@pytest.mark.parametrize("tied", [True, False])
def test_hf_export_has_gpt2s_layout_and_its_logits(with_model, tmp_path, tied):
    lm = load_model(config.load(with_model / "acm.toml"), master_weights=True)
    lm = lm if tied else untied(lm)
    export_model(lm, tmp_path / "hf", "float32", "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"], saved["tie_word_embeddings"]) == (
        "gpt2", ["GPT2LMHeadModel"], tied)
    tok = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert (tok["bos_token"], tok["eos_token"], tok["pad_token"]) == ("<BOS>", "<EOS>", "<PAD>")
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == lm.tokenizer.path.read_bytes()
    ids = ids_of(lm)
    mine = np.array(lm.model(mx.array([ids]))[0])
    assert np.allclose(gpt2_forward(tmp_path / "hf", ids), mine, atol=1e-4)


@pytest.mark.slow
def test_hf_export_loads_in_transformers_with_matching_logits(with_model, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = untied(load_model(config.load(with_model / "acm.toml"), master_weights=True))
    export_model(lm, tmp_path / "hf", "float32", "hf")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = ids_of(lm)
    assert tok(TEXT, add_special_tokens=False).input_ids == ids[1:]
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    assert np.allclose(theirs, np.array(lm.model(mx.array([ids]))[0]), atol=1e-4)


def gpt2_tensor_names(layers: int) -> set[str]:
    """llama.cpp's GPT-2 tensors: embeddings, final norm, output, and six (weight, bias) pairs a block."""
    blocks = {f"blk.{i}.{n}.{k}" for i in range(layers) for k in ("weight", "bias")
              for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")}
    return blocks | {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias",
                     "output.weight"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gguf_export_reads_back_with_gguf_reader(with_model, tmp_path, dtype):
    from gguf import GGUFReader

    lm = load_model(config.load(with_model / "acm.toml"), master_weights=True)
    info = export_model(lm, tmp_path / "g", dtype, "gguf")
    assert info["files"] == ["README.md", "model.gguf"]
    reader = GGUFReader(str(tmp_path / "g" / "model.gguf"))
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    s = lm.model.shape
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.block_count"], fields["gpt2.embedding_length"], fields["gpt2.context_length"]) == (
        s.n_layer, s.n_embd, s.n_ctx)
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == s.vocab_size and tokens[:4] == ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (2, 3)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == gpt2_tensor_names(s.n_layer)
    qkv = tensors["blk.0.attn_qkv.weight"]
    assert list(qkv.shape) == [s.n_embd, 3 * s.n_embd]  # GGUF lists dimensions innermost first
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [s.n_embd, s.n_ffn]
    if dtype == "float32":
        wte = np.array(lm.model.parameters()["wte"]["weight"])
        assert np.array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(wte.shape), wte)


def test_cli_exports_each_format_and_uploads_to_a_stand_in_hub(with_model, tmp_path, capsys, monkeypatch):
    """--upload speaks the Hub's HTTP API; here a stand-in answers at the HTTP transport."""
    import httpx2 as httpx  # huggingface_hub's HTTP client
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory

    c = str(with_model / "acm.toml")
    for fmt in ("hf", "gguf"):
        assert cli.main(["-c", c, "export", "m", "--to", str(tmp_path / fmt), "--format", fmt]) == 0
        assert f"as {fmt} to" in capsys.readouterr().out
    seen: list[tuple[str, str]] = []
    committed: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        path = request.url.path
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/me/acm-nano", "name": "me/acm-nano"})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            committed.extend(json.loads(line)["value"].get("path", "") for line in request.content.splitlines()
                             if json.loads(line)["key"] == "file")
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/me/acm-nano/commit/abc",
                                             "commitOid": "a" * 40})
        return httpx.Response(200, json={})

    monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub)))
    try:
        assert cli.main(["-c", c, "export", "m", "--to", str(tmp_path / "up"), "--upload", "me/acm-nano"]) == 0
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
        huggingface_hub.close_session()
    assert "uploaded to https://huggingface.co/me/acm-nano/commit/abc" in capsys.readouterr().out
    assert ("POST", "/api/repos/create") in seen
    assert set(committed) == {p.name for p in (tmp_path / "up").iterdir()}


def test_a_failed_upload_is_one_line_and_keeps_the_folder(with_model, tmp_path, capsys, monkeypatch):
    import httpx2 as httpx  # huggingface_hub's HTTP client
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory

    monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(
        lambda r: httpx.Response(401, json={"error": "Invalid credentials"}))))
    try:
        code = cli.main(["-c", str(with_model / "acm.toml"), "export", "--to", str(tmp_path / "x"),
                         "--upload", "me/acm-nano"])
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
        huggingface_hub.close_session()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("acm: error: upload of") and "the exported folder is kept" in err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "x" / "README.md").exists()


KILLED_MID_EXPORT = """
import os, signal, sys
from core import config
from core.generate import export
from core.generate.decode import load_model

def write_then_die(lm, folder, dtype):
    (folder / "model.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)

export.WRITERS["mlx"] = write_then_die
cfg = config.load(sys.argv[1])
export.export_model(load_model(cfg, master_weights=True), sys.argv[2], "float32", "mlx")
"""


def test_the_next_export_sweeps_what_a_killed_export_left_and_spares_one_under_way(with_model, tmp_path):
    import fcntl
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "exports"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_EXPORT, str(with_model / "acm.toml"), str(out / "a")],
                            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert killed.returncode == -9 and (out / ".a.partial" / "model.safetensors").exists()
    busy = out / ".b.partial"  # another export, alive, writing to another name
    busy.mkdir()
    with open(busy / ".export.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cli.main(["-c", str(with_model / "acm.toml"), "export", "--to", str(out / "c")]) == 0
        assert sorted(p.name for p in out.iterdir()) == [".b.partial", "c"]
        assert ".export.lock" not in {p.name for p in (out / "c").iterdir()}
        with pytest.raises(AcmError, match="another export to .*b is under way"):
            export_checkpoint(config.load(with_model / "acm.toml"), out / "b")

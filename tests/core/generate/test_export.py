"""Exports in the formats people run models with: mlx-lm, transformers, GGUF; a model card; upload."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from core import cli, config
from core.errors import AcmError
from core.generate.decode import LoadedModel, find_checkpoint, load_model
from core.generate.export import card, commands, export_checkpoint, export_model
from core.generate.sampling import SamplingParams
from core.model.gpt import GPT
from core.paths import Paths
from core.tokenizer.bpe import BOS_ID, EOS_ID, PAD_ID
from tests.helpers import ROOT, set_weight
from tests.stand_ins import stand_in_hub

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
                 "## Evaluation (`acm eval`)", f"| finetune+checked (step {ours.step}) |", "1,024 tokens",
                 "mlx_lm.generate"):
        assert fact in card, fact
    assert "other checkpoints than the one exported" not in card
    (with_model / "runs" / "m").rename(with_model / "runs" / "m2")  # eval.json's paths name the old folder
    export_checkpoint(cfg, tmp_path / "renamed", "m2")
    assert "other checkpoints than the one exported" not in (tmp_path / "renamed" / "README.md").read_text()
    (with_model / "runs" / "m2").rename(with_model / "runs" / "m")
    with pytest.raises(AcmError, match="exists and is not empty"):
        export_checkpoint(cfg, tmp_path / "exported")
    results = Paths.eval_results(with_model / "runs" / "m")  # as it reads once the run has trained on
    evaluated = json.loads(results.read_text())
    for row in evaluated["stages"].values():
        row["step"] = 5
    results.write_text(json.dumps(evaluated))
    export_checkpoint(cfg, tmp_path / "later")
    card = (tmp_path / "later" / "README.md").read_text()
    assert "| finetune+checked (step 5) |" in card
    assert (f"**These figures are of other checkpoints than the one exported (finetune, step {ours.step}): "
            "`acm eval` measures the run's best checkpoints again.**") in card


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


def assert_bos_first(folder, lm: LoadedModel) -> None:
    """The exported tokenizer puts <BOS> before a plain prompt, once, in `tokenizers` and in transformers
    (as acm does before every prompt); acm's own tokenizer adds nothing, so acm never doubles it."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ids = ids_of(lm)
    exported = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert exported.encode(TEXT).ids == ids and exported.decode(ids) == TEXT
    assert AutoTokenizer.from_pretrained(str(folder))(TEXT).input_ids == ids
    assert lm.tokenizer.encode(TEXT) == ids[1:]


def acm_greedy(project, prompt: str, max_tokens: int, penalty: float, capsys) -> str:
    """What `acm generate --temp 0 --dtype float32` writes after the prompt."""
    capsys.readouterr()
    assert cli.main(["-c", str(project / "acm.toml"), "generate", "-e", prompt.replace("\n", "\\n"), "--no-echo",
                     "--temp", "0", "--repetition-penalty", str(penalty), "--dtype", "float32",
                     "--max-tokens", str(max_tokens)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


@pytest.fixture
def talkative(with_model) -> Path:
    """The trained project with its checkpoint's matrices moved by noise: the trained nano writes only
    newlines at temperature 0, this one a varied text that depends on the prompt's every token
    (<BOS> included) and on the repetition penalty."""
    ck, _, _ = find_checkpoint(config.load(with_model / "acm.toml"))
    params = mx.load(str(ck.path / "model.safetensors"))
    mx.random.seed(7)
    mx.save_safetensors(str(ck.path / "model.safetensors"),
                        {k: v + 0.2 * mx.random.normal(v.shape) if v.ndim == 2 else v for k, v in params.items()})
    return with_model


@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_mlx_lm_generates_from_a_plain_prompt_what_acm_generate_does(talkative, tmp_path, capsys, penalty):
    """The model card's mlx-lm Python snippet, run as written, at temperature 0: the same text as
    `acm generate --temp 0`, without and with acm's repetition penalty over its window."""
    cfg = config.load(talkative / "acm.toml")
    export_checkpoint(cfg, tmp_path / "m")
    plan = greedy_plan(load_model(cfg), penalty)
    scope: dict = {}
    exec("\n".join(commands.mlx_python(plan, str(tmp_path / "m"))), scope)
    theirs = scope["text"]
    assert capsys.readouterr().out == commands.PROMPT + theirs + "\n"  # it prints the prompt and continuation
    assert_as_acm(theirs, talkative, plan, capsys)


def greedy_plan(lm: LoadedModel, penalty: float) -> commands.Plan:
    """The card's commands at temperature 0, 100 new tokens (within nano's context after the prompt)."""
    return commands.Plan(lm.model.shape.n_ctx, 1 + len(lm.tokenizer.encode(commands.PROMPT)),
                         SamplingParams(temperature=0, repetition_penalty=penalty, max_tokens=100))


def assert_as_acm(theirs: str, project: Path, plan: commands.Plan, capsys) -> None:
    """A client's continuation is `acm generate --temp 0`'s: mlx-lm writes out a special token generated
    mid-text (the noisy model makes a <BOS>), which acm leaves out, as transformers' skip_special_tokens does."""
    shown = theirs.replace("<BOS>", "").replace("<PAD>", "").replace("<UNK>", "")
    assert len(shown) > 20 and shown == acm_greedy(project, commands.PROMPT, plan.new_tokens,
                                                   plan.sampling.repetition_penalty, capsys)


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
    assert saved["n_positions"] == saved["max_position_embeddings"] == lm.model.shape.n_ctx
    tok = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert (tok["bos_token"], tok["eos_token"], tok["pad_token"]) == ("<BOS>", "<EOS>", "<PAD>")
    assert (tok["add_bos_token"], tok["model_max_length"]) == (True, lm.model.shape.n_ctx)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["max_length"]) == (EOS_ID, lm.model.shape.n_ctx)
    from safetensors.numpy import load_file
    assert ("lm_head.weight" in load_file(str(tmp_path / "hf" / "model.safetensors"))) is not tied  # written once
    ids = ids_of(lm)
    assert_bos_first(tmp_path / "hf", lm)
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
    assert tok(TEXT).input_ids == ids
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    assert np.allclose(theirs, np.array(lm.model(mx.array([ids]))[0]), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_transformers_generates_from_a_plain_prompt_what_acm_generate_does(talkative, tmp_path, capsys, penalty):
    """The card's transformers snippet, run as written at temperature 0 (needs torch)."""
    pytest.importorskip("torch")
    cfg = config.load(talkative / "acm.toml")
    export_checkpoint(cfg, tmp_path / "hf", fmt="hf")
    plan = greedy_plan(load_model(cfg), penalty)
    scope: dict = {}
    exec("\n".join(commands.hf_python(plan, str(tmp_path / "hf"))), scope)
    tok, out, ids = scope["tok"], scope["out"], scope["ids"]
    assert ids[0, 0].item() == BOS_ID
    theirs = tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
    assert capsys.readouterr().out == commands.PROMPT + theirs + "\n"
    assert_as_acm(theirs, talkative, plan, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_llama_cpp_generates_from_a_plain_prompt_what_acm_generate_does(talkative, tmp_path, capsys, penalty):
    """The GGUF in llama-cpp-python: <BOS> added, <EOS> the only end of generation, each weight once,
    and greedy text with the card's penalty window equal to acm's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cfg = config.load(talkative / "acm.toml")
    export_checkpoint(cfg, tmp_path / "g", fmt="gguf")
    lm = load_model(cfg)
    plan = greedy_plan(lm, penalty)
    llm = llama_cpp.Llama(str(tmp_path / "g" / "model.gguf"), n_ctx=plan.n_ctx, last_n_tokens_size=plan.window,
                          verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_get_add_bos(vocab)
    assert [t for t in range(lm.tokenizer.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t)] == [EOS_ID]
    assert llama_cpp.llama_model_n_params(llm.model) == sum(v.size for _, v in tree_flatten(lm.model.parameters()))
    assert llm.tokenize(commands.PROMPT.encode()) == [BOS_ID] + lm.tokenizer.encode(commands.PROMPT)
    out = llm.create_completion(commands.PROMPT, max_tokens=plan.new_tokens, temperature=0,
                                repeat_penalty=plan.sampling.repetition_penalty)
    # llama-cpp-python decodes with errors="ignore": bytes that make no UTF-8 (the noisy model writes some)
    # are dropped where acm writes U+FFFD. Its penalty looks back on generated tokens only, not the prompt
    # as acm and llama-completion do; on this model and prompt the text is the same either way.
    theirs = out["choices"][0]["text"]
    assert len(theirs) > 20 and theirs == acm_greedy(talkative, commands.PROMPT, plan.new_tokens, penalty,
                                                     capsys).replace("\ufffd", "")


@pytest.mark.slow
def test_mlx_lm_server_answers_the_cards_request_as_acm_generates(talkative, tmp_path, capsys):
    """The card's `mlx_lm.server` command on a free port, then its request at temperature 0."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    cfg = config.load(talkative / "acm.toml")
    export_checkpoint(cfg, tmp_path / "m")
    plan = greedy_plan(load_model(cfg), 1.1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve, request = (shlex.split(line) for line in commands.mlx_server(plan, str(tmp_path / "m"), port))
    assert serve[0] == "mlx_lm.server" and request[0] == "curl"
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", *serve[1:], "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = request[request.index("-d") + 1].encode()
        post = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                      {"Content-Type": "application/json"})
        for _ in range(600):  # until it listens
            try:
                with urllib.request.urlopen(post) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                assert server.poll() is None, "mlx_lm.server exited"
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert_as_acm(answer["choices"][0]["text"], talkative, plan, capsys)


def gpt2_tensor_names(layers: int, tied: bool) -> set[str]:
    """llama.cpp's GPT-2 tensors: embeddings, final norm, six (weight, bias) pairs a block, and an output
    matrix only for an untied head (llama.cpp's GPT-2 uses token_embd without one)."""
    blocks = {f"blk.{i}.{n}.{k}" for i in range(layers) for k in ("weight", "bias")
              for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")}
    return blocks | {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"} | (
        set() if tied else {"output.weight"})


# Token texts llama.cpp's vocabulary loader (src/llama-vocab.cpp) ends generation at, and those it takes
# for a fill-in-the-middle pad, repository or file separator (each also ends generation) unless given by id.
LLAMA_CPP_EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
                       "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                       "<eos>", "<turn|>"}
LLAMA_CPP_FIM = {"fim_pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
                 "fim_rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
                 "fim_sep": {"<|file_sep|>"}}


def llama_cpp_eog_ids(fields: dict) -> set[int]:
    """The token ids llama.cpp ends generation at, as its loader works them out from a GGUF's fields."""
    tokens = fields["tokenizer.ggml.tokens"]
    eog = {i for i, t in enumerate(tokens) if t in LLAMA_CPP_EOG_TEXTS}
    for kind, texts in LLAMA_CPP_FIM.items():
        given = fields.get(f"tokenizer.ggml.{kind}_token_id")
        eog |= {given} if given is not None else {i for i, t in enumerate(tokens) if t in texts}
    return eog | {fields[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom")
                  if f"tokenizer.ggml.{k}_token_id" in fields}


def assert_gguf_tokenizer(fields: dict, vocab_size: int) -> None:
    """acm's tokenizer, `<BOS>` added before a prompt, `<EOS>` the only end of generation."""
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == vocab_size and tokens[:4] == ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (BOS_ID, EOS_ID)
    assert (fields["tokenizer.ggml.add_bos_token"], fields["tokenizer.ggml.add_eos_token"]) == (True, False)
    assert fields["tokenizer.ggml.padding_token_id"] == PAD_ID
    assert llama_cpp_eog_ids(fields) == {EOS_ID}  # <PAD> would be one, found by its text, without the FIM key


@pytest.mark.parametrize(("dtype", "tied"), [("float32", True), ("bfloat16", False)])
def test_gguf_export_reads_back_with_gguf_reader(with_model, tmp_path, dtype, tied):
    from gguf import GGUFReader

    lm = load_model(config.load(with_model / "acm.toml"), master_weights=True)
    lm = lm if tied else untied(lm)
    info = export_model(lm, tmp_path / "g", dtype, "gguf")
    assert info["files"] == ["README.md", "model.gguf"]
    reader = GGUFReader(str(tmp_path / "g" / "model.gguf"))
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    s = lm.model.shape
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.block_count"], fields["gpt2.embedding_length"], fields["gpt2.context_length"]) == (
        s.n_layer, s.n_embd, s.n_ctx)
    assert_gguf_tokenizer(fields, s.vocab_size)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == gpt2_tensor_names(s.n_layer, tied)
    params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert params == sum(v.size for _, v in tree_flatten(lm.model.parameters()))  # each weight once
    qkv = tensors["blk.0.attn_qkv.weight"]
    assert list(qkv.shape) == [s.n_embd, 3 * s.n_embd]  # GGUF lists dimensions innermost first
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [s.n_embd, s.n_ffn]
    if dtype == "float32":
        wte = np.array(lm.model.parameters()["wte"]["weight"])
        assert np.array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(wte.shape), wte)


def test_cli_exports_each_format_and_uploads_to_a_stand_in_hub(with_model, tmp_path, capsys, monkeypatch):
    """--upload speaks the Hub's HTTP API; here a stand-in answers at the HTTP transport."""
    c = str(with_model / "acm.toml")
    for fmt in ("hf", "gguf"):
        assert cli.main(["-c", c, "export", "m", "--to", str(tmp_path / fmt), "--format", fmt]) == 0
        assert f"as {fmt} to" in capsys.readouterr().out
    with stand_in_hub(monkeypatch) as (seen, committed):
        assert cli.main(["-c", c, "export", "m", "--to", str(tmp_path / "up"), "--upload", "me/acm-nano"]) == 0
    assert "uploaded to https://huggingface.co/me/acm-nano/commit/abc" in capsys.readouterr().out
    assert ("POST", "/api/repos/create") in seen
    assert set(committed) == {p.name for p in (tmp_path / "up").iterdir()}


def test_a_failed_upload_is_one_line_and_keeps_the_folder(with_model, tmp_path, capsys, monkeypatch):
    import httpx2 as httpx  # huggingface_hub's HTTP client

    with stand_in_hub(monkeypatch, lambda r: httpx.Response(401, json={"error": "Invalid credentials"})):
        code = cli.main(["-c", str(with_model / "acm.toml"), "export", "--to", str(tmp_path / "x"),
                         "--upload", "me/acm-nano"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("acm: error: upload of") and "the exported folder is kept" in err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "x" / "README.md").exists()
    for repo in ("bad repo id!!", "a/b/c", "-x/y"):  # refused before anything is exported
        assert cli.main(["-c", str(with_model / "acm.toml"), "export", "--to", str(tmp_path / "y"),
                         f"--upload={repo}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"acm: error: {repo!r} is no Hugging Face Hub repository id: Repo id must")
        assert not (tmp_path / "y").exists()


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

    out = tmp_path / "exports"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_EXPORT, str(with_model / "acm.toml"), str(out / "a")],
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
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


def test_a_partial_folder_acm_did_not_make_is_never_swept_nor_written_into(with_model, tmp_path):
    """A user's `.NAME.partial` folder (no export's lock file in it), however old, is left whole by
    an export beside it, and an export to NAME is refused in one line rather than writing into it."""
    mine = tmp_path / "out" / ".mydata.partial"
    mine.mkdir(parents=True)
    (mine / "important.txt").write_text("precious")
    os.utime(mine, (time.time() - 3600, time.time() - 3600))
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "export", "--to", str(tmp_path / "out" / "new")]) == 0
    with pytest.raises(AcmError, match="exists and is no export under way: move it away"):
        export_checkpoint(config.load(with_model / "acm.toml"), tmp_path / "out" / "mydata")
    assert (mine / "important.txt").read_text() == "precious" and sorted(mine.iterdir()) == [mine / "important.txt"]


def test_the_folder_to_export_to_is_read_as_a_shell_reads_it(with_model, tmp_path, monkeypatch, capsys):
    """`~` is the home folder; an empty folder the user made keeps its mode; the current folder, one
    holding it, or an empty name is refused in one line (the export would replace the folder the
    shell stands in)."""
    c = str(with_model / "acm.toml")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli.main(["-c", c, "export", "--to", "~/tilde"]) == 0
    assert (tmp_path / "home" / "tilde" / "README.md").exists() and not (here / "~").exists()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    assert cli.main(["-c", c, "export", "--to", str(private)]) == 0
    assert (private / "README.md").exists() and stat.S_IMODE(private.stat().st_mode) == 0o700
    capsys.readouterr()
    for to, says in ((".", f"{here} is the current folder: export to a new folder in it"),
                     (f"{here}/.", f"{here} is the current folder"), ("..", f"{tmp_path} is the current folder or "
                                                                              "holds it"),
                     ("", "the folder to export to is empty"), ("  ", "the folder to export to is empty")):
        assert cli.main(["-c", c, "export", "--to", to]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"acm: error: {says}") and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in here.iterdir()) == [] and here.is_dir()
    (tmp_path / "link").symlink_to(tmp_path)  # the current folder by another name (macOS's /tmp is a link)
    assert cli.main(["-c", c, "export", "--to", str(tmp_path / "link" / "here")]) == 2
    assert capsys.readouterr().err.startswith(f"acm: error: {here} is the current folder")
    assert here.is_dir() and os.getcwd() == str(here)
    assert cli.main(["-c", c, "export", "--to", str(tmp_path / "link" / "here" / ".." / "viaparent")]) == 0
    assert (tmp_path / "viaparent" / "README.md").exists()  # `..` after a link: its target's parent


def test_an_export_that_finds_another_s_folder_made_meanwhile_leaves_it_be(with_model, tmp_path, monkeypatch):
    """Two exports to one folder: the second looked for the first's `.partial` folder a moment before
    the first made it, then failed to make its own and removed the first's as its own partial
    files: both exports failed. The folder is claimed by making it, which the system refuses to a
    second; the second is refused in one line, and the first's folder stays."""
    from pathlib import Path

    other = tmp_path / "exports" / ".b.partial"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"the other export's")
    real_exists = Path.exists
    # as it was seen a moment before it was made
    monkeypatch.setattr(Path, "exists", lambda p, *a, **k: p != other and real_exists(p, *a, **k))
    with open(other / ".export.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(AcmError, match="another export to .*b is under way"):
            export_checkpoint(config.load(with_model / "acm.toml"), tmp_path / "exports" / "b")
    assert (other / "model.safetensors").read_bytes() == b"the other export's"


def test_the_cards_commands_stay_within_the_context_and_sample_as_acm(with_model, tmp_path):
    """Each command asks for at most what the context leaves after the prompt (with its <BOS>, as the
    exported tokenizer counts it), and passes acm's penalty over acm's window."""
    from tokenizers import Tokenizer

    lm = load_model(config.load(with_model / "acm.toml"), master_weights=True)
    export_model(lm, tmp_path / "hf", "float32", "hf")
    prompt_tokens = len(Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).encode(commands.PROMPT).ids)
    n_ctx = lm.model.shape.n_ctx
    cards = {fmt: card.render(lm, fmt, "float32", {}, {}) for fmt in ("mlx", "hf", "gguf")}
    asked = [int(n) for text in cards.values()
             for n in re.findall(r"(?:--max-tokens| -n|\"max_tokens\":) (\d+)", text)]
    assert len(asked) == 3 and all(0 < n <= n_ctx - prompt_tokens for n in asked)
    assert f"room = {n_ctx} - ids.shape[1]" in cards["hf"] and "skip_special_tokens=True" in cards["hf"]
    assert f"repetition_context_size={n_ctx}" in cards["mlx"] and f'"repetition_context_size": {n_ctx}' in cards["mlx"]
    assert f"-c {n_ctx} " in cards["gguf"] and f"--repeat-penalty 1.1 --repeat-last-n {n_ctx}" in cards["gguf"]


def refused(project: Path, capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(["-c", str(project / "acm.toml"), "export", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acm: error: "), lines
    return lines[0]


def test_a_refused_export_is_one_line_and_writes_nothing(with_model, tmp_path, capsys):
    cfg = config.load(with_model / "acm.toml")
    with pytest.raises(AcmError, match="unknown dtype 'float64'"):  # what the command line cannot pass
        export_model(load_model(cfg, master_weights=True), tmp_path / "y", "float64", "gguf")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("keep me\n")
    assert "exists and is not empty" in refused(with_model, capsys, "m", "--to", str(full))
    set_weight(with_model, 70_000.0)  # beyond float16's 65,504: it would be written as infinity
    assert "beyond float16's 65,504" in refused(with_model, capsys, "m", "--to", str(tmp_path / "x"),
                                               "--dtype", "float16")
    set_weight(with_model, float("nan"))
    assert "NaN or infinite weights" in refused(with_model, capsys, "m", "--to", str(tmp_path / "x"))
    for stage in ("pretrain", "finetune"):  # a run stopped before its first checkpoint
        shutil.rmtree(Paths.checkpoints(cfg.locations.run("m"), stage))
    assert "no checkpoint in run m" in refused(with_model, capsys, "m", "--to", str(tmp_path / "x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "proj"]  # no folder, no .partial left
    assert [p.name for p in full.iterdir()] == ["keep"]


@pytest.mark.parametrize("fmt", ["mlx", "gguf"])
def test_a_cancelled_export_leaves_nothing_at_its_folder_and_can_be_made_again(with_model, tmp_path, monkeypatch, fmt):
    """Ctrl-C (`acm export` cancels its job) while the format's files are written: the export stops
    before its folder is put in place, where it used to finish and then say it was interrupted."""
    from core.generate import export
    from core.progress import Cancelled, CancelToken

    cfg, to, cancel = config.load(with_model / "acm.toml"), tmp_path / "exports" / "e", CancelToken()
    real = export.WRITERS[fmt]

    def pressed_meanwhile(*args):
        cancel.cancel()
        return real(*args)

    monkeypatch.setitem(export.WRITERS, fmt, pressed_meanwhile)
    with pytest.raises(Cancelled):
        export_checkpoint(cfg, to, "m", fmt=fmt, cancel=cancel)
    assert list(to.parent.iterdir()) == []  # neither the folder nor its partial one
    monkeypatch.setitem(export.WRITERS, fmt, real)
    assert export_checkpoint(cfg, to, "m", fmt=fmt)["folder"] == str(to) and (to / "README.md").exists()


def test_files_the_card_reads_damaged_by_hand_leave_their_facts_out_not_the_export(with_model, tmp_path, capsys):
    """eval.json, the shards' manifest or a checkpoint's state.json of the wrong shape failed the
    export as an internal error: the card is still written, without what they would say."""
    cfg = config.load(with_model / "acm.toml")
    shards = cfg.locations.shards_manifest("code")
    shards.write_text(json.dumps(json.loads(shards.read_text()) | {"chunks": "x"}))
    assert cli.main(["-c", str(with_model / "acm.toml"), "export", "m", "--to", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "README.md").read_text().startswith("---")
    lm = load_model(cfg)
    card.write(tmp_path, lm, "mlx", "float32", {}, {"eval": {"stages": {"pretrain": "x"}}, "sampling": {}})
    assert "## Model" in (tmp_path / "README.md").read_text()


def test_the_card_names_the_optimizer_the_stage_trained_with(with_model):
    lm = load_model(config.load(with_model / "acm.toml"))
    base = {"batch_size": 4, "seq_len": 32, "learning_rate": 0.001, "muon_learning_rate": 0.02, "warmup_steps": 1000}

    def training(train: dict) -> str:
        text = card.render(lm, "mlx", "float32", {}, {"config": {"train": {lm.stage: train}}})
        return next(line for line in text.splitlines() if line.startswith("- batch 4 x 32 tokens"))

    assert training(base | {"optimizer": "muon"}) == (
        "- batch 4 x 32 tokens, Muon on the blocks' matrices (peak learning rate 0.02) and AdamW on the embeddings, "
        "head, norms and biases (peak learning rate 0.001), linear warmup over 1,000 steps, then cosine decay")
    for adamw in (base | {"optimizer": "adamw"}, base):  # a run saved before Muon names no optimizer
        assert training(adamw) == ("- batch 4 x 32 tokens, AdamW, peak learning rate 0.001, "
                                   "linear warmup over 1,000 steps, then cosine decay")
    assert training(base | {"warmup_steps": 0}).endswith("AdamW, peak learning rate 0.001, cosine decay")


@pytest.mark.parametrize("stops", [True, False])
def test_an_interrupt_after_a_job_s_last_check_finds_it_done(capsys, monkeypatch, stops):
    """`acm export` and `acm eval` cancel their job on Ctrl-C: one that stops says so (interrupted);
    one past its last check (its folder already in place) is done, and the command says that."""
    import os
    import signal
    import threading

    import core.cli.generate as cli_generate
    from core.cli.generate import cancelled_on_interrupt
    from core.engine import Engine
    from core.progress import CancelToken

    engine, cancel, waiting = Engine(), CancelToken(), threading.Event()
    real_wait = cli_generate.wait_for

    def waited(job):  # the command waits for its job: the Ctrl-C comes only then
        waiting.set()
        return real_wait(job)
    monkeypatch.setattr(cli_generate, "wait_for", waited)

    def job():  # Ctrl-C, then run until it has cancelled this job; then stop at a check, or have none left
        waiting.wait(60)  # the waits guard against a hang; they measure no time
        os.kill(os.getpid(), signal.SIGINT)
        cancel._event.wait(60)
        if stops:
            cancel.check()
        return "done"

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as a command's main thread takes it
    try:
        if stops:
            with pytest.raises(KeyboardInterrupt):
                cancelled_on_interrupt(engine.submit(job), cancel)
        else:
            assert cancelled_on_interrupt(engine.submit(job), cancel) == "done"
            assert "after its last point of stopping: it is done" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGINT, before)
        engine.shutdown()

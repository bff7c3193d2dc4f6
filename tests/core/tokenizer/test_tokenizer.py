from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import cli, config
from core.data.corpus import Corpus
from core.errors import AcmError
from core.progress import Cancelled, CancelToken
from core.tokenizer.bpe import (
    BOS_ID,
    EOS_ID,
    SPECIAL_TOKENS,
    load_meta,
    load_tokenizer,
    mixed_texts,
    train_tokenizer,
)
from core.tokenizer.shards import (
    CHUNK_DOCUMENTS,
    PARTIAL,
    is_val,
    open_tokens,
    prepare,
    val_threshold,
)

LOG_EXAMPLES = ["Hello, world! This is a test.", "#!/bin/bash\necho \"Starting deployment...\"", "for i in range(10):"]


@pytest.fixture(scope="module")
def tok(trained_template):
    return load_tokenizer(config.load(trained_template / "acm.toml"))


def test_special_tokens_at_fixed_ids(tok):
    assert [tok.tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.vocab_size == 1024


@pytest.mark.parametrize("text", LOG_EXAMPLES + ["", "  indented\n\ttabs\r\n", "<EOS> typed as text <BOS>",
                                                 "héllo wörld 🌍 日本語 \u200b"])
def test_round_trip_examples(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert BOS_ID not in ids and EOS_ID not in ids  # text never yields special tokens


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_round_trip_random_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_probe_offsets_are_bytes(tok):
    r = tok.probe("é x")
    assert r["byte_offsets"][0][0] == 0 and r["byte_offsets"][-1][1] == len("é x".encode())
    assert "".join(r["tokens"]) == "é x"
    assert r["count"] == len(r["ids"]) and r["chars_per_token"] == round(3 / r["count"], 3)


def test_meta_records_mix_and_evaluation(trained_template):
    meta = load_meta(config.load(trained_template / "acm.toml"))
    assert meta["vocab_size"] == 1024 and meta["code_weight"] == 0.3
    assert abs(meta["mix"]["code_share"] - 0.3) < 0.02
    assert meta["chars_per_token"]["language"] > 1 and meta["chars_per_token"]["code"] > 1
    assert set(meta["corpora"]) == {"language", "code"}


@pytest.mark.parametrize("weight", [0.0, 0.05, 0.3, 0.7, 1.0])
def test_mix_reaches_the_code_weight(weight):
    language = [f"story {i} " * 20 for i in range(200)]
    code = ["echo hi\n" * 5 for _ in range(3)]
    texts, lang_chars, code_chars = mixed_texts(language, code, weight)
    fed = list(texts)
    code_fed = sum(len(t) for t in fed if t.startswith("echo"))
    share = code_fed / sum(map(len, fed))
    assert abs(share - weight) < 0.01
    # the counts given are what is fed, to the character: a progress bar's total is never passed
    assert (lang_chars, code_chars) == (sum(map(len, fed)) - code_fed, code_fed)


def test_train_compare_reports_both(trained, capsys):
    assert cli.main(["-c", str(trained / "acm.toml"), "tokenizer", "train", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "original mix" in out
    meta = load_meta(config.load(trained / "acm.toml"))
    assert meta["original_mix"]["mix"]["code_share"] < 0.01


def test_a_new_preset_makes_the_tokenizer_aim_for_its_vocabulary(trained):
    from core.pipeline.overview import pipeline_status

    path = trained / "acm.toml"
    cfg, notes = config.with_value(config.load(path), "model.preset", "micro")
    assert notes[0] == "tokenizer.vocab_size follows the preset (2048)" and cfg.vocab_target() == 2048
    status = {s.name: s for s in pipeline_status(cfg)}["tokenizer"]
    assert status.state == "stale" and "the vocabulary to aim for is now 2,048" in status.detail
    prepare(cfg)  # shards of the tokenizer in force still work: the model would take its 1,024 tokens


def test_a_rebuilt_tokenizer_keeps_the_mode_of_the_one_it_replaces(trained):
    cfg = config.load(trained / "acm.toml")
    tokenizer, meta = cfg.locations.tokenizer_file, cfg.locations.tokenizer_meta
    for path in (tokenizer, meta):
        path.chmod(0o600)
    train_tokenizer(cfg)
    assert [p.stat().st_mode & 0o777 for p in (tokenizer, meta)] == [0o600, 0o600]


def test_cancelled_training_keeps_previous_tokenizer(trained):
    cfg = config.load(trained / "acm.toml")
    before = load_tokenizer(cfg).sha256
    token = CancelToken()
    with pytest.raises(Cancelled):
        train_tokenizer(cfg, lambda p: token.cancel(), token)
    assert load_tokenizer(cfg).sha256 == before


# ---------------------------------------------------------------- prepare

def test_shards_decode_back_to_the_source(trained):
    cfg = config.load(trained / "acm.toml")
    manifests = prepare(cfg)
    tok = load_tokenizer(cfg)
    for kind in ("language", "code"):
        m = manifests[kind]
        assert m["dtype"] == "uint16" and m["tokenizer_sha256"] == tok.sha256
        texts = list(Corpus.open(cfg.data_dir / kind, kind).texts())
        threshold = val_threshold(iter(texts), cfg.prepare.seed, cfg.prepare.val_fraction)
        expected = {s: [t for t in texts if is_val(t, cfg.prepare.seed, threshold) == (s == "val")]
                    for s in ("train", "val")}
        for split in ("train", "val"):
            shards = open_tokens(cfg, kind, split, tok)
            ids = np.concatenate(shards.arrays) if shards.arrays else np.zeros(0, np.uint16)
            assert ids.size == m["tokens"][split] and ids.dtype == np.uint16
            docs = [d for d in np.split(ids, np.flatnonzero(ids == EOS_ID) + 1) if d.size]
            assert all(d[0] == BOS_ID and d[-1] == EOS_ID for d in docs)
            assert [tok.decode(d[1:-1].tolist()) for d in docs] == expected[split]
        assert m["documents"]["val"] == len(expected["val"]) == round(len(texts) * cfg.prepare.val_fraction)


def test_split_is_deterministic_seeded_and_never_empty():
    texts = [f"document number {i}" for i in range(2000)]
    th = val_threshold(iter(texts), 1234, 0.1)
    a = [is_val(t, 1234, th) for t in texts]
    assert sum(a) == 200
    reversed_th, other_th = val_threshold(iter(texts[::-1]), 1234, 0.1), val_threshold(iter(texts), 99, 0.1)
    assert a == [is_val(t, 1234, reversed_th) for t in texts]  # order-free
    assert a != [is_val(t, 99, other_th) for t in texts]
    assert sum(is_val(t, 1, val_threshold(iter(texts[:5]), 1, 0.01)) for t in texts[:5]) == 1  # at least one
    assert val_threshold(iter(texts[:1]), 1, 0.5) == -1  # a single document stays in train
    assert val_threshold(iter(texts), 1, 0.0) == -1


def prepare_cut_after(cfg, monkeypatch, chunks: int, force: bool = False) -> list[int]:
    """`acm prepare` (`--force` with `force`) of the language corpus in chunks of 16 documents,
    cancelled once `chunks` of them are encoded (its record of the build in progress left behind);
    the documents of each chunk encoded from then on, in a list that grows as later prepares encode."""
    import core.tokenizer.shards as prep

    monkeypatch.setattr(prep, "CHUNK_DOCUMENTS", 16)  # several chunks from the small corpus
    token, real, encoded = CancelToken(), prep.encode_chunk, []

    def counting(*a, **k):
        encoded.append(len(a[1]))
        if len(encoded) == chunks:
            token.cancel()
        return real(*a, **k)

    monkeypatch.setattr(prep, "encode_chunk", counting)
    with pytest.raises(Cancelled):
        prepare(cfg, cancel=token, kinds=("language",), force=force)
    encoded.clear()
    return encoded


def test_prepare_resumes_after_interruption(trained, monkeypatch):
    import core.tokenizer.shards as prep

    cfg = config.load(trained / "acm.toml")
    real = prep.encode_chunk
    encoded = prepare_cut_after(cfg, monkeypatch, 3)
    folder = cfg.locations.shards("language")
    assert (folder / PARTIAL).exists() and not (folder / "manifest.json").exists()
    assert len(json.loads((folder / PARTIAL).read_text())["chunks"]) == 3
    build = folder / json.loads((folder / PARTIAL).read_text())["build"]
    killed = [build / ".chunk-00003.train.npy.k1ll3d00.tmp", folder / ".manifest.partial.json.k1ll3d00.tmp"]
    for tmp in killed:  # what a SIGKILL leaves mid-write
        tmp.write_bytes(b"half")
    said = []
    m = prepare(cfg, said.append, kinds=("language",))["language"]
    assert {p.task for p in said} == {"language (resumed: 3 chunks made earlier)"}  # said, as train --resume says
    assert not any(tmp.exists() for tmp in killed)
    assert len(encoded) == len(m["chunks"]) - 3  # only the unfinished chunks were encoded
    monkeypatch.setattr(prep, "encode_chunk", real)
    fresh = prepare(cfg, kinds=("language",), force=True)["language"]
    assert [c["sha256"] for c in fresh["chunks"]] == [c["sha256"] for c in m["chunks"]]
    assert CHUNK_DOCUMENTS == 8192


def test_a_forced_prepare_cut_short_leaves_nothing_once_the_shards_in_force_are_read_as_done(trained, monkeypatch):
    """`prepare --force` interrupted, then a plain `prepare`, which finds the shards in force up to
    date: the cut build and its record (which no later prepare could resume) are removed."""
    import core.tokenizer.shards as prep

    cfg = config.load(trained / "acm.toml")
    monkeypatch.setattr(prep, "CHUNK_DOCUMENTS", 16)  # as the cut prepare's chunks
    published = prepare(cfg, kinds=("language",))["language"]["build"]
    prepare_cut_after(cfg, monkeypatch, 2, force=True)
    folder = cfg.locations.shards("language")
    assert (folder / PARTIAL).exists() and len(list(folder.glob("build-*"))) == 2
    assert prepare(cfg, kinds=("language",))["language"]["build"] == published
    assert not (folder / PARTIAL).exists() and [d.name for d in folder.glob("build-*")] == [published]
    open_tokens(cfg, "language", "train")


@pytest.mark.parametrize("damage", [
    lambda p: p.update(build="../../escaped"), lambda p: p.update(build=["x"]),
    lambda p: p["chunks"][0]["files"].update(train="/etc/passwd"), lambda p: p["chunks"][0].pop("files"),
    lambda p: p.update(chunks={"0": 1}), lambda p: p["chunks"][0].pop("tokens"),
    lambda p: p["chunks"][1]["documents"].update(val="12"), lambda p: p.update(val_threshold="x")])
def test_a_damaged_record_of_an_interrupted_prepare_starts_a_new_build_inside_the_shards_folder(
        trained, monkeypatch, damage):
    cfg = config.load(trained / "acm.toml")
    encoded = prepare_cut_after(cfg, monkeypatch, 2)
    folder = cfg.locations.shards("language")
    record = json.loads((folder / PARTIAL).read_text())
    damage(record)
    (folder / PARTIAL).write_text(json.dumps(record))
    m = prepare(cfg, kinds=("language",))["language"]
    assert len(encoded) == len(m["chunks"])  # every chunk encoded again, in a build of its own
    assert not (folder.parent.parent / "escaped").exists() and not (folder.parent / "escaped").exists()
    assert all((folder / name).resolve().is_relative_to((folder / m["build"]).resolve()) for c in m["chunks"]
               for name in c["files"].values())
    open_tokens(cfg, "language", "train")


def test_changed_tokenizer_is_refused(trained):
    cfg = config.load(trained / "acm.toml")
    prepare(cfg)
    cfg.tokenizer.code_weight = 0.6
    config.save(cfg, trained / "acm.toml")
    train_tokenizer(config.load(trained / "acm.toml"))
    with pytest.raises(AcmError, match=r"made with another tokenizer; run `acm prepare --force`"):
        prepare(cfg)
    with pytest.raises(AcmError, match="stale"):
        open_tokens(cfg, "code", "train")
    prepare(cfg, force=True)
    assert open_tokens(cfg, "code", "train").num_tokens > 0


def test_metadata_of_another_tokenizer_than_the_one_in_force_reads_as_none(trained, capsys):
    """A kill between a new tokenizer's swap and its metadata's write leaves the old metadata beside
    it: neither `tokenizer info` nor the overview reports the old tokenizer's figures as the new one's."""
    cfg = config.load(trained / "acm.toml")
    tok = cfg.locations.tokenizer_file
    tok.write_text(json.dumps(json.loads(tok.read_text()), indent=1))  # another file, as a new tokenizer is
    c = str(trained / "acm.toml")
    assert cli.main(["-c", c, "tokenizer", "info"]) == 2
    assert "has no metadata of its own" in capsys.readouterr().err
    assert cli.main(["-c", c, "pipeline"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "tokenizer" in line)
    assert "not started" in row, row
    tok.unlink()
    os.mkfifo(tok)  # no tokenizer that reads: said as such, not as one without its metadata
    assert cli.main(["-c", c, "tokenizer", "info"]) == 2
    err = capsys.readouterr().err
    assert "a FIFO, not a regular file" in err and "has no metadata of its own" not in err


def test_cli_probe_and_prepare(trained, capsys):
    c = str(trained / "acm.toml")
    assert cli.main(["-c", c, "tokenizer", "probe", "--json", LOG_EXAMPLES[0]]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "".join(r["tokens"]) == LOG_EXAMPLES[0]
    assert cli.main(["-c", c, "tokenizer", "probe", "-e", "#!/bin/bash\\necho hi"]) == 0
    assert "IDs:" in capsys.readouterr().out
    assert cli.main(["-c", c, "prepare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["code"]["tokens"]["train"] > 0 and out["language"]["dtype"] == "uint16"


def test_cli_without_tokenizer(project, capsys):
    assert cli.main(["-c", str(project / "acm.toml"), "tokenizer", "probe", "x"]) == 2
    assert "run `acm tokenizer train` first" in capsys.readouterr().err


def test_an_interrupted_rebuild_leaves_the_previous_shards_in_force(trained, monkeypatch):
    import core.tokenizer.shards as prep

    monkeypatch.setattr(prep, "CHUNK_DOCUMENTS", 16)  # several chunks from the small corpus
    cfg = config.load(trained / "acm.toml")
    before = prepare(cfg)["language"]
    token = CancelToken()
    real = prep.encode_chunk

    def interrupted(*a, **k):
        token.cancel()
        return real(*a, **k)

    monkeypatch.setattr(prep, "encode_chunk", interrupted)
    with pytest.raises(Cancelled):
        prepare(cfg, cancel=token, force=True, kinds=("language",))
    assert prep.read_manifest(cfg, "language") == before
    assert open_tokens(cfg, "language", "train").num_tokens == before["tokens"]["train"]
    monkeypatch.setattr(prep, "encode_chunk", real)
    after = prepare(cfg, force=True, kinds=("language",))["language"]
    assert after["build"] != before["build"] and after["tokens"] == before["tokens"]
    folder = cfg.locations.shards("language")
    assert [d.name for d in folder.glob("build-*")] == [after["build"]]  # the old build went after the swap


def test_a_tokenizer_rebuild_interrupted_late_leaves_the_previous_one_in_force(trained):
    cfg = config.load(trained / "acm.toml")
    folder = cfg.locations.tokenizer
    before = {f.name: f.read_bytes() for f in (cfg.locations.tokenizer_file, cfg.locations.tokenizer_meta)}
    cfg.tokenizer.code_weight = 0.6  # a different tokenizer if it were kept
    token = CancelToken()

    def cancel_in_the_comparison(p):
        if "original mix" in p.task:  # the new tokenizer is trained by now
            token.cancel()

    with pytest.raises(Cancelled):
        train_tokenizer(cfg, cancel_in_the_comparison, token, compare=True)
    assert {f.name: f.read_bytes() for f in (cfg.locations.tokenizer_file, cfg.locations.tokenizer_meta)} == before
    assert load_tokenizer(cfg).sha256 == load_meta(cfg)["tokenizer_sha256"]
    assert not list(folder.glob(".*.new"))  # the unfinished build is gone


def _damage(path, how: str) -> None:
    """Rewrite one shard file as a damaged disk or a hand edit would leave it."""
    ids = np.load(path)
    if how == "beyond the vocabulary":
        ids = ids.copy()
        ids[len(ids) // 2] = 60000
        np.save(path, ids)
    elif how == "2-D":
        np.save(path, ids[: len(ids) // 2 * 2].reshape(2, -1))
    elif how == "signed ids":
        np.save(path, ids.astype(np.int32))
    elif how == "cut short":
        np.save(path, ids[:-1])
    elif how == "not numpy":
        path.write_bytes(b"this is no token array\n")
    else:
        path.unlink()


@pytest.mark.parametrize("how, says", [
    ("beyond the vocabulary", r"id 60,000 is outside the tokenizer's [\d,]+-token vocabulary"),
    ("2-D", r"2-D, not a flat list of ids"),
    ("signed ids", r"ids of type int32, not uint16"),
    ("cut short", r"tokens where the manifest says"),
    ("not numpy", r"is not a token array"),
    ("gone", r"is missing"),
])
def test_a_damaged_shard_is_refused_in_one_line_before_any_step(with_model, capsys, how, says):
    cfg = config.load(with_model / "acm.toml")
    manifest = json.loads((cfg.locations.shards("code") / "manifest.json").read_text())
    shard = cfg.locations.shards("code") / manifest["chunks"][0]["files"]["val"]
    _damage(shard, how)
    c = str(with_model / "acm.toml")
    for command in (["train", "finetune", "--run", "m", "--steps", "12"], ["eval", "--samples", "1"]):
        assert cli.main(["-c", c, *command]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("acm: error: code token shard ")
        assert str(shard) in err[0] and "run `acm prepare --force`" in err[0]
        assert re.search(says, err[0])
    assert cli.main(["-c", c, "prepare", "--force"]) == 0
    assert open_tokens(cfg, "code", "val").num_tokens == manifest["tokens"]["val"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../../acm.toml", "x\0y"])
def test_a_manifest_naming_a_file_outside_the_shards_folder_is_refused_without_reading_it(prepared, name):
    cfg = config.load(prepared / "acm.toml")
    path = cfg.locations.shards("language") / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["chunks"][0]["files"]["train"] = name
    path.write_text(json.dumps(manifest))
    with pytest.raises(AcmError, match=r"manifest .* is damaged \(a chunk's train file .* lies outside it\): run `acm"):
        open_tokens(cfg, "language", "train")


def test_a_manifest_naming_no_file_is_refused_in_one_line(prepared):
    cfg = config.load(prepared / "acm.toml")
    path = cfg.locations.shards("language") / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["chunks"][0]["files"]["train"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(AcmError, match=r"manifest .* is damaged \(a chunk names no train file\): run `acm prepare"):
        open_tokens(cfg, "language", "train")


CTRL_C_WHILE_IT_TRAINS = """
import os, signal, sys, threading, time
from core.tokenizer import bpe

real = bpe.new_bpe

class MergingForEver:  # the Rust trainer's merges, which see no cancel: here they never end
    def __init__(self, tok):
        self.tok = tok
    def __getattr__(self, name):
        return getattr(self.tok, name)
    def train_from_iterator(self, texts, trainer):
        list(texts)  # every text read: the merges begin, where no signal is seen (Rust, Python's lock let go)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C
        threading.Event().wait()

real_evaluate, real_metadata, heard = bpe.evaluate, bpe._metadata, {}

def metadata(*args):  # the cancel the command's Ctrl-C sets
    heard["cancel"] = args[5]
    return real_metadata(*args)

def counting_the_held_out_text(*args):  # after the merges, where no cancel is checked either
    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C, heard while the text is still being counted
    deadline = time.monotonic() + 30  # a loaded machine may take a while to run the handler
    while not heard["cancel"].cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    return real_evaluate(*args)

if sys.argv[2] == "merges":
    bpe.new_bpe = lambda *a: (MergingForEver(real(*a)[0]), real(*a)[1])
else:
    bpe.evaluate, bpe._metadata = counting_the_held_out_text, metadata
from core.cli import main
sys.exit(main(["-c", sys.argv[1], *sys.argv[3:]]))
"""


@pytest.mark.parametrize("command", [["tokenizer", "train"], ["pipeline", "run"]])
@pytest.mark.parametrize("during", ["merges", "held-out count"])
def test_a_ctrl_c_ends_tokenizer_training_at_once_and_keeps_the_tokenizer(trained, command, during):
    """The merges run in Rust, where no cancel is seen (minutes on a large corpus): the command ends
    without waiting for them, the tokenizer in force untouched, where it used to wait them out. The
    pipeline's tokenizer stage too (a tokenizer trained on other settings is its first stage). A
    Ctrl-C while the held-out text is counted, after the merges, swaps nothing in either."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT, sigint_at_default

    cfg = config.load(trained / "acm.toml")
    cfg.tokenizer.vocab_size = 1000  # another tokenizer than the one in force (and the pipeline's first stage)
    config.save(cfg, trained / "acm.toml")
    before = cfg.locations.tokenizer_file.read_bytes()
    r = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_IT_TRAINS, str(trained / "acm.toml"), during.split()[0],
                        *command],
                       capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=60,
                       preexec_fn=sigint_at_default)
    said = {"tokenizer": "acm: interrupted",
            "pipeline": "interrupted: finished stages are kept; `acm pipeline run` continues"}
    assert r.returncode == 130 and r.stderr.splitlines()[-1] == said[command[0]] and "Traceback" not in r.stderr
    assert cfg.locations.tokenizer_file.read_bytes() == before
    assert [p.name for p in cfg.locations.tokenizer.iterdir() if p.name.startswith(".")] == []


def test_a_file_where_the_tokenizer_folder_goes_is_one_line_saying_what_to_do(trained, capsys):
    """Said before the corpora are read and the merges learned (it was said after: minutes on a real
    corpus), so the line is all the command writes."""
    cfg = config.load(trained / "acm.toml")
    shutil.rmtree(cfg.locations.tokenizer)
    cfg.locations.tokenizer.write_text("not a folder")
    reported = []
    with pytest.raises(FileExistsError):
        train_tokenizer(cfg, reported.append)
    assert reported == [] and cfg.locations.tokenizer.read_text() == "not a folder"
    assert cli.main(["-c", str(trained / "acm.toml"), "tokenizer", "train"]) == 2
    assert capsys.readouterr().err == (f"acm: error: File exists: {cfg.locations.tokenizer} (a file stands "
                                       "where acm keeps a folder: move it aside)\n")
    cfg.locations.tokenizer.unlink()
    shutil.rmtree(cfg.data_dir / "language")
    with pytest.raises(AcmError):  # no corpus to train on: no tokenizer folder left behind either
        train_tokenizer(cfg)
    assert not cfg.locations.tokenizer.exists()

"""`acm prepare`: both corpora tokenized into memory-mappable token shards with train/val splits.

Layout: data/tokens/<corpus>/chunk-NNNNN.{train,val}.npy (uint16 while the vocab fits, else
uint32) and manifest.json. The val split is the val_fraction of documents with the smallest keyed
hash of their text (at least one): deterministic, independent of order, never empty. Documents
are laid end to end as [<BOS>] ids <EOS>. A chunk holds either comment-to-command documents
(tldr, NL2Bash: flagged `pairs` in the manifest) or none, so training can draw a set share of each
batch from them (`train.finetune.pairs_share`).
Each chunk is written atomically and recorded in manifest.partial.json, so an interrupted
prepare resumes at the first unfinished chunk; the final manifest is written last.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.atomic import atomic_open, check_regular, kind_of, read_json, sweep_temporaries, write_text, writing
from core.config import Config
from core.data.corpus import Corpus, corpus_hashes, corpus_sha256, sha256_file
from core.data.pairs import SOURCES as PAIR_SOURCES
from core.errors import AcmError
from core.locks import Flock, rebuilding_inputs
from core.paths import CORPORA, MANIFEST, lies_in
from core.progress import CancelToken, Reporter, Ticker, no_report
from core.tokenizer.bpe import BOS_ID, EOS_ID, AcmTokenizer, load_tokenizer

SPLITS = ("train", "val")
CHUNK_DOCUMENTS = 8192
BATCH_DOCUMENTS = 512
PARTIAL = "manifest.partial.json"




def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_hash(text: str, seed: int) -> int:
    key = seed.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest(), "little")


def val_threshold(texts: Iterator[str], seed: int, val_fraction: float) -> int:
    """The largest split hash that goes to val: val_fraction of the documents, at least one
    (unless the corpus has a single document or val_fraction is 0)."""
    hashes = np.fromiter((split_hash(t, seed) for t in texts), dtype=np.uint64)
    n = hashes.size
    k = min(max(1, round(n * val_fraction)), n - 1) if val_fraction > 0 else 0
    return int(np.partition(hashes, k - 1)[k - 1]) if k > 0 else -1


def is_val(text: str, seed: int, threshold: int) -> bool:
    return split_hash(text, seed) <= threshold


def _identity(cfg: Config, kind: str, tok: AcmTokenizer) -> dict:
    """What the shards depend on: if any of it changes, the shards are stale."""
    return {
        "kind": kind,
        "tokenizer_sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size).name,
        "corpus_manifest_sha256": corpus_sha256(cfg.locations.corpus_manifest(kind)),
        "val_fraction": cfg.prepare.val_fraction,
        "seed": cfg.prepare.seed,
        "add_bos": cfg.prepare.add_bos,
        "chunk_documents": CHUNK_DOCUMENTS,
    }


def _chunks(corpus: Corpus, size: int) -> Iterator[tuple[bool, list[str]]]:
    """(holds comment-to-command documents, texts) of each chunk: `size` documents, or fewer where
    the corpus passes from the other documents to those (the fetch writes them last, together)."""
    chunk: list[str] = []
    pairs = False
    for source, text in corpus.sourced_texts():
        if chunk and (source in PAIR_SOURCES) != pairs:
            yield pairs, chunk
            chunk = []
        pairs = source in PAIR_SOURCES
        chunk.append(text)
        if len(chunk) == size:
            yield pairs, chunk
            chunk = []
    if chunk:
        yield pairs, chunk


def _save_npy(path: Path, arr: np.ndarray) -> str:
    with atomic_open(path, "wb") as f:
        np.save(f, arr)
    return sha256_file(path)


def encode_chunk(tok: AcmTokenizer, texts: list[str], dtype: np.dtype, seed: int, threshold: int,
                 add_bos: bool) -> dict[str, tuple[np.ndarray, int]]:
    """Token arrays of one chunk, per split, with their document counts."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    head = [BOS_ID] if add_bos else []
    for start in range(0, len(texts), BATCH_DOCUMENTS):
        batch = texts[start:start + BATCH_DOCUMENTS]
        for text, ids in zip(batch, tok.encode_batch(batch)):
            parts["val" if is_val(text, seed, threshold) else "train"].append(
                np.array(head + ids + [EOS_ID], dtype=dtype))
    return {s: (np.concatenate(p) if p else np.zeros(0, dtype), len(p)) for s, p in parts.items()}


def read_manifest(cfg: Config, kind: str) -> dict | None:
    """The manifest of one corpus's finished shards, or None where there are none or it is damaged
    (its counts not whole numbers: nothing is trained on a manifest that lies)."""
    manifest = read_json(cfg.locations.shards_manifest(kind), {"chunks": list, "tokens": dict, "documents": dict})
    return manifest if manifest is not None and _counts_whole(manifest) else None


def _counts_whole(manifest: dict) -> bool:
    try:
        return _whole_counts((manifest, *manifest["chunks"]))
    except (KeyError, TypeError):
        return False


def _whole_counts(parts) -> bool:
    """Whether each of `parts` (a manifest, its chunks) counts its tokens and documents of every
    split in non-negative integers."""
    try:
        counts = [part[key][s] for part in parts for key in ("tokens", "documents") for s in SPLITS]
    except (KeyError, TypeError):
        return False
    return all(type(n) is int and n >= 0 for n in counts)


def prepare_corpus(cfg: Config, kind: str, tok: AcmTokenizer, report: Reporter, cancel: CancelToken,
                   force: bool = False) -> dict:
    """Tokenize one corpus into shards, resuming at the first unfinished chunk."""
    ident = _identity(cfg, kind, tok)
    done = None if force else _up_to_date(cfg, kind, ident)
    if done is not None:
        _sweep_abandoned(cfg, kind)
        ticker = Ticker(report, f"{kind} (done)", done["documents"]["train"] + done["documents"]["val"])
        ticker.advance(ticker.state.total or 0)
        ticker.finish()
        return done
    corpus = Corpus.open(cfg.locations.corpus(kind), kind)
    with rebuilding_inputs(cfg.locations.inputs_lock, f"the {kind} token shards"):
        partial = _resume_point(cfg, kind, ident, force)
        if "val_threshold" not in partial:
            partial["val_threshold"] = val_threshold(corpus.texts(), cfg.prepare.seed, cfg.prepare.val_fraction)
        made = len(partial["chunks"])  # an interrupted prepare's: said, not made again
        task = f"{kind} (resumed: {made} chunk{'' if made == 1 else 's'} made earlier)" if made else kind
        with writing(f"the {kind} token shards in {cfg.locations.shards(kind)}"):  # finished chunks stay, to resume
            _encode_chunks(cfg, kind, tok, corpus, partial, Ticker(report, task, len(corpus)), cancel)
        chunks = partial["chunks"]
        manifest = ident | {
            "chunks": chunks, "build": partial["build"],
            "tokens": {s: sum(c["tokens"][s] for c in chunks) for s in SPLITS},
            "documents": {s: sum(c["documents"][s] for c in chunks) for s in SPLITS},
        }
        manifest["val_threshold"] = partial["val_threshold"]
        _publish(cfg.locations.shards(kind), manifest)
    return manifest


def _publish(folder: Path, manifest: dict) -> None:
    """Swap the new shards in: the manifest names them (one atomic write), then what it no longer
    names goes. Until that write, the previous shards stay in force."""
    write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    (folder / PARTIAL).unlink(missing_ok=True)
    _sweep(folder, keep=manifest["build"])


def _sweep(folder: Path, keep: str | None) -> None:
    """Remove the builds and loose chunk files that neither the manifest nor `keep` names."""
    published = (read_json(folder / MANIFEST) or {}).get("build")
    for d in folder.glob("build-*"):
        if d.name not in (keep, published):
            shutil.rmtree(d, ignore_errors=True)
    if published:  # shards from before builds lay loose in the folder
        for f in folder.glob("chunk-*.npy"):
            f.unlink(missing_ok=True)


def _sweep_abandoned(cfg: Config, kind: str) -> None:
    """Shards up to date: a build an interrupted `prepare --force` left beside them, and its record,
    can only be replaced, never resumed (a force starts afresh), so they go; not while anything else
    holds the inputs (a rebuild under way, a training stage reading them)."""
    folder, lock = cfg.locations.shards(kind), Flock(cfg.locations.inputs_lock)
    if not ((folder / PARTIAL).exists() or len(list(folder.glob("build-*"))) > 1) or not lock.try_acquire():
        return
    with lock:
        (folder / PARTIAL).unlink(missing_ok=True)
        _sweep(folder, keep=None)


def _up_to_date(cfg: Config, kind: str, ident: dict) -> dict | None:
    """The finished shards' manifest if they match `ident`; None when they must be (re)built.
    Shards of another tokenizer are refused: rebuilding them is asked for with --force."""
    done = read_manifest(cfg, kind)
    if not done:
        return None
    recorded = {k: done.get(k) for k in ident}
    if recorded["corpus_manifest_sha256"] in corpus_hashes(cfg.locations.corpus_manifest(kind)):
        recorded["corpus_manifest_sha256"] = ident["corpus_manifest_sha256"]  # the same corpus, either hash
    if recorded == ident:
        return done
    if done.get("tokenizer_sha256") != ident["tokenizer_sha256"]:
        raise AcmError(f"the {kind} token shards were made with another tokenizer; "
                       f"run `acm prepare --force` to rebuild them")
    return None  # the corpus or the split settings changed: rebuilt


def _resume_point(cfg: Config, kind: str, ident: dict, force: bool) -> dict:
    """The record of the build in progress for these settings: the chunks already written into its
    own folder, beside the shards in force (a new, empty build after a change or with force)."""
    folder = cfg.locations.shards(kind)
    folder.mkdir(parents=True, exist_ok=True)
    partial = read_json(folder / PARTIAL)
    if force or not partial or {k: partial.get(k) for k in ident} != ident or not _resumable(partial, folder):
        partial = ident | {"chunks": [], "build": f"build-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"}
    _sweep(folder, keep=partial["build"])  # builds abandoned earlier
    (folder / partial["build"]).mkdir(exist_ok=True)
    sweep_temporaries(folder, MANIFEST, PARTIAL)  # what a killed prepare was writing
    sweep_temporaries(folder / partial["build"], "chunk-*")
    finished = {c["index"]: c for c in partial["chunks"]
                if all((folder / c["files"][s]).exists() for s in SPLITS)}
    partial["chunks"] = [finished[i] for i in sorted(finished)]
    return partial


BUILD_NAME = re.compile(r"build-[0-9A-Za-z-]+")  # a build's folder, as `_resume_point` names it


def _resumable(partial: dict, folder: Path) -> bool:
    """Whether a build's record is as acm writes it: its folder's name, its split's threshold, and
    chunks with an index, the counts of each split and a file of each inside that folder (a damaged
    record starts a new build, never written through)."""
    build, chunks = partial.get("build"), partial.get("chunks")
    if not (isinstance(build, str) and BUILD_NAME.fullmatch(build) and isinstance(chunks, list)
            and type(partial.get("val_threshold", 0)) is int and _whole_counts(chunks)):
        return False
    try:
        return all(type(c["index"]) is int and all(isinstance(c["files"][s], str)
                                                   and lies_in(folder / c["files"][s], folder / build)
                                                   for s in SPLITS) for c in chunks)
    except (KeyError, TypeError):
        return False


def _encode_chunks(cfg: Config, kind: str, tok: AcmTokenizer, corpus: Corpus, partial: dict, ticker: Ticker,
                   cancel: CancelToken) -> None:
    """Encode and write every chunk not finished yet, recording each in the partial manifest."""
    folder, dtype = cfg.locations.shards(kind), np.dtype(partial["dtype"])
    finished = {c["index"] for c in partial["chunks"]}
    for index, (pairs, texts) in enumerate(_chunks(corpus, CHUNK_DOCUMENTS)):
        cancel.check()
        if index in finished:
            ticker.advance(len(texts), note=f"chunk {index} (done earlier)")
            continue
        arrays = encode_chunk(tok, texts, dtype, cfg.prepare.seed, partial["val_threshold"], cfg.prepare.add_bos)
        entry = {"index": index, "files": {}, "tokens": {}, "documents": {}, "sha256": {}}
        if pairs:
            entry["pairs"] = True
        for split, (arr, ndocs) in arrays.items():
            name = f"{partial['build']}/chunk-{index:05d}.{split}.npy"
            entry["files"][split], entry["tokens"][split], entry["documents"][split] = name, int(arr.size), ndocs
            entry["sha256"][split] = _save_npy(folder / name, arr)
        partial["chunks"].append(entry)
        write_text(folder / PARTIAL, json.dumps(partial) + "\n")
        ticker.advance(len(texts), note=f"chunk {index}")
    ticker.finish()


def prepare(cfg: Config, report: Reporter = no_report, cancel: CancelToken | None = None,
            force: bool = False, kinds: tuple[str, ...] = CORPORA) -> dict[str, dict]:
    """Tokenize the fetched corpora into token shards (resuming an interrupted run)."""
    cancel = cancel or CancelToken()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    tok = load_tokenizer(cfg)
    return {kind: prepare_corpus(cfg, kind, tok, report, cancel, force) for kind in kinds}


# ---------------------------------------------------------------- reading

@dataclass
class TokenShards:
    """One corpus split's tokens, memory-mapped chunk by chunk."""

    manifest: dict
    arrays: list[np.ndarray]
    pairs: list[bool] = field(default_factory=list)  # per array: it holds comment-to-command documents

    @property
    def num_tokens(self) -> int:
        return sum(a.size for a in self.arrays)

    def part(self, pairs: bool) -> TokenShards:
        """Only the chunks of comment-to-command documents (pairs=True), or only the others."""
        flags = self.pairs or [False] * len(self.arrays)
        return TokenShards(self.manifest, [a for a, f in zip(self.arrays, flags) if f == pairs],
                           [f for f in flags if f == pairs])


def open_tokens(cfg: Config, kind: str, split: str, tok: AcmTokenizer | None = None) -> TokenShards:
    """Memory-map a split, refusing (one line) shards that are missing or made with another tokenizer."""
    folder = cfg.locations.shards(kind)
    manifest = read_manifest(cfg, kind)
    if manifest is None:
        raise AcmError(f"no {kind} token shards in {folder}: run `acm prepare` first")
    tok = tok or load_tokenizer(cfg)
    if manifest["tokenizer_sha256"] != tok.sha256:
        raise AcmError(f"the {kind} token shards are stale (made with another tokenizer): run `acm prepare --force`")
    return map_split(folder, manifest, split, kind, tok.vocab_size)


def map_split(folder: Path, manifest: dict, split: str, kind: str, vocab_size: int | None = None) -> TokenShards:
    """Memory-map one split of the chunks `manifest` lists in `folder`, each checked as it is opened:
    a flat array of the tokenizer's id type and the manifest's token count, every id inside the
    vocabulary (an id beyond it would index past the embedding table). One line if one is damaged."""
    arrays = [(_mapped(folder, chunk, split, vocab_size, kind), bool(chunk.get("pairs")))
              for chunk in manifest["chunks"]]
    return TokenShards(manifest, [a for a, _ in arrays if a.size], [f for a, f in arrays if a.size])


def _mapped(folder: Path, chunk: dict, split: str, vocab_size: int | None, kind: str) -> np.ndarray:
    """One chunk's split, memory-mapped and checked (`_shard_fault` says what is wrong)."""
    try:
        name, tokens = chunk["files"][split], chunk["tokens"][split]
        path = folder / name
    except (KeyError, TypeError):
        raise AcmError(f"the {kind} token shards' manifest in {folder} is damaged (a chunk names no "
                       f"{split} file): run `acm prepare --force`") from None
    if not lies_in(path, folder):  # the shards are read from their folder only
        raise AcmError(f"the {kind} token shards' manifest in {folder} is damaged (a chunk's {split} file "
                       f"{name!r} lies outside it): run `acm prepare --force`")
    try:
        check_regular(path)  # a FIFO in its place would hold the stage waiting for a writer
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        fault = ("missing" if isinstance(e, FileNotFoundError) else f"{kind_of(path)}, not a file"
                 if path.exists() and not path.is_file() else "not a token array")
        raise AcmError(f"{kind} token shard {path} is {fault}: run `acm prepare --force`") from None
    fault = _shard_fault(arr, tokens, vocab_size)
    if fault:
        raise AcmError(f"{kind} token shard {path} is damaged ({fault}): run `acm prepare --force`")
    return arr


def _shard_fault(arr: np.ndarray, tokens: int, vocab_size: int | None) -> str | None:
    """What makes a shard unfit to train on, or None. Reading every id costs a pass over the file,
    which the first epoch makes anyway."""
    want = token_dtype(vocab_size) if vocab_size else None
    if arr.ndim != 1:
        return f"{arr.ndim}-D, not a flat list of ids"
    if arr.dtype.kind != "u" or (want is not None and arr.dtype != want):
        return f"ids of type {arr.dtype}, not {want or 'unsigned integers'}"
    if arr.size != tokens:
        return f"{arr.size:,} tokens where the manifest says {tokens:,}"
    top = int(arr.max()) if arr.size and vocab_size else 0
    if vocab_size and top >= vocab_size:
        return f"id {top:,} is outside the tokenizer's {vocab_size:,}-token vocabulary"
    return None

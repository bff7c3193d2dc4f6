"""The on-disk corpus: parquet shards plus a manifest, published atomically.

A corpus folder (data/language or data/code) holds `manifest.json` and a `shards-<id>/` folder.
The manifest is written last, atomically, and names its shard folder: a fetch that is cancelled
or killed leaves the previous manifest (and so the previous corpus) in force, and its unfinished
shard folder is swept away by the next fetch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import JSON_LIMIT, open_regular, read_json, read_regular, write_text, writing
from core.errors import AcmError
from core.escapes import without_surrogates
from core.locks import Flock, held_alone
from core.paths import CORPORA, MANIFEST, lies_in

# One schema for both corpora; fields that do not apply are empty strings.
SCHEMA = pa.schema([
    ("text", pa.string()),
    ("source", pa.string()),  # builtin / hf / local / github / tldr / nl2bash
    ("origin", pa.string()),  # file path, dataset row, topic name
    ("repo", pa.string()),
    ("commit", pa.string()),
    ("category", pa.string()),
    ("licence", pa.string()),  # SPDX id of the document's source; NOASSERTION where none is known
])
COLUMNS = SCHEMA.names
UNKNOWN_LICENCE = "NOASSERTION"  # SPDX's word for "not stated"
TOKENS_PER_WORD = 1.3  # the original log's estimate (483.2M tokens for 371.7M words)


@dataclass
class TextStats:
    documents: int = 0
    words: int = 0
    bytes: int = 0
    lines: int = 0

    def add(self, text: str) -> None:
        self.documents += 1
        self.words += len(text.split())
        self.bytes += len(text.encode("utf-8"))
        self.lines += text.count("\n") + (0 if text.endswith("\n") or not text else 1)

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "words": self.words,
            "estimated_tokens": round(self.words * TOKENS_PER_WORD),
            "bytes": self.bytes,
            "lines": self.lines,
            "avg_lines": round(self.lines / self.documents, 1) if self.documents else 0.0,
        }


def sha256_file(path: Path) -> str:
    """The file's hash; OSError where it is not a regular file (a FIFO would be waited on for ever)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetching(folder: Path, kind: str) -> contextlib.AbstractContextManager:
    """Held for a whole fetch of one corpus: a second fetch of it meanwhile is refused in one line,
    where it would sweep away the first one's unpublished shards (and, between that fetch's last shard
    and its manifest, the corpus in force too)."""
    return held_alone(Path(folder) / ".fetch.lock",
                      f"the {kind} corpus is being fetched already (here or by another acm): wait for that fetch "
                      "to finish")


class CorpusWriter:
    """Writes documents into shards of a new shard folder; `publish` makes them the corpus."""

    def __init__(self, folder: Path, kind: str, shard_documents: int = 20_000, shard_bytes: int = 64 << 20,
                 readers_lock: Path | None = None):
        self.folder, self.kind, self.readers_lock = Path(folder), kind, readers_lock
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sweep()
        self.shard_dir = self.folder / f"shards-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.shard_dir.mkdir()
        self.shard_documents, self.shard_bytes = shard_documents, shard_bytes
        self.stats = TextStats()
        self.shards: list[dict] = []
        self._rows: list[dict] = []
        self._row_bytes = 0

    def add(self, text: str, **fields: str) -> None:
        row = {c: without_surrogates(fields.get(c, "")) for c in COLUMNS}  # a file's name need not be UTF-8
        row["text"] = text
        row["licence"] = row["licence"] or UNKNOWN_LICENCE  # unknown is said, never left blank
        self._rows.append(row)
        self._row_bytes += len(text)
        self.stats.add(text)
        if len(self._rows) >= self.shard_documents or self._row_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"shard-{len(self.shards):05d}.parquet"
        final = self.shard_dir / name
        tmp = self.shard_dir / f".{name}.tmp"
        with writing(f"{self.kind} corpus shard {final}", tmp):
            pq.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA), tmp, compression="zstd")
            tmp.rename(final)
        self.shards.append({"file": name, "documents": len(self._rows), "bytes": final.stat().st_size,
                            "sha256": sha256_file(final)})
        self._rows, self._row_bytes = [], 0

    def publish(self, info: dict) -> dict:
        """Finish the last shard and atomically write the manifest. An empty corpus is an error."""
        self._flush()
        if not self.stats.documents:
            self.abandon()
            raise AcmError(f"the {self.kind} fetch found no documents: nothing to keep (check the sources)")
        manifest = {
            "kind": self.kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "shard_dir": self.shard_dir.name,
            "shards": self.shards,
            "stats": self.stats.as_dict(),
            **info,
        }
        write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        self._sweep()
        return manifest

    def _sweep(self) -> None:
        """The shard folders the manifest does not name: a killed fetch's, and the corpus this fetch
        replaced, unless a tokenizer training or a prepare may be reading that one now (they hold
        `readers_lock`, as a training stage does): then a later fetch sweeps it."""
        lock = Flock(self.readers_lock) if self.readers_lock is not None else None
        if lock is None:
            sweep_unpublished(self.folder)
        elif lock.try_acquire():
            with lock:
                sweep_unpublished(self.folder)

    def abandon(self) -> None:
        """The new shards removed, unless the manifest names them already: an interrupt that came
        as (or after) `publish` wrote it finds them the corpus in force, to be kept."""
        if (read_json(self.folder / MANIFEST) or {}).get("shard_dir") == self.shard_dir.name:
            return
        shutil.rmtree(self.shard_dir, ignore_errors=True)


def corpus_sha256(manifest: Path) -> str:
    """What the tokenizer and the token shards record of the corpus they were made from: the hash of
    its documents, the list of its shards' sha256 (the documents, with each one's source and licence,
    in order). A fetch of the same documents, whatever else its manifest says of that fetch (its time,
    its shard folder's name, clones made or reused, rows streamed or reused), leaves them up to date.
    A manifest that names no shards that way is hashed as it is."""
    try:
        shards = [shard["sha256"] for shard in json.loads(read_regular(manifest, JSON_LIMIT))["shards"]]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
        return sha256_file(manifest)
    if not all(isinstance(sha, str) for sha in shards):
        return sha256_file(manifest)
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def corpus_hashes(manifest: Path) -> tuple[str, ...]:
    """What a tokenizer or token shards made from the corpus now in `manifest` may have recorded of it:
    its `corpus_sha256`, or the whole file's hash, which those made before recorded (none: no corpus)."""
    return (corpus_sha256(manifest), sha256_file(manifest)) if manifest.exists() else ()


def sweep_unpublished(folder: Path) -> None:
    """Remove shard folders that no manifest names (left by a cancelled or killed fetch)."""
    current = (read_json(folder / MANIFEST) or {}).get("shard_dir")
    for d in folder.glob("shards-*"):
        if d.is_dir() and d.name != current:
            shutil.rmtree(d, ignore_errors=True)


def _damage(e: Exception) -> str:
    """What a corpus's manifest check found, in a user's words rather than Python's."""
    if isinstance(e, KeyError):
        return f"{MANIFEST} has no {e.args[0]!r} entry"
    if isinstance(e, OSError):
        return f"{e.filename or MANIFEST}: {e.strerror or e}"
    if isinstance(e, (TypeError, RecursionError)):
        return f"{MANIFEST} is not laid out as acm writes it"
    return str(e).splitlines()[0][:200] if str(e) else "unreadable"


@dataclass
class Corpus:
    folder: Path
    manifest: dict = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path, kind: str) -> Corpus:
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise AcmError(f"no {kind} corpus in {folder}: run `acm data fetch {kind}` first")
        try:
            manifest = json.loads(read_regular(path, JSON_LIMIT).decode("utf-8"))  # a FIFO is refused, not waited on
            shard_dir = Path(folder) / manifest["shard_dir"]
            for s in manifest["shards"]:
                if not lies_in(shard_dir / s["file"], Path(folder)):
                    raise ValueError(f"shard {s['file']!r} lies outside its folder")
                if (shard_dir / s["file"]).stat().st_size != s["bytes"]:
                    raise ValueError(f"{s['file']} changed size")
            counts = [s["documents"] for s in manifest["shards"]] + [manifest["stats"]["documents"]]
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
                raise ValueError("a document count is not a number of documents")  # no shard is written empty
            if sum(counts[:-1]) != counts[-1]:
                raise ValueError("its shards' document counts do not add up to its own")
        except (ValueError, KeyError, OSError, TypeError, RecursionError) as e:
            raise AcmError(f"the {kind} corpus in {folder} is damaged ({_damage(e)}); fetch it again") from None
        return cls(Path(folder), manifest)

    @property
    def shard_paths(self) -> list[Path]:
        return [self.folder / self.manifest["shard_dir"] / s["file"] for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return self.manifest["stats"]["documents"]

    def verify(self) -> None:
        for s, p in zip(self.manifest["shards"], self.shard_paths):
            if sha256_file(p) != s["sha256"]:
                raise AcmError(f"{p} does not match its manifest hash; fetch the corpus again")

    def rows(self, columns: Iterable[str] = COLUMNS) -> Iterator[dict]:
        """Each document's `columns`; one a corpus fetched before that column existed reads as ""."""
        columns = list(columns)
        for p in self.shard_paths:
            have = [c for c in columns if c in pq.read_schema(p).names]
            for row in pq.read_table(p, columns=have).to_pylist():
                yield {c: row.get(c, "") for c in columns}

    def texts(self) -> Iterator[str]:
        for p in self.shard_paths:
            for batch in pq.ParquetFile(p).iter_batches(columns=["text"]):
                yield from batch.column(0).to_pylist()

    def sourced_texts(self) -> Iterator[tuple[str, str]]:
        """(source, text) of each document, in corpus order."""
        for p in self.shard_paths:
            for batch in pq.ParquetFile(p).iter_batches(columns=["source", "text"]):
                yield from zip(batch.column("source").to_pylist(), batch.column("text").to_pylist())

    def row(self, index: int) -> dict:
        """The index-th document (wrapping around), for browsing samples; a shard holding fewer rows
        than its manifest counts is damage, said in one line."""
        index %= len(self)
        for s, p in zip(self.manifest["shards"], self.shard_paths):
            if index < s["documents"]:
                found = pq.read_table(p).slice(index, 1).to_pylist()
                if not found:
                    raise AcmError(f"the corpus in {self.folder} is damaged ({s['file']} holds fewer documents "
                                   f"than its {MANIFEST} says); fetch it again")
                return {c: "" for c in COLUMNS} | found[0]
            index -= s["documents"]
        raise IndexError(index)


def corpus_stats(cfg) -> dict:
    """Every fetched corpus's manifest statistics (absent corpora are left out)."""
    out = {}
    for kind in CORPORA:
        try:
            m = Corpus.open(cfg.locations.corpus(kind), kind).manifest
        except AcmError:
            continue
        out[kind] = {"source": m.get("source"), "created": m.get("created"), **m["stats"]}
        if kind == "code":
            out[kind]["report"] = m["report"]
            out[kind]["pairs"] = m.get("pairs", {})
        if "repos" in m:
            out[kind]["repos_failed"] = [r for r in m["repos"] if not r["ok"]]
    return out

"""The language corpus: a Hugging Face dataset, local files, or text every machine already has.

`fetch_language` streams documents from the configured source into a new corpus (corpus.py) and
publishes it atomically. Sources yield (text, fields) pairs; nothing is held in memory whole.
"""
from __future__ import annotations

import ast
import gzip
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from core.atomic import kind_of
from core.config import Config, LanguageDataConfig
from core.data.corpus import CorpusWriter, fetching
from core.data.hf import first_line, load_hf
from core.errors import AcmError
from core.paths import home_expanded
from core.progress import CancelToken, Reporter, Ticker, no_report

MIN_CHARS = 200  # shorter builtin snippets (one-line docstrings) teach little
LOCAL_SUFFIXES = {".txt", ".md", ".jsonl", ".parquet"}
Doc = tuple[str, dict]


# ---------------------------------------------------------------- builtin

def builtin_documents(doc_roots: tuple[str, ...] = ("/usr/share/doc",)) -> Iterator[Doc]:
    """Python's help topics, the standard library's docstrings, and the machine's text docs."""
    from pydoc_data.topics import topics

    for name, text in sorted(topics.items()):
        yield text.strip(), {"source": "builtin", "origin": f"pydoc:{name}"}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in {"site-packages", "test", "idlelib", "lib2to3", "tkinter"} or "tests" in rel.parts:
            continue
        for doc, where in _docstrings(path):
            yield doc, {"source": "builtin", "origin": f"stdlib:{rel}:{where}"}
    for root in doc_roots:
        yield from _machine_docs(Path(root))


def _docstrings(path: Path) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS:
                yield doc, getattr(node, "name", "<module>")


def _machine_docs(root: Path) -> Iterator[Doc]:
    """README / .txt / .md files (plain or gzipped) under a documentation folder."""
    if not root.is_dir():
        return
    for dirpath, _dirs, files in os.walk(root):  # never follows symlinked folders
        for name in sorted(files):
            base = name[:-3] if name.endswith(".gz") else name
            if not (base.startswith("README") or base.endswith((".txt", ".md"))):
                continue
            path = Path(dirpath) / name
            try:
                if path.stat().st_size > 1 << 20:
                    continue
                raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
                text = raw.decode("utf-8").strip()
            except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
                continue
            if len(text) >= MIN_CHARS and "\x00" not in text:
                yield text, {"source": "builtin", "origin": str(path)}


# ---------------------------------------------------------------- Hugging Face

_SLICE = re.compile(r"^(?P<split>[\w.-]+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def hf_documents(lc: LanguageDataConfig, cache_dir: Path) -> tuple[Iterator[Doc], int | None]:
    """Rows of `lc.hf_dataset` (a hub name, or a local folder / builder such as "parquet")."""
    split, start, stop = lc.hf_split, 0, None
    m = _SLICE.match(lc.hf_split)
    if m and lc.streaming:  # streaming datasets take no slice syntax: slice the stream instead
        split, start = m["split"], int(m["start"] or 0)
        stop = int(m["stop"]) if m["stop"] else None
    ds = load_hf(lc.hf_dataset, lc.hf_dataset, 'set data.language.source = "builtin"', name=lc.hf_config or None,
                 split=split, streaming=lc.streaming, cache_dir=str(cache_dir))
    total = None
    if lc.streaming:
        if start:
            ds = ds.skip(start)
        if stop is not None:
            ds = ds.take(stop - start)
            total = stop - start
    else:
        total = len(ds)
    features = getattr(ds, "features", None)
    if features is not None and lc.text_field not in features:
        raise AcmError(f"dataset {lc.hf_dataset!r} has no column {lc.text_field!r}; "
                       f"set data.language.text_field to one of: {', '.join(features)}")

    def rows() -> Iterator[Doc]:
        for i, row in enumerate(ds):
            text = row.get(lc.text_field)
            if not isinstance(text, str):
                raise AcmError(f"dataset {lc.hf_dataset!r} row {i} has no text in column {lc.text_field!r}")
            yield text, {"source": "hf", "origin": f"{lc.hf_dataset}:{split}:{start + i}"}

    return rows(), total


# ---------------------------------------------------------------- local files

def local_files(paths: list[str], root: Path) -> list[Path]:
    """The files the configured paths name, folders searched for the suffixes acm reads."""
    files = []
    for p in paths:
        path = home_expanded(root / p)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.suffix in LOCAL_SUFFIXES and f.is_file())
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise AcmError(f"data.language.local_paths: {path} is {kind_of(path)}, not a file or a folder")
        else:
            raise AcmError(f"data.language.local_paths: {path} does not exist")
    if not files:
        raise AcmError(f"data.language.local_paths holds no {', '.join(sorted(LOCAL_SUFFIXES))} files")
    return files


NOT_UTF8_NAMED = 20  # files a manifest names among those passed over as not UTF-8 (all are counted)


def local_documents(paths: list[str], text_field: str, root: Path, passed_over: dict | None = None) -> Iterator[Doc]:
    """The documents of local files and folders. A .txt or .md file that is not UTF-8 (a stray
    Latin-1 note, a binary in a folder of text) is passed over and counted in `passed_over`
    ({"count", "files"}), as a script that is not UTF-8 is; a .jsonl or .parquet file is data the
    user laid out, and one that does not read is an error naming it."""
    passed_over = passed_over if passed_over is not None else {"count": 0, "files": []}
    for f in local_files(paths, root):
        fields = {"source": "local", "origin": str(f)}
        if f.suffix == ".jsonl":
            yield from _jsonl_documents(f, text_field, fields)
        elif f.suffix == ".parquet":
            yield from _parquet_documents(f, text_field, fields)
        else:
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                passed_over["count"] += 1
                passed_over["files"] += [str(f)][:NOT_UTF8_NAMED - len(passed_over["files"])]
                continue
            yield text, fields


def _jsonl_documents(f: Path, text_field: str, fields: dict) -> Iterator[Doc]:
    with open(f, encoding="utf-8") as fh:
        lines = enumerate(fh, 1)
        while True:
            try:
                n, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise AcmError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start} of a line)") from None
            if line.strip():
                try:
                    yield str(json.loads(line)[text_field]), fields | {"origin": f"{f}:{n}"}
                except (ValueError, KeyError, TypeError):
                    raise AcmError(f"{f}:{n}: not a JSON object with a {text_field!r} field") from None


def _parquet_documents(f: Path, text_field: str, fields: dict) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f, columns=[text_field])
    except Exception as e:
        raise AcmError(f"{f}: cannot read column {text_field!r} ({first_line(e)})") from None
    for n, text in enumerate(table.column(0).to_pylist()):
        if text:
            yield text, fields | {"origin": f"{f}:{n}"}


# ---------------------------------------------------------------- fetch

def documents(cfg: Config) -> tuple[Iterator[Doc], int | None, dict]:
    """The configured source's documents, their count if known, and what describes the source."""
    lc = cfg.data.language
    if lc.source == "hf":
        docs, total = hf_documents(lc, cfg.locations.hf_cache)
        return docs, total, {"source": "hf", "dataset": lc.hf_dataset, "config": lc.hf_config,
                             "split": lc.hf_split, "text_field": lc.text_field}
    if lc.source == "local":
        passed_over = {"count": 0, "files": []}  # filled as the documents are read, before the manifest
        return local_documents(lc.local_paths, lc.text_field, cfg.root, passed_over), None, {
            "source": "local", "paths": lc.local_paths, "not_utf8_passed_over": passed_over}
    return builtin_documents(), None, {"source": "builtin", "python": sys.version.split()[0]}


def fetch_language(cfg: Config, report: Reporter = no_report, cancel: CancelToken | None = None) -> dict:
    """Fetch the configured language corpus into data/language; returns the new manifest."""
    with fetching(cfg.locations.corpus("language"), "language"):  # one fetch of a corpus at a time
        return _fetch_language(cfg, report, cancel)


def _fetch_language(cfg: Config, report: Reporter, cancel: CancelToken | None) -> dict:
    cancel = cancel or CancelToken()
    docs, total, info = documents(cfg)
    limit = cfg.data.language.max_documents or None
    if limit and total:
        total = min(total, limit)
    writer = CorpusWriter(cfg.locations.corpus("language"), "language", readers_lock=cfg.locations.inputs_lock)
    ticker = Ticker(report, "documents", total or limit)
    seen: set[bytes] = set()
    skipped = 0
    try:
        for text, fields in docs:
            cancel.check()
            text = text.strip()
            key = _digest(text)
            if not text or key in seen:
                skipped += 1
                continue
            seen.add(key)
            writer.add(text, **fields)
            ticker.advance(note=fields.get("origin", ""))
            if limit and writer.stats.documents >= limit:
                break
        ticker.finish()
        return writer.publish(info | {"empty_or_duplicate_skipped": skipped})
    except BaseException:
        writer.abandon()
        raise


def _digest(text: str) -> bytes:
    import hashlib

    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

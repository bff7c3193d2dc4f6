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
from core.data.hf import first_line, load_hf, rows_read
from core.errors import AcmError
from core.escapes import without_surrogates
from core.paths import setting_path
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


def hf_documents(lc: LanguageDataConfig, cache_dir: Path, root: Path) -> tuple[Iterator[Doc], int | None]:
    """Rows of `lc.hf_dataset` (a hub name, or a local folder / builder such as "parquet")."""
    split, start, stop = lc.hf_split, 0, None
    m = _SLICE.match(lc.hf_split)
    if m and lc.streaming:  # streaming datasets take no slice syntax: slice the stream instead
        split, start = m["split"], int(m["start"] or 0)
        stop = int(m["stop"]) if m["stop"] else None
    local = setting_path(root, lc.hf_dataset)  # a local folder as a path setting reads; else the hub's name
    where = str(local) if local.exists() else lc.hf_dataset
    ds = load_hf(where, lc.hf_dataset, 'set data.language.source = "builtin"', name=lc.hf_config or None,
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

    def failed(n: int, why: str) -> str:
        return f"dataset {lc.hf_dataset!r}: reading stopped after {n:,} rows: {why}"

    def rows() -> Iterator[Doc]:
        for i, row in enumerate(rows_read(ds, failed)):
            text = row.get(lc.text_field)
            if not isinstance(text, str):
                raise AcmError(f"dataset {lc.hf_dataset!r} row {i} has no text in column {lc.text_field!r}")
            yield text, {"source": "hf", "origin": f"{lc.hf_dataset}:{split}:{start + i}"}

    return rows(), total


# ---------------------------------------------------------------- local files

def local_files(paths: list[str], root: Path, outside_passed_over: dict | None = None) -> list[Path]:
    """The files the configured paths name, folders searched for the suffixes acm reads. A link in a
    folder whose target lies outside it is never opened, as in the bash corpus's local source: it is
    counted in `outside_passed_over` ({"count", "files"}); a file named itself is the user's choice."""
    files, outside = [], []
    for p in paths:
        inside, found = _named(setting_path(root, p))
        for f in found:
            real = _real(f)
            if real is not None and not real.is_relative_to(inside):
                outside.append(f)
            elif real is not None and real.is_file():  # a FIFO or a device is never waited on
                files.append(f)
    if outside_passed_over is not None:
        outside_passed_over.update(count=len(outside), files=[without_surrogates(str(f)) for f in outside[:NAMED]])
    if not files:
        links = f" ({len(outside)} links out of their folders, never read)" if outside else ""
        raise AcmError(f"data.language.local_paths holds no {', '.join(sorted(LOCAL_SUFFIXES))} files{links}")
    return files


def _named(path: Path) -> tuple[Path, list[Path]]:
    """The folder a configured path's files must lie in, and its files of the suffixes acm reads."""
    if path.is_dir():
        return path.resolve(), sorted(Path(d) / name for d, _dirs, names in os.walk(path) for name in names
                                      if Path(name).suffix in LOCAL_SUFFIXES)  # never follows symlinked folders
    if path.is_file():  # named: read wherever its link leads (the user chose the file)
        return path.resolve().parent, [path]
    if path.exists():
        raise AcmError(f"data.language.local_paths: {path} is {kind_of(path)}, not a file or a folder")
    raise AcmError(f"data.language.local_paths: {path} does not exist")


def _real(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # a broken link, a loop, no permission
        return None


NAMED = 20  # files a manifest names among those passed over (all are counted)


def local_documents(paths: list[str], text_field: str, root: Path, passed_over: dict | None = None,
                    outside_passed_over: dict | None = None) -> Iterator[Doc]:
    """The documents of local files and folders. A .txt or .md file that is not UTF-8 (a stray
    Latin-1 note, a binary in a folder of text) is passed over and counted in `passed_over`
    ({"count", "files"}), as a script that is not UTF-8 is; a .jsonl or .parquet file is data the
    user laid out, and one that does not read is an error naming it. A byte-order mark that starts
    a file (Windows' editors write one) is not text."""
    passed_over = passed_over if passed_over is not None else {"count": 0, "files": []}
    for f in local_files(paths, root, outside_passed_over):
        fields = {"source": "local", "origin": str(f)}
        if f.suffix == ".jsonl":
            yield from _jsonl_documents(f, text_field, fields)
        elif f.suffix == ".parquet":
            yield from _parquet_documents(f, text_field, fields)
        else:
            try:
                text = f.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                passed_over["count"] += 1
                passed_over["files"] += [without_surrogates(str(f))][:NAMED - len(passed_over["files"])]
                continue
            yield text, fields


def _jsonl_documents(f: Path, text_field: str, fields: dict) -> Iterator[Doc]:
    """One document a line; a line whose field is null or empty is an empty document (skipped, as
    any is), one whose field is not text (a number, a list) is an error naming the line."""
    with open(f, encoding="utf-8-sig") as fh:
        lines = enumerate(fh, 1)
        while True:
            try:
                n, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise AcmError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start} of a line)") from None
            if line.strip():
                yield _jsonl_text(line, f"{f}:{n}", text_field), fields | {"origin": f"{f}:{n}"}


def _jsonl_text(line: str, where: str, text_field: str) -> str:
    try:
        text = json.loads(line)[text_field]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise AcmError(f"{where}: not a JSON object with a {text_field!r} field") from None
    if text is None:
        return ""
    if not isinstance(text, str):
        raise AcmError(f"{where}: {text_field!r} is {_json_kind(text)}, not text")
    if without_surrogates(text) != text:
        raise AcmError(f"{where}: {text_field!r} holds a lone surrogate escape ({_first_surrogate(text)}), "
                       f"not a character")
    return text


def _json_kind(value) -> str:
    kinds = ((bool, "true or false"), ((int, float), "a number"), (list, "a list"), (dict, "an object"))
    return next(name for kind, name in kinds if isinstance(value, kind))


def _first_surrogate(text: str) -> str:
    return next(f"\\u{ord(c):04x}" for c in text if "\ud800" <= c <= "\udfff")


def _parquet_documents(f: Path, text_field: str, fields: dict) -> Iterator[Doc]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f, columns=[text_field])
    except Exception as e:
        raise AcmError(f"{f}: cannot read column {text_field!r} ({first_line(e)})") from None
    kind = table.schema.field(0).type
    if not _is_text(pa, kind):
        raise AcmError(f"{f}: column {text_field!r} holds {kind}, not text")
    for n, text in enumerate(table.column(0).to_pylist()):
        if text:
            yield text, fields | {"origin": f"{f}:{n}"}


def _is_text(pa, kind) -> bool:
    """Text as parquet keeps it: strings of any width, a column of nulls, or a dictionary of strings
    (a pandas category saved)."""
    if pa.types.is_dictionary(kind):
        return _is_text(pa, kind.value_type)
    kinds = ("is_string", "is_large_string", "is_string_view", "is_null")  # string views: pyarrow 16 on
    return any(getattr(pa.types, name, lambda _: False)(kind) for name in kinds)


# ---------------------------------------------------------------- fetch

def documents(cfg: Config) -> tuple[Iterator[Doc], int | None, dict]:
    """The configured source's documents, their count if known, and what describes the source."""
    lc = cfg.data.language
    if lc.source == "hf":
        docs, total = hf_documents(lc, cfg.locations.hf_cache, cfg.root)
        return docs, total, {"source": "hf", "dataset": lc.hf_dataset, "config": lc.hf_config,
                             "split": lc.hf_split, "text_field": lc.text_field}
    if lc.source == "local":
        passed_over = {"count": 0, "files": []}  # filled as the documents are read, before the manifest
        outside = {"count": 0, "files": []}
        return local_documents(lc.local_paths, lc.text_field, cfg.root, passed_over, outside), None, {
            "source": "local", "paths": lc.local_paths, "not_utf8_passed_over": passed_over,
            "outside_passed_over": outside}
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

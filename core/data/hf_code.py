"""Shell scripts streamed from a Hugging Face code dataset: codeparrot/github-code-clean (its Shell rows)
or bigcode/the-stack-dedup (data/shell, gated: a token in $HF_TOKEN), or a local folder of such parquet
files. The rows then go through the bash corpus's filters like any other script (code.py).

The dataset's parquet files are streamed through `datasets`' parquet builder, never through a loading
script (codeparrot's repository holds one, which `datasets` no longer runs); only the needed columns
are read, and rows of other languages are dropped by pyarrow before they reach Python.

Rows of the language are saved as they arrive, in parts written aside and renamed, under
data/code/hf/<dataset>-<hash>/, with the stream's position (`IterableDataset.state_dict`) in
state.json: a fetch cut short (Ctrl-C, a lost network) resumes where the saved rows end, and a fetch
asking for no more than was saved reads them without the network. The licence filter and the caps
apply when rows are read, so changing them never needs a new download.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_open, check_regular, read_json, write_text
from core.config import CodeDataConfig
from core.data.corpus import UNKNOWN_LICENCE
from core.data.hf import load_hf, rows_read
from core.data.repos import SPDX_ID, is_permissive
from core.errors import AcmError
from core.paths import setting_path
from core.progress import CancelToken, Reporter, Ticker

PART_ROWS = 500  # rows per saved part: what a cancelled fetch may have to stream again
STATE = "state.json"
ROW_FIELDS = ("text", "repo", "path", "licence", "commit", "language")


@dataclass(frozen=True)
class Columns:
    """Where a dataset's schema keeps what a script records."""
    schema: str
    text: str
    repo: str
    path: str
    licence: str
    language: str
    commit: str = ""

    def needed(self, language: bool) -> list[str]:
        return [c for c in (self.text, self.repo, self.path, self.licence, self.commit,
                            self.language if language else "") if c]


SCHEMAS = (Columns("codeparrot/github-code", "code", "repo_name", "path", "license", "language"),
           Columns("bigcode/the-stack", "content", "max_stars_repo_name", "max_stars_repo_path",
                   "max_stars_repo_licenses", "lang", "max_stars_repo_head_hexsha"))

# codeparrot's `license` holds GitHub's licence keys. GitHub's GPL keys do not say "or later": the
# -only ids are SPDX's reading of the bare name (its deprecated "GPL-3.0" means GPL-3.0-only).
GITHUB_KEYS = {"mit": "MIT", "apache-2.0": "Apache-2.0", "gpl-3.0": "GPL-3.0-only", "gpl-2.0": "GPL-2.0-only",
               "agpl-3.0": "AGPL-3.0-only", "lgpl-3.0": "LGPL-3.0-only", "lgpl-2.1": "LGPL-2.1-only",
               "bsd-3-clause": "BSD-3-Clause", "bsd-2-clause": "BSD-2-Clause", "cc0-1.0": "CC0-1.0",
               "epl-1.0": "EPL-1.0", "mpl-2.0": "MPL-2.0", "unlicense": "Unlicense", "isc": "ISC",
               "artistic-2.0": "Artistic-2.0"}


def spdx(value) -> str:
    """A row's licence as an SPDX id: codeparrot's GitHub keys mapped; The Stack's list of ids (the
    repository's licence files, all of which apply) joined with AND; NOASSERTION when none is known."""
    values = value if isinstance(value, (list, tuple)) else [value]
    ids = sorted({GITHUB_KEYS.get(str(v).lower(), str(v)) for v in values if v})
    return " AND ".join(i for i in ids if re.fullmatch(SPDX_ID, i)) or UNKNOWN_LICENCE


def schema_of(columns, shown: str, language: str) -> Columns:
    """The schema whose columns the dataset has; one line naming both when it has neither."""
    have = set(columns or ())
    for s in SCHEMAS:
        if {s.text, s.repo, s.path, s.licence} <= have:
            if language and s.language not in have:
                raise AcmError(f"dataset {shown!r} has no language column {s.language!r} to keep {language!r} rows: "
                               f"set data.code.hf_language = \"\" to keep every row")
            return s
    wanted = "; or ".join(f"{', '.join(s.needed(True))} ({s.schema})" for s in SCHEMAS)
    raise AcmError(f"dataset {shown!r} lacks the columns of a code dataset: it needs {wanted}; "
                   f"it has {', '.join(sorted(have)) or 'none'}")


# ---------------------------------------------------------------- where the rows come from

def data_files(cc: CodeDataConfig, root: Path) -> tuple[str, str, str]:
    """The parquet files to stream (a local file or glob, or an hf:// glob), the dataset's key, and
    what its rows are made of: a local dataset's files as they are now ("" for the hub's)."""
    local = setting_path(root, cc.hf_dataset)
    sub = cc.hf_data_dir.strip("/")
    if local.is_file():
        return str(local), str(local.resolve()), _as_they_are([local])
    if local.is_dir():
        base = local.resolve()
        files = sorted((base / sub).glob("*.parquet"))
        if not files:
            raise AcmError(f"data.code.hf_data_dir: {cc.hf_dataset} holds no parquet files in "
                           f"{sub or 'its top folder'}/")
        return str(base / sub / "*.parquet"), str(base), _as_they_are(files)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", cc.hf_dataset):
        raise AcmError(f"data.code.hf_dataset: {cc.hf_dataset!r} is neither a folder nor a Hugging Face dataset "
                       f"name (owner/name)")
    base = f"hf://datasets/{cc.hf_dataset}"
    return f"{base}/{sub}/*.parquet" if sub else f"{base}/*.parquet", base, ""


def _as_they_are(files: list[Path]) -> str:
    """Local files as they are now (names, sizes, times of change): the rows saved from them are
    reused only while the files stay so; a file replaced since is streamed again."""
    said = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue  # streaming it says why
        said.append(f"{f.name} {st.st_size} {st.st_mtime_ns}")
    return hashlib.sha1("\n".join(said).encode("utf-8", "surrogateescape")).hexdigest()


def open_stream(files: str, shown: str, language: str):
    """The dataset's rows as a stream of the needed columns (of the language only), and its schema."""
    hint = "set data.code.source to builtin, local or github"
    kwargs = {"data_files": files, "split": "train", "streaming": True, "token": os.environ.get("HF_TOKEN") or None}
    columns = schema_of(load_hf("parquet", shown, hint, **kwargs).features, shown, language)
    if language:
        kwargs["filters"] = [(columns.language, "==", language)]
    return load_hf("parquet", shown, hint, columns=columns.needed(bool(language)), **kwargs), columns


class SavedRows:
    """The rows of one dataset folder and language streamed so far, in parts, with the stream's
    position; `made_of` says what they were streamed from (a local dataset's files as they were):
    rows saved from files that have changed since are dropped, and the stream starts again."""

    def __init__(self, folder: Path, made_of: str = ""):
        self.folder, self.made_of = folder, made_of
        state = read_json(folder / STATE) or {}
        if state.get("made_of", "") != made_of:
            state = {}
        self.parts, self.rows = state.get("parts", 0), state.get("rows", 0)
        self.position, self.ended = state.get("position"), state.get("ended", False)
        self.pending: list[dict] = []

    def saved(self) -> Iterator[dict]:
        for i in range(self.parts):
            part = self.folder / f"part-{i:05d}.parquet"
            check_regular(part)  # a FIFO put there would hold the fetch
            yield from pq.read_table(part).to_pylist()

    def add(self, row: dict, stream) -> None:
        self.pending.append(row)
        if len(self.pending) >= PART_ROWS:
            self.save(stream)

    def save(self, stream, ended: bool = False) -> None:
        """The pending rows as a new part, then the state naming it (a crash between the two leaves an
        unnamed part, overwritten next time)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.pending:
            with atomic_open(self.folder / f"part-{self.parts:05d}.parquet", "wb") as f:
                pq.write_table(pa.Table.from_pylist(self.pending), f, compression="zstd")
            self.parts, self.rows, self.pending = self.parts + 1, self.rows + len(self.pending), []
        self.position, self.ended = stream.state_dict(), ended
        write_text(self.folder / STATE, json.dumps({"parts": self.parts, "rows": self.rows, "position": self.position,
                                                    "ended": ended, "made_of": self.made_of}) + "\n")


# ---------------------------------------------------------------- the rows kept

@dataclass
class Caps:
    documents: int
    bytes: int
    kept: int = 0
    size: int = 0

    def take(self, text: str) -> None:
        self.kept += 1
        self.size += len(text.encode("utf-8"))

    @property
    def full(self) -> bool:
        return bool(self.documents and self.kept >= self.documents or self.bytes and self.size >= self.bytes)


def hf_rows(cc: CodeDataConfig, root: Path, store: Path, report: Reporter,
            cancel: CancelToken) -> tuple[Iterator[dict], dict]:
    """The rows data.code keeps (language, licences, caps), each with its SPDX licence and origin
    (repo/path); `info` is filled in as they are read. Resumes from, and adds to, the saved rows."""
    files, key, made_of = data_files(cc, root)
    slug = re.sub(r"[^\w.-]+", "_", cc.hf_dataset.strip("/").rsplit("/", 2)[-1])[:60]
    digest = hashlib.sha1(f"{key}\n{cc.hf_data_dir}\n{cc.hf_language}".encode()).hexdigest()[:10]
    saved = SavedRows(store / f"{slug}-{digest}", made_of)
    info = {"dataset": cc.hf_dataset, "data_dir": cc.hf_data_dir, "language": cc.hf_language,
            "licences": cc.licences, "rows_read": 0, "rows_reused": 0, "left_out_by_licence": 0}
    return _kept(cc, files, saved, info, report, cancel), info


def _kept(cc: CodeDataConfig, files: str, saved: SavedRows, info: dict, report: Reporter,
          cancel: CancelToken) -> Iterator[dict]:
    caps = Caps(cc.hf_max_documents, cc.hf_max_bytes)
    ticker = Ticker(report, "streaming", cc.hf_max_documents or None)
    left_out: Counter = Counter()
    for row, reused in _all_rows(cc, files, saved, info, caps, cancel):
        cancel.check()
        info["rows_reused" if reused else "rows_read"] += 1
        if cc.licences == "permissive" and not is_permissive(row["licence"]):
            left_out[row["licence"]] += 1
            continue
        caps.take(row["text"] or "")
        ticker.advance(note=f"{row['repo']}/{row['path']}")
        yield row  # the rows stop at the caps (_all_rows), after saving where the stream stands
    ticker.finish()
    info["left_out_by_licence"] = sum(left_out.values())
    if not caps.kept:
        _nothing_kept(cc, info, left_out)


def _all_rows(cc: CodeDataConfig, files: str, saved: SavedRows, info: dict, caps: Caps,
              cancel: CancelToken) -> Iterator[tuple[dict, bool]]:
    """The saved rows, then the stream from where they end (each saved as it arrives)."""
    for row in saved.saved():
        yield row, True
        if caps.full:
            return
    if saved.ended:
        return
    stream, columns = open_stream(files, cc.hf_dataset, cc.hf_language)
    info["schema"] = columns.schema
    if saved.position:
        stream.load_state_dict(saved.position)
    try:
        for raw in _read(stream, cc.hf_dataset, saved):
            cancel.check()
            text = _text(raw, columns.text, cc.hf_dataset)
            row = {"text": text, "repo": _text(raw, columns.repo, cc.hf_dataset),
                   "path": _text(raw, columns.path, cc.hf_dataset), "licence": spdx(raw[columns.licence]),
                   "commit": _text(raw, columns.commit, cc.hf_dataset),
                   "language": _text(raw, columns.language, cc.hf_dataset) or cc.hf_language or "any"}
            saved.add(row, stream)
            yield row, False
            if caps.full:
                break
        else:
            saved.save(stream, ended=True)
            return
    except BaseException:
        saved.pending.clear()  # rows past the saved position are streamed again next time
        raise
    saved.save(stream)


def _text(raw: dict, column: str, shown: str) -> str:
    """A row's text column ("" where the schema has none, or the row holds null); a column of another
    type (numbers, bytes) is one line naming it, not a failure deep in the filters."""
    value = raw.get(column) if column else None
    if value is None or isinstance(value, str):
        return value or ""
    raise AcmError(f"dataset {shown!r}: column {column!r} holds {type(value).__name__} values, not text")


def _read(stream, shown: str, saved: SavedRows) -> Iterator[dict]:
    """The stream's rows; a failure on the way (a lost network, a damaged file) is one line that says
    the saved rows are kept."""
    def failed(_n: int, why: str) -> str:
        return (f"streaming {shown} failed after {saved.rows + len(saved.pending)} rows ({why}); the rows saved "
                f"so far are kept: fetch again to resume")

    return rows_read(stream, failed)


def _nothing_kept(cc: CodeDataConfig, info: dict, left_out: Counter) -> None:
    read = info["rows_read"] + info["rows_reused"]
    if left_out:
        seen = ", ".join(f"{k} {v}" for k, v in left_out.most_common(5))
        raise AcmError(f"data.code.licences = \"permissive\" keeps none of the {read} rows read from "
                       f"{cc.hf_dataset} (their licences: {seen}); set data.code.licences = \"any\"")
    which = f"{cc.hf_language} rows" if cc.hf_language else "rows"
    raise AcmError(f"{cc.hf_dataset} holds no {which} under {cc.hf_data_dir or 'its top folder'}/ "
                   f"(check data.code.hf_language and data.code.hf_data_dir)")

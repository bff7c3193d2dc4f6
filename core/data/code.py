"""The bash corpus: scripts from GitHub clones, local folders, a Hugging Face code dataset (`hf_code.py`)
or the machine's own script folders, and optionally comment-to-command scripts made from documented
examples (`pairs.py`), validated
(UTF-8, size and line bounds, BigCode's quality filters, `bash -n`), cleared of scripts sharing a span
with an evaluation prompt (`decontaminate.py`), deduplicated exactly and by MinHash, and written as a
corpus with provenance (source, licence, repo, path, commit) for each script; the comment-to-command
scripts come last, so token shards can keep them apart.

Scripts are only ever parsed (`bash -n`, with $BASH_ENV cleared), never executed.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.atomic import kind_of
from core.config import CodeDataConfig, Config
from core.data.corpus import UNKNOWN_LICENCE, CorpusWriter, fetching
from core.data.decontaminate import EvalSpans, prompt_comments
from core.data.hf_code import hf_rows
from core.data.pairs import LICENCES, PairScript, pair_scripts
from core.data.repos import clone_all, is_remote, keep_licences, load_repos, require_tool
from core.errors import AcmError
from core.paths import setting_path
from core.progress import CancelToken, Reporter, Ticker, no_report

SCRIPT_SUFFIXES = {".sh", ".bash"}
SHELLS = {b"sh", b"bash", b"zsh", b"dash", b"ksh"}
# The offline default: folders every Linux or macOS machine has, scanned without following links.
COMPLETION_DIRS = ["/usr/share/bash-completion/completions", "/etc/bash_completion.d",
                   "/usr/local/etc/bash_completion.d", "/opt/homebrew/etc/bash_completion.d",
                   "/opt/homebrew/share/bash-completion/completions"]
SCRIPT_DIRS = ["/etc", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/libexec", "/usr/lib/git-core",
               "/opt/homebrew/bin"]
NEAR_DUP_PERMUTATIONS = 128
EVAL_MATCH = "matches_eval_prompt"  # the rejection reason of decontamination
SHINGLE = 5


@dataclass
class Candidate:
    path: Path
    raw: bytes
    source: str
    origin: str  # path shown to the user (relative to its repo or folder)
    repo: str = ""
    commit: str = ""
    category: str = ""
    licence: str = UNKNOWN_LICENCE  # SPDX id of the repository's or comment-to-command source's licence
    oversize: bool = False  # larger than data.code.max_file_bytes (content not read)
    outside: bool = False  # a link out of its source (never read)
    script: PairScript | None = None  # what a comment-to-command script was made from


@dataclass
class Validated:
    candidate: Candidate
    text: str = ""
    reason: str = ""  # empty when valid


# ---------------------------------------------------------------- finding scripts

def is_shell_shebang(head: bytes) -> bool:
    """True for '#!/bin/bash', '#!/usr/bin/env -S bash -e', '#! /bin/sh' and the like."""
    if not head.startswith(b"#!"):
        return False
    parts = head[2:].split(b"\n", 1)[0].split()
    if not parts:
        return False
    prog = parts[0].rsplit(b"/", 1)[-1]
    if prog == b"env":
        rest = [p for p in parts[1:] if not p.startswith(b"-") and b"=" not in p]
        prog = rest[0].rsplit(b"/", 1)[-1] if rest else b""
    return prog in SHELLS


def find_scripts(root: Path, max_bytes: int, all_files: bool = False, seen: set | None = None,
                 cancel: CancelToken | None = None, contained: bool = False) -> Iterator[Found]:
    """Each shell script under root: its path, its target's real path, and its content (None when
    over max_bytes).

    Folder symlinks are never followed (no loops); file symlinks count once, by real path.
    `all_files` takes every file (bash-completion folders hold bash without shebangs). With
    `contained`, a link whose target lies outside root is never opened: it comes back `outside`.

    A root that is itself a link stands for its target, held to the same rule as a link inside a
    source: a link to a folder is that folder (a user's symlinked folder of scripts is theirs to
    name, and only scripts are taken from it), while a link to a file counts only when its target
    lies in the folder holding the link. A file link lends the target its name, so one called
    `x.sh` that points at /etc/passwd or a key would otherwise pass as a script: it comes back
    `outside`, never read.
    """
    seen = set() if seen is None else seen
    inside = (root if root.is_dir() else root.parent).resolve() if contained else None
    if root.is_file():
        walk = [(str(root.parent), [], [root.name])]
    else:
        walk = os.walk(root, followlinks=False, onerror=lambda e: None)
    for dirpath, dirs, files in walk:
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            if cancel:
                cancel.check()
            found = _read_script(Path(dirpath) / name, max_bytes, all_files, seen, inside)
            if found is not None:
                yield found


@dataclass
class Found:
    path: Path
    real: Path
    raw: bytes | None  # None: over max_bytes, or not read (outside its source)
    outside: bool = False


def _read_script(path: Path, max_bytes: int, all_files: bool, seen: set, inside: Path | None) -> Found | None:
    """`path` if it is a shell script not seen yet; a link out of `inside` is reported, never read."""
    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError):  # broken link, link loop, no permission
        return None
    if inside is not None and not real.is_relative_to(inside):
        return Found(path, real, None, outside=True)
    if not real.is_file() or real in seen:
        return None
    try:
        with open(real, "rb") as f:
            head = f.read(256)
            if not (all_files or path.suffix in SCRIPT_SUFFIXES or is_shell_shebang(head)):
                return None
            seen.add(real)
            return Found(path, real, head + f.read() if st.st_size <= max_bytes else None)
    except OSError:
        return None


def scan_folder(root: Path, source: str, max_bytes: int, all_files: bool = False, seen: set | None = None,
                cancel: CancelToken | None = None, contained: bool = False, **fields: str) -> Iterator[Candidate]:
    """Candidates under root; each names where its text came from: a link's target, not the link."""
    base = root.resolve() if root.is_dir() else root.parent.resolve()
    for f in find_scripts(root, max_bytes, all_files, seen, cancel, contained):
        if fields.get("repo"):  # relative to the clone; a link by its target's path
            origin = str(f.real.relative_to(base) if not f.outside else f.path.relative_to(root))
        else:
            origin = str(f.real if f.path.is_symlink() and not f.outside else f.path)
        yield Candidate(f.path, f.raw or b"", source, origin, oversize=f.raw is None and not f.outside,
                        outside=f.outside, **fields)


# ---------------------------------------------------------------- validation

def normalize(text: str) -> str:
    """LF line ends, no trailing spaces, no leading/trailing blank lines, one final newline."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def bash_syntax_ok(text: str, timeout_s: float) -> tuple[bool, str]:
    """`bash -n` on the script: parsed only, never run (BASH_ENV and ENV are cleared so nothing is
    sourced). The script is bash's input as a temporary file without a name (unlinked as it is
    made), so a process killed meanwhile leaves no copy of it behind; a file, not a pipe, which bash
    would read a byte at a time, so that a large script could time out under load. (ok, reason):
    reason "syntax" or "timeout"."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    with tempfile.TemporaryFile() as f:
        f.write(text.encode("utf-8"))
        f.flush()
        f.seek(0)
        try:
            r = subprocess.run(["bash", "-n"], capture_output=True, timeout=timeout_s, env=env, stdin=f)
        except subprocess.TimeoutExpired:
            return False, "timeout"
    return r.returncode == 0, "syntax"


def _unreadable(c: Candidate) -> str:
    """Why the raw bytes cannot become a script's text ("" when they can)."""
    if c.outside:
        return "outside_source"
    if c.oversize:
        return "too_large"
    if b"\x00" in c.raw:
        return "binary"
    try:
        c.raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "not_utf8"
    return ""


# A comment that opens by saying its file is machine-made: its source, not it, is what a person wrote.
GENERATED = re.compile(r"^#+\s*(?:(?:warning|note)\W*)?(?:this (?:file|script) (?:is|was|has been) )?"
                       r"(?:auto-?generated|automatically generated|(?:code )?generated (?:by|from|with|automatically)"
                       r"|do not edit)", re.IGNORECASE | re.MULTILINE)
# A minified line: long, almost no spaces, many statements and braces (a long key or colour table is not).
MINIFIED_LINE, MINIFIED_SPACES, MINIFIED_STATEMENTS = 300, 0.05, 10
# Base64 runs, lines of 40 or more such characters joined (base64 wraps at 64 or 76).
BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}(?:\n[A-Za-z0-9+/]{40,}={0,2})*")


def long_line(text: str, cc: CodeDataConfig) -> bool:
    return max(map(len, text.split("\n"))) > cc.max_line_length


def low_alnum(text: str, cc: CodeDataConfig) -> bool:
    """Mostly symbols: data tables, ASCII art, escape-laden output rather than code."""
    return sum(ch.isalnum() for ch in text) < cc.min_alnum_share * len(text)


def long_mean_line(text: str, cc: CodeDataConfig) -> bool:
    """Long lines on average: embedded data or one-line-per-command dumps."""
    lines = text.split("\n")[:-1]  # normalized text ends in one newline
    return cc.max_mean_line_length > 0 and sum(map(len, lines)) > cc.max_mean_line_length * len(lines)


def generated(text: str, cc: CodeDataConfig) -> bool:
    """Says so in a comment of its first lines, or holds a minified line."""
    if cc.generated_header_lines == 0:
        return False
    head = "\n".join(text.split("\n", cc.generated_header_lines)[:cc.generated_header_lines])
    return bool(GENERATED.search(head)) or any(
        len(line) > MINIFIED_LINE and line.count(" ") < MINIFIED_SPACES * len(line)
        and min(line.count(";"), line.count("{") + line.count("(")) >= MINIFIED_STATEMENTS
        for line in text.split("\n"))


def base64_blob(text: str, cc: CodeDataConfig) -> bool:
    """An embedded payload (self-extracting installers, inlined archives or images)."""
    return cc.max_base64_run > 0 and any(len(m.group()) - m.group().count("\n") >= cc.max_base64_run
                                         for m in BASE64.finditer(text))


# Each content filter by the rejection reason it reports, cheapest first; `bash -n` runs after them.
CONTENT_FILTERS: dict[str, Callable[[str, CodeDataConfig], bool]] = {
    "long_line": long_line, "low_alnum": low_alnum, "long_mean_line": long_mean_line,
    "generated": generated, "base64_blob": base64_blob}


def validate(c: Candidate, cc: CodeDataConfig) -> Validated:
    reason = _unreadable(c)
    if reason:
        return Validated(c, reason=reason)
    text = normalize(c.raw.decode("utf-8-sig"))
    if not text.strip():
        return Validated(c, reason="empty")
    reason = next((name for name, rejects in CONTENT_FILTERS.items() if rejects(text, cc)), "")
    if reason:
        return Validated(c, reason=reason)
    ok, why = bash_syntax_ok(text, cc.syntax_timeout_s)
    return Validated(c, text=text, reason="" if ok else why)


# ---------------------------------------------------------------- deduplication

def shingles(text: str) -> set[bytes]:
    words = text.split()
    if len(words) <= SHINGLE:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)}


class NearDuplicates:
    """MinHash LSH over word 5-gram shingles: `seen(text)` is True for a near-copy of an earlier text."""

    def __init__(self, threshold: float):
        from datasketch import MinHash, MinHashLSH

        self._MinHash = MinHash
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NEAR_DUP_PERMUTATIONS)
        self.kept: list[set] = []  # each kept text's shingles, to confirm what LSH proposes

    def seen(self, text: str) -> bool:
        """LSH proposes candidates; one counts only if its exact Jaccard similarity reaches the threshold."""
        grams = set(shingles(text))
        m = self._MinHash(num_perm=NEAR_DUP_PERMUTATIONS, seed=1)
        m.update_batch(list(grams))
        for key in self.lsh.query(m):
            other = self.kept[int(key)]
            if len(grams & other) >= self.threshold * len(grams | other):
                return True
        self.lsh.insert(str(len(self.kept)), m)
        self.kept.append(grams)
        return False


# ---------------------------------------------------------------- sources

def github_candidates(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[Iterator[Candidate], dict]:
    cc = cfg.data.code
    listed = load_repos(setting_path(cfg.root, cc.repos_file) if cc.repos_file else None)
    repos, left_out = keep_licences(listed, cc.licences)
    results = clone_all(repos, cfg.locations.clones, cc.clone_jobs, cc.clone_timeout_s, cc.clone_retries,
                        report, cancel)
    cloned = [r for r in results if r.path]
    if not cloned:
        remote = any(is_remote(r.repo.url) for r in results)
        raise AcmError(f"no repository could be cloned (first error: {results[0].repo.name}: "
                       f"{results[0].error}){'; no network?' if remote else ''}")

    def from_repos() -> Iterator[Candidate]:
        for r in cloned:
            yield from scan_folder(r.path, "github", cc.max_file_bytes, cancel=cancel, contained=True,
                                   repo=r.repo.name, commit=r.commit, category=r.repo.category, licence=r.repo.spdx)

    info = {"repos": [{"name": r.repo.name, "category": r.repo.category, "licence": r.repo.licence,
                       "commit": r.commit, "ok": r.path is not None, "error": r.error, "attempts": r.attempts,
                       "skipped": r.skipped} for r in results],
            "licences": cc.licences, "left_out_by_licence": left_out}
    return from_repos(), info


def local_candidates(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[Iterator[Candidate], dict]:
    cc = cfg.data.code
    roots = [setting_path(cfg.root, p) for p in cc.local_paths]
    if not roots:
        raise AcmError("data.code.local_paths is empty: name the folders to scan for shell scripts")
    for r in roots:
        if not r.exists():
            raise AcmError(f"data.code.local_paths: {r} does not exist")
        if not (r.is_dir() or r.is_file()):
            raise AcmError(f"data.code.local_paths: {r} is {kind_of(r)}, not a file or a folder")
    seen: set = set()
    return (c for r in roots for c in scan_folder(r, "local", cc.max_file_bytes, seen=seen, cancel=cancel,
                                                  contained=True, category=r.name)), {"paths": cc.local_paths}


def hf_candidates(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[Iterator[Candidate], dict]:
    """Rows of a Hugging Face code dataset, as scripts named repo/path with their row's licence."""
    cc = cfg.data.code
    rows, info = hf_rows(cc, cfg.root, cfg.locations.hf_code, report, cancel)
    source = f"huggingface:{cc.hf_dataset}"

    def as_candidates() -> Iterator[Candidate]:
        for r in rows:
            raw = (r["text"] or "").encode("utf-8", "surrogatepass")
            origin = f"{r['repo']}/{r['path']}"
            too_large = len(raw) > cc.max_file_bytes
            yield Candidate(Path(r["path"]), b"" if too_large else raw, source, origin, repo=r["repo"],
                            commit=r["commit"], category=r["language"], licence=r["licence"], oversize=too_large)

    return as_candidates(), {"huggingface": info}


def builtin_sources(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[Iterator[Candidate], dict]:
    return builtin_candidates(cfg.data.code.max_file_bytes, cancel), {"folders": COMPLETION_DIRS + SCRIPT_DIRS}


SOURCES = {"github": github_candidates, "local": local_candidates, "huggingface": hf_candidates,
           "builtin": builtin_sources}


def candidates(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[Iterator[Candidate], dict]:
    """The configured source's scripts, found lazily, and what describes the source."""
    return SOURCES[cfg.data.code.source](cfg, report, cancel)


def builtin_candidates(max_bytes: int, cancel: CancelToken | None = None) -> Iterator[Candidate]:
    seen: set = set()
    for d in COMPLETION_DIRS:
        yield from scan_folder(Path(d), "builtin", max_bytes, all_files=True, seen=seen, cancel=cancel,
                               category="bash-completion")
    for d in SCRIPT_DIRS:
        yield from scan_folder(Path(d), "builtin", max_bytes, seen=seen, cancel=cancel, category=d)


# ---------------------------------------------------------------- the pipeline

@dataclass
class CodeReport:
    raw: int = 0
    valid: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    unique: int = 0
    rejected: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)  # documents kept
    by_category: Counter = field(default_factory=Counter)
    by_repo: Counter = field(default_factory=Counter)
    raw_by_source: Counter = field(default_factory=Counter)
    rejected_by_source: Counter = field(default_factory=Counter)
    examples_dropped: Counter = field(default_factory=Counter)  # comment-to-command examples failing bash -n
    by_licence: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"raw": self.raw, "valid": self.valid, "exact_duplicates": self.exact_duplicates,
                "near_duplicates": self.near_duplicates, "unique": self.unique,
                "rejected": dict(self.rejected), "by_source": dict(self.by_source),
                "by_category": dict(self.by_category), "by_repo": dict(self.by_repo),
                "raw_by_source": dict(self.raw_by_source), "rejected_by_source": dict(self.rejected_by_source),
                "examples_dropped": dict(self.examples_dropped),
                "by_licence": dict(self.by_licence)}


def in_parallel(items: list, work: Callable, task: str, report: Reporter, cancel: CancelToken,
                note: Callable = str) -> list:
    """`work` on each item in threads (each `bash -n` is its own process); results in input order."""
    ticker = Ticker(report, task, len(items))
    out = []
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) * 2)) as pool:
        for result in pool.map(work, items):
            cancel.check()
            out.append(result)
            ticker.advance(note=note(result))
    ticker.finish()
    return out


def validate_all(found: list[Candidate], cc: CodeDataConfig, report: Reporter,
                 cancel: CancelToken) -> list[Validated]:
    return in_parallel(found, lambda c: validate(c, cc), "validating", report, cancel,
                       note=lambda v: v.candidate.origin)


def repair_pairs(checked: list[Validated], cc: CodeDataConfig, rep: CodeReport, report: Reporter,
                 cancel: CancelToken) -> list[Validated]:
    """A comment-to-command script that fails `bash -n` keeps the examples that pass it on their own
    (tldr documents a few commands of other shells), and is checked again; one left with none, or
    failing still, stays rejected. Dropped examples are counted per source."""
    failed = [i for i, v in enumerate(checked) if v.reason == "syntax" and v.candidate.script]
    examples = [(i, e) for i in failed for e in checked[i].candidate.script.examples]
    if not examples:
        return checked
    verdicts = in_parallel(examples, lambda ie: bash_syntax_ok(checked[ie[0]].candidate.script.text([ie[1]]),
                                                               cc.syntax_timeout_s)[0],
                           "checking examples", report, cancel, note=lambda ok: "")
    kept = defaultdict(list)
    for (i, e), ok in zip(examples, verdicts):
        if ok:
            kept[i].append(e)
        else:
            rep.examples_dropped[checked[i].candidate.source] += 1
    out = list(checked)
    for i, good in kept.items():
        c = checked[i].candidate
        out[i] = validate(replace(c, raw=c.script.text(good).encode()), cc)
    return out


def pair_candidates(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[list[Candidate], dict]:
    """The comment-to-command scripts of data.code.pairs as candidates, and what each source held."""
    scripts, info = pair_scripts(cfg, report, cancel)
    return [Candidate(Path(s.origin), s.text().encode(), s.source, s.origin, repo=info[s.source]["repo"],
                      commit=info[s.source]["commit"], category=s.category, licence=LICENCES[s.source], script=s)
            for s in scripts], info


def decontaminate(checked: list[Validated], evals: EvalSpans) -> list[Validated]:
    """Valid scripts sharing a span with an evaluation prompt's comment, rejected as such."""
    return [replace(v, text="", reason=EVAL_MATCH) if not v.reason and evals.matches(v.text) else v
            for v in checked]


def deduplicate(valid: list[Validated], threshold: float, rep: CodeReport, report: Reporter,
                cancel: CancelToken) -> list[Validated]:
    exact: set[bytes] = set()
    near = NearDuplicates(threshold)
    kept = []
    ticker = Ticker(report, "deduplicating", len(valid))
    for v in valid:
        cancel.check()
        ticker.advance()
        digest = hashlib.blake2b(v.text.encode(), digest_size=16).digest()
        if digest in exact:
            rep.exact_duplicates += 1
            continue
        exact.add(digest)
        if near.seen(v.text):
            rep.near_duplicates += 1
            continue
        kept.append(v)
    ticker.finish()
    return kept


def fetch_code(cfg: Config, report: Reporter = no_report, cancel: CancelToken | None = None) -> dict:
    """Fetch, validate and deduplicate the configured bash corpus into data/code; returns its manifest."""
    with fetching(cfg.locations.corpus("code"), "code"):  # one fetch of a corpus at a time
        return _fetch_code(cfg, report, cancel)


def _fetch_code(cfg: Config, report: Reporter, cancel: CancelToken | None) -> dict:
    cancel = cancel or CancelToken()
    cc = cfg.data.code
    require_tool("bash")
    found_iter, info = candidates(cfg, report, cancel)
    scan = Ticker(report, "scanning")
    found = []
    for c in found_iter:
        found.append(c)
        scan.advance(note=c.origin)
    scan.finish()
    pairs, pairs_info = pair_candidates(cfg, report, cancel)
    found += pairs  # last: the corpus holds them after the scripts
    rep = CodeReport(raw=len(found), raw_by_source=Counter(c.source for c in found))
    checked = repair_pairs(validate_all(found, cc, report, cancel), cc, rep, report, cancel)
    if cc.decontaminate:
        checked = decontaminate(checked, EvalSpans(prompt_comments(cfg.eval)))
    for v in checked:
        if v.reason:
            rep.rejected[v.reason] += 1
            rep.rejected_by_source[v.candidate.source] += 1
    valid = [v for v in checked if not v.reason]
    rep.valid = len(valid)
    kept = deduplicate(valid, cc.near_duplicate_threshold, rep, report, cancel)
    rep.unique = len(kept)
    writer = CorpusWriter(cfg.locations.corpus("code"), "code", readers_lock=cfg.locations.inputs_lock)
    try:
        for v in kept:
            c = v.candidate
            writer.add(v.text, source=c.source, origin=c.origin, repo=c.repo, commit=c.commit, category=c.category,
                       licence=c.licence)
            rep.by_source[c.source] += 1
            rep.by_category[c.category] += 1
            rep.by_licence[c.licence] += 1
            if c.repo:
                rep.by_repo[c.repo] += 1
        return writer.publish({"source": cc.source, "report": rep.as_dict(), "pairs": pairs_info, **info})
    except BaseException:
        writer.abandon()
        raise

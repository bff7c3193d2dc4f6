"""Comment-to-command scripts: documented command examples turned into bash scripts where each
command follows a comment saying what it does, the pairing a model needs to write the script a
comment asks for.

- tldr-pages (CC BY 4.0): each English page (`pages/<platform>/*.md`) becomes one script, its
  title and description as a heading comment, then each example's description as a comment over
  its command, with the `{{placeholders}}` filled with plausible values (seeded by the page's path,
  so a re-fetch gives the same text).
- NL2Bash (its data folder is MIT): `data/bash/all.nl` and `all.cm` are line-aligned description /
  command pairs, grouped into scripts of `pairs_per_script` consecutive pairs.

Pages and pair files are only read and parsed, never executed; the bash corpus checks every
script with `bash -n` (and drops the examples that fail it).
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

from core.atomic import read_regular
from core.config import CodeDataConfig, Config
from core.data.repos import Repo, clone_one, head_commit, require_tool
from core.errors import AcmError, os_error_text
from core.escapes import without_surrogates
from core.paths import lies_in, setting_path
from core.progress import CancelToken, Reporter, Ticker

SOURCES = ("tldr", "nl2bash")
LICENCES = {"tldr": "CC-BY-4.0", "nl2bash": "MIT"}
UPSTREAM = {"tldr": "https://github.com/tldr-pages/tldr.git", "nl2bash": "https://github.com/TellinaTool/nl2bash.git"}
SHEBANG = "#!/bin/bash"
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[\w.-]+@[\w.-]+:")


@dataclass
class Example:
    comment: str
    command: str


@dataclass
class PairScript:
    """One generated script: heading comment lines, then each example's comment over its command."""

    source: str
    origin: str  # the page, or the pair lines, inside its source
    category: str
    header: list[str]
    examples: list[Example]

    def text(self, examples: list[Example] | None = None) -> str:
        lines = [SHEBANG, *(f"# {h}" for h in self.header)]
        for e in self.examples if examples is None else examples:
            lines += ["", f"# {e.comment}", e.command]
        return "\n".join(lines) + "\n"


@dataclass
class PairSource:
    """Where one source's files were read, and what reading them found."""

    name: str
    folder: Path
    where: str  # the folder or URL as set
    repo: str = ""  # owner/name of a cloned URL, else the folder
    commit: str = ""
    counts: Counter = field(default_factory=Counter)

    def holds(self, path: Path) -> bool:
        """False for a link out of the source's folder: it is never read."""
        return lies_in(path, self.folder)

    def as_dict(self) -> dict:
        return {"where": self.where, "repo": self.repo, "commit": self.commit, "licence": LICENCES[self.name],
                **dict(self.counts)}


# ---------------------------------------------------------------- locating a source

def locate(cfg: Config, name: str, cancel: CancelToken) -> PairSource:
    """The source's folder: a local folder as it is, or a git URL (by default the upstream
    repository) cloned shallow beside the repositories of the github source (a re-run reuses the
    clone)."""
    cc = cfg.data.code
    where = getattr(cc, f"{name}_path").strip() or UPSTREAM[name]
    if URL.match(where):
        require_tool("git")
        repo = Repo(url_name(where), name, where)
        cfg.locations.clones.mkdir(parents=True, exist_ok=True)
        done = clone_one(repo, cfg.locations.clones, cc.clone_timeout_s, cc.clone_retries, cancel)
        if done.path is None:
            raise AcmError(f"data.code.{name}_path: cannot clone {where} ({done.error})")
        return PairSource(name, done.path, where, repo.name, done.commit)
    folder = setting_path(cfg.root, where)
    if not folder.is_dir():
        raise AcmError(f"data.code.{name}_path: {folder} is not a folder" if folder.exists()
                       else f"data.code.{name}_path: {folder} does not exist")
    commit = head_commit(folder) if (folder / ".git").exists() else ""
    return PairSource(name, folder, where, str(folder.resolve()), commit)


def url_name(url: str) -> str:
    """owner/name of a git URL: https://github.com/tldr-pages/tldr.git gives tldr-pages/tldr."""
    parts = [p for p in re.split(r"[/:]", url.rstrip("/")) if p]
    parts[-1] = parts[-1].removesuffix(".git")
    return "/".join(parts[-2:])


# ---------------------------------------------------------------- tldr-pages

def tldr_scripts(src: PairSource, cc: CodeDataConfig, cancel: CancelToken) -> Iterator[PairScript]:
    """Each well-formed English page as a script; malformed pages are skipped and counted. A folder
    with no page at all is refused, naming it."""
    pages = [p for platform in cc.tldr_platforms for p in sorted((src.folder / "pages" / platform).glob("*.md"))]
    if not pages:
        wanted = ", ".join(f"pages/{p}/*.md" for p in cc.tldr_platforms)
        raise AcmError(f"data.code.tldr_path: {src.folder} holds no tldr pages ({wanted})")
    for path in pages:
        cancel.check()
        src.counts["pages"] += 1
        origin = without_surrogates(str(path.relative_to(src.folder)))  # its name need not be UTF-8
        if not src.holds(path):
            src.counts["outside_pages"] += 1
            continue
        page = parse_page(path)
        if page is None:
            src.counts["malformed_pages"] += 1
            continue
        title, about, examples = page
        kept = [e for e in examples if not e[1].startswith("tldr ")]  # pointers to another page
        src.counts["pointer_examples"] += len(examples) - len(kept)
        if not kept:
            continue
        fill = Filler(random.Random(f"{cc.pairs_seed}\0{origin}"))
        yield PairScript("tldr", origin, f"tldr/{path.parent.name}", [title, *about],
                         [Example(clean_description(d), fill.command(c)) for d, c in kept])


PAGE_LIMIT = 1 << 20  # bytes: a tldr page takes about a kilobyte
LINES_LIMIT = 256 << 20  # bytes: NL2Bash's all.nl and all.cm take about a megabyte each
TITLE = re.compile(r"# \S.*")
COMMAND = re.compile(r"`.+`")


def parse_page(path: Path) -> tuple[str, list[str], list[tuple[str, str]]] | None:
    """(title, description lines, [(example description, command)]) of a tldr page, or None when
    it is not UTF-8 or strays from the page format: a `# title`, `>` description lines, then `- `
    descriptions each followed by one command in backticks."""
    try:
        lines = [line.strip() for line in read_regular(path, PAGE_LIMIT).decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, OSError):  # a FIFO among the pages is passed over, not waited on
        return None
    if not lines or not TITLE.fullmatch(lines[0]):
        return None
    about = list(takewhile(lambda line: line.startswith(">"), lines[1:]))
    examples = page_examples(lines[1 + len(about):])
    if examples is None:
        return None
    return (lines[0][2:].strip(), [a[1:].strip() for a in about if not a[1:].strip().startswith("More information:")],
            examples)


def page_examples(body: list[str]) -> list[tuple[str, str]] | None:
    """[(description, command)] of a page's examples, or None unless the lines pair up so."""
    pairs = list(zip(body[::2], body[1::2]))
    if not body or len(body) % 2 or not all(d.startswith("- ") and COMMAND.fullmatch(c) for d, c in pairs):
        return None
    return [(d[2:].strip(), c[1:-1]) for d, c in pairs]


MNEMONIC = re.compile(r"\[([A-Za-z0-9]+)\]")


def clean_description(text: str) -> str:
    """An example's description as a comment: tldr's mnemonic brackets dropped ([c]reate: Create)
    and the closing colon too."""
    plain = MNEMONIC.sub(r"\1", text).rstrip(":").rstrip()
    return plain[:1].upper() + plain[1:] if MNEMONIC.match(text) else plain


# placeholders: {{...}} not escaped, whose inside may hold single braces ({{stash@{0}}})
PLACEHOLDER = re.compile(r"(?<!\\)\{\{((?:[^{}]|\{[^{}]*\})*)\}\}")
ALTERNATIVES = re.compile(r"\[([^\[\]|]*(?:\|[^\[\]|]*)+)\]")  # [-v|--verbose], [.gz|.bz2]
IDENTIFIER = re.compile(r"^([a-z][a-z_]*?)_?\d*$")  # file1: file
DIRS = ["", "./", "~/", "/tmp/", "data/", "~/projects/", "/srv/app/"]
VALUES = {
    "file": ["notes.txt", "report.pdf", "data.csv", "config.yaml", "app.log", "photo.jpg", "main.c", "todo.md"],
    "directory": ["projects", "backups", "src", "logs", "photos", "build"],
    "user": ["alice", "bob", "deploy", "admin"],
    "password": ["hunter2", "s3cret-pass"],
    "package": ["nginx", "curl", "htop", "git", "jq"],
    "host": ["example.com", "server1.example.com", "192.168.1.10", "db.internal"],
    "domain": ["example.com", "example.org"],
    "port": ["8080", "22", "443", "5432"],
    "url": ["https://example.com", "https://example.org/index.html"],
    "ip": ["192.168.1.10", "10.0.0.5"],
    "number": ["1", "3", "5", "10", "42", "100"],
    "seconds": ["5", "30", "60"],
    "version": ["1.2.3", "2.0.0"],
    "container": ["web", "db", "cache"],
    "image": ["nginx:latest", "ubuntu:22.04", "alpine"],
    "tag": ["v1.0.0", "latest"],
    "branch": ["main", "develop", "feature/login"],
    "commit": ["a1b2c3d", "HEAD~1"],
    "pattern": ["error", "TODO", "warning"],
    "text": ["hello", "done"],
    "command": ["ls -l", "echo hello", "make"],
    "service": ["nginx", "sshd", "docker"],
    "interface": ["eth0", "wlan0"],
    "database": ["app_db", "inventory"],
    "table": ["users", "orders"],
    "group": ["developers", "staff"],
    "name": ["demo", "myapp", "backup"],
    "key": ["color", "timeout"],
    "value": ["blue", "30"],
    "variable": ["HOME", "EDITOR"],
    "pid": ["1234", "4321"],
    "project": ["webapp", "myproject"],
}
SAME = {"filename": "file", "dir": "directory", "folder": "directory", "username": "user", "owner": "user",
        "login": "user", "hostname": "host", "server": "host", "address": "ip", "n": "number", "count": "number",
        "width": "number", "height": "number", "lines": "number", "size": "number", "regex": "pattern",
        "keyword": "pattern", "query": "pattern", "term": "pattern", "string": "text", "message": "text",
        "program": "command", "unit": "service", "db": "database", "pkg": "package", "uid": "pid", "id": "pid"}
LITERAL = {"/dev/sdX": "/dev/sdb", "/dev/sdXY": "/dev/sdb1", "/dev/sdXN": "/dev/sdb1", "ethX": "eth0",
           "image:tag": "nginx:1.27", "ip:port": "192.168.1.10:8080"}
GENERIC = {"file", "directory", "file_or_directory", "output", "input", "input_file", "output_file", "source",
           "destination", "output_directory", "binary", "executable"}  # path/to/<these> get a real name


class Filler:
    """Fills a page's placeholders: one value per placeholder text throughout the page, picked by the
    page's own random generator; a placeholder that already reads as a value stays as written."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.memo: dict[str, str] = {}
        self.used: set[str] = set()

    def command(self, command: str) -> str:
        filled = PLACEHOLDER.sub(lambda m: self.placeholder(m.group(1)), command)
        return filled.replace("\\{\\{", "{{").replace("\\}\\}", "}}")

    def placeholder(self, inner: str) -> str:
        if inner not in self.memo:
            chosen = ALTERNATIVES.sub(lambda m: self.rng.choice(m.group(1).split("|")), inner)
            self.memo[inner] = " ".join(self.token(t) for t in chosen.split() if t not in ("...", "…"))
        return self.memo[inner]

    def token(self, token: str) -> str:
        if token in LITERAL:
            return LITERAL[token]
        if "path/to" in token:
            head, _, leaf = token.partition("path/to")
            leaf = leaf.lstrip("/")
            kind = "directory" if not leaf or "directory" in leaf else "file"
            name = self.pick(kind) if not leaf or re.sub(r"\d+$", "", leaf) in GENERIC else leaf
            return head + self.rng.choice(DIRS) + name
        m = IDENTIFIER.match(token)
        kind = m and kind_of(m.group(1))
        if kind:
            return self.pick(kind)
        if m and m.group(1).endswith("_name"):  # bucket_name: my-bucket
            return "my-" + m.group(1).removesuffix("_name").replace("_", "-")
        return token

    def pick(self, kind: str) -> str:
        """A value of `kind` not yet given to another placeholder of the page, where one is left."""
        fresh = [v for v in VALUES[kind] if v not in self.used] or VALUES[kind]
        value = self.rng.choice(fresh)
        self.used.add(value)
        return value


def kind_of(identifier: str) -> str | None:
    """The value kind an identifier asks for, by its head word: package_name a package, remote_host a
    host; None when nothing fits (command_arguments: the identifier is kept as written)."""
    words = identifier.split("_")
    head = words[-2] if words[-1] == "name" and len(words) > 1 else words[-1]
    for word in (identifier, head):
        word = SAME.get(word, word)
        if word in VALUES:
            return word
    return None


# ---------------------------------------------------------------- NL2Bash

NL2BASH_FILES = ("data/bash", ".")  # a checkout of the repository, or its data folder itself


def nl2bash_scripts(src: PairSource, cc: CodeDataConfig, cancel: CancelToken) -> Iterator[PairScript]:
    """Consecutive pairs grouped into scripts; a pair with an empty side is skipped and counted."""
    rel, texts, commands = nl2bash_pairs(src)
    size = cc.pairs_per_script
    for start in range(0, len(texts), size):
        cancel.check()
        pairs = [Example(t, c) for t, c in zip(texts[start:start + size], commands[start:start + size])]
        kept = [p for p in pairs if p.comment and p.command]
        src.counts["pairs"] += len(pairs)
        src.counts["empty_pairs"] += len(pairs) - len(kept)
        if kept:
            yield PairScript("nl2bash", f"{rel}:{start + 1}-{start + len(pairs)}", "nl2bash", [], kept)


def nl2bash_pairs(src: PairSource) -> tuple[Path, list[str], list[str]]:
    """(all.cm's path in the source, descriptions, commands). Files that differ in line count are
    refused: the pairs would be misaligned."""
    base = next((src.folder / d for d in NL2BASH_FILES if (src.folder / d / "all.nl").is_file()), None)
    if base is None or not (base / "all.cm").is_file():
        raise AcmError(f"data.code.nl2bash_path: {src.folder} holds no data/bash/all.nl and all.cm")
    outside = [name for name in ("all.nl", "all.cm") if not src.holds(base / name)]
    if outside:
        raise AcmError(f"data.code.nl2bash_path: {base / outside[0]} is a link out of {src.folder}; it is not read")
    texts, commands = (read_lines(base / name) for name in ("all.nl", "all.cm"))
    if len(texts) != len(commands):
        raise AcmError(f"data.code.nl2bash_path: {base / 'all.nl'} has {len(texts):,} lines but all.cm has "
                       f"{len(commands):,}: the pairs are not aligned")
    return base.relative_to(src.folder) / "all.cm", texts, commands


def read_lines(path: Path) -> list[str]:
    """The file's lines, stripped (split on newlines only: a stray \\r or form feed is not a pair)."""
    try:
        text = read_regular(path, LINES_LIMIT).decode("utf-8")
    except OSError as e:  # a FIFO (whose read would wait for a writer), a folder, no permission
        raise AcmError(f"data.code.nl2bash_path: cannot read it ({os_error_text(e)})") from None
    except UnicodeDecodeError as e:
        raise AcmError(f"data.code.nl2bash_path: {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    lines = [line.strip() for line in text.split("\n")]
    return lines[:-1] if text.endswith("\n") else lines


READERS = {"tldr": tldr_scripts, "nl2bash": nl2bash_scripts}


def pair_scripts(cfg: Config, report: Reporter, cancel: CancelToken) -> tuple[list[PairScript], dict[str, dict]]:
    """Every script of the sources in data.code.pairs, with what each source's reading found."""
    scripts: list[PairScript] = []
    info: dict[str, PairSource] = {}
    for name in cfg.data.code.pairs:
        src = info[name] = locate(cfg, name, cancel)
        ticker = Ticker(report, f"reading {name}")
        for s in READERS[name](src, cfg.data.code, cancel):
            scripts.append(s)
            src.counts["examples"] += len(s.examples)
            ticker.advance(note=s.origin)
        src.counts["scripts"] = ticker.state.done
        ticker.finish()
    return scripts, {name: src.as_dict() for name, src in info.items()}

"""The bash corpus's repositories: the list, and shallow clones made in parallel.

Each clone goes to a temporary folder and is renamed into place only when complete, so a
re-run skips finished clones and retries the rest. Failures are reported per repository and
never stop the others.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from core.errors import AcmError
from core.progress import CancelToken, Reporter, Ticker

BUILTIN_LIST = Path(__file__).with_name("repos.toml")
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}


@dataclass(frozen=True)
class Repo:
    name: str  # owner/repo
    category: str
    url: str

    @property
    def folder_name(self) -> str:
        """Readable and unique: names that differ only by "/" vs "__" never share a folder, and a
        changed URL never reuses the old clone."""
        digest = hashlib.sha1(f"{self.name}\n{self.url}".encode()).hexdigest()[:10]
        return f"{self.name.replace('/', '__')}-{digest}"


@dataclass
class CloneResult:
    repo: Repo
    path: Path | None
    commit: str = ""
    error: str = ""
    attempts: int = 0
    skipped: bool = False  # already cloned by an earlier run


def load_repos(path: str | os.PathLike | None = None) -> list[Repo]:
    path = Path(path) if path else BUILTIN_LIST
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("repo", [])
    except FileNotFoundError:
        raise AcmError(f"data.code.repos_file: {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise AcmError(f"{path}: TOML syntax error: {e}") from None
    repos = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "name" not in e or "/" not in str(e["name"]):
            raise AcmError(f"{path}: repo entry {i + 1} needs name = \"owner/repo\"")
        repos.append(Repo(e["name"], e.get("category", "uncategorized"), e.get("url")
                          or f"https://github.com/{e['name']}.git"))
    if not repos:
        raise AcmError(f"{path} lists no repositories ([[repo]] entries)")
    return repos


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise AcmError(f"{tool} not found on PATH: install {tool} "
                       f"(macOS: xcode-select --install or brew install {tool}; Debian: apt-get install {tool})")
    return path


def head_commit(folder: Path) -> str:
    r = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                       env=os.environ | GIT_ENV)
    return r.stdout.strip()


def git_error(stderr: str, returncode: int) -> str:
    """git's own reason: its fatal/error line with what follows, not the last line of its advice."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith(("fatal:", "error:")):
            return " ".join(lines[i:])[:300]
    return " ".join(lines)[:300] or f"git exited with {returncode}"


def clone_one(repo: Repo, dest_root: Path, timeout_s: float, retries: int, cancel: CancelToken) -> CloneResult:
    dest = dest_root / repo.folder_name
    if (dest / ".git").is_dir():
        return CloneResult(repo, dest, head_commit(dest), skipped=True)
    tmp = dest_root / f".partial-{repo.folder_name}"
    error = ""
    for attempt in range(1, retries + 2):
        cancel.check()
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            r = subprocess.run(
                ["git", "clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags", "--", repo.url, str(tmp)],
                capture_output=True, text=True, timeout=timeout_s, env=os.environ | GIT_ENV, stdin=subprocess.DEVNULL)
            if r.returncode == 0:
                tmp.rename(dest)
                return CloneResult(repo, dest, head_commit(dest), attempts=attempt)
            error = git_error(r.stderr, r.returncode)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout_s:g}s"
    shutil.rmtree(tmp, ignore_errors=True)
    return CloneResult(repo, None, error=error, attempts=retries + 1)


def clone_all(repos: list[Repo], dest_root: Path, jobs: int, timeout_s: float, retries: int,
              report: Reporter, cancel: CancelToken) -> list[CloneResult]:
    """Clone every repository (at most `jobs` at once); results in list order."""
    require_tool("git")
    dest_root.mkdir(parents=True, exist_ok=True)
    for stale in dest_root.glob(".partial-*"):  # clones a killed fetch left half done
        shutil.rmtree(stale, ignore_errors=True)
    ticker = Ticker(report, "cloning", len(repos), interval=0)
    results: dict[Repo, CloneResult] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(clone_one, r, dest_root, timeout_s, retries, cancel): r for r in repos}
        try:
            for fut in as_completed(futures):
                res = fut.result()
                results[res.repo] = res
                ticker.advance(note=res.repo.name + ("" if res.path else f" failed: {res.error}"))
        except BaseException:
            cancel.cancel()  # the other clones stop before their next attempt
            raise
    ticker.finish()
    return [results[r] for r in repos]

"""The bash corpus's repositories: the list (with each one's licence), and shallow clones made in
parallel.

Each clone goes to a temporary folder and is renamed into place only when complete, so a
re-run skips finished clones and retries the rest. Failures are reported per repository and
never stop the others. A list is checked whole before any clone starts: a URL git could read as
an option, or one name with two URLs, is refused there, and git is always given `--` before the
URL and the folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from core import tether
from core.atomic import JSON_LIMIT, read_regular
from core.data.corpus import UNKNOWN_LICENCE
from core.errors import AcmError, os_error_text
from core.progress import CancelToken, Reporter, Ticker

BUILTIN_LIST = Path(__file__).with_name("repos.toml")
CANCEL_POLL_S = 0.2  # how soon a cancelled clone ends
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
# data.code.licences = "permissive": licences whose only condition is keeping the notice, and
# public-domain dedications. Left out: copyleft (GPL, LGPL, AGPL, EUPL, CC-BY-SA), the weak
# copyleft MPL-2.0 (its file-level share-alike still binds copies), source-available licences
# (BUSL, SSPL, Elastic, RSAL), WTFPL (not OSI-approved) and anything unknown.
PERMISSIVE = frozenset({"MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Unlicense",
                        "CC0-1.0", "PostgreSQL", "Zlib", "BSL-1.0"})
SPDX_ID = r"[A-Za-z0-9][A-Za-z0-9.+-]*"
SPDX_EXPRESSION = re.compile(rf"{SPDX_ID}( (OR|AND|WITH) {SPDX_ID})*")


@dataclass(frozen=True)
class Repo:
    name: str  # owner/repo
    category: str
    url: str
    licence: str = ""  # SPDX id or expression ("MIT", "MIT OR Apache-2.0"); "" or NOASSERTION: unknown

    @property
    def spdx(self) -> str:
        """The licence as a document records it: never blank."""
        return self.licence or UNKNOWN_LICENCE

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
    """The list in `path` (default: the built-in one), each repository once, checked whole before
    anything is cloned."""
    path = Path(path) if path else BUILTIN_LIST
    try:
        entries = tomllib.loads(read_regular(path, JSON_LIMIT).decode("utf-8")).get("repo", [])
    except FileNotFoundError:
        raise AcmError(f"data.code.repos_file: {path} does not exist") from None
    except OSError as e:  # a folder, a FIFO (whose read would wait for a writer), no permission
        raise AcmError(f"data.code.repos_file: cannot read it ({os_error_text(e)})") from None
    except tomllib.TOMLDecodeError as e:
        raise AcmError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise AcmError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise AcmError(f"{path}: nested too deep to be a repository list") from None
    except ValueError:  # an integer of thousands of digits, which tomllib's int() refuses
        raise AcmError(f"{path}: it holds a number of thousands of digits, too long to be in a repository "
                       "list") from None
    if not isinstance(entries, list):
        raise AcmError(f"{path}: repo must be a list of [[repo]] tables")
    repos = unique([_entry(e, f"{path}: repo entry {i + 1}") for i, e in enumerate(entries)], path)
    if not repos:
        raise AcmError(f"{path} lists no repositories ([[repo]] entries)")
    return repos


REPO_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")  # owner/repo, as hosts spell them


def _checked_url(url, where: str) -> str:
    """`url` as git may be handed it: text, no option, no control character."""
    if not isinstance(url, str):
        raise AcmError(f"{where}: url must be text, got {url!r}")
    if url.startswith("-"):
        raise AcmError(f"{where}: url {url!r} is not a URL (git would read it as an option)")
    if any(c < " " or c == "\x7f" for c in url):
        raise AcmError(f"{where}: url {url!r} holds a control character, which no URL can")
    return url


def is_remote(url: str) -> bool:
    """Whether git reaches `url` over a network: a scheme other than file://, or scp's host:path."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme:
        return scheme.group(1).lower() != "file"
    return bool(re.match(r"[^/:]+:", url)) and not Path(url).exists()


def _entry(e, where: str) -> Repo:
    name = e.get("name") if isinstance(e, dict) else None
    if not (isinstance(name, str) and REPO_NAME.fullmatch(name)) or {".", ".."} & set(name.split("/")):
        raise AcmError(f"{where} needs name = \"owner/repo\" (letters, digits, -, _ and . between the slashes), "
                       f"got {name!r}")
    url = e.get("url", "")  # left out or empty: GitHub's
    url = _checked_url(url if url != "" else f"https://github.com/{name}.git", f"{where} ({name})")
    licence, category = e.get("licence", ""), e.get("category", "uncategorized")
    if not isinstance(category, str):
        raise AcmError(f"{where} ({name}): category must be text, got {category!r}")
    if not isinstance(licence, str) or (licence and not SPDX_EXPRESSION.fullmatch(licence)):
        raise AcmError(f"{where} ({name}): licence {licence!r} is not an SPDX id such as \"MIT\" or "
                       f"\"GPL-2.0-only\" (leave it out when unknown)")
    return Repo(name, category, url, licence)


def unique(repos: list[Repo], path: Path) -> list[Repo]:
    """Each repository once, so no two clones share a folder: a repeated entry (same name, same URL)
    is merged into the first; one name with two URLs, or one URL under two names, is refused (which
    one was meant?)."""
    by_name: dict[str, Repo] = {}
    by_url: dict[str, Repo] = {}
    for r in repos:
        seen = by_name.get(r.name) or by_url.get(r.url)
        if seen is None:
            by_name[r.name] = by_url[r.url] = r
        elif seen.name != r.name:
            raise AcmError(f"{path}: {r.url} is listed twice, as {seen.name} and {r.name}: keep one entry")
        elif seen.url != r.url:
            raise AcmError(f"{path}: {r.name} is listed twice with different URLs ({seen.url}, {r.url}): "
                           f"keep one entry")
        elif r.licence and seen.licence and r.licence != seen.licence:
            raise AcmError(f"{path}: {r.name} is listed twice with licences {seen.licence} and {r.licence}: "
                           f"keep one entry")
        elif r.licence and not seen.licence:  # the merged entry keeps the licence either one records
            by_name[r.name] = by_url[r.url] = r
    return list(by_name.values())


def is_permissive(licence: str) -> bool:
    """True when some choice the SPDX expression offers (A OR B) is made only of permissive licences
    (an exception, "Apache-2.0 WITH LLVM-exception", only adds permissions)."""
    return any(all(part.split(" WITH ")[0] in PERMISSIVE for part in choice.split(" AND "))
               for choice in licence.split(" OR "))


def keep_licences(repos: list[Repo], which: str) -> tuple[list[Repo], list[str]]:
    """The repositories data.code.licences keeps, and the names it leaves out; decided before any
    clone, so nothing dropped is fetched."""
    kept = [r for r in repos if which == "any" or is_permissive(r.licence)]
    if not kept:
        raise AcmError(f"data.code.licences = \"{which}\" keeps none of the {len(repos)} listed repositories "
                       f"(permissive: {', '.join(sorted(PERMISSIVE))}); record their licences (licence = \"MIT\") "
                       f"or set data.code.licences = \"any\"")
    return kept, [r.name for r in repos if r not in kept]


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
    # a folder of this call's own: a git that a killed acm left cloning (kill -9) never shares it
    tmp = dest_root / f".partial-{repo.folder_name}-{os.getpid()}"
    error = ""
    try:
        for attempt in range(1, retries + 2):
            cancel.check()
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                r = run_cancellable(["git", "clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags", "--",
                                     repo.url, str(tmp)], timeout_s, cancel, env=os.environ | GIT_ENV)
                if r.returncode == 0:
                    tmp.rename(dest)
                    return CloneResult(repo, dest, head_commit(dest), attempts=attempt)
                error = git_error(r.stderr, r.returncode)
            except subprocess.TimeoutExpired:
                error = f"timed out after {timeout_s:g}s"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed, timed out or cancelled clone's half
    return CloneResult(repo, None, error=error, attempts=retries + 1)


def run_cancellable(argv: list[str], timeout_s: float, cancel: CancelToken, poll_s: float = CANCEL_POLL_S,
                    **popen) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)`, which also ends
    within `poll_s` of `cancel` (Ctrl-C, SIGTERM, `x`, the app quitting), the child's process group
    with it (git starts helpers of its own): Cancelled is raised then. A clone of minutes no longer
    holds acm until it is done, nor outlives it (core/tether.py: not even a `kill -9` of acm)."""
    with subprocess.Popen(tether.command(os.getpid(), argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True, **popen) as proc:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                out, err = proc.communicate(timeout=poll_s)
                return subprocess.CompletedProcess(argv, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                if cancel.cancelled or time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone (macOS: EPERM)
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    cancel.check()
                    raise


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

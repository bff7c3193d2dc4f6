"""The repository list: licences recorded and carried to every document, the permissive filter,
duplicate entries, URLs git could read as options, and the built-in list itself."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import cli, config, tether
from core.data import repos as repos_module
from core.data.code import fetch_code
from core.data.corpus import Corpus
from core.data.repos import (
    BUILTIN_LIST,
    Repo,
    clone_all,
    clone_one,
    is_permissive,
    is_remote,
    keep_licences,
    load_repos,
)
from core.errors import AcmError
from core.progress import Cancelled, CancelToken, no_report
from tests.helpers import cfg_for, eventually, process_gone, unless_stuck
from tests.stand_ins import REPOS, make_bare_repo, make_repos_file

# SPDX ids a built-in entry may record (LicenseRef-* names one SPDX does not list)
ALLOWED = {"MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Unlicense", "CC0-1.0",
           "PostgreSQL", "Zlib", "BSL-1.0", "MPL-2.0", "WTFPL", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only",
           "GPL-3.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only", "LGPL-3.0-or-later",
           "AGPL-3.0-only", "AGPL-3.0-or-later", "EUPL-1.2", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "BUSL-1.1", "SSPL-1.0",
           "Elastic-2.0"}


def github(project: Path, repos_file: Path, **more) -> config.Config:
    return cfg_for(project, data__code__source="github", data__code__repos_file=str(repos_file),
                   data__code__clone_retries=0, **{f"data__code__{k}": v for k, v in more.items()})


def write_list(path: Path, *entries: dict) -> Path:
    path.write_text("".join("[[repo]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items())
                            for e in entries))
    return path


@pytest.fixture
def spy_git(monkeypatch) -> list[list[str]]:
    """Every command line acm hands to subprocess from core/data/repos.py (git runs as usual)."""
    calls: list[list[str]] = []

    def run(argv, *a, **kw):
        calls.append(list(argv))
        return subprocess.run(argv, *a, **kw)

    def popen(argv, *a, **kw):
        calls.append(_untethered(list(argv)))
        return subprocess.Popen(argv, *a, **kw)

    monkeypatch.setattr(repos_module, "subprocess", SimpleNamespace(
        run=run, Popen=popen, PIPE=subprocess.PIPE, DEVNULL=subprocess.DEVNULL,
        CompletedProcess=subprocess.CompletedProcess, TimeoutExpired=subprocess.TimeoutExpired))
    return calls


def _untethered(argv: list[str]) -> list[str]:
    """The command core/tether.py runs for acm (a clone), else `argv`."""
    prefix = tether.command(os.getpid(), [])
    return argv[len(prefix):] if argv[:len(prefix)] == prefix else argv


# ---------------------------------------------------------------- licences on documents

def test_each_document_records_its_repositorys_licence(project, tmp_path):
    m = fetch_code(github(project, make_repos_file(tmp_path / "remote"), max_file_bytes=4096))
    assert m["report"]["by_licence"] == {"MIT": 3, "GPL-2.0-only": 1}
    assert {r["name"]: r["licence"] for r in m["repos"]} == {"acme/tools": "MIT", "acme/ops": "GPL-2.0-only",
                                                             "acme/gone": "Apache-2.0"}
    rows = list(Corpus.open(project / "data" / "code", "code").rows())
    assert {(r["repo"], r["licence"]) for r in rows} == {("acme/tools", "MIT"), ("acme/ops", "GPL-2.0-only")}


def test_a_list_without_licences_loads_and_its_documents_say_noassertion(project, tmp_path):
    url = make_bare_repo(tmp_path, "acme/ops", REPOS["acme/ops"])
    listed = write_list(tmp_path / "r.toml", {"name": "acme/ops", "url": url})
    assert load_repos(listed) == [Repo("acme/ops", "uncategorized", url, "")]
    m = fetch_code(github(project, listed))
    assert m["report"]["by_licence"] == {"NOASSERTION": 2}
    assert [r["licence"] for r in Corpus.open(project / "data" / "code", "code").rows()] == ["NOASSERTION"] * 2


def test_local_and_builtin_documents_say_noassertion(project, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.sh").write_text(REPOS["acme/ops"]["backup.sh"])
    m = fetch_code(cfg_for(project, data__code__source="local", data__code__local_paths=[str(src)]))
    assert m["report"]["by_licence"] == {"NOASSERTION": 1}


def test_a_repository_list_that_is_no_regular_file_is_one_line(tmp_path):
    os.mkfifo(tmp_path / "r.toml")  # its read would wait for a writer
    with unless_stuck(), pytest.raises(AcmError, match=r"^data.code.repos_file: cannot read it \(a FIFO, not a "
                                                       r"regular file: .*r.toml\)$"):
        load_repos(tmp_path / "r.toml")
    with pytest.raises(AcmError, match=r"^data.code.repos_file: cannot read it \(Is a directory: "):
        load_repos(tmp_path)


@pytest.mark.parametrize("licence", ["MIT or Apache", "GPL 2", 3])
def test_a_licence_that_is_not_an_spdx_id_is_one_line(tmp_path, licence):
    listed = write_list(tmp_path / "r.toml", {"name": "a/b", "licence": licence})
    with pytest.raises(AcmError, match=r"^[^\n]*repo entry 1 \(a/b\): licence .* is not an SPDX id[^\n]*$"):
        load_repos(listed)


# ---------------------------------------------------------------- the permissive filter

@pytest.mark.parametrize("licence, permissive", [
    ("MIT", True), ("Apache-2.0", True), ("0BSD", True), ("MIT OR Apache-2.0", True), ("GPL-2.0-only OR MIT", True),
    ("Apache-2.0 WITH LLVM-exception", True), ("MIT AND BSD-3-Clause", True), ("MIT AND GPL-2.0-only", False),
    ("GPL-3.0-or-later", False), ("MPL-2.0", False), ("WTFPL", False), ("LicenseRef-RSALv2 OR SSPL-1.0", False),
    ("NOASSERTION", False), ("", False)])
def test_which_licences_count_as_permissive(licence, permissive):
    assert is_permissive(licence) is permissive


def test_permissive_drops_the_others_before_cloning(project, tmp_path, spy_git):
    m = fetch_code(github(project, make_repos_file(tmp_path / "remote"), max_file_bytes=4096,
                          licences="permissive"))
    assert m["left_out_by_licence"] == ["acme/ops"] and m["licences"] == "permissive"
    assert [r["name"] for r in m["repos"]] == ["acme/tools", "acme/gone"]
    assert m["report"]["by_licence"] == {"MIT": 3}
    cloned = [c for c in spy_git if c[:2] == ["git", "clone"]]
    assert not any("acme__ops" in arg for c in cloned for arg in c) and len(cloned) == 2
    assert not list((project / "data" / "code" / "repos").glob("acme__ops*"))


def test_a_filter_that_leaves_nothing_is_one_line_and_clones_nothing(project, tmp_path, capsys, spy_git):
    url = make_bare_repo(tmp_path, "acme/ops", REPOS["acme/ops"])
    listed = write_list(tmp_path / "r.toml", {"name": "acme/ops", "licence": "GPL-2.0-only", "url": url},
                        {"name": "acme/misc", "url": (tmp_path / "misc.git").as_uri()})
    config.save(github(project, listed, licences="permissive"), project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith('acm: error: data.code.licences = "permissive" keeps none of '
                                                   "the 2 listed repositories (permissive: 0BSD, Apache-2.0")
    assert spy_git == [] and not (project / "data" / "code" / "repos").exists()


def test_any_keeps_every_repository():
    listed = [Repo("a/b", "x", "u1", "GPL-3.0-only"), Repo("c/d", "x", "u2", ""), Repo("e/f", "x", "u3", "ISC")]
    assert keep_licences(listed, "any") == (listed, [])
    assert keep_licences(listed, "permissive") == ([listed[2]], ["a/b", "c/d"])
    with pytest.raises(AcmError, match="keeps none of the 2 listed repositories"):
        keep_licences(listed[:2], "permissive")


# ---------------------------------------------------------------- duplicates and option-like URLs

def test_a_repeated_entry_is_cloned_once(project, tmp_path, spy_git):
    url = make_bare_repo(tmp_path, "acme/ops", REPOS["acme/ops"])
    entry = {"name": "acme/ops", "category": "Databases", "url": url}
    listed = write_list(tmp_path / "r.toml", entry, {**entry, "licence": "MIT"}, entry)
    assert load_repos(listed) == [Repo("acme/ops", "Databases", url, "MIT")]  # the licence either one records
    m = fetch_code(github(project, listed, clone_jobs=4))
    assert [r["name"] for r in m["repos"]] == ["acme/ops"] and all(r["ok"] for r in m["repos"])
    assert len([c for c in spy_git if c[:2] == ["git", "clone"]]) == 1


@pytest.mark.parametrize("second, message", [
    ({"name": "acme/ops", "url": "file:///elsewhere.git"}, r"acme/ops is listed twice with different URLs \("),
    ({"name": "acme/other", "url": "{url}"}, r"{url} is listed twice, as acme/ops and acme/other"),
    ({"name": "acme/ops", "url": "{url}", "licence": "GPL-2.0-only"},
     "acme/ops is listed twice with licences MIT and GPL-2.0-only"),
])
def test_conflicting_duplicates_are_refused_before_any_clone(project, tmp_path, capsys, spy_git, second, message):
    url = make_bare_repo(tmp_path, "acme/ops", REPOS["acme/ops"])
    second = {k: v.replace("{url}", url) for k, v in second.items()}
    message = message.replace("{url}", re.escape(url))
    listed = write_list(tmp_path / "r.toml", {"name": "acme/ops", "url": url, "licence": "MIT"}, second)
    config.save(github(project, listed), project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err) and "keep one entry" in err
    assert spy_git == [] and not (project / "data" / "code" / "repos").exists()


def test_a_url_git_would_read_as_an_option_never_reaches_git(project, tmp_path, capsys, spy_git):
    marker = tmp_path / "pwned"
    listed = write_list(tmp_path / "r.toml", {"name": "evil/repo", "url": f"--upload-pack=touch {marker}"})
    config.save(github(project, listed), project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "repo entry 1 (evil/repo): url '--upload-pack=touch" in err
    assert "git would read it as an option" in err
    assert spy_git == [] and not marker.exists()


@pytest.mark.parametrize(("entry", "says"), [
    ({"name": "../../etc"}, r"needs name = \"owner/repo\" .*got '\.\./\.\./etc'"),
    ({"name": "a/b c"}, r"needs name = \"owner/repo\""),
    ({"name": 5}, r"needs name = \"owner/repo\" .*got 5"),
    ({"name": "a/\0b"}, r"needs name = \"owner/repo\""),
    ({"name": "a/b", "url": 5}, r"\(a/b\): url must be text, got 5"),
    ({"name": "a/b", "url": False}, r"\(a/b\): url must be text, got False"),  # not GitHub's by default
    ({"name": "a/b", "url": []}, r"\(a/b\): url must be text, got \[\]"),
    ({"name": "a/b", "url": "file:///x\0y"}, r"\(a/b\): url 'file:///x\\x00y' holds a control character"),
    ({"name": "a/b", "url": "file:///x\ny"}, r"\(a/b\): url 'file:///x\\ny' holds a control character"),
    ({"name": "a/b", "category": 5}, r"\(a/b\): category must be text, got 5"),
])
def test_a_repository_entry_acm_could_not_clone_safely_is_refused_in_one_line_before_git(
        project, tmp_path, capsys, spy_git, entry, says):
    listed = write_list(tmp_path / "r.toml", entry)
    config.save(github(project, listed), project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"repo entry 1 " + says, err) and "\0" not in err, err
    assert spy_git == [] and not (project / "data" / "code" / "repos").exists()


@pytest.mark.parametrize(("url", "remote"), [
    ("https://github.com/a/b.git", True), ("ssh://git@host/a/b", True), ("git@github.com:a/b.git", True),
    ("FILE:///srv/a.git", False), ("file:///srv/a.git", False), ("/srv/a.git", False), ("mirrors/a.git", False),
    ("~/a.git", False), ("./a.git", False)])
def test_a_url_is_remote_where_git_would_reach_it_over_a_network(url, remote):
    assert is_remote(url) is remote


def test_git_is_told_where_its_options_end(tmp_path, monkeypatch, spy_git):
    """A repository whose path starts with '-' still clones: git is given `--` before the URL."""
    url = make_bare_repo(tmp_path, "acme/ops", REPOS["acme/ops"])
    shutil.move(Path(url.removeprefix("file://")), tmp_path / "-ops.git")
    monkeypatch.chdir(tmp_path)
    [result] = clone_all([Repo("acme/ops", "x", "-ops.git", "MIT")], tmp_path / "clones", 1, 60, 0, no_report,
                         CancelToken())
    assert result.path is not None and result.error == "", result.error
    [clone] = [c for c in spy_git if c[:2] == ["git", "clone"]]
    partial = tmp_path / "clones" / f".partial-{result.repo.folder_name}-{os.getpid()}"
    assert clone[-3:] == ["--", "-ops.git", str(partial)]


# ---------------------------------------------------------------- the built-in list

def test_the_builtin_list_has_150_vetted_repositories_with_spdx_licences():
    entries = tomllib.loads(BUILTIN_LIST.read_text())["repo"]
    repos = load_repos()
    assert len(repos) == len(entries) >= 150  # nothing merged: every name once
    assert len({r.name.lower() for r in repos}) == len(repos)
    for r in repos:
        assert re.fullmatch(r"[A-Za-z0-9-]+/[A-Za-z0-9._-]+", r.name), r.name
        assert r.url == f"https://github.com/{r.name}.git" and r.category, r.name
        ids = re.split(r" (?:OR|AND|WITH) ", r.licence)
        assert all(i in ALLOWED or re.fullmatch(r"LicenseRef-[A-Za-z0-9.-]+", i) for i in ids), (r.name, r.licence)
    kept, _ = keep_licences(repos, "permissive")
    assert 100 <= len(kept) < len(repos)
    assert {"kubernetes/kubernetes", "ohmyzsh/ohmyzsh", "bats-core/bats-core"} <= {r.name for r in kept}
    assert not {"git/git", "hashicorp/terraform", "acmesh-official/acme.sh"} & {r.name for r in kept}


# ---------------------------------------------------------------- stats and the model card

def test_stats_and_the_model_card_count_documents_per_licence(project, tmp_path, capsys):
    from core.generate.export import card

    cfg = github(project, make_repos_file(tmp_path / "remote"), max_file_bytes=4096)
    config.save(cfg, project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 0
    capsys.readouterr()
    assert cli.main(["-c", str(project / "acm.toml"), "data", "stats"]) == 0
    out = capsys.readouterr().out
    assert "Code by licence" in out
    assert re.search(r"MIT\s*│\s*3\b", out) and re.search(r"GPL-2\.0-only\s*│\s*1\b", out)
    assert cli.main(["-c", str(project / "acm.toml"), "data", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["code"]["report"]["by_licence"] == {"MIT": 3, "GPL-2.0-only": 1}
    facts = card.facts(cfg, SimpleNamespace(checkpoint=tmp_path / "no-checkpoint", run="none"))
    assert facts["corpora"]["code"]["licences"] == {"MIT": 3, "GPL-2.0-only": 1}
    text = "\n".join(card._data(facts))
    assert "| licence | documents |\n|---|---|\n| MIT | 3 |\n| GPL-2.0-only | 1 |" in text


@pytest.fixture
def slow_git(tmp_path, monkeypatch) -> Path:
    """`git` on PATH that makes the clone's folder, starts a helper (a long `sleep`) and waits for
    it, as a clone of minutes would; the file it names both pids in once started."""
    pids = tmp_path / "pids"
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nmkdir -p \"$9\"\nsleep 300 &\necho $$ $! > {pids}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    return pids


def _pids(pids: Path) -> list[int]:
    return [int(pid) for pid in pids.read_text().split()]


def _cloning(pids: Path) -> bool:
    """Whether the stand-in git has started its helper (and named both)."""
    return pids.exists() and len(pids.read_text().split()) == 2


def test_a_cancelled_clone_ends_at_once_with_git_s_own_children(tmp_path, slow_git):
    """Ctrl-C, SIGTERM, `x` or quitting the app while git clones: git and the helpers it started
    end within a poll, the half-made clone goes, and the fetch says it was cancelled (it no longer
    waits up to clone_timeout_s for the clone to finish)."""
    pids = slow_git
    cancel = CancelToken()

    def cancel_once_cloning() -> None:
        eventually(lambda: _cloning(pids))
        cancel.cancel()

    threading.Thread(target=cancel_once_cloning, daemon=True).start()
    repo = Repo("acme/slow", "tools", "file:///nowhere/slow", "MIT")
    with pytest.raises(Cancelled):
        clone_one(repo, tmp_path / "clones", 300, 0, cancel)
    assert eventually(lambda: all(map(process_gone, _pids(pids))), 30), "git or its helper outlived the cancel"
    assert not list((tmp_path / "clones").glob(".partial-*"))


CLONE_THEN_WAIT = """
import sys
from pathlib import Path
from core.data.repos import Repo, clone_one
from core.progress import CancelToken
clone_one(Repo("acme/slow", "tools", "file:///nowhere/slow", "MIT"), Path(sys.argv[1]), 300, 0, CancelToken())
"""


def test_a_clone_ends_with_an_acm_killed_outright(tmp_path, slow_git):
    """`kill -9` of acm while git clones (no handler of acm's runs): git and the helpers it started
    end within a poll rather than cloning on for minutes, orphans of nobody."""
    pids = slow_git
    acm = subprocess.Popen([sys.executable, "-c", CLONE_THEN_WAIT, str(tmp_path / "clones")],
                           cwd=Path(__file__).resolve().parents[3])
    try:
        assert eventually(lambda: _cloning(pids) or acm.poll() is not None) and acm.poll() is None, \
            "the clone never started"
        acm.kill()
        acm.wait()
        assert eventually(lambda: all(map(process_gone, _pids(pids))), 30), \
            "git or its helper outlived the acm that started it"
    finally:
        acm.kill()
        for pid in _pids(pids) if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

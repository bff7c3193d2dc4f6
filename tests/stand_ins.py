"""Local stand-ins for the network (bare git repositories at file:// URLs, dataset files) and for
system tools (an `nvidia-smi` first on PATH)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

GIT = ["git", "-c", "user.name=acm", "-c", "user.email=acm@example.invalid", "-c", "init.defaultBranch=main"]


def script(topic: str, lines: int = 40) -> str:
    """A valid, distinctive bash script about `topic`."""
    body = ["#!/usr/bin/env bash", f"# {topic}: generated test script", "set -euo pipefail", ""]
    for i in range(lines):
        body.append(f'echo "{topic} step {i} of {lines} handles {topic}-{i * 7} with care {i % 5}"')
    body += [f"{topic.replace('-', '_')}_done() {{", f'  printf "%s\\n" "{topic} finished"', "}",
             f"{topic.replace('-', '_')}_done"]
    return "\n".join(body) + "\n"


DEPLOY = script("deploy")
# near-duplicate of DEPLOY: one line changed
NEAR = DEPLOY.replace('echo "deploy step 3 of 40', 'echo "deploy phase 3 of 40')

REPOS = {
    "acme/tools": {
        "deploy.sh": DEPLOY,
        "install.bash": script("install"),
        "bin/run": script("runner"),
        "broken.sh": "#!/bin/bash\nif [ -f x ]; then\n  echo (\n",
        "copy.sh": DEPLOY.replace("\n", "   \r\n"),  # same script: trailing spaces and CRLF
        "near.sh": NEAR,
        "blob.sh": "#!/bin/sh\n" + "\x00\x01\x02" * 10,
        "huge.sh": "#!/bin/bash\n" + "echo padding padding padding\n" * 400,  # ~11 KB
        "latin1.sh": "#!/bin/bash\necho 'caf\xe9'\n",  # written as Latin-1 below
        "README.md": "# tools\n",
        "notes.py": "#!/usr/bin/python3\nprint('not shell')\n",
    },
    "acme/ops": {
        "backup.sh": script("backup"),
        "scripts/deploy.sh": DEPLOY,  # exact duplicate across repositories
    },
}
# raw 11 scripts; rejected: syntax 1, binary 1, too_large 1 (max_file_bytes 4096), not_utf8 1;
# valid 7; exact duplicates 2, near duplicates 1; unique 4
EXPECTED = {"raw": 11, "valid": 7, "exact_duplicates": 2, "near_duplicates": 1, "unique": 4,
            "rejected": {"syntax": 1, "binary": 1, "too_large": 1, "not_utf8": 1}}


def make_bare_repo(root: Path, name: str, files: dict[str, str]) -> str:
    """A bare repository holding `files` (and a symlink loop); returns its file:// URL."""
    work = root / "work" / name.replace("/", "__")
    work.mkdir(parents=True)
    for rel, text in files.items():
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("latin-1") if rel == "latin1.sh" else text.encode("utf-8", "surrogatepass"))
    os.symlink(".", work / "loop")  # a folder link pointing at itself
    subprocess.run(GIT + ["init", "-q", str(work)], check=True)
    subprocess.run(GIT + ["-C", str(work), "add", "-A"], check=True)
    subprocess.run(GIT + ["-C", str(work), "commit", "-qm", "scripts"], check=True)
    bare = root / "remote" / (name.replace("/", "__") + ".git")
    subprocess.run(GIT + ["clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare.as_uri()


LICENCES = {"acme/tools": "MIT", "acme/ops": "GPL-2.0-only", "acme/gone": "Apache-2.0"}


def make_repos_file(root: Path, missing: bool = True) -> Path:
    lines = []
    for (name, files), category in zip(REPOS.items(), ["CI tools", "Databases"]):
        url = make_bare_repo(root, name, files)
        lines.append(f'[[repo]]\nname = "{name}"\ncategory = "{category}"\nlicence = "{LICENCES[name]}"\n'
                     f'url = "{url}"\n')
    if missing:
        lines.append(f'[[repo]]\nname = "acme/gone"\ncategory = "CI tools"\nlicence = "Apache-2.0"\n'
                     f'url = "{(root / "nope.git").as_uri()}"\n')
    path = root / "repos.toml"
    path.write_text("\n".join(lines))
    return path


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """`files` (relative path: text) written under root; returns root."""
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def tldr_page(title: str, about: list[str], examples: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", "", *(f"> {a}" for a in about), ""]
    for description, command in examples:
        lines += [f"- {description}:", "", f"`{command}`", ""]
    return "\n".join(lines)


# A tldr-pages checkout: 6 English pages in common/ and linux/ (one malformed, one only pointing to another
# page, one with a keystroke example that is not bash), an osx page, and a translation that is never read.
TLDR = {
    "pages/common/tar.md": tldr_page("tar", ["Archiving utility.", "More information: <https://example.com/tar>."], [
        ("[c]reate an archive and write it to a [f]ile",
         "tar cf {{path/to/target.tar}} {{path/to/file1 path/to/file2 ...}}"),
        ("E[x]tract an archive into a directory",
         "tar xf {{path/to/source.tar[.gz|.bz2]}} {{[-C|--directory]}} {{path/to/directory}}"),
        ("Extract files matching a pattern", 'tar xf {{path/to/source.tar}} --wildcards "{{*.html}}"')]),
    "pages/common/ssh.md": tldr_page("ssh", ["Secure Shell client."], [
        ("Connect to a remote server as a user", "ssh {{username}}@{{remote_host}}"),
        ("Connect on a given port", "ssh {{username}}@{{remote_host}} -p {{2222}}")]),
    "pages/common/less.md": tldr_page("less", ["Open a file for interactive reading."], [
        ("Open a file", "less {{path/to/file}}"),
        ("Search forward for a pattern", "/{{pattern}}<Enter>")]),
    "pages/common/vi.md": tldr_page("vi", ["This command is an alias of `vim`."], [
        ("View documentation for the original command", "tldr vim")]),
    "pages/common/broken.md": "# broken\n\n> Lost its command.\n\n- Do something:\n\n- Do another thing:\n\n`true`\n",
    "pages/linux/apt.md": tldr_page("apt", ["Package manager for Debian-based distributions."], [
        ("Install a package", "sudo apt install {{package}}")]),
    "pages/osx/brew.md": tldr_page("brew", ["Package manager for macOS."], [
        ("Install a formula", "brew install {{formula}}")]),
    "pages.fr/common/tar.md": tldr_page("tar", ["Utilitaire d'archivage."], [("Créer une archive", "tar cf a.tar b")]),
}
# pages 6, malformed 1, pointer examples 1; scripts 4 (less, ssh, tar, apt) holding 8 examples, one of them
# (the keystroke) dropped by bash -n
TLDR_EXPECTED = {"pages": 6, "malformed_pages": 1, "pointer_examples": 1, "scripts": 4, "examples": 8}

# NL2Bash's data folder: 6 pairs, one whose command does not parse, one with an empty command
NL2BASH = {
    "data/bash/all.nl": "Find all text files under the current directory\nCount the lines of every Python file\n"
                        "Print the current date\nShow the last lines of a log file\nSay hello\nList nothing\n",
    "data/bash/all.cm": "find . -name '*.txt'\nfind . -name '*.py' | xargs wc -l\ndate\ntail -n 20 'app.log\n"
                        "echo hello\n\n",
}


# A Hugging Face code dataset's parquet files, in either schema: shell scripts (one that does not parse, one
# copied in another repository, one under the GPL) and a Python file. Licences as each schema spells them.
HF_ROWS = [  # (text, repo, path, language, GitHub licence key)
    (script("deploy"), "acme/tools", "deploy.sh", "Shell", "mit"),
    (script("backup"), "acme/ops", "bin/backup.sh", "Shell", "apache-2.0"),
    ("#!/bin/bash\nif [ -f x ]; then\n  echo (\n", "acme/tools", "broken.sh", "Shell", "mit"),
    (script("deploy"), "fork/tools", "deploy.sh", "Shell", "mit"),
    (script("install"), "gnu/things", "install.sh", "Shell", "gpl-3.0"),
    ("import os\nprint(os.getcwd())\n", "acme/tools", "where.py", "Python", "mit"),
]
STACK_LICENCES = {"mit": ["MIT"], "apache-2.0": ["Apache-2.0"], "gpl-3.0": ["GPL-3.0-only"]}
# Shell rows 5; rejected: syntax 1; valid 4; exact duplicates 1; unique 3 (licences MIT, Apache-2.0, GPL-3.0-only)
HF_EXPECTED = {"raw": 5, "valid": 4, "exact_duplicates": 1, "near_duplicates": 0, "unique": 3,
               "rejected": {"syntax": 1}}


def hf_row(text: str, repo: str, path: str, language: str, licence: str, schema: str) -> dict:
    if schema == "the-stack":
        return {"hexsha": "0" * 40, "size": len(text), "ext": path.rsplit(".", 1)[-1], "lang": language,
                "content": text, "max_stars_repo_name": repo, "max_stars_repo_path": path,
                "max_stars_repo_head_hexsha": "ab" * 20, "max_stars_repo_licenses": STACK_LICENCES[licence],
                "max_stars_count": 3}
    return {"code": text, "repo_name": repo, "path": path, "language": language, "license": licence,
            "size": len(text)}


def make_hf_dataset(folder: Path, rows: list[tuple] = HF_ROWS, schema: str = "codeparrot",
                    data_dir: str = "data") -> Path:
    """A local copy of a code dataset's layout: <folder>/<data_dir>/ holding `rows` in two parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = folder / data_dir
    target.mkdir(parents=True)
    table = pa.Table.from_pylist([hf_row(*r, schema=schema) for r in rows])
    half = (len(rows) + 1) // 2
    for i, part in enumerate([table.slice(0, half), table.slice(half)]):
        if part.num_rows:
            pq.write_table(part, target / f"train-{i:05d}-of-00002.parquet", row_group_size=2)
    return folder


SMI_TWO_GPUS = ("0, NVIDIA H200, 97, 520.31, 700.00, 12595, 143771\n"
                "1, NVIDIA H200, [N/A], [N/A], [N/A], 1024, 143771\n")


def fake_nvidia_smi(folder: Path, monkeypatch, body: str = f"cat <<'EOF'\n{SMI_TWO_GPUS}EOF") -> Path:
    """An executable `nvidia-smi` in `folder`, first on PATH, that runs the shell `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return tool


@contextlib.contextmanager
def stand_in_hub(monkeypatch, answer=None):
    """The Hugging Face Hub's HTTP API answered here, at huggingface_hub's HTTP transport: a repo
    created, its files taken and committed (or `answer(request)` for every request). Yields the
    requests seen, (method, path), and the paths committed."""
    import httpx2 as httpx  # huggingface_hub's HTTP client
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory

    seen: list[tuple[str, str]] = []
    committed: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        path = request.url.path
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/me/acm-nano", "name": "me/acm-nano"})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            committed.extend(json.loads(line)["value"].get("path", "") for line in request.content.splitlines()
                             if json.loads(line)["key"] == "file")
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/me/acm-nano/commit/abc",
                                             "commitOid": "a" * 40})
        return httpx.Response(200, json={})

    monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(answer or hub)))
    try:
        yield seen, committed
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
        huggingface_hub.close_session()

"""Local stand-ins for the network: bare git repositories (file:// URLs) and dataset files."""
from __future__ import annotations

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

"""The bash corpus streamed from a Hugging Face code dataset (data.code.source = "huggingface"), tested
against local parquet files laid out and named as codeparrot/github-code-clean's and
bigcode/the-stack-dedup's are, read through the same streaming code path as the hub's."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import cli
from core.data import hf_code
from core.data.code import fetch_code
from core.data.corpus import Corpus
from core.data.hf_code import hf_rows, spdx
from core.progress import Cancelled, CancelToken, no_report
from tests.helpers import HF_SOURCE as SOURCE
from tests.helpers import hf_project, unless_stuck
from tests.stand_ins import DEPLOY, HF_EXPECTED, HF_ROWS, make_hf_dataset, script


def run_cli(project: Path, *args: str) -> int:
    return cli.main(["-c", str(project / "acm.toml"), *args])


def one_error_line(err: str) -> str:
    """The error, the last line of stderr (above it, the progress the fetch made), and the only one."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("acm: error: ") and sum("error" in line for line in lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize("schema", ["codeparrot", "the-stack"])
def test_rows_go_through_the_filters_with_their_provenance(project, schema):
    m = fetch_code(hf_project(project, schema=schema))
    r = m["report"]
    assert {k: r[k] for k in HF_EXPECTED} == HF_EXPECTED
    assert r["by_source"] == {SOURCE: 3} and r["raw_by_source"] == {SOURCE: 5}
    assert r["by_licence"] == {"MIT": 1, "Apache-2.0": 1, "GPL-3.0-only": 1}
    assert m["huggingface"]["rows_read"] == 5 and m["huggingface"]["schema"].endswith(
        "the-stack" if schema == "the-stack" else "github-code")
    rows = {row["origin"]: row for row in Corpus.open(project / "data" / "code", "code").rows()}
    assert set(rows) == {"acme/tools/deploy.sh", "acme/ops/bin/backup.sh", "gnu/things/install.sh"}
    deploy = rows["acme/tools/deploy.sh"]
    assert deploy["text"] == DEPLOY and deploy["source"] == SOURCE and deploy["repo"] == "acme/tools"
    assert deploy["licence"] == "MIT" and deploy["category"] == "Shell"
    assert deploy["commit"] == ("ab" * 20 if schema == "the-stack" else "")


def test_permissive_and_the_cli_counts(project, capsys):
    hf_project(project, licences="permissive")
    assert run_cli(project, "data", "fetch", "code") == 0
    out = capsys.readouterr().out
    assert "hf-stand-in: 5 Shell rows streamed, 0 reused from an earlier fetch; left out by " \
           "data.code.licences = permissive: 1 rows" in out
    assert f"by source: {SOURCE} 2" in out
    assert run_cli(project, "data", "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)["code"]
    assert stats["source"] == "huggingface" and stats["report"]["by_licence"] == {"MIT": 1, "Apache-2.0": 1}
    assert run_cli(project, "data", "stats") == 0
    assert SOURCE in capsys.readouterr().out


def test_the_source_is_set_from_the_command_line(project, tmp_path):
    make_hf_dataset(project / "hf-stand-in")
    assert run_cli(project, "config", "set", "data.code.source", "huggingface") == 0
    assert run_cli(project, "config", "set", "data.code.hf_dataset", "hf-stand-in") == 0
    assert run_cli(project, "config", "set", "data.code.hf_max_documents", "2") == 0
    assert run_cli(project, "data", "fetch", "code") == 0
    assert Corpus.open(project / "data" / "code", "code").manifest["report"]["raw"] == 2
    assert "HF_TOKEN" not in (project / "acm.toml").read_text()


@pytest.mark.parametrize("rows, code, message", [
    ([r for r in HF_ROWS if r[4] == "gpl-3.0"], {"licences": "permissive"},
     'data.code.licences = "permissive" keeps none of the 1 rows read from hf-stand-in '
     r'\(their licences: GPL-3.0-only 1\); set data.code.licences = "any"'),
    (HF_ROWS, {"hf_language": "Fortran"}, "hf-stand-in holds no Fortran rows under data/"),
    (HF_ROWS, {"hf_data_dir": "data/fortran"},
     "data.code.hf_data_dir: hf-stand-in holds no parquet files in data/fortran/"),
    (HF_ROWS, {"hf_dataset": "absent"}, "'absent' is neither a folder nor a Hugging Face dataset name"),
])
def test_bad_input_is_one_line(project, capsys, rows, code, message):
    hf_project(project, rows, **code)
    assert run_cli(project, "data", "fetch", "code") == 2
    error = one_error_line(capsys.readouterr().err)
    assert re.search(message, error), error


def test_without_a_network_is_one_line(project, capsys, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hf_project(project, hf_dataset="nobody/no-such-dataset")
    assert run_cli(project, "data", "fetch", "code") == 2
    error = one_error_line(capsys.readouterr().err)
    assert "could not reach the Hugging Face hub for 'nobody/no-such-dataset'" in error
    assert "offline? set data.code.source to builtin, local or github" in error


def test_a_parquet_without_the_columns_is_one_line(project, capsys):
    hf_project(project)
    folder = project / "hf-stand-in" / "data"
    for f in folder.iterdir():
        f.unlink()
    pq.write_table(pa.table({"text": [DEPLOY], "repo": ["acme/tools"]}), folder / "train-00000-of-00001.parquet")
    assert run_cli(project, "data", "fetch", "code") == 2
    err = one_error_line(capsys.readouterr().err)
    assert "lacks the columns of a code dataset: it needs code, repo_name, path, " \
                                   "license, language (codeparrot/github-code)" in err
    assert "it has repo, text" in err


def test_a_cancelled_stream_resumes_after_the_saved_rows(project, monkeypatch):
    monkeypatch.setattr(hf_code, "PART_ROWS", 2)
    rows = [(script(f"job{i}"), f"acme/r{i}", f"job{i}.sh", "Shell", "mit") for i in range(9)]
    cfg = hf_project(project, rows)
    cancel = CancelToken()
    first, _ = hf_rows(cfg.data.code, cfg.root, cfg.locations.hf_code, no_report, cancel)
    taken = [next(first)["repo"] for _ in range(3)]
    cancel.cancel()
    with pytest.raises(Cancelled):
        next(first)
    assert taken == ["acme/r0", "acme/r1", "acme/r2"]
    again, info = hf_rows(cfg.data.code, cfg.root, cfg.locations.hf_code, no_report, CancelToken())
    assert [r["repo"] for r in again] == [f"acme/r{i}" for i in range(9)]
    assert info["rows_reused"] == 2 and info["rows_read"] == 7  # the third row was not saved: streamed again
    third, info = hf_rows(cfg.data.code, cfg.root, cfg.locations.hf_code, no_report, CancelToken())
    assert len(list(third)) == 9 and info["rows_read"] == 0  # all saved, the stream ended: no network
    part = next(cfg.locations.hf_code.rglob("part-00000.parquet"))
    part.unlink()
    os.mkfifo(part)  # a saved part read back: a FIFO there held the fetch
    with unless_stuck(), pytest.raises(OSError, match="a FIFO, not a regular file"):
        list(hf_rows(cfg.data.code, cfg.root, cfg.locations.hf_code, no_report, CancelToken())[0])


def test_caps_on_documents_and_bytes(project):
    rows = [(script(f"job{i}"), f"acme/r{i}", f"job{i}.sh", "Shell", "mit") for i in range(6)]
    cfg = hf_project(project, rows, hf_max_documents=4)
    assert len(list(hf_rows(cfg.data.code, cfg.root, cfg.locations.hf_code, no_report, CancelToken())[0])) == 4
    cfg.data.code.hf_max_documents, cfg.data.code.hf_max_bytes = 0, len(rows[0][0].encode()) + 1
    kept, info = hf_rows(cfg.data.code, cfg.root, cfg.locations.hf_code, no_report, CancelToken())
    assert len(list(kept)) == 2 and info["rows_reused"] == 2


def test_licences_become_spdx_ids():
    assert spdx("mit") == "MIT" and spdx("gpl-2.0") == "GPL-2.0-only" and spdx("bsd-3-clause") == "BSD-3-Clause"
    assert spdx(["MIT", "Apache-2.0"]) == "Apache-2.0 AND MIT" and spdx([]) == "NOASSERTION"
    assert spdx(None) == "NOASSERTION" and spdx("not a licence!") == "NOASSERTION"


@pytest.mark.parametrize("column, value, kind", [("code", 12345, "int"), ("code", b"#!/bin/bash\n", "bytes"),
                                                 ("repo_name", 7, "int"), ("path", 3.5, "float")])
def test_a_column_that_holds_no_text_is_one_line(project, capsys, column, value, kind):
    """A local dataset whose text columns hold numbers or bytes failed inside the filters ("internal
    error", an AttributeError) after streaming."""
    hf_project(project)
    folder = project / "hf-stand-in" / "data"
    row = {"code": DEPLOY, "repo_name": "acme/tools", "path": "deploy.sh", "language": "Shell", "license": "mit"}
    for f in folder.iterdir():
        f.unlink()
    pq.write_table(pa.Table.from_pylist([row | {column: value}]), folder / "train-00000-of-00001.parquet")
    assert run_cli(project, "data", "fetch", "code") == 2
    assert one_error_line(capsys.readouterr().err) == \
        f"acm: error: dataset 'hf-stand-in': column {column!r} holds {kind} values, not text"


def test_a_local_dataset_changed_since_its_rows_were_saved_is_streamed_again(project):
    """The rows saved from a local folder were reused for ever: files replaced since were never read."""
    cfg = hf_project(project)
    assert fetch_code(cfg)["huggingface"]["rows_read"] == 5
    again = fetch_code(cfg)["huggingface"]
    assert (again["rows_read"], again["rows_reused"]) == (0, 5)  # unchanged files: their saved rows
    folder = project / "hf-stand-in" / "data"
    for f in folder.iterdir():
        f.unlink()
    rows = [(script(f"job{i}"), f"acme/r{i}", f"job{i}.sh", "Shell", "mit") for i in range(3)]
    make_hf_dataset(project / "hf-stand-in" / "new", rows)
    for f in (project / "hf-stand-in" / "new" / "data").iterdir():
        f.rename(folder / f.name)
    m = fetch_code(cfg)
    assert (m["huggingface"]["rows_read"], m["huggingface"]["rows_reused"]) == (3, 0)
    assert {r["origin"] for r in Corpus.open(project / "data" / "code", "code").rows()} == \
        {f"acme/r{i}/job{i}.sh" for i in range(3)}

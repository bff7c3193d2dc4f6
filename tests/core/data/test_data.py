from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import cli, config
from core.data.code import fetch_code, is_shell_shebang
from core.data.corpus import MANIFEST, Corpus
from core.data.language import fetch_language
from core.errors import AcmError
from core.progress import Cancelled, CancelToken
from tests.helpers import cfg_for, unless_stuck
from tests.stand_ins import DEPLOY, EXPECTED, make_repos_file


@pytest.fixture
def github_cfg(project, tmp_path_factory):
    remote = tmp_path_factory.mktemp("remote")
    repos = make_repos_file(remote)
    return cfg_for(project, data__code__source="github", data__code__repos_file=str(repos),
                   data__code__max_file_bytes=4096, data__code__clone_retries=0)


def test_github_fetch_counts_provenance_and_failures(github_cfg):
    m = fetch_code(github_cfg)
    r = m["report"]
    assert {k: r[k] for k in EXPECTED} == EXPECTED
    assert r["by_category"] == {"CI tools": 3, "Databases": 1}
    assert r["by_repo"] == {"acme/tools": 3, "acme/ops": 1}
    failed = [x for x in m["repos"] if not x["ok"]]
    assert [x["name"] for x in failed] == ["acme/gone"] and failed[0]["error"]
    rows = list(Corpus.open(github_cfg.data_dir / "code", "code").rows())
    assert len(rows) == 4
    by_origin = {row["origin"]: row for row in rows}
    assert set(by_origin) == {"copy.sh", "install.bash", "bin/run", "backup.sh"}
    kept = by_origin["copy.sh"]  # first of the exact duplicates, normalized
    assert kept["text"] == DEPLOY and kept["repo"] == "acme/tools" and len(kept["commit"]) == 40
    assert m["stats"]["documents"] == 4


def test_rerun_skips_finished_clones(github_cfg):
    from core.data.corpus import corpus_sha256, sha256_file

    manifest = github_cfg.locations.corpus_manifest("code")
    fetch_code(github_cfg)
    first, whole = corpus_sha256(manifest), sha256_file(manifest)
    m = fetch_code(github_cfg)
    status = {x["name"]: x for x in m["repos"]}
    assert status["acme/tools"]["skipped"] and status["acme/ops"]["skipped"]
    assert not status["acme/gone"]["ok"]
    assert m["report"]["unique"] == 4
    # the same documents: what the tokenizer and the shards record of them is the same, though the
    # manifest says the clones were reused this time
    assert corpus_sha256(manifest) == first and sha256_file(manifest) != whole


def test_cancel_mid_fetch_keeps_previous_corpus(github_cfg):
    first = fetch_code(github_cfg)
    token = CancelToken()

    def report(p):
        if p.task == "validating" and p.done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        fetch_code(github_cfg, report, token)
    folder = github_cfg.data_dir / "code"
    assert json.loads((folder / MANIFEST).read_text()) == first
    assert [d.name for d in folder.glob("shards-*")] == [first["shard_dir"]]
    Corpus.open(folder, "code").verify()


def test_killed_fetch_leftovers_are_swept(github_cfg):
    first = fetch_code(github_cfg)
    folder = github_cfg.data_dir / "code"
    stray = folder / "shards-killed"
    stray.mkdir()
    (stray / "shard-00000.parquet").write_bytes(b"half")
    assert len(Corpus.open(folder, "code")) == 4  # the manifest still names the complete shards
    (folder / "repos" / ".partial-acme__gone").mkdir()
    second = fetch_code(github_cfg)
    assert not stray.exists() and not (folder / "repos" / ".partial-acme__gone").exists()
    assert second["stats"] == first["stats"]


def test_missing_git_is_one_clear_line(github_cfg, monkeypatch, tmp_path):
    bash_only = tmp_path / "bin"
    bash_only.mkdir()
    (bash_only / "bash").symlink_to("/bin/bash")
    monkeypatch.setenv("PATH", str(bash_only))
    with pytest.raises(AcmError, match=r"^git not found on PATH: install git"):
        fetch_code(github_cfg)


@pytest.mark.parametrize(("url", "ends"), [("file", r"\)$"), ("http://127.0.0.1:9/x/y.git", r"\); no network\?$")])
def test_no_repository_reachable(project, tmp_path, url, ends):
    url = (tmp_path / "no.git").as_uri() if url == "file" else url  # the network asked about only where it was used
    (tmp_path / "r.toml").write_text(f'[[repo]]\nname = "x/y"\nurl = "{url}"\n')
    cfg = cfg_for(project, data__code__source="github", data__code__repos_file=str(tmp_path / "r.toml"),
                  data__code__clone_retries=1)
    with pytest.raises(AcmError, match=r"no repository could be cloned \(first error: x/y: [^\n]*" + ends):
        fetch_code(cfg)


def test_local_scan_and_empty_result(project, tmp_path):
    scripts = tmp_path / "scripts"
    (scripts / "sub").mkdir(parents=True)
    (scripts / "a.sh").write_text(DEPLOY)
    (scripts / "sub" / "b").write_text("#!/bin/sh\n" + "echo other things entirely here\n" * 3)
    (scripts / "sub" / "up").symlink_to("..")  # a loop back up
    (scripts / "link.sh").symlink_to(scripts / "a.sh")  # the same file twice
    cfg = cfg_for(project, data__code__source="local", data__code__local_paths=[str(scripts)])
    m = fetch_code(cfg)
    assert m["report"]["raw"] == 2 and m["report"]["unique"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("hello")
    with pytest.raises(AcmError, match="found no documents"):
        fetch_code(cfg_for(project, data__code__source="local", data__code__local_paths=[str(empty)]))
    with pytest.raises(AcmError, match="does not exist"):
        fetch_code(cfg_for(project, data__code__source="local", data__code__local_paths=[str(tmp_path / "nope")]))
    os.mkfifo(tmp_path / "fifo")  # once said not to exist; scanned, it gave no documents
    with pytest.raises(AcmError, match="fifo is a FIFO, not a file or a folder"):
        fetch_code(cfg_for(project, data__code__source="local", data__code__local_paths=[str(tmp_path / "fifo")]))
    with pytest.raises(AcmError, match="fifo is a FIFO, not a file or a folder"):
        fetch_language(cfg_for(project, data__language__source="local",
                               data__language__local_paths=[str(tmp_path / "fifo")]))


def test_a_home_of_no_user_here_is_kept_as_written(monkeypatch, tmp_path):
    """~user of a user this machine lacks stays as typed (bash keeps it so), where Python raises."""
    from core.paths import home_expanded

    assert home_expanded(Path("~nosuchuser-acm/x")) == Path("~nosuchuser-acm/x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home_expanded(Path("~/x")) == tmp_path / "x"


@pytest.mark.parametrize("line,ok", [
    (b"#!/bin/bash\n", True), (b"#! /bin/sh -e\n", True), (b"#!/usr/bin/env bash\n", True),
    (b"#!/usr/bin/env -S zsh -f\n", True), (b"#!/usr/bin/python3\n", False), (b"echo hi\n", False),
    (b"#!/usr/bin/env FOO=1 dash\n", True), (b"#!/bin/bashful\n", False)])
def test_shebang_detection(line, ok):
    assert is_shell_shebang(line) is ok


def test_builtin_code_default_finds_scripts(project):
    m = fetch_code(cfg_for(project))
    assert m["source"] == "builtin" and m["report"]["unique"] > 0
    assert m["report"]["unique"] <= m["report"]["valid"] <= m["report"]["raw"]


# ---------------------------------------------------------------- language

def test_an_unreachable_hub_is_one_line_however_often_the_library_retries(project, capfd, monkeypatch):
    """Without a network the hub's client tried six times, a line for each try and each wait (24 s
    of them): here a hub that refuses every connection (a closed local port), its waits not slept."""
    import datasets.config
    import huggingface_hub.constants
    import huggingface_hub.utils._http

    closed = "http://127.0.0.1:9"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", closed)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", closed + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "config", "set", "data.language.source", "hf"]) == 0
    capfd.readouterr()
    assert cli.main(["-c", c, "data", "fetch", "language"]) == 2
    err = capfd.readouterr().err.strip().splitlines()  # the libraries' logging writes to the stderr of their import
    assert err[-1].startswith("acm: error: could not reach the Hugging Face hub for 'roneneldan/TinyStories'")
    assert not [line for line in err if "Retry" in line or "127.0.0.1" in line], err


def test_builtin_language_default(project):
    m = fetch_language(cfg_for(project, data__language__max_documents=40))
    assert m["stats"]["documents"] == 40
    rows = list(Corpus.open(project / "data" / "language", "language").rows())
    assert rows[0]["origin"].startswith("pydoc:") and all(r["text"] for r in rows)


def test_a_second_fetch_of_a_corpus_meanwhile_is_refused_and_the_first_one_lands(project, capsys):
    """A fetch of a corpus that another fetch of it is writing would sweep that one's shards away: it
    is refused in one line, the first one finishes, and the other corpus can be fetched meanwhile."""
    cfg = cfg_for(project, data__language__max_documents=40)
    said = []

    def meanwhile(progress) -> None:
        if not said:
            said.append(cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "language"]))
            said.append(capsys.readouterr().err)
            said.append(fetch_code(cfg)["stats"]["documents"] > 0)

    assert fetch_language(cfg, meanwhile)["stats"]["documents"] == 40
    assert said == [2, "acm: error: the language corpus is being fetched already (here or by another acm): "
                       "wait for that fetch to finish\n", True]
    assert len(list(Corpus.open(project / "data" / "language", "language").rows())) == 40
    assert fetch_language(cfg)["stats"]["documents"] == 40  # free again once the first has ended


def test_local_language_files_and_hand_counted_stats(project, tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_text("one two three\nfour five\n")  # 5 words, 2 lines, 24 bytes (stripped: 23)
    (src / "b.md").write_text("# Title\n\nsix seven")  # 4 words, 3 lines, 18 bytes
    (src / "c.jsonl").write_text(json.dumps({"text": "eight nine ten"}) + "\n\n"
                                 + json.dumps({"text": "eleven"}) + "\n")
    pq.write_table(pa.table({"text": ["twelve thirteen", "twelve thirteen"]}), src / "d.parquet")
    m = fetch_language(cfg_for(project, data__language__source="local", data__language__local_paths=[str(src)]))
    s = m["stats"]
    # documents: a, b, 2 jsonl rows, 1 parquet row (its twin is an exact duplicate)
    assert s["documents"] == 5 and m["empty_or_duplicate_skipped"] == 1
    assert s["words"] == 5 + 4 + 3 + 1 + 2
    assert s["bytes"] == len("one two three\nfour five") + len("# Title\n\nsix seven") + 14 + 6 + 15
    assert s["lines"] == 2 + 3 + 1 + 1 + 1
    assert s["estimated_tokens"] == round(15 * 1.3)
    texts = list(Corpus.open(project / "data" / "language", "language").texts())
    assert texts[0] == "one two three\nfour five"


def test_a_local_text_file_that_is_not_utf8_is_passed_over_and_counted(project, tmp_path, capsys):
    """One stray Latin-1 note or binary in a folder of text stopped the whole fetch."""
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_text("one two three\n")
    (src / "latin.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (src / "blob.md").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    cfg = cfg_for(project, data__language__source="local", data__language__local_paths=[str(src)])
    config.save_settings(cfg, project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "language"]) == 0
    out = capsys.readouterr().out
    assert "language corpus: 1 documents" in out
    assert f"passed over as not UTF-8: 2 files ({src / 'blob.md'}, {src / 'latin.txt'})" in out
    m = json.loads((project / "data" / "language" / MANIFEST).read_text())
    assert m["not_utf8_passed_over"] == {"count": 2, "files": [str(src / "blob.md"), str(src / "latin.txt")]}


def test_local_jsonl_without_field(project, tmp_path):
    (tmp_path / "x.jsonl").write_text('{"body": "no text field"}\n')
    cfg = cfg_for(project, data__language__source="local", data__language__local_paths=[str(tmp_path / "x.jsonl")])
    with pytest.raises(AcmError, match=r"x\.jsonl:1: not a JSON object with a 'text' field"):
        fetch_language(cfg)
    (tmp_path / "x.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))  # an internal error before
    with pytest.raises(AcmError, match=r"x\.jsonl: not UTF-8 text \(invalid continuation byte at byte 13"):
        fetch_language(cfg)


@pytest.mark.parametrize("fetch", [fetch_language, fetch_code])
def test_an_interrupt_as_a_fetch_publishes_keeps_the_corpus_it_published(project, monkeypatch, fetch):
    """Ctrl-C landing after the manifest names the new shards (while the old ones are swept): the
    new corpus is in force and whole, not a manifest naming shards the interrupt removed."""
    import core.data.corpus as corpus

    cfg = cfg_for(project, data__language__max_documents=40)
    kind = "language" if fetch is fetch_language else "code"
    fetch(cfg)
    sweep = corpus.sweep_unpublished

    def interrupted_after_the_manifest(folder):
        if json.loads((folder / MANIFEST).read_text())["shard_dir"] != before:  # the new one is in force
            monkeypatch.undo()
            raise KeyboardInterrupt
        sweep(folder)
    monkeypatch.setattr(corpus, "sweep_unpublished", interrupted_after_the_manifest)
    before = json.loads((project / "data" / kind / MANIFEST).read_text())["shard_dir"]
    with pytest.raises(KeyboardInterrupt):
        fetch(cfg)
    assert len(Corpus.open(project / "data" / kind, kind)) == fetch(cfg)["stats"]["documents"]


def test_a_fetch_leaves_the_corpus_it_replaced_while_a_rebuild_may_read_it(project):
    """The tokenizer's training or a prepare reads the corpus in force holding the inputs' lock: a
    fetch meanwhile publishes its new corpus but leaves the old shards for a later fetch to sweep."""
    from core.locks import Flock

    cfg = cfg_for(project, data__language__max_documents=40)
    fetch_language(cfg)
    folder = project / "data" / "language"
    old = folder / json.loads((folder / MANIFEST).read_text())["shard_dir"]
    reader = Flock(cfg.locations.inputs_lock)
    assert reader.try_acquire()
    with reader:
        fetch_language(cfg_for(project, data__language__max_documents=30))
        assert old.is_dir() and len(Corpus.open(project / "data" / "language", "language")) == 30
    fetch_language(cfg_for(project, data__language__max_documents=20))
    assert not old.exists() and len(list((project / "data" / "language").glob("shards-*"))) == 1


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "stories"
    folder.mkdir()
    pq.write_table(pa.table({"text": [f"Once upon a time, story number {i}." for i in range(10)],
                             "id": list(range(10))}), folder / "train.parquet")
    return folder


@pytest.mark.parametrize("streaming", [True, False])
def test_hf_source_with_split_slicing(project, hf_folder, streaming):
    cfg = cfg_for(project, data__language__source="hf", data__language__hf_dataset=str(hf_folder),
                  data__language__hf_split="train[2:6]", data__language__streaming=streaming)
    m = fetch_language(cfg)
    assert m["stats"]["documents"] == 4 and m["source"] == "hf"
    texts = list(Corpus.open(project / "data" / "language", "language").texts())
    assert texts == [f"Once upon a time, story number {i}." for i in range(2, 6)]


def test_hf_wrong_text_field_and_missing_dataset(project, hf_folder, tmp_path):
    cfg = cfg_for(project, data__language__source="hf", data__language__hf_dataset=str(hf_folder),
                  data__language__text_field="story")
    with pytest.raises(AcmError, match="has no column 'story'; set data.language.text_field to one of: text, id"):
        fetch_language(cfg)
    cfg = cfg_for(project, data__language__source="hf", data__language__hf_dataset=str(tmp_path / "absent"))
    with pytest.raises(AcmError, match="absent"):
        fetch_language(cfg)


@pytest.mark.parametrize("streaming, said", [
    (True, r"dataset '\S+stories': reading stopped after 10 rows: ArrowInvalid: .*Parquet magic bytes not found"),
    (False, r"could not load dataset '\S+stories': DatasetGenerationError: .* \(ArrowInvalid: .*Parquet magic bytes"),
])
def test_a_damaged_file_in_a_dataset_folder_is_one_line(project, hf_folder, streaming, said):
    """A local dataset whose second file is damaged: streamed, an internal error (ArrowInvalid) after
    the first file's rows; loaded whole, a line that said only "an error occurred"."""
    (hf_folder / "train2.parquet").write_bytes(b"PAR1 not a parquet file")
    cfg = cfg_for(project, data__language__source="hf", data__language__hf_dataset=str(hf_folder),
                  data__language__hf_split="train", data__language__streaming=streaming)
    with pytest.raises(AcmError, match=said):
        fetch_language(cfg)


# ---------------------------------------------------------------- CLI

def _counts(shard, total):
    def edit(manifest):
        manifest["shards"][0]["documents"] = shard(manifest["shards"][0]["documents"])
        manifest["stats"]["documents"] = total(manifest["stats"]["documents"])
    return edit


def _shard_file(name):
    def edit(manifest):
        manifest["shards"][0]["file"] = name
    return edit


@pytest.mark.parametrize(("damage", "says"), [
    (_counts(lambda n: n - 1, lambda n: n), "document counts do not add up"),
    (_counts(lambda n: -1, lambda n: n), "a document count is not"),
    (_counts(lambda n: 1.5, lambda n: n), "a document count is not"),
    (_counts(lambda n: str(n), lambda n: n), "a document count is not"),
    (_counts(lambda n: True, lambda n: n), "a document count is not"),
    (_counts(lambda n: 0, lambda n: 0), "a document count is not"),  # they add up, but no shard is written empty
    (_counts(lambda n: n + 5, lambda n: n + 5), "holds fewer documents than its manifest.json says"),
    (_shard_file("../../../acm.toml"), "lies outside its folder"),
])
def test_a_corpus_manifest_at_odds_with_its_shards_is_damaged_in_one_line(project, capsys, damage, says):
    fetch_language(cfg_for(project, data__language__max_documents=40))
    path = project / "data" / "language" / MANIFEST
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    fewer = "fewer" in says  # the rows the shard holds still show; one past them is the damage
    for index in ("40", "44") if fewer else ("0", "-1", "39", "44"):
        assert cli.main(["-c", str(project / "acm.toml"), "data", "show", "language", index]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "corpus in " in err and "is damaged (" in err and says in err, err
        assert err.endswith("; fetch it again\n")


def test_cli_fetch_stats_show(project, capsys, github_cfg):
    config.save(github_cfg, project / "acm.toml")
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "data", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {}
    assert cli.main(["-c", c, "data", "fetch", "code"]) == 0
    out = capsys.readouterr().out
    assert "11 raw, 7 valid, 4 unique" in out and "failed: acme/gone" in out
    assert cli.main(["-c", c, "data", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["code"]["documents"] == 4 and stats["code"]["report"]["raw"] == 11
    assert cli.main(["-c", c, "data", "show", "code", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# document 2 of 4 (index 1): source=github repo=acme/tools") and "#!/usr/bin/env bash" in out
    assert cli.main(["-c", c, "data", "show", "code", "-1"]) == 0
    assert capsys.readouterr().out.startswith("# document 4 of 4 (index 3): ")  # the last, counted from 1
    assert cli.main(["-c", c, "data", "show", "language"]) == 2
    assert "run `acm data fetch language` first" in capsys.readouterr().err
    manifest = project / "data" / "code" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"report": {}}))  # damaged by hand
    assert cli.main(["-c", c, "data", "stats"]) == 2
    assert capsys.readouterr().err == (f"acm: error: the code corpus's manifest {manifest} is damaged ('raw'): "
                                       "run `acm data fetch code` again\n")  # was an internal error


def test_links_out_of_a_source_are_never_read_and_in_tree_links_name_their_target(project, tmp_path):
    from tests.stand_ins import script

    secret = tmp_path / "elsewhere" / "credentials.sh"
    secret.parent.mkdir()
    secret.write_text(script("secret-credentials"))
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "a.sh").write_text(script("alpha"))
    (src / "lib" / "tool.sh").write_text(script("toolbox"))
    (src / "bin").mkdir()
    (src / "bin" / "tool").symlink_to("../lib/tool.sh")
    (src / "leak.sh").symlink_to(secret)
    manifest = fetch_code(cfg_for(project, data__code__source="local", data__code__local_paths=[str(src)]))
    corpus = Corpus.open(project / "data" / "code", "code")
    texts = list(corpus.texts())
    assert len(texts) == 2 and not any("secret-credentials" in t for t in texts)
    assert manifest["report"]["rejected"] == {"outside_source": 1}
    origins = [row["origin"] for row in corpus.rows()]
    assert any(o.endswith("lib/tool.sh") for o in origins) and not any(o.endswith("bin/tool") for o in origins)


def test_clone_folders_are_unique_per_name_and_url():
    from core.data.repos import Repo

    a, b = Repo("a/b__c", "x", "file:///r1"), Repo("a__b/c", "x", "file:///r1")
    assert a.folder_name != b.folder_name
    assert Repo("a/b", "x", "file:///one").folder_name != Repo("a/b", "x", "file:///two").folder_name


def test_a_failed_clone_reports_gits_reason(tmp_path):
    import subprocess

    from core.data.repos import git_error

    r = subprocess.run(["git", "clone", f"file://{tmp_path}/nowhere.git", str(tmp_path / "c")],
                       capture_output=True, text=True)
    reason = git_error(r.stderr, r.returncode)
    assert reason.startswith("fatal:") and "nowhere.git" in reason


def test_near_duplicates_are_confirmed_against_the_threshold():
    from core.data.code import NearDuplicates, shingles

    words = [f"w{i}" for i in range(400)]

    def jaccard(x: str, y: str) -> float:
        a, b = set(shingles(x)), set(shingles(y))
        return len(a & b) / len(a | b)

    base = " ".join(words)
    variants = [" ".join(words[:400 - k] + [f"v{i}" for i in range(k)]) for k in range(1, 60)]
    below = next(v for v in variants if jaccard(base, v) < 0.85)
    above = next(v for v in variants if jaccard(base, v) >= 0.9)
    assert 0.8 < jaccard(base, below) < 0.85
    near = NearDuplicates(0.85)
    assert not near.seen(base)
    assert near.seen(above)
    assert not near.seen(below)  # LSH may propose it; the exact similarity decides


def test_local_paths_entries_that_are_links_are_held_to_the_rule_of_links_inside_a_source(project, tmp_path):
    from core.data.code import fetch_code
    from core.data.corpus import Corpus
    from tests.stand_ins import script

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mine").mkdir(parents=True)
    (elsewhere / "credentials").write_text(script("secret-credentials"))
    (elsewhere / "mine" / "deploy.sh").write_text(script("deploy"))
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "v2.sh").write_text(script("version-two"))
    (listed / "current.sh").symlink_to("v2.sh")  # a link within its folder: followed
    (listed / "leak.sh").symlink_to(elsewhere / "credentials")  # a script's name on a private file
    (listed / "scripts").symlink_to(elsewhere / "mine")  # a symlinked folder of the user's own scripts
    entries = [str(listed / n) for n in ("leak.sh", "current.sh", "scripts")]
    manifest = fetch_code(cfg_for(project, data__code__source="local", data__code__local_paths=entries))
    texts = list(Corpus.open(project / "data" / "code", "code").texts())
    assert not any("secret-credentials" in t for t in texts)
    assert any("version-two" in t for t in texts) and any("deploy" in t for t in texts) and len(texts) == 2
    assert manifest["report"]["rejected"] == {"outside_source": 1}


@pytest.mark.parametrize("script, parses", [("echo hi\n", True), ("if then\n", False)])
def test_a_script_is_checked_without_a_copy_of_it_under_the_temporary_folder(tmp_path, monkeypatch, script, parses):
    """`bash -n` read each script from a named temporary file, which a fetch killed with -9 left
    behind in $TMPDIR, a copy of a script there for good. The file it reads has no name: a `bash`
    first on PATH lists the temporary folder as it starts, and finds it empty."""
    import stat
    import tempfile

    from core.data.code import bash_syntax_ok

    scratch, seen = tmp_path / "tmp", tmp_path / "seen.txt"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    stand_in = tmp_path / "bin" / "bash"
    stand_in.parent.mkdir()
    real = next(p for p in ("/bin/bash", "/usr/bin/bash", "/usr/local/bin/bash") if os.path.exists(p))
    stand_in.write_text(f'#!/bin/sh\nls -A "{scratch}" > "{seen}"\nexec {real} "$@"\n')
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    assert bash_syntax_ok(script, 10) == (parses, "syntax")
    assert seen.exists() and seen.read_text() == ""


def test_local_language_files_that_link_out_of_their_folder_are_never_read(project, tmp_path, capsys):
    """A link in a folder of text to /etc/passwd or /proc/self/environ put that file, or acm's own
    environment and its tokens, into the corpus: the bash corpus's rule holds for language too."""
    src, elsewhere = tmp_path / "texts", tmp_path / "elsewhere"
    src.mkdir(), elsewhere.mkdir()
    (src / "a.txt").write_text("one two three\n")
    (elsewhere / "secret.txt").write_text("the secret\n")
    (src / "passwd.txt").symlink_to(elsewhere / "secret.txt")
    (src / "same.md").symlink_to(src / "a.txt")  # a link inside the folder reads as its target
    os.mkfifo(src / "pipe.txt")  # never waited on
    cfg = cfg_for(project, data__language__source="local", data__language__local_paths=[str(src)])
    config.save_settings(cfg, project / "acm.toml")
    with unless_stuck():
        assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "language"]) == 0
    assert f"passed over as links out of their folder: 1 files ({src / 'passwd.txt'})" in capsys.readouterr().out
    m = json.loads((project / "data" / "language" / MANIFEST).read_text())
    assert m["outside_passed_over"] == {"count": 1, "files": [str(src / "passwd.txt")]}
    assert list(Corpus.open(project / "data" / "language", "language").texts()) == ["one two three"]
    named = cfg_for(project, data__language__source="local", data__language__local_paths=[str(src / "passwd.txt")])
    fetch_language(named)  # a file named in the settings is read where its link leads: the user chose it
    assert list(Corpus.open(project / "data" / "language", "language").texts()) == ["the secret"]
    (src / "b.txt").symlink_to(elsewhere / "missing.txt")  # a folder of nothing but links out and a dangling one
    (src / "a.txt").unlink(), (src / "same.md").unlink(), (src / "pipe.txt").unlink()
    with pytest.raises(AcmError, match=r"holds no \.jsonl, \.md, \.parquet, \.txt files \(1 links out of their "
                                       r"folders, never read\)"):
        fetch_language(cfg)


@pytest.mark.parametrize("value, said", [
    ("12345", "'text' is a number, not text"), ("[1, 2]", "'text' is a list, not text"),
    ('{"a": 1}', "'text' is an object, not text"), ("true", "'text' is true or false, not text"),
    (r'"a\ud800b"', r"'text' holds a lone surrogate escape \(\\ud800\), not a character"),
    ("[" * 100_000 + "]" * 100_000, "not a JSON object with a 'text' field"),
])
def test_a_jsonl_line_whose_text_is_no_text_is_one_line(project, tmp_path, value, said):
    """Numbers, lists and objects became their Python repr ("None", "True"); a lone surrogate or a
    deeply nested line was an internal error."""
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + f'{{"text": {value}}}\n')
    cfg = cfg_for(project, data__language__source="local", data__language__local_paths=[str(tmp_path / "x.jsonl")])
    with pytest.raises(AcmError, match=r"x\.jsonl:2: " + said):
        fetch_language(cfg)


def test_null_texts_are_skipped_and_a_byte_order_mark_is_no_text(project, tmp_path):
    """A file Windows' editors saved starts with a byte-order mark: a .jsonl one was refused at its
    first line, a .txt one kept the mark as its first character."""
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "from the jsonl"}\n{"text": null}\n{"text": ""}\n')
    (src / "b.txt").write_bytes(b"\xef\xbb\xbffrom the txt\n")
    pq.write_table(pa.table({"text": pa.array([None, "from the parquet"], pa.string())}), src / "c.parquet")
    m = fetch_language(cfg_for(project, data__language__source="local", data__language__local_paths=[str(src)]))
    assert list(Corpus.open(project / "data" / "language", "language").texts()) == \
        ["from the jsonl", "from the txt", "from the parquet"]
    assert m["empty_or_duplicate_skipped"] == 2


def test_a_parquet_column_that_holds_no_text_is_one_line(project, tmp_path):
    pq.write_table(pa.table({"text": pa.array(["a category", "another"]).dictionary_encode()}), tmp_path / "c.parquet")
    cfg = cfg_for(project, data__language__source="local", data__language__local_paths=[str(tmp_path / "c.parquet")])
    assert fetch_language(cfg)["stats"]["documents"] == 2  # a pandas category saved: text
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    cfg = cfg_for(project, data__language__source="local", data__language__local_paths=[str(tmp_path / "n.parquet")])
    with pytest.raises(AcmError, match=r"n\.parquet: column 'text' holds int64, not text"):
        fetch_language(cfg)


def test_file_names_that_are_not_utf8_are_recorded_escaped(project, tmp_path, capsys):
    """One Latin-1 file name among a source's files (a script, a text, a tldr page) stopped the whole
    fetch with an internal error (a name Python keeps with a lone surrogate cannot be written to
    parquet)."""
    raw = os.fsencode(tmp_path)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    with open(os.path.join(raw, b"scripts", b"caf\xe9.sh"), "wb") as f:
        f.write(b"#!/bin/bash\necho cafe\n")
    texts = tmp_path / "texts"
    texts.mkdir()
    with open(os.path.join(raw, b"texts", b"caf\xe9.txt"), "wb") as f:
        f.write(b"a text\n")
    cfg = cfg_for(project, data__code__source="local", data__code__local_paths=[str(scripts)],
                  data__language__source="local", data__language__local_paths=[str(texts)])
    config.save_settings(cfg, project / "acm.toml")
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 0
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "language"]) == 0
    code = {r["origin"] for r in Corpus.open(project / "data" / "code", "code").rows()}
    assert code == {f"{scripts}/caf\\xe9.sh"}
    assert [r["origin"] for r in Corpus.open(project / "data" / "language", "language").rows()] == \
        [f"{texts}/caf\\xe9.txt"]

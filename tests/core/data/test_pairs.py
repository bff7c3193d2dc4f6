"""Comment-to-command scripts (tldr-pages, NL2Bash) in the bash corpus, their counts, and their share
of the fine-tune batches."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from core import cli, config
from core.data.code import bash_syntax_ok, fetch_code
from core.data.corpus import Corpus
from core.data.pairs import VALUES, Filler, url_name
from core.errors import AcmError, ConfigError
from tests.helpers import with_pairs
from tests.stand_ins import NL2BASH, TLDR, TLDR_EXPECTED, make_bare_repo, write_tree


@pytest.fixture
def tldr(tmp_path) -> Path:
    return write_tree(tmp_path / "tldr", TLDR)


@pytest.fixture
def nl2bash(tmp_path) -> Path:
    return write_tree(tmp_path / "nl2bash", NL2BASH)


def rows_of(cfg: config.Config, source: str) -> dict[str, dict]:
    return {r["origin"]: r for r in Corpus.open(cfg.locations.corpus("code"), "code").rows() if r["source"] == source}


# ---------------------------------------------------------------- making the scripts

def test_tldr_pages_become_comment_then_command_scripts(project, tmp_path, tldr):
    cfg = with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(tldr))
    m = fetch_code(cfg)
    assert {k: m["pairs"]["tldr"][k] for k in TLDR_EXPECTED} == TLDR_EXPECTED
    assert m["pairs"]["tldr"]["licence"] == "CC-BY-4.0" and m["pairs"]["tldr"]["repo"] == str(tldr.resolve())
    r = m["report"]
    assert r["by_source"] == {"local": 1, "tldr": 4} and r["examples_dropped"] == {"tldr": 1}
    assert r["by_category"] == {"scripts": 1, "tldr/common": 3, "tldr/linux": 1}
    rows = rows_of(cfg, "tldr")
    assert set(rows) == {"pages/common/tar.md", "pages/common/ssh.md", "pages/common/less.md", "pages/linux/apt.md"}
    assert {(r["licence"], r["repo"]) for r in rows.values()} == {("CC-BY-4.0", str(tldr.resolve()))}
    assert all(bash_syntax_ok(r["text"], 5)[0] for r in rows.values())
    assert not [r for r in rows.values() if "{{" in r["text"] or "More information" in r["text"]]
    tar = rows["pages/common/tar.md"]["text"].split("\n")
    assert tar[:5] == ["#!/bin/bash", "# tar", "# Archiving utility.", "", "# Create an archive and write it to a file"]
    assert re.fullmatch(r"tar cf \S+/?target\.tar \S+ \S+", tar[5])  # two files; the "..." gone
    assert re.fullmatch(r"tar xf \S*source\.tar(\.gz|\.bz2) (-C|--directory) \S+", tar[8])
    assert tar[10] == "# Extract files matching a pattern" and tar[12:] == [""]
    assert re.fullmatch(r'tar xf \S*source\.tar --wildcards "\*\.html"', tar[11])
    less = rows["pages/common/less.md"]["text"]
    assert "Search forward" not in less and less.startswith("#!/bin/bash\n# less\n")  # the keystroke example went


def test_placeholders_are_filled_plausibly_and_the_same_way_on_a_page():
    fill = Filler(random.Random(0))
    first = fill.command("ssh {{username}}@{{remote_host}} -p {{2222}}")
    user, host = re.fullmatch(r"ssh (\S+)@(\S+) -p 2222", first).groups()
    assert user in VALUES["user"] and host in VALUES["host"]
    assert fill.command("scp {{path/to/file}} {{username}}@{{remote_host}}:") == \
        f"scp {fill.memo['path/to/file']} {user}@{host}:"
    assert fill.command("git add {{[-A|--all]}}") in ("git add -A", "git add --all")
    assert fill.command("git stash show {{stash@{0}}}") == "git stash show stash@{0}"
    assert fill.command("docker inspect '\\{\\{.Id\\}\\}' {{container_name}}").startswith("docker inspect '{{.Id}}' ")
    assert fill.command("gsutil ls {{bucket_name}}") == "gsutil ls my-bucket"
    assert fill.command("mkfs.ext4 {{/dev/sdXY}}") == "mkfs.ext4 /dev/sdb1"
    files = fill.command("cat {{path/to/file1 path/to/file2 ...}}").split()[1:]
    assert len(files) == 2 and files[0] != files[1] and "..." not in files
    assert fill.command("sleep {{seconds}}") in {f"sleep {s}" for s in VALUES["seconds"]}
    assert fill.command("ssh {{remote_host}} {{command_arguments}}") == f"ssh {host} command_arguments"  # as written
    assert fill.command("psql {{database_name}}") in {f"psql {d}" for d in VALUES["database"]}


def test_the_scripts_are_the_same_on_every_fetch_and_the_seed_changes_them(project, tmp_path, tldr):
    cfg = with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(tldr))
    fetch_code(cfg)
    first = {o: r["text"] for o, r in rows_of(cfg, "tldr").items()}
    fetch_code(cfg)
    assert {o: r["text"] for o, r in rows_of(cfg, "tldr").items()} == first
    cfg.data.code.pairs_seed = 7
    fetch_code(cfg)
    again = {o: r["text"] for o, r in rows_of(cfg, "tldr").items()}
    assert again["pages/common/tar.md"] != first["pages/common/tar.md"]
    assert again["pages/linux/apt.md"].split("\n")[:5] == first["pages/linux/apt.md"].split("\n")[:5]


def test_osx_pages_only_when_asked(project, tmp_path, tldr):
    cfg = with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(tldr), tldr_platforms=["osx"])
    m = fetch_code(cfg)
    assert m["pairs"]["tldr"]["scripts"] == 1 and set(rows_of(cfg, "tldr")) == {"pages/osx/brew.md"}


def test_nl2bash_pairs_are_grouped_into_scripts(project, tmp_path, nl2bash):
    cfg = with_pairs(project, tmp_path, pairs=["nl2bash"], nl2bash_path=str(nl2bash), pairs_per_script=2)
    m = fetch_code(cfg)
    info = m["pairs"]["nl2bash"]
    assert {k: info[k] for k in ("pairs", "empty_pairs", "scripts", "examples", "licence")} == \
        {"pairs": 6, "empty_pairs": 1, "scripts": 3, "examples": 5, "licence": "MIT"}
    assert m["report"]["examples_dropped"] == {"nl2bash": 1} and m["report"]["by_source"]["nl2bash"] == 3
    rows = rows_of(cfg, "nl2bash")
    assert {o: r["text"] for o, r in rows.items()} == {
        "data/bash/all.cm:1-2": "#!/bin/bash\n\n# Find all text files under the current directory\n"
                                "find . -name '*.txt'\n\n# Count the lines of every Python file\n"
                                "find . -name '*.py' | xargs wc -l\n",
        "data/bash/all.cm:3-4": "#!/bin/bash\n\n# Print the current date\ndate\n",  # the unparsable pair dropped
        "data/bash/all.cm:5-6": "#!/bin/bash\n\n# Say hello\necho hello\n",  # the empty command skipped
    }
    assert all(r["licence"] == "MIT" and r["category"] == "nl2bash" for r in rows.values())
    # the corpus holds the scripts first, then the comment-to-command scripts together
    sources = [r["source"] for r in Corpus.open(cfg.locations.corpus("code"), "code").rows(["source"])]
    assert sources == ["local"] + ["nl2bash"] * 3


def test_a_git_url_is_cloned_shallow_and_recorded(project, tmp_path):
    url = make_bare_repo(tmp_path, "pages/tldr", TLDR)
    cfg = with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=url)
    m = fetch_code(cfg)
    info = m["pairs"]["tldr"]
    assert info["where"] == url and info["repo"] == url_name(url) == "remote/pages__tldr"
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]) and info["scripts"] == TLDR_EXPECTED["scripts"]
    clones = [d for d in cfg.locations.clones.iterdir() if not d.name.startswith(".")]
    assert len(clones) == 1 and (clones[0] / "pages" / "common" / "tar.md").exists()
    assert all(r["commit"] == info["commit"] for r in rows_of(cfg, "tldr").values())
    assert url_name("https://github.com/tldr-pages/tldr.git") == "tldr-pages/tldr"
    assert url_name("git@github.com:TellinaTool/nl2bash") == "TellinaTool/nl2bash"


def test_an_empty_path_clones_the_upstream_repository(project, tmp_path, tldr, monkeypatch):
    from core.data import pairs
    from core.data.repos import CloneResult

    asked = []

    def clone(repo, dest_root, timeout_s, retries, cancel):
        asked.append((repo.name, repo.url, dest_root))
        return CloneResult(repo, tldr, "0" * 40)

    monkeypatch.setattr(pairs, "clone_one", clone)
    cfg = with_pairs(project, tmp_path, pairs=["tldr"])
    assert fetch_code(cfg)["pairs"]["tldr"]["repo"] == "tldr-pages/tldr"
    assert asked == [("tldr-pages/tldr", "https://github.com/tldr-pages/tldr.git", cfg.locations.clones)]


def test_links_out_of_a_tldr_folder_are_never_read(project, tmp_path, tldr):
    secret = write_tree(tmp_path / "elsewhere", {"page.md": TLDR["pages/linux/apt.md"].replace("apt", "zzz")})
    (tldr / "pages" / "linux" / "zzz.md").symlink_to(secret / "page.md")
    cfg = with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(tldr))
    m = fetch_code(cfg)
    assert m["pairs"]["tldr"]["outside_pages"] == 1 and "pages/linux/zzz.md" not in rows_of(cfg, "tldr")


# ---------------------------------------------------------------- bad input, in one line

def fetch_error(project: Path, capsys) -> str:
    assert cli.main(["-c", str(project / "acm.toml"), "data", "fetch", "code"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("acm: error:")]
    assert len(err) == 1
    return err[0]


def test_bad_pair_sources_are_one_line(project, tmp_path, tldr, nl2bash, capsys):
    empty = write_tree(tmp_path / "empty", {"README.md": "no pages here\n"})
    with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(empty))
    assert fetch_error(project, capsys) == (f"acm: error: data.code.tldr_path: {empty} holds no tldr pages "
                                            f"(pages/common/*.md, pages/linux/*.md)")
    missing = tmp_path / "nowhere"
    with_pairs(project, tmp_path / "b", pairs=["nl2bash"], nl2bash_path=str(missing))
    assert fetch_error(project, capsys) == f"acm: error: data.code.nl2bash_path: {missing} does not exist"
    (nl2bash / "data" / "bash" / "all.cm").write_text("date\necho hello\n")
    with_pairs(project, tmp_path / "c", pairs=["nl2bash"], nl2bash_path=str(nl2bash))
    assert fetch_error(project, capsys) == (f"acm: error: data.code.nl2bash_path: {nl2bash}/data/bash/all.nl has 6 "
                                            f"lines but all.cm has 2: the pairs are not aligned")
    (nl2bash / "data" / "bash" / "all.cm").unlink()
    assert "holds no data/bash/all.nl and all.cm" in fetch_error(project, capsys)
    with_pairs(project, tmp_path / "d", pairs=["tldr"], tldr_path=(tmp_path / "gone.git").as_uri())
    assert fetch_error(project, capsys).startswith(f"acm: error: data.code.tldr_path: cannot clone "
                                                   f"{(tmp_path / 'gone.git').as_uri()} (")


def test_pair_settings_are_checked(project):
    table = config.read_table(project / "acm.toml")
    with pytest.raises(ConfigError, match=r"data.code.pairs = \['man'\] is not valid; each one of: tldr, nl2bash"):
        config.from_dict(table | {"data": {"code": {"pairs": ["man"]}}})
    with pytest.raises(ConfigError, match=r"train.finetune.replay \+ train.finetune.pairs_share = 1 leaves too "
                                          r"little of the batch to the scripts; allowed: at most 0.9 together"):
        config.from_dict(table | {"train": {"finetune": {"replay": 0.5, "pairs_share": 0.5}}})
    assert config.from_dict(table | {"train": {"finetune": {"replay": 0.5, "pairs_share": 0.4}}})
    with pytest.raises(ConfigError, match="unknown setting train.pretrain.pairs_share"):
        config.from_dict(table | {"train": {"pretrain": {"pairs_share": 0.2}}})


# ---------------------------------------------------------------- counts per source

def test_stats_count_documents_per_source(project, tmp_path, tldr, nl2bash, capsys):
    with_pairs(project, tmp_path, pairs=["tldr", "nl2bash"], tldr_path=str(tldr), nl2bash_path=str(nl2bash),
               pairs_per_script=2)
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "data", "fetch", "code"]) == 0
    assert "by source: tldr 4, nl2bash 3, local 1" in capsys.readouterr().out
    assert cli.main(["-c", c, "data", "stats", "--json"]) == 0
    code = json.loads(capsys.readouterr().out)["code"]
    assert code["report"]["by_source"] == {"local": 1, "tldr": 4, "nl2bash": 3}
    assert code["report"]["raw_by_source"] == {"local": 1, "tldr": 4, "nl2bash": 3}
    assert code["report"]["examples_dropped"] == {"tldr": 1, "nl2bash": 1}
    assert code["pairs"]["tldr"]["licence"] == "CC-BY-4.0" and code["pairs"]["nl2bash"]["licence"] == "MIT"
    assert cli.main(["-c", c, "data", "stats"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("Code by source"):out.index("Code by category")]
    assert re.search(r"tldr\s*│\s*4\s*│\s*4\s*│\s*0\s*│\s*1", table)
    assert re.search(r"local\s*│\s*1\s*│\s*1\s*│\s*0\s*│\s*–", table)
    assert cli.main(["-c", c, "data", "show", "code", "1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("# document 2 of 8 (index 1): source=tldr ") and " licence=CC-BY-4.0 " in first


def test_a_corpus_from_before_licences_reads_them_empty(project, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "old"
    (folder / "shards-1").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["echo hi\n"], "source": ["local"]}), folder / "shards-1" / "shard-00000.parquet")
    corpus = Corpus(folder, {"shard_dir": "shards-1", "shards": [{"file": "shard-00000.parquet", "documents": 1}],
                             "stats": {"documents": 1}})
    assert list(corpus.rows(["text", "licence"])) == [{"text": "echo hi\n", "licence": ""}]
    assert corpus.row(0)["licence"] == "" and corpus.row(0)["source"] == "local"


# ---------------------------------------------------------------- the fine-tune share

@pytest.fixture
def paired(trained, tmp_path, tldr, nl2bash) -> config.Config:
    """The trained project with tldr and NL2Bash scripts in its code corpus, prepared, small training settings."""
    from core.tokenizer.shards import prepare
    from tests.conftest import TRAIN

    cfg = config.load(trained / "acm.toml")
    cc = cfg.data.code
    cc.pairs, cc.tldr_path, cc.nl2bash_path, cc.pairs_per_script = ["tldr", "nl2bash"], str(tldr), str(nl2bash), 2
    for stage in (cfg.train.pretrain, cfg.train.finetune):
        for k, v in TRAIN.items():
            setattr(stage, k, v)
    cfg.model.compute_dtype = "float32"
    config.save(cfg, trained / "acm.toml")
    fetch_code(cfg)
    prepare(cfg)
    return config.load(trained / "acm.toml")


def test_comment_to_command_scripts_keep_chunks_of_their_own(paired):
    from core.tokenizer.shards import open_tokens, read_manifest

    chunks = read_manifest(paired, "code")["chunks"]
    assert [c.get("pairs", False) for c in chunks] == [False, True]
    assert sum(chunks[1]["documents"].values()) == 7  # tldr 4 + nl2bash 3
    train = open_tokens(paired, "code", "train")
    assert train.pairs == [False, True]
    assert train.part(pairs=True).arrays[0] is train.arrays[1] and train.part(pairs=False).arrays == train.arrays[:1]


def test_the_pairs_share_of_each_batch_comes_from_those_scripts(paired):
    from core.tokenizer.shards import open_tokens
    from core.train.batches import PAIRS_STREAM, Batches, Windows

    code = open_tokens(paired, "code", "train")
    scripts, pairs = code.part(pairs=False), code.part(pairs=True)
    mixed = Batches(scripts, 8, 8, seed=1, pairs=pairs, pairs_share=0.25)
    assert mixed.paired == 2 and mixed.replayed == 0
    x, y = mixed.train(5)
    own, _ = Batches(scripts, 8, 6, seed=1).train(5)
    assert (x[:6] == own).all()  # the scripts' rows are still a pure function of (seed, step)
    windows = Windows(pairs, 8, "pairs")
    which, starts = windows.pick(np.random.default_rng([1, 5, 0, PAIRS_STREAM]), 2)
    assert (x[6:] == np.stack([windows.read(w, s)[:-1] for w, s in zip(which, starts)])).all()
    assert x.shape == y.shape == (8, 8)
    both = Batches(scripts, 8, 8, seed=1, replay=scripts, replay_share=0.5, pairs=pairs, pairs_share=0.4)
    assert (both.replayed, both.paired) == (4, 3)


def test_fine_tuning_draws_its_pairs_share(paired, monkeypatch):
    from core.train import trainer

    made = []

    class Recorded(trainer.Batches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trainer, "Batches", Recorded)
    run = paired.runs_dir / "pairs"
    trainer.train_stage(paired, "pretrain", run, max_steps=2)
    assert made[0].paired == 0
    paired.train.finetune.pairs_share = 0.5
    trainer.train_stage(paired, "finetune", run, max_steps=2)
    [ft] = [b for b in made if b.mixed]
    assert ft.paired == 2 and ft.rows == 4
    code = trainer.open_tokens(paired, "code", "train")
    assert ft.own.num_tokens == code.part(pairs=False).num_tokens  # the scripts alone
    assert ft.mixed[0][0].num_tokens == code.part(pairs=True).num_tokens  # the rest of each batch


def test_a_pairs_share_without_such_scripts_is_one_line(prepared):
    from core.train.trainer import check_inputs

    cfg = config.load(prepared / "acm.toml")
    cfg.train.finetune.pairs_share = 0.25
    with pytest.raises(AcmError, match=r"^train.finetune.pairs_share = 0.25, but the code token shards hold no "
                                       r"comment-to-command scripts: set data.code.pairs, then run `acm data fetch "
                                       r"code` and `acm prepare`$"):
        check_inputs(cfg, "finetune", cfg.runs_dir / "x", resume=False)


def test_a_tldr_page_whose_name_is_not_utf8_is_kept_by_its_escaped_name(project, tmp_path, tldr):
    """A page named in Latin-1 stopped the whole fetch with an internal error: its name seeds the
    page's placeholders and is recorded as its origin."""
    page = TLDR["pages/linux/apt.md"].replace("apt", "zzz")
    with open(os.path.join(os.fsencode(tldr), b"pages", b"linux", b"t\xe9r.md"), "w") as f:
        f.write(page)
    cfg = with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(tldr))
    fetch_code(cfg)
    assert rows_of(cfg, "tldr")["pages/linux/t\\xe9r.md"]["text"].startswith("#!/bin/bash\n# zzz\n")

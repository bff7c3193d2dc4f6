from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli, config
from core.errors import ConfigError
from tests.helpers import ROOT


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "acm.toml"
    p.write_text(text)
    return p


def test_round_trip_keeps_every_value(tmp_path):
    cfg = config.Config()
    # change at least one value in every section, of every type
    cfg.paths.data = "corpora"
    cfg.data.language.source = "local"
    cfg.data.language.local_paths = ["a.txt", "docs/"]
    cfg.data.language.streaming = False
    cfg.data.code.near_duplicate_threshold = 0.9
    cfg.tokenizer.code_weight = 0.25
    cfg.prepare.add_bos = False
    cfg.model.preset, cfg.tokenizer.vocab_size = "tiny", 16000
    cfg.train.pretrain.learning_rate = 6e-4
    cfg.train.finetune.steps = 77
    cfg.generate.top_k = 7
    path = tmp_path / "acm.toml"
    config.save(cfg, path)
    again = config.load(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.data_dir == (tmp_path / "corpora").resolve()


def test_defaults_when_file_is_missing_suit_the_machine(tmp_path):
    from core.hardware import suggested_preset
    from core.presets import get_preset

    cfg = config.load(tmp_path / "acm.toml")
    preset, why = suggested_preset()
    assert cfg.model.preset == preset and why
    assert cfg.vocab_target() == get_preset(preset).vocab_size  # the tokenizer aims for the preset's vocab
    assert cfg.train == config.with_value(config.Config(), "model.preset", preset)[0].train
    assert cfg.runs_dir == (tmp_path / "runs").resolve()


def test_a_cpu_only_machine_suggests_micro_and_doctor_says_why(project):
    import mlx.core as mx

    from core.hardware import suggested_preset
    from core.pipeline.doctor import preset_check

    if mx.default_device().type == mx.DeviceType.gpu:
        pytest.skip("this machine trains on a GPU")
    assert suggested_preset()[0] == "micro"
    cfg = config.load(project / "acm.toml")
    cfg.model.preset = "medium"
    (check,) = preset_check(cfg)
    assert "medium set; micro suits this machine: no GPU" in check.value and not check.ok
    assert "acm config set model.preset micro" in check.fix


def test_shipped_acm_toml_is_the_defaults(tmp_path):
    """The shipped acm.toml holds every default but the preset, which suits the machine: the file
    as committed, so that a user's own settings (`acm config set`) never fail the suite."""
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:acm.toml"], capture_output=True, text=True)
    path = tmp_path / "acm.toml"
    path.write_text(committed.stdout if committed.returncode == 0 else (ROOT / "acm.toml").read_text())
    shipped = config.load(path)
    assert shipped.to_dict() == config.from_dict({}, preset=config.machine_preset({})).to_dict()


def test_syntax_error_names_file_line_and_column(tmp_path):
    p = write(tmp_path, "[model]\npreset = 'tiny'\nbroken = = 3\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3" in msg and "column" in msg
    assert "\n" not in msg


def test_unknown_key_suggests_the_closest(tmp_path):
    p = write(tmp_path, "[train.pretrain]\nlerning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown setting train\.pretrain\.lerning_rate; "
                                          r"did you mean train\.pretrain\.learning_rate\?"):
        config.load(p)


def test_unknown_section_lists_valid_keys(tmp_path):
    p = write(tmp_path, "[zzz]\na = 1\n")
    with pytest.raises(ConfigError, match="unknown setting zzz; valid keys: paths, data"):
        config.load(p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "[generate]\ntop_k = 'many'\n")
    with pytest.raises(ConfigError, match=r"generate\.top_k must be an integer, got 'many'"):
        config.load(p)


def test_bool_is_not_an_integer(tmp_path):
    p = write(tmp_path, "[generate]\ntop_k = true\n")
    with pytest.raises(ConfigError, match="must be an integer"):
        config.load(p)


@pytest.mark.parametrize("items", ["[1, 2]", "[true]", '["a", 2.5]', '[["a"]]'])
def test_a_list_of_strings_holding_anything_else_is_refused_in_one_line(tmp_path, project, capsys, items):
    (tmp_path / "hand").mkdir()
    p = write(tmp_path / "hand", f"[data.code]\nlocal_paths = {items}\n")
    with pytest.raises(ConfigError, match=r"data\.code\.local_paths must be a list of strings, got \["):
        config.load(p)
    assert cli.main(["-c", str(project / "acm.toml"), "config", "set", "train.report_to", items]) == 2
    assert capsys.readouterr().err.count("train.report_to must be a list of strings") == 1


def test_a_number_of_thousands_of_digits_is_refused_in_one_line(tmp_path, project, capsys):
    (tmp_path / "hand").mkdir()
    p = write(tmp_path / "hand", "[eval]\nsamples = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"acm\.toml: it holds a number of thousands of digits, too long to be any"):
        config.load(p)
    assert cli.main(["-c", str(project / "acm.toml"), "config", "set", "eval.samples", "9" * 5000]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.samples = 999999999999… is a number of thousands of digits" in err
    assert len(err) < 200
    assert cli.main(["-c", str(project / "acm.toml"), "config", "set", "eval.prompts", "[" + "9" * 5000 + "]"]) == 2
    assert "eval.prompts = [99999999999… is a number of thousands" in capsys.readouterr().err


def test_integer_accepted_for_float(tmp_path):
    p = write(tmp_path, "[generate]\ntemperature = 1\n")
    cfg = config.load(p)
    assert cfg.generate.temperature == 1.0 and isinstance(cfg.generate.temperature, float)


def test_out_of_range_names_allowed_range(tmp_path):
    p = write(tmp_path, "[tokenizer]\ncode_weight = 1.5\n")
    with pytest.raises(ConfigError, match=r"tokenizer\.code_weight = 1\.5 is out of range; allowed: 0\.0 to 1\.0"):
        config.load(p)


def test_unknown_preset_lists_valid_ones(tmp_path):
    p = write(tmp_path, "[model]\npreset = 'huge'\n")
    with pytest.raises(ConfigError, match="choose one of: nano, micro, tiny, medium"):
        config.load(p)


def test_the_vocabulary_follows_the_preset_unless_set(tmp_path):
    assert config.load(write(tmp_path, "[model]\npreset = 'tiny'\n")).vocab_target() == 16000
    assert config.load(write(tmp_path, "[model]\npreset = 'tiny'\n[tokenizer]\nvocab_size = 4096\n")).vocab_target() \
        == 4096
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size = 100 is out of range; allowed: 0 \(the preset's, "
                                          r"16000\) or 260 to 262144"):
        config.load(write(tmp_path, "[model]\npreset = 'tiny'\n[tokenizer]\nvocab_size = 100\n"))


def test_seq_len_follows_the_context_unless_set_beyond_it(tmp_path):
    cfg = config.load(write(tmp_path, "[model]\npreset = 'nano'\n"))  # the default seq_len, 1024, is cut to 128
    assert cfg.train.pretrain.seq_len == cfg.train.finetune.seq_len == 128
    p = write(tmp_path, "[model]\npreset = 'nano'\n[train.pretrain]\nseq_len = 1024\n")
    with pytest.raises(ConfigError, match=r"train\.pretrain\.seq_len = 1024 exceeds .* allowed: 8 to 128"):
        config.load(p)


def test_describe_covers_every_setting():
    keys = [row[0] for row in config.describe()]
    assert "train.finetune.learning_rate" in keys and "generate.min_p" in keys
    assert len(keys) == len(set(keys))
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"settings not documented in README.md: {missing}"


def test_cli_config_set_validates_and_saves(project, capsys):
    path = project / "acm.toml"
    assert cli.main(["-c", str(path), "config", "set", "generate.temperature", "0.5"]) == 0
    assert config.load(path).generate.temperature == 0.5
    assert cli.main(["-c", str(path), "config", "set", "generate.temprature", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "did you mean generate.temperature?" in err
    assert cli.main(["-c", str(path), "config", "set", "train.pretrain.lr", "1e-3"]) == 2
    assert "did you mean train.pretrain.learning_rate?" in capsys.readouterr().err  # its words' initials
    (path.parent / "other").mkdir()
    p = write(path.parent / "other", "[train.finetune]\nbs = 4\n")
    with pytest.raises(ConfigError, match=r"setting train\.finetune\.bs; did you mean train\.finetune\.batch_size\?"):
        config.load(p)
    assert cli.main(["-c", str(path), "config", "set", "generate.top_p", "7"]) == 2
    assert config.load(path).generate.top_p == 0.95  # nothing was written


def test_cli_bad_config_is_one_line_without_traceback(tmp_path):
    p = write(tmp_path, "[model\n")
    r = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(p), "presets"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "TOML syntax error" in r.stderr and "line 1" in r.stderr


def test_switching_preset_in_one_edit(project, capsys):
    path = project / "acm.toml"
    assert cli.main(["-c", str(path), "config", "set", "model.preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "also: tokenizer.vocab_size follows the preset (16000)" in out  # it was nano's 1024
    cfg = config.load(path)
    assert cfg.model.preset == "tiny" and cfg.vocab_target() == 16000 and "vocab_size" not in path.read_text()
    assert cli.main(["-c", str(path), "config", "set", "train.pretrain.seq_len", "1024"]) == 0
    assert cli.main(["-c", str(path), "config", "set", "model.preset", "nano"]) == 0
    assert "train.pretrain.seq_len = 128" in capsys.readouterr().out
    assert config.load(path).vocab_target() == 1024


def test_a_seq_len_at_the_old_preset_s_context_follows_the_new_preset(tmp_path, capsys):
    """tiny -> nano cuts a seq_len of 1024 to nano's context; back to tiny it follows the preset again
    rather than stay at 128. A seq_len below the old context is the user's and stays."""
    path = write(tmp_path, "[model]\npreset = 'tiny'\n[train.pretrain]\nseq_len = 1024\n"
                           "[train.finetune]\nseq_len = 64\n")
    assert cli.main(["-c", str(path), "config", "set", "model.preset", "nano"]) == 0
    assert "train.pretrain.seq_len = 128 (the preset's context)" in capsys.readouterr().out
    assert cli.main(["-c", str(path), "config", "set", "model.preset", "tiny"]) == 0
    assert "also: train.pretrain.seq_len follows the preset (1024)" in capsys.readouterr().out
    cfg = config.load(path)
    assert (cfg.train.pretrain.seq_len, cfg.train.finetune.seq_len) == (1024, 64)
    assert config.read_table(path)["train"] == {"finetune": {"seq_len": 64}}  # no empty [train.pretrain] left


def test_saving_a_setting_writes_only_what_the_user_set(tmp_path, capsys):
    path = tmp_path / "acm.toml"  # a fresh project: no acm.toml, the machine picks the preset
    assert cli.main(["-c", str(path), "config", "set", "train.pretrain.time", "5m"]) == 0
    assert config.read_table(path) == {"train": {"pretrain": {"time": "5m"}}}
    cfg = config.load(path)
    assert cfg.train.pretrain.time == "5m" and cfg.model.preset == config.machine_preset({})


def test_config_set_says_what_it_wrote_and_what_the_machine_s_preset_cuts(tmp_path, capsys):
    path = tmp_path / "acm.toml"  # the machine picks the preset
    context = config.load(path).model.shape().n_ctx
    assert cli.main(["-c", str(path), "config", "set", "train.finetune.seq_len", str(context * 2)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"train.finetune.seq_len = {context * 2} saved to {path}; in effect here: {context}, the context of preset "
        f"{config.load(path).model.preset!r}, the machine's choice (a new settings file: every other setting is its "
        "default)")
    assert config.read_table(path) == {"train": {"finetune": {"seq_len": context * 2}}}
    assert cli.main(["-c", str(path), "config", "set", "model.preset", "nano"]) == 0
    assert cli.main(["-c", str(path), "config", "set", "data.code.source", "github"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f'data.code.source = "github" saved to {path}'  # TOML quotes
    assert cli.main(["-c", str(path), "config", "set", "data.language.local_paths", "a, b"]) == 0
    assert capsys.readouterr().out == f'data.language.local_paths = ["a", "b"] saved to {path}\n'  # one line
    assert cli.main(["-c", str(path), "config", "set", "eval.tasks", '[{"prompt": "x", "expect": "ls"}]']) == 2
    assert capsys.readouterr().err.startswith(  # JSON, not TOML: said so, at the column as typed
        f'acm: error: {path}: eval.tasks = [{{"prompt": "x", "expect": "ls"}}] does not read as TOML (Expected '
        "'=' after a key in a key/value pair (at column 11))")
    for prompt in ("[ -d /tmp ] && echo yes", '"[ -d /tmp ]"', '[ "$1" ] || exit 1', "[ 5 -gt 3 ] && echo big"):
        assert cli.main(["-c", str(path), "config", "set", "eval.prompts", prompt]) == 0
        assert config.load(path).eval.prompts == [prompt.strip('"')]
    assert cli.main(["-c", str(path), "config", "set", "eval.prompts", "[ -d /tmp ]"]) == 2  # quotes make it text


@pytest.mark.parametrize("cut", ['["/opt/a", "/opt/b"', "[1, 2", "[{prompt = 'x'"])
def test_a_list_cut_short_is_refused_not_saved_as_a_list_of_its_pieces(tmp_path, capsys, cut):
    path = write(tmp_path, "[model]\npreset = 'nano'\n")
    assert cli.main(["-c", str(path), "config", "set", "data.code.local_paths", cut]) == 2
    assert "does not read as TOML" in capsys.readouterr().err
    assert config.load(path).data.code.local_paths == config.Config().data.code.local_paths


def test_a_save_sweeps_the_temp_files_of_saves_killed_before_it(tmp_path):
    """SIGKILL during a save runs no cleanup: its temp file beside acm.toml goes with the next save,
    which holds the folder's lock (no other save is under way)."""
    path = write(tmp_path, "[model]\npreset = 'nano'\n")
    left = [tmp_path / ".acm.toml.k1ll3d00.tmp", tmp_path / ".acm.toml.0th3r000.tmp"]
    for tmp in left:
        tmp.write_text("[model]\npre")
    (tmp_path / ".other.toml.k1ll3d00.tmp").write_text("not acm.toml's")
    assert cli.main(["-c", str(path), "config", "set", "generate.seed", "3"]) == 0
    assert not any(tmp.exists() for tmp in left) and (tmp_path / ".other.toml.k1ll3d00.tmp").exists()


@pytest.mark.parametrize("key, text", [("model.preset", "x" * 10_000), ("train.pretrain.time", "x" * 10_000),
                                       ("train.pretrain.steps", "x" * 10_000),
                                       ("data.code.local_paths", '["' + "x" * 9_998)])
def test_a_long_paste_refused_keeps_its_reason_in_view(key, text):
    """10,000 characters pasted into a setting: the line that refuses them shows their start and
    their length, and why (the Settings pane shows it under the input, a toast after enter)."""
    with pytest.raises(ConfigError) as refused:
        config.with_value(config.Config(), key, text)
    said = str(refused.value)
    assert len(said) < 400 and "(10,000 characters)" in said, said
    assert any(why in said for why in ("choose one of", "is not a duration", "must be", "does not read as TOML")), said


def test_an_empty_path_is_refused_where_it_is_set_and_read_as_before_where_it_is_written(tmp_path):
    """Settings written with an empty path (a run's config.toml, a checkpoint's, an older acm.toml)
    still read; setting one is refused: it would make the project's folder the data or runs folder."""
    path = write(tmp_path, '[model]\npreset = "nano"\n[paths]\ndata = ""\n')
    cfg = config.load(path)
    assert cfg.locations.data.resolve() == tmp_path.resolve()
    with pytest.raises(ConfigError, match=r"paths\.runs is empty; give a folder \(by default 'runs'\)"):
        config.with_value(cfg, "paths.runs", " ")


def test_saving_keeps_comments_order_and_mode(tmp_path):
    path = write(tmp_path, "# my notes\n[generate]\ntop_k = 7  # fewer\ntemperature = 0.5\n\n[model]\n# mine\n"
                           "preset = 'nano'\n")
    path.chmod(0o600)
    new, _ = config.with_value(config.load(path), "generate.temperature", "0.9")
    config.save_settings(new, path)
    assert path.read_text() == ("# my notes\n[generate]\ntop_k = 7  # fewer\ntemperature = 0.9\n\n[model]\n# mine\n"
                                "preset = 'nano'\n")
    assert path.stat().st_mode & 0o777 == 0o600
    new, _ = config.with_value(new, "train.finetune.steps", "50")
    config.save_settings(new, path)
    assert config.read_table(path)["train"] == {"finetune": {"steps": 50}} and "# mine" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_save_writes_only_its_change_into_the_file_as_it_is_now(tmp_path):
    """Settings read a while ago (the app's, at its start) and saved with one change: what was
    written to the file since, by hand or by another acm, stays; the result is the file's settings."""
    path = write(tmp_path, "[model]\npreset = 'nano'\n[train.pretrain]\nseq_len = 128\n")
    read_then = config.load(path)
    path.write_text(path.read_text() + "# my recipe\n[train.finetune]\npairs_share = 0.6\n[generate]\ntop_k = 7\n")
    new, _ = config.with_value(read_then, "generate.temperature", "0.5")
    saved = config.save_settings(new, path, since=read_then)
    assert config.read_table(path) == {"model": {"preset": "nano"}, "train": {"pretrain": {"seq_len": 128},
                                       "finetune": {"pairs_share": 0.6}}, "generate": {"top_k": 7, "temperature": 0.5}}
    assert "# my recipe" in path.read_text()
    assert (saved.generate.top_k, saved.generate.temperature, saved.train.finetune.pairs_share) == (7, 0.5, 0.6)
    new, notes = config.with_value(read_then, "model.preset", "micro")  # seq_len 128: nano's context, unset
    assert notes == ["train.pretrain.seq_len follows the preset (256)"]
    config.save_settings(new, path, since=read_then)
    assert config.read_table(path) == {"model": {"preset": "micro"}, "train": {"finetune": {"pairs_share": 0.6}},
                                       "generate": {"top_k": 7, "temperature": 0.5}}


def test_the_setting_given_is_saved_even_where_the_settings_read_earlier_held_its_value(tmp_path):
    """The app read steps = 100; the file says 200 since (a hand edit); the user gives 100 in the
    Settings pane: 100 is what the file holds after the save that says so."""
    path = write(tmp_path, "[train.pretrain]\nsteps = 100\n")
    read_then = config.load(path)
    path.write_text("[train.pretrain]\nsteps = 200\n[generate]\ntop_k = 7\n")
    new, _ = config.with_value(read_then, "train.pretrain.steps", "100")
    saved = config.save_settings(new, path, since=read_then, key="train.pretrain.steps")
    assert saved.train.pretrain.steps == 100 and saved.generate.top_k == 7
    assert config.read_table(path) == {"train": {"pretrain": {"steps": 100}}, "generate": {"top_k": 7}}


def test_a_preset_saved_from_settings_read_earlier_follows_the_file_as_it_is_now(tmp_path, capsys):
    """The app switches the preset on settings it read at its start: a seq_len edited by hand since
    stays, and one set since beyond the new context follows the preset, as a fresh switch would."""
    path = write(tmp_path, "[model]\npreset = 'nano'\n[train.pretrain]\nseq_len = 128\n")
    read_then = config.load(path)
    path.write_text(path.read_text().replace("seq_len = 128", "seq_len = 64  # mine"))
    new, _ = config.with_value(read_then, "model.preset", "micro")  # 128, nano's context, read then: unset
    config.save_settings(new, path, since=read_then)
    assert config.read_table(path) == {"model": {"preset": "micro"}, "train": {"pretrain": {"seq_len": 64}}}
    path = write(tmp_path, "[model]\npreset = 'tiny'\n")
    read_then = config.load(path)
    assert cli.main(["-c", str(path), "config", "set", "train.pretrain.seq_len", "1024"]) == 0
    new, _ = config.with_value(read_then, "model.preset", "nano")
    saved = config.save_settings(new, path, since=read_then)
    assert saved.model.preset == "nano" and saved.train.pretrain.seq_len == 128  # cut to nano's context
    assert config.read_table(path) == {"model": {"preset": "nano"}, "train": {"pretrain": {"seq_len": 128}}}


def test_a_save_waits_its_turn_behind_another_and_then_keeps_what_that_one_wrote(tmp_path, monkeypatch):
    import threading

    from core import locks
    from tests.helpers import eventually

    path = write(tmp_path, "[model]\npreset = 'nano'\n")
    read_then = config.load(path)
    new, _ = config.with_value(read_then, "generate.top_k", "7")
    waited = threading.Event()
    monkeypatch.setattr(locks.time, "sleep", lambda s: waited.set() or threading.Event().wait(s))
    with locks.folder_held(tmp_path):  # another acm's save, under way
        saving = threading.Thread(target=config.save_settings, args=(new, path), kwargs={"since": read_then})
        saving.start()
        eventually(waited.is_set)
        path.write_text(path.read_text() + "[eval]\nsamples = 9\n")  # what that save writes
    saving.join(30)
    assert config.read_table(path) == {"model": {"preset": "nano"}, "eval": {"samples": 9}, "generate": {"top_k": 7}}


def test_settings_saved_by_several_commands_at_once_all_land(tmp_path):
    path = write(tmp_path, "[model]\npreset = 'nano'\n")
    sets = {"generate.top_k": "11", "generate.max_tokens": "22", "generate.seed": "33", "eval.samples": "44",
            "train.pretrain.steps": "55", "train.finetune.steps": "66"}
    procs = [subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(path), "config", "set", key, value],
                              cwd=ROOT, stdout=subprocess.DEVNULL) for key, value in sets.items()]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(sets)
    cfg = config.load(path)
    assert {key: str(config.get_value(cfg, key)) for key in sets} == sets


def test_a_save_waits_for_the_settings_lock_and_gives_up_in_one_line(tmp_path):
    from core.errors import AcmError
    from core.locks import folder_held

    tries = []
    with folder_held(tmp_path) as held:
        assert held
        with pytest.raises(AcmError, match="another acm kept its settings locked; nothing was saved"):
            with folder_held(tmp_path, waits=3, pause=lambda: tries.append(1)):
                pass
    assert len(tries) == 3
    with folder_held(tmp_path) as held:  # free again once its holder is done
        assert held
    with folder_held(tmp_path / "missing") as held:
        assert not held


def test_saving_keeps_windows_line_ends(tmp_path):
    path = tmp_path / "acm.toml"
    written = b'# mine\r\n[generate]\r\ntop_k = 7\r\n[eval]\r\nprompts = ["""#!/bin/bash\r\n# a\r\n"""]\r\n'
    path.write_bytes(written)
    new, _ = config.with_value(config.load(path), "train.finetune.steps", "50")
    config.save_settings(new, path)
    data = path.read_bytes()
    assert data.startswith(written) and b"steps = 50\r\n" in data  # the multi-line prompt left as it was
    assert data.count(b"\n") == data.count(b"\r\n") and config.load(path).train.finetune.steps == 50


def test_a_read_only_acm_toml_is_refused_in_one_line(tmp_path, capsys):
    path = write(tmp_path, "[model]\npreset = 'nano'\n")
    path.chmod(0o444)
    assert cli.main(["-c", str(path), "config", "set", "generate.temperature", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is read-only (mode 444)" in err[0] and err[0].startswith("acm: error:")
    assert path.read_text() == "[model]\npreset = 'nano'\n" and path.stat().st_mode & 0o777 == 0o444


def test_both_stages_default_to_muon_and_differ_only_in_steps():
    pre, ft = (dataclasses.asdict(s) for s in (config.Config().train.pretrain, config.Config().train.finetune))
    assert pre["optimizer"] == ft["optimizer"] == "muon"
    assert {k for k in pre if pre[k] != ft[k]} == {"steps"} and set(ft) - set(pre) == {"pairs_share"}


def test_a_fine_tune_section_keeps_the_fine_tune_s_defaults_for_what_it_leaves_out(tmp_path):
    path = tmp_path / "acm.toml"
    path.write_text('[train.finetune]\npairs_share = 0.6\n[train.pretrain]\nsteps = 5\n')
    ft, default = config.load(path).train.finetune, config.Config().train.finetune
    assert ft.pairs_share == 0.6
    for name in ("steps", "optimizer", "learning_rate", "min_lr_ratio", "warmup_steps", "eval_every", "save_every"):
        assert getattr(ft, name) == getattr(default, name), name
    assert (ft.optimizer, ft.steps) == ("muon", 2000) and config.load(path).train.pretrain.steps == 5


def test_config_set_writes_through_a_linked_settings_file(project):
    real = project / "settings" / "real.toml"
    real.parent.mkdir()
    (project / "acm.toml").rename(real)
    (project / "acm.toml").symlink_to(real)
    assert cli.main(["-c", str(project / "acm.toml"), "config", "set", "generate.seed", "9"]) == 0
    assert (project / "acm.toml").is_symlink() and config.load(real).generate.seed == 9
    assert not list(real.parent.glob(".*.tmp")) and not list(project.glob(".*.tmp"))


@pytest.mark.parametrize("target, why", [("acm.toml", "Too many levels of symbolic links"),
                                         ("gone.toml", "No such file or directory")])
def test_a_settings_link_that_leads_nowhere_is_refused_not_read_as_defaults(tmp_path, monkeypatch, capsys,
                                                                          target, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acm.toml").symlink_to(target)
    for argv in (["config", "show"], ["-c", "acm.toml", "config", "check"], ["config", "set", "generate.seed", "3"]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"acm: error: acm.toml (a link to {target}): cannot read it ({why})\n"
    assert (tmp_path / "acm.toml").is_symlink() and not (tmp_path / "gone.toml").exists()


def test_saving_through_a_link_that_leads_nowhere_is_refused_and_writes_nothing(tmp_path):
    """The app's Settings pane and keys save with save_settings: a dangling acm.toml link is
    refused there too, never replaced by a file nor followed to create its target."""
    (tmp_path / "acm.toml").symlink_to("gone.toml")
    cfg = config.from_dict({}, root=tmp_path)
    new, _ = config.with_value(cfg, "ui.smoothing", "0.8")
    with pytest.raises(ConfigError, match=r"acm.toml \(a link to gone.toml\): cannot read it"):
        config.save_settings(new, tmp_path / "acm.toml")
    assert (tmp_path / "acm.toml").is_symlink() and not (tmp_path / "gone.toml").exists()


def test_config_set_says_when_it_creates_the_file_it_names(tmp_path, capsys):
    path = tmp_path / "new.toml"
    assert cli.main(["-c", str(path), "config", "set", "generate.seed", "3"]) == 0
    assert "(a new settings file: every other setting is its default)" in capsys.readouterr().out
    assert cli.main(["-c", str(path), "config", "set", "generate.seed", "4"]) == 0
    assert "new settings file" not in capsys.readouterr().out and config.load(path).generate.seed == 4
    assert cli.main(["-c", str(tmp_path / "typo.toml"), "config", "check"]) == 2  # only set creates one


def test_a_file_edited_into_an_error_after_it_was_read_is_never_written_over(tmp_path):
    path = tmp_path / "acm.toml"
    path.write_text('[model]\npreset = "nano"\n')
    cfg = config.load(path)  # what an open app holds
    path.write_text('[model]\npreset = "huge"  # my edit\n')
    new, _ = config.with_value(cfg, "ui.smoothing", "0.6", source=str(path))
    with pytest.raises(ConfigError, match="not saved: .*'huge'"):
        config.save_settings(new, path)
    assert path.read_text() == '[model]\npreset = "huge"  # my edit\n'


def test_a_list_for_the_preset_and_a_file_for_a_folder_are_refused_in_one_line(project, capsys):
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "config", "set", "model.preset", "[]"]) == 2
    assert capsys.readouterr().err.endswith("acm.toml: model.preset must be a string, got []\n")
    assert cli.main(["-c", c, "config", "set", "paths.runs", "acm.toml"]) == 2
    assert "paths.runs = 'acm.toml' is a file, not a folder" in capsys.readouterr().err


def test_a_number_given_to_a_text_setting_is_that_text_and_a_nul_is_refused_everywhere(project, tmp_path, capsys):
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "config", "set", "train.pretrain.time", "90"]) == 0  # a bare 90 is 90 seconds
    assert config.load(c).train.pretrain.time == "90"
    assert cli.main(["-c", c, "config", "set", "eval.time", "true"]) == 2  # a word is still checked as a duration
    assert "eval.time = 'true' is not a duration" in capsys.readouterr().err
    for setting in ('[paths]\ndata = "\\u0000"\n', '[data.code]\nlocal_paths = ["/tmp/lo\\u0000c1"]\n',
                    '[[eval.tasks]]\nprompt = "#!/bin/bash\\u0000\\n# x\\n"\nexpect = "x"\n'):
        p = write(tmp_path, setting)
        r = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(p), "config", "check"],
                           capture_output=True, text=True)
        assert (r.returncode, r.stderr.count("\n")) == (2, 1) and "holds a NUL character" in r.stderr, r.stderr
        assert "\0" not in r.stderr  # said as \x00, not written to the terminal


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_settings_file_that_is_no_regular_file_is_refused_in_one_line_without_waiting(tmp_path, kind):
    path = tmp_path / "acm.toml"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")  # reading waits forever / never ends
    r = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(path), "config", "check"],
                       capture_output=True, text=True, timeout=60)
    said = {"fifo": "cannot read it (a FIFO, not a regular file)", "device": "cannot read it (a device, not a"}
    assert (r.returncode, r.stderr.count("\n")) == (2, 1) and said[kind] in r.stderr, r.stderr


@pytest.mark.parametrize("text, message", [("1e308", "is not a duration"), ("1_0", "is not a duration"),
                                           ("nan", "is not a duration"), ("99999999999999999h", "too long"),
                                           ("8761h", "too long")])
def test_a_duration_is_written_as_a_user_writes_one_and_at_most_a_year(text, message):
    with pytest.raises(ConfigError, match=message):
        config.parse_duration(text, "--time")
    assert config.parse_duration("8760h", "--time") == 365 * 24 * 3600
    assert config.parse_duration("90", "--time") == config.parse_duration("1m30s", "--time") == 90


@pytest.mark.parametrize("data, runs, said", [("runs/data", "runs", "overlap"), ("work", "work", "are one folder"),
                                              ("x", "x/code", "overlap"), ("x", "x/tokens/mine", "overlap")])
def test_data_and_runs_folders_that_overlap_are_refused(tmp_path, data, runs, said):
    """With paths.data inside paths.runs, `--run data` trained in the data folder and `acm runs delete
    data` deleted the corpora, the tokenizer and the shards."""
    path = write(tmp_path, f'[paths]\ndata = "{data}"\nruns = "{runs}"\n')
    with pytest.raises(ConfigError, match=f"paths.data = '{data}' and paths.runs = '{runs}' {said}: keep them apart"):
        config.load(path)
    write(tmp_path, f'[paths]\ndata = "{data}"\nruns = "{data}/runs"\n')  # beside what acm keeps in data: apart
    assert config.load(path).locations.runs == (tmp_path / data / "runs").resolve()


def test_a_leading_tilde_in_a_path_setting_is_the_home_folder_wherever_the_file_is(tmp_path, monkeypatch):
    """Read from an absolute path (`acm -c /path/acm.toml`, the app's project), `~/acm-runs` made a
    folder named `~` beside acm.toml, and `~/scripts` in local_paths was looked for there too."""
    from core.data.code import fetch_code

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "scripts").mkdir(parents=True)
    (tmp_path / "home" / "scripts" / "hello.sh").write_text("#!/bin/bash\necho hello from home\n")
    (tmp_path / "project").mkdir()
    path = write(tmp_path / "project", '[paths]\nruns = "~/acm-runs"\n[data.code]\nsource = "local"\n'
                                       'local_paths = ["~/scripts"]\n')
    cfg = config.load(path.resolve())
    assert cfg.locations.runs == tmp_path / "home" / "acm-runs" and cfg.locations.data == tmp_path / "project" / "data"
    assert fetch_code(cfg)["report"]["by_source"] == {"local": 1}


def test_a_byte_order_mark_and_an_empty_tldr_list_are_said_as_such(tmp_path):
    """A file Notepad saved with a byte-order mark read as a bare syntax error at line 1; an empty
    tldr_platforms was accepted, then blamed on the tldr folder ("holds no tldr pages ()")."""
    path = tmp_path / "acm.toml"
    path.write_bytes(b'\xef\xbb\xbf[model]\npreset = "nano"\n')
    with pytest.raises(ConfigError, match="starts with a byte-order mark, as Windows' Notepad saves it"):
        config.load(path)
    write(tmp_path, '[data.code]\npairs = ["tldr"]\ntldr_platforms = []\n')
    with pytest.raises(ConfigError, match="data.code.tldr_platforms is empty while data.code.pairs takes tldr"):
        config.load(path)
    write(tmp_path, '[data.code]\ntldr_platforms = []\n')
    assert config.load(path).data.code.tldr_platforms == []  # unused: no matter


@pytest.mark.parametrize("argv, said", [
    (["export", "--to", "x", "--private"], "--private makes the repository --upload creates private"),
    (["runs", "metrics", "r", "--csv", "--json"], "--csv and --json: give one"),
])
def test_flags_that_say_nothing_alone_or_together_are_refused(project, capsys, argv, said):
    assert cli.main(["-c", str(project / "acm.toml"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"acm: error: {said}") and len(err.splitlines()) == 1

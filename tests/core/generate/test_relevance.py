"""Task relevance: `[[eval.tasks]]` settings, the relevance shares, the default tasks, and where
relevance shows (acm eval's table and JSON, the model card, generate's verdicts)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core import cli, config
from core.errors import ConfigError
from core.generate.batch import Sample
from core.generate.checked import Judged
from core.generate.export.card import _evaluation
from core.generate.relevance import eval_prompts, expectations, relevance, task_verdict
from core.generate.verdicts import Verdict
from core.pipeline.tables import EVAL_COLUMNS, eval_rows
from tests.helpers import ROOT

DUMP = "#!/bin/bash\n# Back up a PostgreSQL database\n"
PING = "#!/bin/bash\n# Ping each host\n"
PLAIN = "#!/bin/bash\n# Say hello\n"
AREAS = {"files and logs", "backups and archives", "networking", "users and permissions", "packages", "services",
         "text processing", "argument parsing", "error handling and retries"}


def judged(prompt: str, text: str, parses: bool) -> Judged:
    return Judged(Sample(prompt, text, [1, 2], "eos"), Verdict(parses, None, True))


def eval_config(tasks: list[tuple[str, str]], prompts: list[str] | None = None) -> config.EvalConfig:
    return config.EvalConfig(tasks=[config.EvalTask(p, e) for p, e in tasks], prompts=prompts or [])


def test_relevance_counts_only_samples_whose_prompt_has_an_expectation():
    ev = eval_config([(DUMP, "pg_dump"), (PING, r"\bping\b|/dev/tcp"), ("#!/bin/bash\n# No expectation\n", "")],
                     [PLAIN])
    expected = expectations(ev)
    assert set(expected) == {DUMP, PING}  # a task without expect is a plain prompt
    samples = [judged(DUMP, "pg_dump -U app app | gzip > app.sql.gz\n", True),  # matches, parses
               judged(DUMP, "pg_dump app > (\n", False),  # matches, does not parse
               judged(DUMP, "ansible-playbook backup.yml\n", True),  # bash-shaped noise
               judged(PING, "for h in \"$@\"; do ping -c1 \"$h\"; done\n", True),
               judged(PING, "echo ping-pong\n", True),  # \b: a hyphen ends the word, this counts
               judged(PING, "echo pinging\n", True),  # not the command
               judged(PLAIN, "echo hello\n", True)]  # no expectation: out of the denominator
    assert relevance(samples, expected) == {"relevant": round(4 / 6, 4), "relevant_and_parses": 0.5,
                                            "with_expectation": 6}
    none = relevance([judged(PLAIN, "pg_dump\n", True)], expected)
    assert none == {"relevant": None, "relevant_and_parses": None, "with_expectation": 0}
    assert relevance(samples, {})["relevant"] is None


def test_the_prompt_never_counts_only_the_generated_text():
    expected = expectations(eval_config([("#!/bin/bash\n# Use pg_dump to back up a database\n", "pg_dump")]))
    (prompt,) = expected
    assert relevance([judged(prompt, "echo done\n", True)], expected)["relevant"] == 0.0


def test_samples_cycle_over_the_tasks_then_the_plain_prompts():
    ev = eval_config([(DUMP, "pg_dump"), (PING, "ping")], [PLAIN])
    assert eval_prompts(ev, 7) == [DUMP, PING, PLAIN, DUMP, PING, PLAIN, DUMP]
    assert eval_prompts(eval_config([], [PLAIN]), 2) == [PLAIN, PLAIN]


def test_generate_verdict_names_the_expectation_for_a_task_prompt_only():
    expected = expectations(eval_config([(DUMP, "pg_dump")]))
    assert task_verdict(DUMP, "pg_dump db > db.sql\n", expected) == "; uses what the task expects: yes (pg_dump)"
    assert task_verdict(DUMP, "mysqldump db\n", expected) == "; uses what the task expects: no (pg_dump)"
    assert task_verdict(DUMP.rstrip("\n"), "pg_dump\n", expected) == ""  # exactly the task's prompt, or nothing


# ---------------------------------------------------------------- settings

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acm.toml"
    path.write_text("[model]\npreset = 'nano'\n" + text)
    return path


def test_tasks_load_from_tables_and_replace_the_defaults(tmp_path):
    path = write(tmp_path, '[eval]\nprompts = ["#!/bin/bash\\n# Say hello\\n"]\n\n'
                           '[[eval.tasks]]\nprompt = "#!/bin/bash\\n# Back up a PostgreSQL database\\n"\n'
                           'expect = "pg_dump"\n\n'
                           '[[eval.tasks]]\nprompt = "#!/bin/bash\\n# Ping each host\\n"\n'
                           "expect = '\\bping\\b|/dev/tcp'\n\n"
                           '[[eval.tasks]]\nprompt = "#!/bin/bash\\n# List files\\n"\n')
    cfg = config.load(path)
    assert [(t.prompt, t.expect) for t in cfg.eval.tasks] == [
        (DUMP, "pg_dump"), (PING, r"\bping\b|/dev/tcp"), ("#!/bin/bash\n# List files\n", "")]
    assert cfg.eval.prompts == [PLAIN] and cfg.eval.tasks[1].title == "Ping each host"
    config.save(cfg, tmp_path / "again.toml")  # a run's record of its settings
    assert config.load(tmp_path / "again.toml").eval == cfg.eval
    assert config.load(write(tmp_path, "")).eval.tasks == config.EVAL_TASKS  # left out: the defaults


def test_a_task_set_inline_round_trips_through_config_set(tmp_path, capsys):
    path = write(tmp_path, "")
    value = config.format_value([config.EvalTask(DUMP, "pg_dump")])
    assert value == '[\n    { prompt = "#!/bin/bash\\n# Back up a PostgreSQL database\\n", expect = "pg_dump" },\n]'
    assert cli.main(["-c", str(path), "config", "set", "eval.tasks", value]) == 0
    assert config.load(path).eval.tasks == [config.EvalTask(DUMP, "pg_dump")]
    assert "[[eval.tasks]]" in path.read_text()  # saved as a table of its own


@pytest.mark.parametrize("text, message", [
    ('[[eval.tasks]]\nprompt = "#!/bin/bash\\n# Back up a PostgreSQL database\\n"\nexpect = "(pg_dump"\n',
     "eval.tasks[0].expect = '(pg_dump' (task 'Back up a PostgreSQL database') is not a regular expression: "
     "missing ), unterminated subpattern at position 0"),
    ('[[eval.tasks]]\nprompt = "a"\nexpect = "a"\n[[eval.tasks]]\nexpect = "pg_dump"\n',
     "eval.tasks[1] has no prompt"),
    ('[[eval.tasks]]\nprompt = "  \\n"\n', "eval.tasks[0] has no prompt"),
    ('[[eval.tasks]]\nprompt = "a"\nexpected = "pg_dump"\n',
     "unknown setting eval.tasks[0].expected; did you mean eval.tasks[0].expect?"),
    ('[[eval.tasks]]\nprompt = "a"\nwhy = "b"\n', "unknown setting eval.tasks[0].why; valid keys: prompt, expect"),
    ('[eval]\ntasks = ["#!/bin/bash\\n"]\n', "eval.tasks must be a list of tables"),
    ('[[eval.tasks]]\nprompt = 3\n', "eval.tasks[0].prompt must be a string, got 3"),
    ('[[eval.tasks]]\nprompt = "a"\n[[eval.tasks]]\nprompt = "a"\n', "eval.tasks[1].prompt repeats eval.tasks[0]'s"),
    ("[eval]\ntasks = []\n", "eval.tasks and eval.prompts are both empty"),
    ('[eval]\nprompts = [""]\n', "eval.prompts holds an empty prompt"),
])
def test_a_bad_task_is_one_line_from_the_cli(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path)
    assert cli.main(["-c", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"acm: error: {path}: ") and message in err


# ---------------------------------------------------------------- the default tasks

# A line a correct script for each default task would hold, by the task's comment.
CORRECT = {
    "Delete log files older than 7 days under /var/log/myapp": "find /var/log/myapp -name '*.log' -mtime +7 -delete",
    "Print the disk usage of each directory here, largest first": "du -sh -- */ | sort -rh",
    "Follow a log file and print each new line that contains ERROR": 'tail -F "$1" | grep --line-buffered ERROR',
    "Back up a directory to a dated tar.gz archive": 'tar -czf "backup-$(date +%F).tar.gz" "$1"',
    "Back up a PostgreSQL database to a compressed file named after today's date":
        'pg_dump "$DB" | gzip > "$DB-$(date +%F).sql.gz"',
    "Mirror /srv/www to a backup server over SSH, deleting files removed at the source":
        "rsync -az --delete /srv/www/ backup:/srv/www/",
    "Ping each host given as an argument and report the ones that do not answer":
        'for h in "$@"; do ping -c1 -W2 "$h" >/dev/null || echo "$h"; done',
    "Wait until a TCP port on a host accepts connections, giving up after a timeout":
        'until nc -z "$host" "$port"; do sleep 1; done',
    "Check that each URL listed in a file answers with HTTP status 200":
        "code=$(curl -s -o /dev/null -w '%{http_code}' \"$url\")",
    "Create a user with a home directory and add them to the sudo group": 'useradd -m -G sudo "$1"',
    "Give a web root's directories mode 755 and its files mode 644, owned by www-data":
        'find "$root" -type d -exec chmod 755 {} +',
    "List the users who can log in, with their home directories and shells":
        "awk -F: '$7 !~ /nologin|false/ {print $1, $6, $7}' /etc/passwd",
    "Install Docker on Ubuntu and add the current user to the docker group":
        'sudo apt-get install -y docker.io && sudo usermod -aG docker "$USER"',
    "Install a list of packages with whichever package manager this system has":
        'if command -v dnf >/dev/null; then dnf install -y "$@"; fi',
    "Install the Python packages in requirements.txt into a new virtual environment":
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
    "Start, stop or restart the service named in the first argument": 'systemctl "$2" "$1"',
    "Create a systemd service for /opt/app/run.sh and enable it at boot": "systemctl enable --now app.service",
    "Add a cron job that runs /usr/local/bin/backup.sh every night at 2 am":
        '(crontab -l; echo "0 2 * * * /usr/local/bin/backup.sh") | crontab -',
    "Print the 10 most frequent IP addresses in an nginx access log":
        "cut -d' ' -f1 access.log | sort | uniq -c | sort -rn | head",
    "Replace a string in every .conf file under a directory, keeping a backup of each file":
        "sed -i.bak \"s/$old/$new/g\" \"$f\"",
    "Print the second and third columns of a CSV file, separated by tabs": "cut -d, -f2,3 --output-delimiter=$'\\t'",
    "Accept -v, -o FILE and -h options, printing usage for an unknown option": 'while getopts "vo:h" opt; do',
    "Print usage and exit with status 1 when fewer than two arguments are given":
        'if [ "$#" -lt 2 ]; then usage; exit 1; fi',
    "Read KEY=VALUE pairs given as arguments and export each one": 'for pair in "$@"; do export "$pair"; done',
    "Retry a command up to five times, waiting longer after each failure": 'sleep "$delay"; delay=$((delay * 2))',
    "Stop at the first failing command and print the line where the script failed":
        "set -eE\ntrap 'echo \"failed at line $LINENO\"' ERR",
    "Remove the temporary directory on exit, even when the script is interrupted":
        "tmp=$(mktemp -d)\ntrap 'rm -rf \"$tmp\"' EXIT INT TERM",
}
NOISE = ("#!/bin/bash\nansible-playbook -i hosts site.yml --tags deploy\nexport PATH=/usr/local/bin:$PATH\n"
         "echo \"backup.tar.gz done\" >> \"$LOG\"\nservice=nginx\nif [ -n \"$service\" ]; then echo ok; fi\n")


def test_the_default_tasks_cover_every_area_compile_and_are_fair():
    tasks = config.EvalConfig().tasks
    assert len(tasks) >= 24 and set(config.TASK_AREAS) == AREAS
    assert all(len(area) >= 2 for area in config.TASK_AREAS.values())
    assert sorted((t.prompt, t.expect) for t in tasks) == sorted(p for area in config.TASK_AREAS.values() for p in area)
    first_round = [next(a for a, ts in config.TASK_AREAS.items() if (t.prompt, t.expect) in ts) for t in tasks[:9]]
    assert set(first_round) == AREAS  # a short evaluation still samples every area
    for t in tasks:
        assert re.fullmatch(r"#!(/bin/bash|/usr/bin/env bash)\n# [^\n]+\n", t.prompt), t.prompt
        assert re.compile(t.expect).search(CORRECT[t.title]), t.title  # a correct script counts
        assert not re.search(t.expect, NOISE), t.title  # bash-shaped noise does not
    assert set(CORRECT) == {t.title for t in tasks}
    assert config.EvalConfig().prompts == []


def test_the_readme_holds_the_generated_task_table():
    readme = (ROOT / "README.md").read_text()
    assert config.tasks_table() in readme and config.markdown_table() in readme


# ---------------------------------------------------------------- where relevance shows

def results(relevant: float | None, both: float | None) -> dict:
    g = {"samples": 4, "parse_rate_complete": 0.5, "parse_rate": 0.5, "truncated": 0.0, "shellcheck_clean": None,
         "mean_lines": 3.0, "mean_tokens": 9.0, "distinct_2": 0.8}
    if relevant is not None or both is not None:
        g |= {"relevant": relevant, "relevant_and_parses": both}
    return {"run": "m", "stages": {"finetune": {"step": 10, "language": {"perplexity": 9.0},
                                                "code": {"perplexity": 7.0}, "code_generation": g}}}


def test_tables_and_the_card_show_relevance_and_a_dash_without_expectations():
    assert "relevant" in EVAL_COLUMNS and "relevant & parses" in EVAL_COLUMNS
    (row,) = eval_rows(results(0.75, 0.25))
    shown = dict(zip(EVAL_COLUMNS, row))
    assert shown["relevant"] == "75%" and shown["relevant & parses"] == "25%" and shown["parses (all)"] == "50%"
    (row,) = eval_rows(results(None, None))  # no task with an expectation, or an older eval.json
    assert dict(zip(EVAL_COLUMNS, row))["relevant"] == "–"
    card = "\n".join(_evaluation({"eval": results(0.75, 0.25)}))
    assert "| relevant | relevant & parses |" in card and "| 50% | 75% | 25% |" in card
    assert "| – | – |" in "\n".join(_evaluation({"eval": results(None, None)}))


def tasks_project(with_model: Path) -> str:
    """The trained project with a task every script matches, one none does, and a plain prompt."""
    path = with_model / "acm.toml"
    cfg = config.load(path)
    cfg.eval.tasks = [config.EvalTask(DUMP, "^"), config.EvalTask(PING, "(?!)")]
    cfg.eval.prompts = [PLAIN]
    config.save(cfg, path)
    return str(path)


def test_eval_reports_relevance_in_json_and_in_its_table(with_model, capsys):
    c = tasks_project(with_model)
    assert cli.main(["-c", c, "eval", "--samples", "3", "--max-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == [{"prompt": DUMP, "expect": "^"}, {"prompt": PING, "expect": "(?!)"}]
    for r in out["stages"].values():  # samples: the matched task, the unmatched one, the plain prompt
        g = r["code_generation"]
        assert g["with_expectation"] == 2 and g["relevant"] == 0.5
        assert g["relevant_and_parses"] == r["examples"][0]["parses"] / 2
        assert [e["relevant"] for e in r["examples"]] == [True, False, None]
    assert json.loads((with_model / "runs" / "m" / "eval.json").read_text())["stages"] == out["stages"]
    assert cli.main(["-c", c, "eval", "--samples", "3", "--max-tokens", "8"]) == 0
    header, rows = table_cells(capsys.readouterr().out)
    assert header == list(EVAL_COLUMNS)
    assert [(r["stage"], r["relevant"]) for r in rows] == [
        ("pretrain", "50%"), ("finetune", "50%"), ("finetune+checked", "50%")]


def table_cells(printed: str) -> tuple[list[str], list[dict]]:
    """The header and the rows (column -> cell) of the evaluation table rich printed."""
    lines = printed.splitlines()
    header = [cell.strip() for cell in next(ln for ln in lines if ln.startswith("┃")).strip("┃").split("┃")]
    rows = [dict(zip(header, (cell.strip() for cell in ln.strip("│").split("│"))))
            for ln in lines if ln.startswith("│")]
    return header, rows


def test_generate_says_whether_a_task_prompt_got_what_it_expects(with_model, capsys):
    c = tasks_project(with_model)
    escaped = DUMP.replace("\n", "\\n")
    assert cli.main(["-c", c, "generate", "-e", escaped, "--max-tokens", "6"]) == 0
    assert "uses what the task expects: yes (^)" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["-c", c, "generate", PING, "--n", "2", "--max-tokens", "6"]) == 0
    assert " ".join(capsys.readouterr().err.split()).count("uses what the task expects: no ((?!))") == 2
    assert cli.main(["-c", c, "generate", escaped, "--max-tokens", "6"]) == 0  # no -e: not the task's prompt
    assert "uses what the task expects" not in capsys.readouterr().err

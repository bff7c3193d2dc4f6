"""acm.toml as typed dataclasses: read with tomllib, written with tomli-w, validated on load.

Every setting lives here with its help text and allowed range, so the CLI, the TUI's settings
and the README all describe the same thing. Bad input raises ConfigError with one line that
names the file, the key and what is allowed.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import glob
import itertools
import math
import os
import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w

from core.atomic import read_regular, sweep_temporaries, write_text
from core.errors import ConfigError, write_failure
from core.locks import folder_held
from core.paths import Paths, setting_path
from core.presets import PRESETS, ModelShape, get_preset

CONFIG_NAME = "acm.toml"


def named_file(given: Path | None) -> Path | None:
    """The settings file a user named: `-c`'s, else $ACM_CONFIG's; None means ./acm.toml."""
    return given or (Path(os.environ["ACM_CONFIG"]) if os.environ.get("ACM_CONFIG") else None)


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple | None = None, above: float | None = None, unbounded: bool = False,
            duration: bool = False, item: type | None = None) -> Any:
    """A dataclass field carrying its help text and allowed values (read by the validator);
    `above` is an exclusive lower bound; an `unbounded` integer takes any value; a list whose
    `item` is a dataclass is a list of tables (`[[eval.tasks]]`), each checked as that class."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "above": above, "unbounded": unbounded,
            "duration": duration, "item": item}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PathsConfig:
    data: str = setting("data", "working folder for corpora, the tokenizer and token shards; a relative path is "
                                "relative to the settings file's folder (so `acm -c other/acm.toml` reads "
                                "`other/data`), not to where acm is started; a leading `~` is your home folder, as "
                                "in every path setting")
    runs: str = setting("runs", "working folder for training runs (checkpoints, metrics, logs); relative as "
                                "`paths.data`; the two folders lie apart (the data folder never inside the runs "
                                "folder, the runs folder never inside one acm keeps data in), else a run could take "
                                "a data folder's name and deleting it would delete the data")


@dataclass
class LanguageDataConfig:
    source: str = setting("builtin", "where the language corpus comes from",
                          choices=("builtin", "hf", "local"))
    hf_dataset: str = setting("roneneldan/TinyStories",
                              "Hugging Face dataset (alternative: Skylion007/openwebtext)")
    hf_config: str = setting("", "the dataset's configuration name, if it has several")
    hf_split: str = setting("train[:50000]", "split with optional slicing, e.g. train[:50000]")
    text_field: str = setting("text", "the column holding each document's text")
    streaming: bool = setting(True, "stream the dataset instead of downloading it whole, where it allows")
    local_paths: list = setting([], "files or folders (.txt .md .jsonl .parquet) for source = local")
    max_documents: int = setting(0, "stop after this many documents (0: no limit)", min=0)


@dataclass
class CodeDataConfig:
    source: str = setting("builtin", "where the bash corpus comes from (huggingface: streamed from a code dataset, "
                                     "needs a network)", choices=("builtin", "github", "local", "huggingface"))
    repos_file: str = setting("", "repository list for source = github (empty: the built-in list, "
                                  "core/data/repos.toml)")
    licences: str = setting("any", "which repositories source = github clones, by the licence their entry records "
                                   "(source = huggingface: which rows are kept, by the licence each records): "
                                   "any, or permissive (MIT, MIT-0, Apache-2.0, BSD-2-Clause, BSD-3-Clause, ISC, "
                                   "0BSD, Unlicense, CC0-1.0, PostgreSQL, Zlib, BSL-1.0; not MPL-2.0, the GPLs or "
                                   "an unknown licence)", choices=("any", "permissive"))
    local_paths: list = setting([], "folders scanned for shell scripts for source = local")
    hf_dataset: str = setting("codeparrot/github-code-clean", "Hugging Face code dataset streamed for source = "
                                                              "huggingface (or bigcode/the-stack-dedup, gated: a "
                                                              "token in $HF_TOKEN), or a local folder of its parquet "
                                                              "files; columns code, repo_name, path, language, license "
                                                              "(codeparrot) or content, max_stars_repo_name, "
                                                              "max_stars_repo_path, lang, max_stars_repo_licenses "
                                                              "(The Stack)")
    hf_data_dir: str = setting("data", "the dataset's folder whose parquet files are streamed: data for "
                                       "codeparrot/github-code-clean, data/shell for bigcode/the-stack-dedup")
    hf_language: str = setting("Shell", "rows kept by the dataset's language column (empty: every row)")
    hf_max_documents: int = setting(20000, "stop streaming once this many rows of the language (and licences) are "
                                           "kept (0: no limit)", min=0)
    hf_max_bytes: int = setting(0, "stop streaming once the kept rows hold this many bytes of code (0: no limit)",
                                min=0)
    clone_jobs: int = setting(4, "repositories cloned at once", min=1, max=32)
    clone_timeout_s: int = setting(300, "seconds before one clone is abandoned", min=10, max=7200)
    clone_retries: int = setting(2, "retries of a failed clone", min=0, max=10)
    max_file_bytes: int = setting(1_000_000, "scripts larger than this are skipped", min=64)
    max_line_length: int = setting(1000, "scripts with a longer line are skipped", min=40)
    syntax_timeout_s: float = setting(5.0, "seconds `bash -n` may take per script", min=0.1, max=120)
    min_alnum_share: float = setting(0.25, "scripts whose characters are less than this share letters or digits "
                                           "are skipped (BigCode's filter; 0: off)", min=0.0, max=1.0)
    max_mean_line_length: int = setting(100, "scripts whose lines average more characters than this are skipped "
                                             "(BigCode's filter; 0: off)", min=0)
    generated_header_lines: int = setting(5, "scripts with a comment in their first lines opening with \"generated "
                                             "by\", \"do not edit\", \"autogenerated\" and the like, or holding a "
                                             "minified line (over 300 characters, under 5% spaces, 10 or more "
                                             "semicolons and braces), are skipped; how many lines are read (0: off, "
                                             "minified lines kept too)", min=0, max=100)
    max_base64_run: int = setting(1000, "scripts holding a run of this many base64 characters (an embedded "
                                        "payload, lines of 40 or more joined) are skipped (0: off)", min=0)
    decontaminate: bool = setting(True, "skip scripts sharing a 50-character span or 10 words (whitespace and case "
                                        "aside) with an evaluation prompt's comment (eval.tasks, eval.prompts)")
    near_duplicate_threshold: float = setting(0.7, "MinHash Jaccard above which scripts are near-duplicates "
                                                   "(BigCode's 0.7)",
                                              min=0.5, max=1.0)
    pairs: list = setting([], "comment-to-command sources added to the bash corpus: tldr (tldr-pages examples, "
                              "CC BY 4.0), nl2bash (NL2Bash pairs, MIT)", choices=("tldr", "nl2bash"))
    tldr_path: str = setting("", "tldr-pages: a folder holding pages/, or a git URL cloned shallow into "
                                 "data/code/repos (empty: https://github.com/tldr-pages/tldr.git)")
    tldr_platforms: list = setting(["common", "linux"], "tldr page folders read (pages/<platform>/*.md, English); "
                                   "empty is refused while `pairs` takes tldr", choices=("common", "linux", "osx"))
    nl2bash_path: str = setting("", "NL2Bash: a folder holding data/bash/all.nl and all.cm, or a git URL cloned "
                                    "shallow into data/code/repos (empty: https://github.com/TellinaTool/nl2bash.git)")
    pairs_per_script: int = setting(8, "consecutive NL2Bash pairs grouped into one script", min=1, max=1000)
    pairs_seed: int = setting(0, "seed of the values filled into tldr placeholders", min=0)


@dataclass
class DataConfig:
    language: LanguageDataConfig = field(default_factory=LanguageDataConfig)
    code: CodeDataConfig = field(default_factory=CodeDataConfig)


@dataclass
class TokenizerConfig:
    vocab_size: int = setting(0, "BPE vocabulary size to aim for, special tokens included (0: the preset's); a "
                                 "small corpus may stop short of it, and the model takes the size trained",
                              min=0, max=262144)
    min_frequency: int = setting(2, "pairs seen fewer times are not merged", min=1)
    code_weight: float = setting(0.3, "share of the tokenizer's training text drawn from code (scripts repeat "
                                 "to reach it)", min=0.0, max=1.0)
    max_language_mb: int = setting(200, "language text read for training, in MB (0: all)", min=0)


@dataclass
class PrepareConfig:
    val_fraction: float = setting(0.05, "share of documents held out for validation", min=0.0, max=0.5)
    seed: int = setting(1234, "seed of the train/val split", min=0)
    add_bos: bool = setting(True, "start each document with <BOS> (every document ends with <EOS>)")


@dataclass
class ModelConfig:
    preset: str = setting("medium", "model shape", choices=tuple(PRESETS))
    compute_dtype: str = setting("bfloat16", "dtype of the forward/backward; weights stay float32",
                                 choices=("float32", "bfloat16", "float16"))
    checkpoint_activations: bool = setting(False, "recompute each block's activations in the backward pass: "
                                                  "less memory (1-2 GB on tiny/medium) for ~15% less speed")

    def shape(self) -> ModelShape:
        """The preset's shape: its vocab is only tokenizer training's target (`core.model.model_shape`
        builds a model over the tokenizer's)."""
        return get_preset(self.preset)


@dataclass
class StageConfig:
    steps: int = setting(10000, "optimizer steps", min=1)
    batch_size: int = setting(8, "sequences per micro-batch", min=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", min=1, max=4096)
    seq_len: int = setting(1024, "tokens per sequence (at most the preset's context)", min=8)
    # Muon, with AdamW at 1e-3 for the rest, a short warmup and decay to zero: AdamW's final validation loss
    # in about half its time or less in either stage (bench/RESULTS.md, "Muon by time to AdamW's loss" and
    # "Muon for the pretrain")
    learning_rate: float = setting(1e-3, "peak learning rate (under Muon, of what AdamW still updates)", min=0.0,
                                   max=1.0)
    min_lr_ratio: float = setting(0.0, "final learning rate as a share of the peak", min=0.0, max=1.0)
    warmup_steps: int = setting(20, "linear warmup steps", min=0)
    weight_decay: float = setting(0.1, "decoupled weight decay of the matrices", min=0.0, max=1.0)
    optimizer: str = setting("muon", "muon: Muon (orthogonalised momentum) for the transformer blocks' matrices, "
                                     "AdamW for embeddings, head, biases and gains; adamw: AdamW for all",
                             choices=("adamw", "muon"))
    muon_learning_rate: float = setting(0.02, "Muon's peak learning rate (optimizer = muon), on the same "
                                              "schedule as learning_rate", min=0.0, max=1.0)
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)", min=0.0)
    log_every: int = setting(10, "steps between metric reports (metrics.jsonl, the Train pane)", min=1)
    eval_every: int = setting(250, "steps between validation-loss checks", min=1)
    eval_batches: int = setting(20, "batches per validation-loss check (at most 10000 in acm.toml)", min=1)
    save_every: int = setting(500, "steps between checkpoints", min=1)
    keep_last: int = setting(3, "checkpoints kept besides the best", min=1)
    seed: int = setting(0, "seed of initialisation and batch order", min=0)
    start_at_documents: bool = setting(False, "start every training sequence where a document starts (a script's "
                                              "first line) instead of anywhere in the stream")
    replay: float = setting(0.0, "share of each batch drawn from the other corpus (language while fine-tuning, "
                                 "code while pretraining), rounded to whole sequences", min=0.0, max=0.9)
    time: str = setting("", "wall-clock budget (90s, 10m, 1h30m): the step count is fitted to it, warmup and "
                            "decay included (empty: train `steps`)", duration=True)
    patience: int = setting(0, "stop once this many validation checks in a row bring no new best val loss; "
                               "every new best is saved (0: off)", min=0)


@dataclass
class FinetuneConfig(StageConfig):
    pairs_share: float = setting(0.0, "share of each batch drawn from the comment-to-command scripts (data.code.pairs),"
                                      " rounded to whole sequences (0: they are drawn with the other scripts, by "
                                      "size); replay + pairs_share at most 0.9", min=0.0, max=0.9)


def _finetune_defaults() -> FinetuneConfig:
    return FinetuneConfig(steps=2000)


@dataclass
class TrainConfig:
    ranks: int = setting(1, "processes that train together on this host, each on its slice of the batch: one per "
                            "NVIDIA GPU over NCCL (elsewhere over the ring backend); 1: acm's own process", min=1,
                         max=64)
    report_to: list = setting([], "also send the training curves to these (each an optional extra): tensorboard "
                                  "(runs/<run>/tensorboard), wandb (offline unless WANDB_MODE or WANDB_API_KEY)",
                              choices=("tensorboard", "wandb"))
    allreduce_buckets: int = setting(1, "pieces each gradient buffer is averaged across ranks in, on a stream of "
                                        "their own (more were slower on 2 H200s: keep 1)", min=1, max=64)
    alert_spike: float = setting(3.0, "a report whose loss is this many times the median of the last 50 is an "
                                      "alert (train.log, the CLI, the Train pane)", above=1.0, max=1000.0)
    samples: int = setting(2, "scripts generated at each validation check of both stages, shown with their "
                              "verdicts (the Train and Runs panes' v, samples.jsonl; 0: off)", min=0, max=64)
    sample_prompts: list = setting([], "the prompts of those scripts, cycled (one equal to an eval task's prompt is "
                                       "judged against its expect); empty: the eval tasks', in order")
    sample_tokens: int = setting(64, "new tokens per sampled script", min=1, max=4096)
    sample_share: float = setting(0.02, "the most share of a stage's time spent sampling: a check that would take "
                                        "the sampling over it (reckoned at the last check's cost, the first at 1 s) "
                                        "samples nothing; the last check of a call (its last step's, or an "
                                        "early stop's) always samples", above=0.0, max=1.0)
    ready_in_pipeline: bool = setting(True, "while a pipeline (acm pipeline run, the Setup pane's a) makes the token "
                                            "shards, run the stages' training step and a live-samples decode once on "
                                            "a throwaway model of their shapes, so its first training stage finds "
                                            "them compiled; skipped on several ranks or where a step may not fit "
                                            "in memory")
    ready_in_command: bool = setting(True, "while acm train starts (Python's imports, the settings read, the run "
                                           "picked), run the stage's training step, a validation loss and a "
                                           "live-samples decode once on a throwaway model of its shape, so the "
                                           "stage finds them compiled; GPUs only, skipped on several ranks, with "
                                           "--detach or where a step may not fit in memory")
    pretrain: StageConfig = field(default_factory=StageConfig)
    finetune: FinetuneConfig = field(default_factory=_finetune_defaults)


@dataclass
class GenerateConfig:
    temperature: float = setting(0.8, "sampling temperature (0: greedy)", min=0.0, max=5.0)
    top_k: int = setting(50, "keep the k most likely tokens (0: off)", min=0)
    top_p: float = setting(0.95, "keep the smallest set with this total probability (1: off)", above=0.0, max=1.0)
    min_p: float = setting(0.0, "drop tokens below this share of the top token's probability (0: off)",
                           min=0.0, max=1.0)
    repetition_penalty: float = setting(1.1, "penalty on tokens already generated (1: off)", min=1.0, max=3.0)
    max_tokens: int = setting(256, "new tokens per generation", min=1)
    seed: int = setting(0, "sampling seed (any integer)", unbounded=True)
    syntax_check: bool = setting(False, "sample `candidates` scripts at once and return one that parses with "
                                        "bash -n (and has no shellcheck errors, when shellcheck is installed)")
    candidates: int = setting(8, "scripts sampled at once for a syntax-checked generation", min=1, max=256)


@dataclass
class UIConfig:
    smoothing: float = setting(0.6, "how much the Train and Runs panes' train-loss curves are smoothed (an "
                                    "exponential moving average, debiased as TensorBoard's; 0: off); m cycles it",
                               min=0.0, max=0.99)
    ready_at_start: bool = setting(True, "at acm-tui's start, while nothing trains, run the stages' training step and "
                                         "a live-samples decode once on a throwaway model of their shapes (about 2 s "
                                         "of GPU work), so the app's first stage finds them compiled; skipped where a "
                                         "step may not fit in memory")


@dataclass
class EvalTask:
    """One `[[eval.tasks]]` table: a prompt, and what a script doing its task would use."""
    prompt: str = setting("", "a shebang and a one-line comment saying what the script does, ending in a newline")
    expect: str = setting("", "a Python regular expression searched (re.search) in the generated text, never the "
                              "prompt; empty: no expectation")

    @property
    def title(self) -> str:
        """What the script does: the prompt's comment (its first line where it has none)."""
        lines = [line.strip() for line in self.prompt.splitlines() if line.strip()]
        comments = [line.lstrip("#").strip() for line in lines if line.startswith("#") and not line.startswith("#!")]
        return (comments or lines or [""])[0]


BASH, ENV_BASH = "#!/bin/bash\n", "#!/usr/bin/env bash\n"
# The default tasks by area, each (prompt, expect): the commands a correct script would use, any of
# them accepted. Patterns are searched in the generated text only, so `\b`/`\s` keep a file name
# (backup.tar.gz) or a variable ($service) from passing for the command.
TASK_AREAS = {
    "files and logs": [
        (ENV_BASH + "# Delete log files older than 7 days under /var/log/myapp\n", r"-mtime|-mmin|-newer|\bstat\b"),
        (BASH + "# Print the disk usage of each directory here, largest first\n", r"\bdu\b"),
        (BASH + "# Follow a log file and print each new line that contains ERROR\n", r"\btail\b|\bjournalctl\b"),
    ],
    "backups and archives": [
        (BASH + "# Back up a directory to a dated tar.gz archive\n", r"\b(tar|zip|rsync)\s"),
        (BASH + "# Back up a PostgreSQL database to a compressed file named after today's date\n", r"pg_dump"),
        (ENV_BASH + "# Mirror /srv/www to a backup server over SSH, deleting files removed at the source\n",
         r"\b(rsync|rclone|lftp)\b"),
    ],
    "networking": [
        (BASH + "# Ping each host given as an argument and report the ones that do not answer\n",
         r"\bf?ping6?\b|/dev/tcp"),
        (BASH + "# Wait until a TCP port on a host accepts connections, giving up after a timeout\n",
         r"/dev/(tcp|udp)/|\b(nc|ncat|netcat|socat|telnet|curl)\b"),
        (ENV_BASH + "# Check that each URL listed in a file answers with HTTP status 200\n", r"\b(curl|wget)\b"),
    ],
    "users and permissions": [
        (BASH + "# Create a user with a home directory and add them to the sudo group\n", r"\b(useradd|adduser)\b"),
        (BASH + "# Give a web root's directories mode 755 and its files mode 644, owned by www-data\n",
         r"\bchmod\b"),
        (ENV_BASH + "# List the users who can log in, with their home directories and shells\n",
         r"/etc/passwd|\bgetent\s+passwd"),
    ],
    "packages": [
        (BASH + "# Install Docker on Ubuntu and add the current user to the docker group\n",
         r"\bapt(-get)?\s.*\binstall\b|get\.docker\.com|\bsnap\s+install"),
        (ENV_BASH + "# Install a list of packages with whichever package manager this system has\n",
         r"\b(apt|apt-get|dnf|yum|pacman|zypper|apk|brew)\b"),
        (BASH + "# Install the Python packages in requirements.txt into a new virtual environment\n",
         r"\bvenv\b|\bvirtualenv\b"),
    ],
    "services": [
        (ENV_BASH + "# Start, stop or restart the service named in the first argument\n",
         r'\bsystemctl\b|/etc/init\.d/|\bservice\s+\S+\s+(start|stop|restart|status|"?\$)'),
        (BASH + "# Create a systemd service for /opt/app/run.sh and enable it at boot\n",
         r"ExecStart=|\bsystemctl\s.*\benable\b"),
        (BASH + "# Add a cron job that runs /usr/local/bin/backup.sh every night at 2 am\n", r"\bcrontab\b|/etc/cron"),
    ],
    "text processing": [
        (BASH + "# Print the 10 most frequent IP addresses in an nginx access log\n", r"\buniq\b|\bawk\b"),
        (ENV_BASH + "# Replace a string in every .conf file under a directory, keeping a backup of each file\n",
         r"\b(sed|perl|awk)\b"),
        (BASH + "# Print the second and third columns of a CSV file, separated by tabs\n", r"\b(cut|awk)\b|IFS="),
    ],
    "argument parsing": [
        (ENV_BASH + "# Accept -v, -o FILE and -h options, printing usage for an unknown option\n",
         r"\bgetopts?\b|\bcase\b|\$\{?1"),
        (BASH + "# Print usage and exit with status 1 when fewer than two arguments are given\n", r"\$#"),
        (BASH + "# Read KEY=VALUE pairs given as arguments and export each one\n",
         r"\$@|\$\*|\bshift\b|\bfor\s+\w+\s*(;|\n)"),
    ],
    "error handling and retries": [
        (BASH + "# Retry a command up to five times, waiting longer after each failure\n", r"\bsleep\b"),
        (ENV_BASH + "# Stop at the first failing command and print the line where the script failed\n",
         r"set\s+-[a-zA-Z]*e|errexit|\btrap\b|LINENO"),
        (BASH + "# Remove the temporary directory on exit, even when the script is interrupted\n", r"\btrap\b"),
    ],
}


def _interleaved(areas: dict) -> list[EvalTask]:
    """One task of each area in turn: a short evaluation (eval.time, few samples) still covers them all."""
    rows = itertools.zip_longest(*areas.values())
    return [EvalTask(prompt, expect) for row in rows for prompt, expect in filter(None, row)]


EVAL_TASKS = _interleaved(TASK_AREAS)


@dataclass
class EvalConfig:
    tasks: list = setting(EVAL_TASKS, "`[[eval.tasks]]` tables, the prompts `acm eval` samples (cycled over the "
                                      "samples, then eval.prompts): with `expect`, a sample's relevance is whether "
                                      "its text matches it", item=EvalTask)
    prompts: list = setting([], "more prompts, without expectations: sampled after the tasks', counted in every "
                                "column but relevance")
    samples: int = setting(64, "scripts generated per checkpoint", min=1, max=4096)
    max_tokens: int = setting(200, "new tokens per generated script", min=1)
    time: str = setting("", "wall-clock budget for `acm eval` (90s, 10m): samples and validation batches stop "
                            "when it is spent, each part keeping at least one batch, and the results say what it "
                            "cut (empty: all of them)", duration=True)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    # Where the file was read from; relative paths in [paths] resolve against its folder.
    root: Path = field(default=Path("."), compare=False, repr=False, metadata={"internal": True})
    # What the file itself sets (the rest are defaults or the machine's choice): all acm writes back.
    explicit: dict = field(default_factory=dict, compare=False, repr=False, metadata={"internal": True})

    def vocab_target(self) -> int:
        """The vocabulary the tokenizer is trained toward: tokenizer.vocab_size, or the preset's.
        The model takes the size the tokenizer reached (a run's settings record it)."""
        return self.tokenizer.vocab_size or self.model.shape().vocab_size

    @property
    def locations(self) -> Paths:
        """Every file and folder acm uses, resolved against acm.toml's folder."""
        data, runs = (setting_path(self.root, written).resolve() for written in (self.paths.data, self.paths.runs))
        return Paths(data, runs)

    @property
    def data_dir(self) -> Path:
        return self.locations.data

    @property
    def runs_dir(self) -> Path:
        return self.locations.runs

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("root")
        d.pop("explicit")
        return d


# ---------------------------------------------------------------- validation

def _setting_fields(cls) -> list:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")
DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, key: str = "duration") -> float:
    """Seconds in "90s", "10m", "8h", "1h30m" or a plain number of seconds; one line otherwise."""
    text = text.strip().lower()
    if PLAIN_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        parts = DURATION.findall(text)
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in parts)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ConfigError(f"{key} = {shown(text)} is not a duration: write it like 90s, 10m, 8h or 1h30m") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{key} = {shown(text)} must be a positive duration")
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"{key} = {shown(text)} is too long: at most 365 days (8760h)")
    return seconds


PLAIN_SECONDS = re.compile(r"\d+(\.\d+)?")  # a plain number of seconds, as written by hand: no 1e9, no 1_0
MAX_DURATION_S = 365 * 24 * 3600  # a budget beyond a year is a typo, and no step count would fit it


TOO_LONG = "a number of thousands of digits, too long to be any setting"
INT_LIMIT = 2**31 - 1  # integers without a maximum of their own stay below this


def _check_value(key: str, value: Any, f, typ) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    wanted = {"str": str, "int": int, "float": float, "bool": bool, "list": list}[typ.__name__]
    _check_type(key, value, wanted)
    _check_range(key, value, f.metadata, wanted)
    return value


SHOWN_CHARACTERS = 80  # of a refused value in its one line: a long paste must not hide the reason


def shown(value: Any) -> str:
    """A refused value as its line shows it: its repr, cut with its length said where long."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters as written"
    return f"{text[:SHOWN_CHARACTERS - 20]}… ({size})"


def _check_type(key: str, value: Any, wanted: type) -> None:
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {_type_word(wanted)}, got {shown(value)}")
    if wanted is list and not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key} must be a list of strings, got {shown(value)}")
    _check_text(key, value, value if wanted is list else [value] if wanted is str else [])
    if wanted is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {shown(value)}")


def _check_text(key: str, value: Any, texts: list[str]) -> None:
    """A setting's text (a string, or a list's items) as a file can hold it: no NUL, no half of a
    character (a lone surrogate, which only a paste or an escape can give)."""
    if any("\0" in text for text in texts):
        raise ConfigError(f"{key} = {shown(value)} holds a NUL character, which no path, name or text can")
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{key} = {ascii(value)} holds half of a character (a lone surrogate), which no "
                          "file can hold") from None


def _check_choices(key: str, value: Any, choices: tuple | None) -> None:
    """A value among `choices`; for a list, each item."""
    if not choices:
        return
    if isinstance(value, list):
        if any(item not in choices for item in value):
            raise ConfigError(f"{key} = {shown(value)} is not valid; each one of: {', '.join(map(str, choices))}")
    elif value not in choices:
        raise ConfigError(f"{key} = {shown(value)} is not valid; choose one of: {', '.join(map(str, choices))}")


def _check_range(key: str, value: Any, meta, wanted: type) -> None:
    if meta.get("duration") and value:
        parse_duration(value, key)
    _check_choices(key, value, meta.get("choices"))
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    if ((lo is not None and value < lo) or (hi is not None and value > hi)
            or (above is not None and value <= above)):
        raise ConfigError(f"{key} = {shown(value)} is out of range; allowed: {_range_words(lo, hi, above)}")
    if wanted is int and hi is None and not meta.get("unbounded") and value > INT_LIMIT:
        raise ConfigError(f"{key} = {shown(value)} is out of range; allowed: at most {INT_LIMIT}")


def int_range(key: str) -> tuple[int, int]:
    """The lowest and highest value integer setting `key` allows ("train.ranks": 1, 64): a flag that
    sets it takes the same."""
    *parents, leaf = key.split(".")
    cls = Config
    for part in parents:
        cls = get_type_hints(cls)[part]
    meta = next(f.metadata for f in _setting_fields(cls) if f.name == leaf)
    lo = meta["min"] if meta["min"] is not None else (-INT_LIMIT - 1 if meta["above"] is None else meta["above"] + 1)
    return int(lo), int(meta["max"] if meta["max"] is not None else INT_LIMIT)


def overridden(section: Any, prefix: str, source: str, **values: Any) -> Any:
    """A copy of a settings section with `values` (None: keep) applied, each checked as it would
    be in acm.toml, with the same messages: command-line flags and the app's fields use this."""
    hints = get_type_hints(type(section))
    known = {f.name: f for f in _setting_fields(type(section))}
    checked = {name: _check_value(f"{source}: {prefix}{name}", value, known[name], hints[name])
               for name, value in values.items() if value is not None}
    return replace(section, **checked)


def _type_word(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list"}[t]


def _range_words(lo, hi, above=None) -> str:
    if above is not None:
        return f"above {above}" + (f", up to {hi}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def closest(key: str, known) -> str | None:
    """The known key a mistyped one most likely meant: the one in the same section whose words'
    initials the typed name spells (`lr`: learning_rate), else the closest spelling."""
    head, _, leaf = key.rpartition(".")
    spelled = [name for name in known if len(leaf) > 1 and name.rpartition(".")[0] == head
               and "".join(w[:1] for w in name.rpartition(".")[2].split("_")) == leaf]
    if len(spelled) == 1:  # two that spell it (mlr: min_lr_ratio, muon_learning_rate) are no guess
        return spelled[0]
    close = difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def _build(cls, table: dict, prefix: str, source: str, make=None):
    """Build dataclass `cls` from a TOML table, refusing unknown keys and bad values; the settings
    the table leaves out keep `make()`'s values (a section's own defaults: the fine-tune's differ
    from the pretrain's), or cls's."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in _setting_fields(cls)}
    for key in table:
        if key not in known:
            close = closest(key, known)
            hint = f"; did you mean {prefix}{close}?" if close else f"; valid keys: {', '.join(known)}"
            raise ConfigError(f"{source}: unknown setting {prefix}{key}{hint}")
    values = {}
    for name, f in known.items():
        if name not in table:
            continue
        typ = hints[name]
        if is_dataclass(typ):
            values[name] = _build(typ, table[name], f"{prefix}{name}.", source, _maker(f))
        elif f.metadata.get("item"):
            values[name] = _build_tables(f.metadata["item"], table[name], f"{prefix}{name}", source)
        else:
            values[name] = _check_value(f"{source}: {prefix}{name}", table[name], f, typ)
    return replace(make(), **values) if make is not None else cls(**values)


def _maker(f):
    """What builds a field's default (None where it has a plain default)."""
    return f.default_factory if f.default_factory is not MISSING else None


def _build_tables(cls, value: Any, key: str, source: str) -> list:
    """A list of tables (`[[eval.tasks]]` in acm.toml), each built as dataclass `cls`."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(f"{source}: {key} must be a list of tables (each a [[{key}]] section), got {shown(value)}")
    return [_build(cls, item, f"{key}[{i}].", source) for i, item in enumerate(value)]


def from_dict(table: dict, source: str = CONFIG_NAME, root: Path | None = None, preset: str | None = None,
              written: bool = False) -> Config:
    """Settings from a TOML table; `preset` is the machine's choice where the table names none.
    Each stage's seq_len is capped at the preset's context where the table leaves it out, or the
    preset is the machine's (a seq_len set for a larger model). `written`: a file acm wrote (a run's
    config.toml, a launch's snapshot), which the checks added to a user's settings since never make
    unreadable."""
    cfg = _build(Config, table, "", source)
    machine = bool(preset) and "preset" not in _section(table, "model")
    if machine:
        cfg.model.preset = preset
    for stage in ("pretrain", "finetune"):
        if machine or "seq_len" not in _section(_section(table, "train"), stage):
            sc = getattr(cfg.train, stage)
            sc.seq_len = min(sc.seq_len, cfg.model.shape().n_ctx)
    cfg.root = Path(root) if root is not None else Path(".")
    cfg.explicit = copy.deepcopy(table)
    validate(cfg, source, written)
    return cfg


def _section(table: dict, name: str) -> dict:
    value = table.get(name)
    return value if isinstance(value, dict) else {}


def validate(cfg: Config, source: str = CONFIG_NAME, written: bool = False) -> None:
    """Checks across settings (single values are checked as they are read); a user's settings get
    the project's checks too, a file acm wrote (`written`) is read as it was written."""
    shape = cfg.model.shape()
    if 0 < cfg.tokenizer.vocab_size < MIN_VOCAB:
        raise ConfigError(f"{source}: tokenizer.vocab_size = {cfg.tokenizer.vocab_size} is out of range; allowed: 0 "
                          f"(the preset's, {shape.vocab_size}) or {MIN_VOCAB} to 262144")
    _check_eval_prompts(cfg.eval, source)
    if not all(p.strip() for p in cfg.train.sample_prompts):
        raise ConfigError(f"{source}: train.sample_prompts holds an empty prompt")
    for stage in ("pretrain", "finetune"):
        sc: StageConfig = getattr(cfg.train, stage)
        if sc.seq_len > shape.n_ctx:
            raise ConfigError(
                f"{source}: train.{stage}.seq_len = {sc.seq_len} exceeds preset {shape.name!r}'s "
                f"context {shape.n_ctx}; allowed: 8 to {shape.n_ctx}"
            )
    _check_folders(cfg, source)
    if not written:
        _check_project(cfg, source)
    ft = cfg.train.finetune
    if ft.replay + ft.pairs_share > 0.9 + 1e-9:
        raise ConfigError(f"{source}: train.finetune.replay + train.finetune.pairs_share = "
                          f"{ft.replay + ft.pairs_share:g} leaves too little of the batch to the scripts; "
                          f"allowed: at most 0.9 together")


MIN_VOCAB = 260  # the 256 bytes and the 4 special tokens


def _check_project(cfg: Config, source: str) -> None:
    """What a user's settings are held to and files written before these checks were not: the
    folders apart, tldr pages to read, a validation check of bounded length."""
    data, runs = cfg.locations.data, cfg.locations.runs
    if data.is_relative_to(runs) or any(runs.is_relative_to(data / name) for name in DATA_FOLDERS):
        raise ConfigError(f"{source}: paths.data = {cfg.paths.data!r} and paths.runs = {cfg.paths.runs!r} "
                          f"{'are one folder' if data == runs else 'overlap'}: keep them apart (a run could take "
                          f"a data folder's name, and deleting the run would delete it)")
    if "tldr" in cfg.data.code.pairs and not cfg.data.code.tldr_platforms:
        raise ConfigError(f"{source}: data.code.tldr_platforms is empty while data.code.pairs takes tldr: name the "
                          f"page folders to read (common, linux, osx)")
    for stage in ("pretrain", "finetune"):
        batches = getattr(cfg.train, stage).eval_batches
        if batches > MOST_EVAL_BATCHES:
            raise ConfigError(f"{source}: train.{stage}.eval_batches = {batches} is out of range; allowed: 1 to "
                              f"{MOST_EVAL_BATCHES}")


MOST_EVAL_BATCHES = 10000  # a validation check of more would hold a stage for hours


def _check_folders(cfg: Config, source: str) -> None:
    """paths.data and paths.runs can be folders."""
    for key, folder in (("data", cfg.locations.data), ("runs", cfg.locations.runs)):
        try:
            is_file = folder.exists() and not folder.is_dir()
        except OSError as e:  # a name longer than the file system allows
            raise ConfigError(f"{source}: paths.{key} = {getattr(cfg.paths, key)!r} cannot be a folder here "
                              f"({e.strerror or e})") from None
        if is_file:
            raise ConfigError(f"{source}: paths.{key} = {getattr(cfg.paths, key)!r} is a file, not a folder")


# what acm keeps in paths.data: the runs folder never inside one (beside them, as runs/ beside language/
# when paths.data is the project's folder, it may be), nor the data folder inside the runs folder
DATA_FOLDERS = ("language", "code", "tokenizer", "tokens")


def _check_eval_prompts(ev: EvalConfig, source: str) -> None:
    """Something to sample; every task with a prompt of its own and an expectation that compiles
    (a prompt is a task's at most once, so generate finds one expectation for it)."""
    if not all(p.strip() for p in ev.prompts):
        raise ConfigError(f"{source}: eval.prompts holds an empty prompt")
    if not ev.tasks and not ev.prompts:
        raise ConfigError(f"{source}: eval.tasks and eval.prompts are both empty: give acm eval at least one prompt")
    first: dict[str, int] = {}
    for i, task in enumerate(ev.tasks):
        key = f"eval.tasks[{i}]"
        if not task.prompt.strip():
            raise ConfigError(f"{source}: {key} has no prompt; give it one, e.g. prompt = "
                              f"\"#!/bin/bash\\n# Back up /etc to a dated archive\\n\"")
        try:
            re.compile(task.expect)
        except re.error as e:
            raise ConfigError(f"{source}: {key}.expect = {task.expect!r} (task {task.title!r}) is not a regular "
                              f"expression: {e}") from None
        if task.prompt in first:
            raise ConfigError(f"{source}: {key}.prompt repeats eval.tasks[{first[task.prompt]}]'s (task "
                              f"{task.title!r}): give each prompt one task")
        first[task.prompt] = i


SETTINGS_LIMIT = 16 << 20  # bytes: a settings file, every setting with its prompts and tasks, takes kilobytes


def read_table(path: str | os.PathLike) -> dict:
    """acm.toml's table as written (or a run's config.toml), each way it can fail in one line; one
    that is no regular file (a FIFO would wait forever, /dev/zero fill the memory) or is over
    SETTINGS_LIMIT is one that cannot be read."""
    path = Path(path)
    try:
        return tomllib.loads(read_regular(path, SETTINGS_LIMIT).decode("utf-8"))
    except OSError as e:  # a folder, no permission, a link to nothing
        link = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
        raise ConfigError(f"{path}{link}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)"
        bom = " (the file starts with a byte-order mark, as Windows' Notepad saves it: save it as UTF-8 without one)"
        raise ConfigError(f"{path}: TOML syntax error: {e}{bom if _starts_with_a_bom(path) else ''}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep to be settings") from None
    except ValueError:  # tomllib reads an integer of thousands of digits with int(), which refuses it
        raise ConfigError(f"{path}: it holds {TOO_LONG}") from None


def _starts_with_a_bom(path: Path) -> bool:
    try:
        return read_regular(path, SETTINGS_LIMIT).startswith(b"\xef\xbb\xbf")
    except OSError:
        return False


def load(path: str | os.PathLike = CONFIG_NAME, written: bool = False) -> Config:
    """Read acm.toml (or, `written`, settings acm wrote: a run's config.toml); a missing file gives
    the defaults (rooted at its folder), a link that leads to no file is refused (reading it as
    missing would train on defaults). A file that leaves the preset out (the shipped acm.toml does)
    gets the one that suits this machine."""
    path = Path(path)
    table = read_table(path) if path.exists() or path.is_symlink() else {}
    return from_dict(table, source=str(path), root=path.parent, preset=machine_preset(table), written=written)


def machine_preset(table: dict) -> str | None:
    """The machine's preset where `table` names none: medium where the GPU can train it, tiny on a
    smaller GPU, micro on the CPU (`acm doctor` says why); never written to acm.toml."""
    if "preset" in _section(table, "model"):
        return None
    from core.hardware import suggested_preset  # MLX, only for a project that leaves the preset out

    return suggested_preset()[0]


HEADER = "# acm settings. Every key is described in README.md (section \"Settings\").\n\n"


def dumps(cfg: Config) -> str:
    """Every resolved value: what `acm config show` prints and a run records."""
    return HEADER + tomli_w.dumps(cfg.to_dict())


def save(cfg: Config, path: str | os.PathLike = CONFIG_NAME) -> None:
    """Write every resolved value atomically (a run's record of its settings, read back as a file
    acm wrote). A file there that does not load is never replaced."""
    validate(cfg, str(path), written=True)
    _refuse_a_broken_file(path, written=True)
    _write(path, dumps(cfg))


def save_settings(cfg: Config, path: str | os.PathLike = CONFIG_NAME, since: Config | None = None,
                  key: str | None = None) -> Config:
    """Write what the user set into acm.toml, keeping its comments, its order and its mode; defaults
    and the machine's choices stay unwritten, so the project still adapts to the machine it is copied
    to. With `since` (the settings `cfg` was made from), only what changed since then is written, into
    the file as it is now: what another acm or an editor wrote meanwhile stays; `key`, the setting
    the user just gave, is written even where `since` held its value already (the file may hold
    another since). Without `since` the file is made to hold cfg.explicit. Returns the settings the
    file now holds. One save at a time (the folder's lock); a read-only or broken file is refused in
    one line."""
    validate(cfg, str(path))
    path = Path(path)
    if path.is_symlink() and not path.exists():
        read_table(path)  # a link that leads to no file is refused as reading it is, never replaced
    with folder_held(path.resolve().parent) as held:  # a linked acm.toml: its file's folder
        if held:  # no other save under way: a temp file beside acm.toml is a killed save's
            sweep_temporaries(path.resolve().parent, glob.escape(path.resolve().name))
        text = _writable_text(path)
        table = cfg.explicit
        if since is not None:
            table = _changed(_parsed(text, path), since.explicit, cfg.explicit, tuple(key.split(".")) if key else ())
            cfg = from_dict(table, source=str(path), root=cfg.root, preset=machine_preset(table))
            validate(cfg, str(path))
        import tomlkit  # only a save keeps comments: a command that reads settings never loads it

        # parsed with "\n" line ends, as tomllib reads every value (a multi-line string too), so that
        # only what changed is written; a file written with Windows line ends gets them back
        doc = tomlkit.parse(text.replace("\r\n", "\n"))
        _merge(doc, table)
        out = tomlkit.dumps(doc)
        _write(path, out.replace("\n", "\r\n") if "\r\n" in text else out)
    return cfg


def _writable_text(path: Path) -> str:
    """acm.toml's text as written (its line ends too), refused where it cannot take a save."""
    if not path.exists():
        return HEADER
    mode = path.stat().st_mode
    if not mode & 0o222:
        raise ConfigError(f"not saved: {path} is read-only (mode {mode & 0o777:o}); make it writable "
                          f"(chmod u+w {path}) to save settings")
    _refuse_a_broken_file(path)
    with open(path, encoding="utf-8", newline="") as f:  # its line ends as written
        return f.read()


def _parsed(text: str, path: Path) -> dict:
    """acm.toml's table from the text about to be edited (an editor may have saved since it was checked)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not saved: {path}: TOML syntax error: {e} (fix the file by hand; acm does not "
                          f"write over it)") from None
    except ValueError:
        raise ConfigError(f"not saved: {path}: it holds {TOO_LONG} (fix the file by hand; acm does not "
                          "write over it)") from None


def _flat(table: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    """Every setting in a table by its path of keys (a list of tables, eval.tasks, is one value)."""
    out: dict[tuple, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _changed(current: dict, before: dict, after: dict, given: tuple[str, ...] = ()) -> dict:
    """`current` (the file as it is now) with what went from `before` to `after`: values set (the
    setting `given` whatever `before` held), and settings unset (a seq_len that follows a new preset)
    where the file still holds the value they had (one edited since stays), with the tables they
    leave empty. A new preset is followed again over the file's values (a seq_len set since, beyond
    the new context, is cut to it)."""
    was, now, file_before = _flat(before), _flat(after), copy.deepcopy(current)
    for keys, value in now.items():
        if keys == given or was.get(keys, MISSING) != value:
            node = current
            for key in keys[:-1]:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[keys[-1]] = value
    held = _flat(current)
    for keys in was.keys() - now.keys():
        if keys in held and held[keys] == was[keys]:
            _unset(current, *keys)
    preset = now.get(("model", "preset"))
    if preset in PRESETS and preset != was.get(("model", "preset")):
        with contextlib.suppress(ConfigError):  # a file that read badly before: validated as a whole below
            _follow_preset(current, from_dict(file_before, preset=machine_preset(file_before)))
    return current


def _merge(doc, table: dict) -> None:
    """Make tomlkit container `doc` hold `table`'s values, changing only what differs."""
    import tomlkit  # loaded by save_settings already

    for key in [k for k in doc if k not in table]:
        del doc[key]
    for key, value in table.items():
        if isinstance(value, dict):
            if not isinstance(doc.get(key), dict):
                doc[key] = tomlkit.table()
            _merge(doc[key], value)
        elif doc.get(key) != value:
            doc[key] = value


def _refuse_a_broken_file(path: str | os.PathLike, written: bool = False) -> None:
    """A file that does not load (its TOML or a value in it, perhaps edited since it was read) holds
    what the user chose: writing over it would put defaults or older values there."""
    if Path(path).exists():
        try:
            load(path, written)
        except ConfigError as e:
            raise ConfigError(f"not saved: {e} (fix the file by hand; acm does not write over it)") from None


def _write(path: str | os.PathLike, text: str) -> None:
    try:
        write_text(path, text)
    except OSError as e:  # an immutable file, a read-only folder, a full disk
        raise ConfigError(f"not saved: cannot write {path} ({write_failure(e) or e.strerror or e})") from None


def describe() -> list[tuple[str, Any, str, str]]:
    """(key, default, allowed, help) for every setting: the README table and the settings pane."""
    rows = []

    def walk(cls, obj, prefix):
        hints = get_type_hints(cls)
        for f in _setting_fields(cls):
            typ, val = hints[f.name], getattr(obj, f.name)
            if is_dataclass(typ):
                walk(typ, val, f"{prefix}{f.name}.")
                continue
            rows.append((prefix + f.name, val, _allowed(f.metadata, typ), _help(f.metadata)))

    walk(Config, Config(), "")
    return rows


def _help(m) -> str:
    """A setting's help; a list of tables' also says what each key of a table holds."""
    if not m.get("item"):
        return m.get("help", "")
    keys = "; ".join(f"`{f.name}`: {f.metadata['help']}" for f in _setting_fields(m["item"]))
    return f"{m['help']}. Each table: {keys}"


def _allowed(m, typ) -> str:
    """The allowed column of a setting: its kind, choices or range; a list of tables names its keys."""
    if m.get("item"):
        return f"a list of tables ({', '.join(f.name for f in _setting_fields(m['item']))})"
    if m.get("duration"):
        return "a duration (90s, 10m, 1h30m; at most 8760h) or empty"
    if m.get("choices"):
        return ", ".join(map(str, m["choices"]))
    if any(m.get(k) is not None for k in ("min", "max", "above")):
        return _range_words(m["min"], m["max"], m.get("above"))
    return _type_word({"str": str, "int": int, "float": float, "bool": bool, "list": list}[typ.__name__])


def get_value(cfg: Config, key: str) -> Any:
    """The value of a dotted key, e.g. get_value(cfg, "train.pretrain.steps")."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def written_value(cfg: Config, key: str) -> Any:
    """A dotted key's value as the user set it (`get_value`'s where they did not), which can differ
    from the value in effect: a stage's seq_len set for a larger model is cut to the context of the
    machine's preset."""
    return _flat(cfg.explicit).get(tuple(key.split(".")), get_value(cfg, key))


def format_value(value: Any) -> str:
    """A value as TOML writes it ("data", 0.5, true, ["a"]); a list of tables as inline tables, one
    a line as tomli-w lays out a long list (the Settings pane's cell shows its first line), so the
    text reads back with parse_value."""
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list) and any(is_dataclass(v) or isinstance(v, dict) for v in value):
        return "[\n" + "".join(f"    {format_value(v)},\n" for v in value) + "]"
    return tomli_w.dumps({"v": value})[4:].strip()


def one_line(value: Any) -> str:
    """A value as TOML writes it, on one line (a list inline, as `acm config set` takes it back)."""
    if isinstance(value, list):
        return "[" + ", ".join(one_line(v) for v in value) + "]"
    return format_value(value)


def _toml_error(text: str) -> str:
    """Why `text` is not a TOML value, its column counted in the text as typed."""
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as e:
        return re.sub(r"\(at line 1, column (\d+)\)", lambda m: f"(at column {int(m.group(1)) - len('v = ')})", str(e))
    except ValueError:
        return f"it is {TOO_LONG}"
    return ""


def parse_value(text: str) -> Any:
    """A TOML value if the text is one (42, 0.5, true, ["a"]), else the text itself, as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except ValueError:  # an integer of thousands of digits, which tomllib's int() refuses
        return TooLong(text)


class TooLong(str):
    """Text `parse_value` read as a number too long for any setting (a string setting takes it as text)."""


def with_value(cfg: Config, key: str, text: str, source: str = CONFIG_NAME) -> tuple[Config, list[str]]:
    """`cfg` with one setting changed (the text parsed as TOML, else taken as a string), validated.

    Only `key` joins what the user set. On a new model.preset, the vocabulary aimed for and each
    seq_len unset or at the old preset's context follow the preset; a seq_len set beyond its context
    is cut to it. Returns the new settings and what else changed.
    """
    _known_key(key, source)
    table = copy.deepcopy(cfg.explicit)
    *parents, leaf = key.split(".")
    node = table
    for part in parents:
        node = node.setdefault(part, {})
    value = node[leaf] = _typed_value(key, text, source)
    notes = _follow_preset(table, cfg) if key == "model.preset" and isinstance(value, str) and value in PRESETS else []
    preset = cfg.model.preset if "preset" not in _section(table, "model") else None  # the machine's stays
    return from_dict(table, source=source, root=cfg.root, preset=preset), notes


def _typed_value(key: str, text: str, source: str) -> Any:
    """The text of `key`'s new value as that setting takes it: TOML, else text; text for a string
    setting (a duration of 90: "90"); a comma-separated list for a list. A value that starts and ends
    as a list or table must read as TOML, and a data or runs folder must be named."""
    value, default = parse_value(text), get_value(Config(), key)
    if isinstance(default, str) and isinstance(value, int | float | TooLong):  # time 90: the text "90"
        value = text.strip()
    elif isinstance(value, TooLong):
        raise ConfigError(f"{source}: {key} = {text[:12]}… is {TOO_LONG}")
    if key in ("paths.data", "paths.runs") and not str(value).strip():  # would be the project's own folder
        raise ConfigError(f"{source}: {key} is empty; give a folder (by default {default!r})")
    if isinstance(default, list) and isinstance(value, str):  # a,b for ["a", "b"]
        bare = text.strip()
        if _meant_as_toml(bare):  # and not TOML (a quoted "[...]" is text)
            typed = text if len(text) <= SHOWN_CHARACTERS else shown(text)
            raise ConfigError(f"{source}: {key} = {typed} does not read as TOML ({_toml_error(text)}); a list is "
                              '["a", "b"], a table {prompt = "...", expect = "..."}, and text in quotes')
        value = [part.strip() for part in value.split(",") if part.strip()]
    return value


def _meant_as_toml(bare: str) -> bool:
    """Text that starts and ends as a list or table, or starts as one with a quoted string, a
    number or another list or table in it and never closes (one cut short: `["a", "b"`); a bash
    test, `[ -d x ] && ...` or `[ "$1" ] || exit 1`, is text."""
    if not bare or bare[0] not in "[{":
        return False
    if bare[-1] in "]}":
        return True
    return "]" not in bare and "}" not in bare and bare[1:].lstrip()[:1] in tuple("\"'[{0123456789")


def _known_key(key: str, source: str) -> None:
    keys = [row[0] for row in describe()]
    if key not in keys:
        close = closest(key, keys)
        hint = f"did you mean {close}?" if close else "see `acm config show`"
        raise ConfigError(f"{source}: unknown setting {key}; {hint}")


def _follow_preset(table: dict, old: Config) -> list[str]:
    """On a new preset in `table`: a vocabulary target or a seq_len that was the old preset's (its
    vocabulary, its context: a cut an earlier switch made) follows the new one, and a seq_len set
    beyond the new context is cut to it. What changed, in words."""
    new, notes, before = PRESETS[table["model"]["preset"]], [], old.model.shape()
    tok = _section(table, "tokenizer")
    if tok.get("vocab_size") == before.vocab_size != new.vocab_size:
        _unset(table, "tokenizer", "vocab_size")
        notes.append(f"tokenizer.vocab_size follows the preset ({new.vocab_size})")
    for stage in ("pretrain", "finetune"):
        sc = _section(_section(table, "train"), stage)
        if sc.get("seq_len") == before.n_ctx != new.n_ctx:
            _unset(table, "train", stage, "seq_len")
            notes.append(f"train.{stage}.seq_len follows the preset "
                         f"({min(getattr(Config().train, stage).seq_len, new.n_ctx)})")
        elif sc.get("seq_len", 0) > new.n_ctx:
            sc["seq_len"] = new.n_ctx
            notes.append(f"train.{stage}.seq_len = {new.n_ctx} (the preset's context)")
    return notes


def _unset(table: dict, *keys: str) -> None:
    """Remove a setting from `table`, and the tables it leaves empty (no bare header stays in acm.toml)."""
    *parents, leaf = keys
    nodes = [table]
    for key in parents:
        nodes.append(nodes[-1][key])
    del nodes[-1][leaf]
    for node, key in zip(reversed(nodes[:-1]), reversed(parents)):
        if node[key]:
            break
        del node[key]


def markdown_table() -> str:
    """The README's settings table (`python -m core.config` prints it)."""
    rows = ["| key | default | allowed | what |", "|---|---|---|---|"]
    for key, default, allowed, help in describe():
        shown = f"`{format_value(default)}`"
        if isinstance(default, list):  # on one line: ["a", "b"]
            shown = "`[" + ", ".join(map(format_value, default)) + "]`"
        if isinstance(default, list) and len(shown) > 40:
            shown = f"{len(default)} entries (below)"
        rows.append(f"| `{key}` | {shown} | {allowed} | {help} |")
    return "\n".join(rows)


def tasks_table() -> str:
    """The README's table of the default evaluation tasks (`python -m core.config tasks` prints it)."""
    rows = ["| area | task | expects (a regular expression) |", "|---|---|---|"]
    for area, tasks in TASK_AREAS.items():
        for prompt, expect in tasks:
            shown = expect.replace("|", r"\|")  # a pipe ends a table cell, even in code
            rows.append(f"| {area} | {EvalTask(prompt).title} | `{shown}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(tasks_table() if sys.argv[1:] == ["tasks"] else markdown_table())

"""Every file and folder acm reads or writes, named in one place.

`Paths` is built from the settings (`cfg.paths` resolved against acm.toml's folder, as
`Config.locations`); the run-folder names are static, since a run is addressed by its folder alone.

    data/<corpus>/manifest.json, shards-*/        a corpus (language, code)
    data/language/hf-cache/, data/code/repos/     downloads and clones
    data/code/hf/<dataset>-<hash>/                rows streamed from a Hugging Face code dataset
    data/tokenizer/tokenizer.json, tokenizer-meta.json
    data/tokens/<corpus>/manifest.json, chunk-*   token shards
    runs/<run>/config.toml, eval.json, writer.lock, use.lock
    runs/<run>/<stage>/metrics.jsonl, train.log, samples.jsonl, status.json, control.json, detached.log, checkpoints/
    runs/<run>/<stage>/tokenizer.json             the tokenizer the stage trained with
    runs/<run>/<stage>/launch.toml                what a training process acm starts reads
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import AcmError

CORPORA = ("language", "code")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Paths:
    data: Path
    runs: Path

    # ------------------------------------------------------------ corpora

    def corpus(self, kind: str) -> Path:
        if kind not in CORPORA:
            raise AcmError(f"unknown corpus {kind!r}: language or code")
        return self.data / kind

    def corpus_manifest(self, kind: str) -> Path:
        return self.corpus(kind) / MANIFEST

    @property
    def hf_cache(self) -> Path:
        return self.corpus("language") / "hf-cache"

    @property
    def clones(self) -> Path:
        return self.corpus("code") / "repos"

    @property
    def hf_code(self) -> Path:
        """Rows streamed from Hugging Face code datasets, kept so a fetch resumes."""
        return self.corpus("code") / "hf"

    # ------------------------------------------------------------ tokenizer and shards

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    @property
    def tokenizer_file(self) -> Path:
        return self.tokenizer / "tokenizer.json"

    @property
    def tokenizer_meta(self) -> Path:
        return self.tokenizer / "tokenizer-meta.json"

    @property
    def inputs_lock(self) -> Path:
        """Held shared by training, exclusively by a rebuild of the tokenizer or the shards."""
        return self.data / "training-inputs.lock"

    @property
    def pipeline_lock(self) -> Path:
        """Held by the one pipeline (`acm pipeline run`, the Setup pane's chain) running its stages."""
        return self.data / "pipeline.lock"

    def shards(self, kind: str) -> Path:
        if kind not in CORPORA:
            raise AcmError(f"unknown corpus {kind!r}: language or code")
        return self.data / "tokens" / kind

    def shards_manifest(self, kind: str) -> Path:
        return self.shards(kind) / MANIFEST

    # ------------------------------------------------------------ runs

    def run(self, name: str) -> Path:
        """A run's folder, by its name as it is on disk (an older acm took any name a folder can
        have, so a lookup is not held to check_run_name); a name that would leave runs/ is refused."""
        if not name or "/" in name or "\0" in name or name.startswith("."):
            raise AcmError(_invalid(name))
        if len(name.encode(errors="replace")) > 255:  # no file system has such a folder
            raise AcmError(f"no run is named {name[:20]!r}… ({len(name)} characters)")
        return self.runs / name

    @staticmethod
    def run_config(run: Path) -> Path:
        return run / "config.toml"

    @staticmethod
    def writer_lock(run: Path) -> Path:
        return run / "writer.lock"

    @staticmethod
    def use_lock(run: Path) -> Path:
        return run / "use.lock"

    @staticmethod
    def eval_lock(run: Path) -> Path:
        return run / "eval.lock"

    @staticmethod
    def eval_results(run: Path) -> Path:
        return run / "eval.json"

    @staticmethod
    def stage(run: Path, stage: str) -> Path:
        return run / stage

    @staticmethod
    def checkpoints(run: Path, stage: str) -> Path:
        return run / stage / "checkpoints"

    @staticmethod
    def stage_tokenizer(run: Path, stage: str) -> Path:
        """A copy of the tokenizer the stage trained with, so that its checkpoints outlive a retrained one."""
        return run / stage / "tokenizer.json"

    @staticmethod
    def metrics(run: Path, stage: str) -> Path:
        return run / stage / "metrics.jsonl"

    @staticmethod
    def train_log(run: Path, stage: str) -> Path:
        return run / stage / "train.log"

    @staticmethod
    def samples(run: Path, stage: str) -> Path:
        """The scripts generated at the stage's validation checks (train.samples), one JSON line each."""
        return run / stage / "samples.jsonl"

    @staticmethod
    def status(run: Path, stage: str) -> Path:
        return run / stage / "status.json"

    @staticmethod
    def control(run: Path, stage: str) -> Path:
        return run / stage / "control.json"

    @staticmethod
    def detached_log(run: Path, stage: str) -> Path:
        return run / stage / "detached.log"

    @staticmethod
    def ranks_log(run: Path, stage: str) -> Path:
        """The launcher's and the ranks' messages of a stage on several ranks."""
        return run / stage / "ranks.log"

    @staticmethod
    def launch_snapshot(run: Path, stage: str) -> Path:
        """The settings and the launch a training process acm starts reads (core/train/snapshot.py)."""
        return run / stage / "launch.toml"


def setting_path(root: Path, written: str) -> Path:
    """A path a setting names, as its user means it: a leading ~ read as a shell reads it (before
    the settings file's folder is put in front, which would hide it), else relative to that folder."""
    return root / home_expanded(Path(written))


def home_expanded(path: Path) -> Path:
    """`path` with a leading ~ or ~user read as a shell reads it; a user unknown here (or no home)
    leaves it as written, as bash does, where Python would raise."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def lies_in(path: Path, folder: Path) -> bool:
    """Whether `path`, links followed, lies in `folder`: what acm reads of a source or a build stays
    inside it (a name such as "../x" or "/etc/x", or a link out, does not; nor a link loop)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL
        return False


RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # acm's own names: <preset>-<date>-<time>; no option's "-"
RUN_NAME_MAX = 100  # characters: a folder name every file system takes, with room for the paths under it


def check_run_name(name: str) -> None:
    """A name for a run acm creates (a new run, a rename): ASCII letters, digits, '-' and '_', so that
    it is one word in a shell, on every file system and in every listing."""
    if not RUN_NAME.fullmatch(name):
        raise AcmError(_invalid(name))
    if len(name) > RUN_NAME_MAX:
        raise AcmError(f"invalid run name {name[:20]!r}… ({len(name)} characters): at most {RUN_NAME_MAX}")


def _invalid(name: str) -> str:
    return f"invalid run name {name!r}: use letters, digits, '-' and '_' (not a '-' first)"

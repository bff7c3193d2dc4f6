"""`acm export`: a checkpoint as a folder in the format people run it with, plus a model card.

- `mlx` (default): what `mlx_lm.load` reads as-is (gpt2, or gpt_bigcode for an untied head);
- `hf`: what `transformers` loads as GPT2LMHeadModel;
- `gguf`: one GPT-2 GGUF file with the tokenizer inside, for llama.cpp and the tools built on it.

The folder is built aside (`.NAME.partial`) and renamed into place, so a failed export leaves
nothing half-written, and an existing non-empty folder is never overwritten. What can be refused
(a format or dtype unknown, weights a dtype cannot hold, the folder, no checkpoint) is refused
before anything is written. An export holds a lock in its `.partial` folder while it writes; one
killed (`kill -9`, a crash) leaves it unheld, and the next export into the same folder sweeps it,
to whichever name it writes: only a `.partial` folder holding that lock file, which acm made, is
ever removed. An empty folder given as the target keeps its mode.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from core.atomic import writing
from core.config import Config
from core.errors import AcmError
from core.generate.decode import LoadedModel, check_range, load_model
from core.generate.export import card, commands, gguf_file, hf, mlx_lm
from core.locks import Flock
from core.paths import home_expanded
from core.progress import CancelToken

FORMATS = ("mlx", "hf", "gguf")
DTYPES = ("float32", "bfloat16", "float16")
WRITERS = {"mlx": mlx_lm.write, "hf": hf.write, "gguf": gguf_file.write}


def export_checkpoint(cfg: Config, to: str | Path, run: str | None = None, stage: str | None = None,
                      which: str = "best", dtype: str = "float32", fmt: str = "mlx",
                      cancel: CancelToken | None = None) -> dict:
    """Export a run's checkpoint (read in its float32 master weights); what was written."""
    _check_choices(dtype, fmt)
    target = _check_target(to)
    lm = load_model(cfg, run, stage, which, master_weights=True)
    return (export_model(lm, target, dtype, fmt, card.facts(cfg, lm), cancel)
            | ({"notice": lm.notice} if lm.notice else {}))


def export_model(lm: LoadedModel, to: str | Path, dtype: str, fmt: str, facts: dict | None = None,
                 cancel: CancelToken | None = None) -> dict:
    """Write `lm` as `fmt` into a folder beside `to`, renamed into place once complete. A cancel
    (Ctrl-C) is taken between its parts, up to the rename: nothing is left at `to` then."""
    cancel = cancel or CancelToken()
    _check_choices(dtype, fmt)
    to = _check_target(to)
    check_range(lm.checkpoint, lm.model.parameters(), dtype, "export it as bfloat16 or float32")
    tmp = to.with_name(f".{to.name}.partial")
    to.parent.mkdir(parents=True, exist_ok=True)
    sweep_partial_exports(to.parent)
    with writing(f"the export {to}"):
        _claim(tmp, to)
    with writing(f"the export {to}", tmp), _held(tmp):
        cancel.check()
        detail = WRITERS[fmt](lm, tmp, dtype)
        cancel.check()
        card.write(tmp, lm, fmt, dtype, detail, facts or {})
        cancel.check()
        (tmp / LOCK).unlink()  # held still, by the open file, until the folder is in place
        if to.exists():  # an empty folder the user made: the export takes its place and its mode
            tmp.chmod(stat.S_IMODE(to.stat().st_mode))
            to.rmdir()
        tmp.rename(to)
    plan = commands.plan(lm, (facts or {}).get("sampling", {}))
    return {"folder": str(to), "checkpoint": str(lm.checkpoint), "preset": lm.model.shape.name, "dtype": dtype,
            "format": fmt, "files": sorted(p.name for p in to.iterdir()),
            "try": commands.try_line(fmt, plan, str(to))} | detail


def _check_choices(dtype: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise AcmError(f"unknown export format {fmt!r}: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise AcmError(f"unknown dtype {dtype!r}: {', '.join(DTYPES)}")


LOCK = ".export.lock"
UNLOCKED_GRACE_S = 60  # a .partial folder without its lock file: an export this young may be about to take it


def _claim(tmp: Path, to: Path) -> None:
    """Make `tmp`, this export's own: where it exists, another export to `to` made it (the system's
    mkdir says so at once: a check before it could be answered by two exports alike, and the second
    then removed the first's folder), or it is no export's, and left alone."""
    try:
        tmp.mkdir()
    except FileExistsError:
        if (tmp / LOCK).exists() or _young(tmp):
            raise AcmError(f"another export to {to} is under way ({tmp} is held): "
                           "wait for it or choose a new folder") from None
        raise AcmError(f"{tmp}, where an export to {to} is built, exists and is no export under way: "
                       "move it away or choose a new folder") from None


@contextlib.contextmanager
def _held(tmp: Path) -> Iterator[None]:
    """Hold `tmp`'s lock while the export writes (the system drops it when a process dies)."""
    lock = Flock(tmp / LOCK)
    lock.try_acquire(grace=0)  # a folder of its own, just made: no one else holds it
    try:
        yield
    finally:
        lock.release()


def sweep_partial_exports(folder: Path) -> list[Path]:
    """Remove the `.NAME.partial` folders killed exports left in `folder`: each holding an export's
    lock file (a folder of that name without one is not acm's, whatever it holds) that no process
    holds; what was removed."""
    swept = []
    for tmp in folder.glob(".*.partial") if folder.is_dir() else []:
        if tmp.is_dir() and not tmp.is_symlink() and (tmp / LOCK).is_file() and not _in_use(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            swept.append(tmp)
    return swept


def _young(tmp: Path) -> bool:
    """A folder made within UNLOCKED_GRACE_S: an export may be about to take its lock."""
    try:
        return time.time() - tmp.stat().st_mtime < UNLOCKED_GRACE_S
    except OSError:
        return True


def _in_use(tmp: Path) -> bool:
    lock = Flock(tmp / LOCK)
    if not lock.try_acquire(grace=0):  # a probe: a folder held a moment too long is swept next time
        return True
    lock.release()
    return False


def _current_folder() -> Path | None:
    """The working folder as the system holds it (links resolved), None where it is gone."""
    try:
        return Path(os.getcwd()).resolve()
    except OSError:
        return None


def _check_target(to: str | Path) -> Path:
    """The folder to write, its real path, `~` read as a shell reads it; refused in one line where it
    cannot be a new folder: empty, the current folder or one holding it (the export would take its
    place beneath the shell), a file, or a folder that holds anything."""
    if "\0" in str(to):
        raise AcmError(f"{ascii(str(to))} holds a NUL character, which no folder's name can")
    if not str(to).strip():
        raise AcmError("the folder to export to is empty: name a new folder (--to exports/NAME)")
    to = Path(os.path.realpath(home_expanded(Path(to))))  # links and `..` read as the system reads them
    here = _current_folder()
    if here is not None and (to == here or to in here.parents):
        raise AcmError(f"{to} is the current folder{'' if to == here else ' or holds it'}: export to a new folder "
                       "in it (--to exports/NAME)")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise AcmError(f"{to} exists{' and is not empty' if to.is_dir() else ' and is a file'}: choose a new folder")
    return to

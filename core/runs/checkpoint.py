"""Checkpoints: model, optimizer state, step, RNG state, config and tokenizer hash, written atomically.

A checkpoint is a folder `step-NNNNNNN/` holding model.safetensors, optimizer.safetensors and
state.json (written last). It is assembled in `.tmp-step-NNNNNNN/` and renamed into place, so a
kill at any moment leaves every earlier checkpoint loadable; leftovers are swept on the next save.
Pruning keeps the last `keep_last` and the best by validation loss.

The arrays are first joined on the device into new buffers, a few per file (`snapshot`, on the
thread that owns MLX: queued, not waited for); `write` then only reads them, so the trainer runs it on a thread
of its own while the steps go on, and the copy to host memory happens there too.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from core import config
from core.atomic import open_regular, read_json, start_writeback, writing
from core.errors import AcmError
from core.runs import host_copy

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"


@dataclass
class Checkpoint:
    path: Path
    state: dict

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def val_loss(self) -> float | None:
        return self.state.get("val_loss")

    @property
    def run(self) -> Path:
        """The run folder it belongs to (runs/<run>/<stage>/checkpoints/step-N)."""
        return self.path.parent.parent.parent

    @property
    def stage(self) -> str:
        return self.path.parent.parent.name


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


IN_WRITING = ".tmp-step-"  # a checkpoint being assembled (or one a kill left half written)


def being_written(folder: Path) -> bool:
    """A checkpoint is being assembled in `folder` (or a kill left one half written)."""
    return any(folder.glob(f"{IN_WRITING}*"))


def sweep_partial(folder: Path) -> None:
    """Remove checkpoints a kill or a full disk left half written, or half removed."""
    for stale in [*folder.glob(f"{IN_WRITING}*"), *folder.glob(".pruned-step-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def save(folder: Path, step: int, params: dict, optimizer_state: dict, state: dict) -> Path:
    """`write` of the arrays as they are now (call on the thread that owns MLX)."""
    return write(folder, step, snapshot(params, optimizer_state), state)


@dataclass
class Blob:
    """One safetensors file as it will be written: its header (length prefix included) and the bytes
    of all its arrays, in the header's order, in a few buffers of the device's (each under
    CHUNK_BYTES: MLX's shapes are 32-bit, so one buffer cannot pass 2 GiB)."""
    header: bytes
    chunks: list[mx.array]  # uint8


CHUNK_BYTES = 1 << 30
WRITEBACK = True  # False: the bytes reach the disk at the final fsync only (the bench's comparison)


@dataclass
class Snapshot:
    """A checkpoint's files as they were at one step."""
    model: Blob
    optimizer: Blob


DTYPES = {mx.float32: "F32", mx.float16: "F16", mx.bfloat16: "BF16", mx.float64: "F64", mx.bool_: "BOOL",
          mx.int8: "I8", mx.int16: "I16", mx.int32: "I32", mx.int64: "I64",
          mx.uint8: "U8", mx.uint16: "U16", mx.uint32: "U32", mx.uint64: "U64"}


def snapshot(params: dict, optimizer_state: dict) -> Snapshot:
    """The weights and optimizer state joined on the device into new buffers (`Blob`), which no later
    step reads, donates or frees; queued, not waited for. Another thread may then write them
    (`write`) while MLX moves on: copies to host memory and write calls of 64 MB pieces
    (`host_copy`), so the writer seldom needs Python's lock while the steps go on."""
    trees = [dict(tree_flatten(params)),
             {k: v for k, v in tree_flatten(optimizer_state) if isinstance(v, mx.array)}]
    blobs = [_blob(tree) for tree in trees]
    mx.async_eval([c for b in blobs for c in b.chunks])
    return Snapshot(*blobs)


def _blob(tensors: dict[str, mx.array]) -> Blob:
    header, parts, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        parts += _byte_parts(a)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return Blob(len(text).to_bytes(8, "little") + text, _chunks(parts))


def _byte_parts(a: mx.array) -> list[mx.array]:
    """a's row-major bytes (whatever its layout), in pieces of at most CHUNK_BYTES."""
    flat = mx.contiguous(a).reshape(-1)
    step = max(CHUNK_BYTES // a.itemsize, 1)
    return [flat[i:i + step].view(mx.uint8) for i in range(0, flat.size, step)]


def _chunks(parts: list[mx.array]) -> list[mx.array]:
    """The pieces joined into new buffers of at most CHUNK_BYTES each; a lone piece is copied so
    that it is a buffer of its own too."""
    groups: list[list[mx.array]] = []
    size = 0
    for p in parts:
        if not groups or size + p.size > CHUNK_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.size
    return [mx.concatenate(g) if len(g) > 1 else g[0] * mx.array(1, mx.uint8) for g in groups]


class LateState:
    """A checkpoint's state.json given after its arrays: the writer writes the weights while the
    trainer validates, then waits here for the state (which records the validation loss).
    `abandon` (validation failed or was interrupted) makes that write fail, its partial files removed."""

    def __init__(self):
        self._given = threading.Event()
        self._state: dict | None = None

    def give(self, state: dict) -> None:
        self._state = state
        self._given.set()

    def abandon(self) -> None:
        self._given.set()

    def __call__(self) -> dict:
        self._given.wait()
        if self._state is None:
            raise RuntimeError("the checkpoint was abandoned before its state was given")
        return self._state


def write(folder: Path, step: int, arrays: Snapshot, state: dict | Callable[[], dict]) -> Path:
    """Write a checkpoint aside and rename it into place; a disk error removes the partial files and
    is one line (the earlier checkpoints stay as they were). Only reads the snapshot's arrays (waiting
    for their copy): any thread may call it. `state` may be a callable (a `LateState`), called once
    the arrays are written."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep_partial(folder)
    final = folder / f"step-{step:07d}"
    tmp = folder / f"{IN_WRITING}{step:07d}"
    with writing(f"checkpoint {final.name} into {folder}", tmp):
        tmp.mkdir()
        _write(tmp, step, arrays, state)
    if final.exists():  # saving the same step again (save-now at a checkpoint step)
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(folder)
    return final


def _write(tmp: Path, step: int, arrays: Snapshot, state: dict | Callable[[], dict]) -> None:
    write_safetensors(tmp / "model.safetensors", arrays.model)
    write_safetensors(tmp / OPTIMIZER, arrays.optimizer)
    if callable(state):
        state = state()
    with open(tmp / STATE, "w") as f:
        json.dump(state | {"step": step}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def write_safetensors(path: Path, blob: Blob) -> None:
    """A safetensors file (the format MLX reads), fsynced: the header, then every array's bytes,
    copied to host memory a piece at a time (`host_copy`), each piece written in one call and sent
    on to the disk at once, so that the fsync at the end finds little left to write."""
    with open(path, "wb") as f:
        f.write(blob.header)
        done = len(blob.header)
        for chunk in blob.chunks:
            for piece in host_copy.pieces(chunk):
                f.write(piece)
                f.flush()
                if WRITEBACK:
                    start_writeback(f.fileno(), done, len(piece))
                done += len(piece)
        f.flush()
        os.fsync(f.fileno())


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first (folders without a readable state.json are skipped)."""
    out = []
    for d in sorted(folder.glob("step-*")) if folder.exists() else []:
        state = read_state(d)
        if state is not None:
            out.append(Checkpoint(d, state))
    return out


STATE_SHAPE = {"step": int, "val_loss": (int, float, None), "config": dict, "tokenizer_sha256": str,
               "planned_steps": (int, None), "planned_warmup": (int, None), "planned_eval_batches": (int, None),
               "planned_most": (int, None),
               "best_val_loss": (int, float, None), "tokens_seen": int, "checks_without_best": int, "ranks": int,
               "global_batch": int}


def read_state(folder: Path) -> dict | None:
    """A checkpoint's state.json, or None when it is missing or damaged: no step, a wrong type, a
    step that is negative or not its folder's (acm names, orders and prunes checkpoints by the
    folder, resumes from the step: a file that disagrees was edited, and neither can be trusted), or a
    number no stage writes (`_in_range`). Its settings are checked where they are used (`trained_with`):
    a resume trains with acm.toml's, and a check acm adds later must not make older checkpoints
    unreadable."""
    state = read_json(folder / STATE, STATE_SHAPE)
    return state if state is not None and _names(folder, state.get("step")) and _in_range(state) else None


COUNT_LIMIT = 2**63  # a step or a token count a run's files hold is below it: one above is damage
COUNTS = ("tokens_seen", "checks_without_best", "planned_steps", "planned_warmup", "planned_eval_batches",
          "planned_most")  # state.json's counts: none below zero
AT_LEAST_ONE = ("ranks", "global_batch")


def _in_range(state: dict) -> bool:
    """state.json's numbers as a stage writes them: counts, a batch and ranks of at least one, finite
    losses (a stage whose validation loss is not finite stops before it saves)."""
    def count(key, low):
        v = state.get(key)
        return v is None or (not isinstance(v, bool) and low <= v < COUNT_LIMIT)

    def loss(v):
        return v is None or (isinstance(v, float) and math.isfinite(v)) or (type(v) is int and abs(v) < COUNT_LIMIT)

    return (all(count(k, 0) for k in COUNTS) and all(count(k, 1) for k in AT_LEAST_ONE)
            and all(loss(state.get(k)) for k in ("val_loss", "best_val_loss")))


def _names(folder: Path, step) -> bool:
    """`step` is a count and the one `folder`'s name gives (as `write` names it)."""
    return type(step) is int and step >= 0 and folder.name == f"step-{step:07d}"


SHAPED_BY = ("model", "tokenizer")  # the settings of a checkpoint's model, all that loading it needs


def trained_with(ck: Checkpoint) -> config.Config:
    """The model's settings `ck` was trained with (its state.json's SHAPED_BY tables), checked as
    acm.toml's are: ConfigError naming its state.json. Its other settings are left out, so a bound
    that a later release puts on one of them (a stage's grad_accum) leaves the checkpoint readable."""
    table = ck.state["config"]
    if isinstance(table, dict):
        table = {k: v for k, v in table.items() if k in SHAPED_BY}
    return config.from_dict(table, source=str(ck.path / STATE), root=ck.run, written=True)


def damaged(folder: Path) -> list[Path]:
    """Checkpoint folders whose state.json is missing or unreadable (skipped by list_checkpoints)."""
    return [d for d in sorted(folder.glob("step-*")) if read_state(d) is None]


def latest(folder: Path) -> Checkpoint | None:
    cks = list_checkpoints(folder)
    return cks[-1] if cks else None


def best(folder: Path) -> Checkpoint | None:
    cks = list_checkpoints(folder)
    scored = [c for c in cks if c.val_loss is not None]
    if scored:
        return min(scored, key=lambda c: (c.val_loss, -c.step))
    return cks[-1] if cks else None


def prune(folder: Path, keep_last: int) -> None:
    cks = list_checkpoints(folder)
    keep = {c.path for c in cks[-keep_last:]}
    b = best(folder)
    if b is not None:
        keep.add(b.path)
    for c in cks:
        if c.path not in keep:  # out of step-* at once, then deleted: never seen half removed
            gone = c.path.with_name(f".pruned-{c.path.name}")
            try:
                c.path.rename(gone)
            except OSError:
                gone = c.path
            shutil.rmtree(gone, ignore_errors=True)


def load_weights(ck: Checkpoint) -> dict:
    """The model's parameters as a nested tree (all that generating, evaluating and exporting need);
    a damaged file is one clear error."""
    return _loaded(ck, "model.safetensors")


def load_optimizer(ck: Checkpoint) -> dict | None:
    """The optimizer's state as a nested tree, or None where the checkpoint has none (its file was
    deleted); a damaged file is one clear error, saying that deleting it resumes afresh."""
    if not (ck.path / OPTIMIZER).exists():
        return None
    return _loaded(ck, OPTIMIZER, f": its {OPTIMIZER} is damaged", "delete that file to resume with a fresh "
                   "optimizer, or the checkpoint to fall back to an earlier one")


def _loaded(ck: Checkpoint, name: str, what: str = " is damaged",
            fix: str = "delete it to fall back to an earlier one") -> dict:
    try:
        return tree_unflatten(list(_load(ck.path / name).items()))
    except Exception as e:
        raise AcmError(f"checkpoint {ck.path}{what} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                       f"{fix}") from None


def _load(path: Path) -> dict:
    """A safetensors file's arrays, once its size is the one its header gives: MLX reads a file
    with bytes added in the middle, its weights shifted, without a word."""
    with open_regular(path) as f:  # a FIFO put there would hold the command forever
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(min(n, 100_000_000)))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, RecursionError, AttributeError, KeyError, TypeError, IndexError):
            raise ValueError(f"{path.name} has no readable safetensors header") from None  # not JSON, not laid out
        size = os.fstat(f.fileno()).st_size
    if size != 8 + n + end:
        raise ValueError(f"{path.name} is {size} bytes where its header says {8 + n + end}")
    return mx.load(str(path))


def check_shapes(ck: Checkpoint, params: dict, expected: dict) -> None:
    """The checkpoint's weights have the model's names and shapes: one that does not (a damaged or
    hand-edited file MLX still loads) is one line, not an error deep in the first forward pass."""
    got = {k: tuple(v.shape) for k, v in tree_flatten(params)}
    want = {k: tuple(v.shape) for k, v in tree_flatten(expected)}
    if got != want:
        wrong = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
        others = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise AcmError(f"checkpoint {ck.path} is damaged (weights {wrong[0]}{others} do not fit the model); "
                       "delete it to fall back to an earlier one")

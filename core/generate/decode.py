"""Text generation from a checkpoint: incremental decoding with the KV cache, streamed.

`stream_generate` yields a `Chunk` for each piece of new text (tokens/s, memory and why it stopped
on the last). Runs on the engine thread in the TUI. A prompt longer than the context is cut from
the left (keeping its end) with a notice, never a crash.
"""
from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from core import runs
from core.config import Config
from core.errors import AcmError
from core.generate.sampling import PENALTY_WINDOW, SamplingParams, sample
from core.model import model_shape
from core.model.gpt import DTYPES, GPT
from core.paths import Paths
from core.runs import checkpoint
from core.tokenizer.bpe import BOS_ID, EOS_ID, AcmTokenizer, tokenizer_with


@dataclass
class Chunk:
    text: str  # new text since the previous chunk
    token: int | None
    generated: int  # tokens generated so far
    tokens_per_s: float = 0.0
    prompt_tokens: int = 0
    time_to_first_token_s: float = 0.0
    peak_memory: int = 0
    finish_reason: str | None = None  # "stop", "eos", "length", "context", "cancelled"
    notice: str = ""

    def pace(self) -> str:
        """"12 tokens, 154.1 tok/s, first token 35 ms": a rate needs two tokens (it is timed from the
        first), so one token says only how long it took."""
        rate = f", {self.tokens_per_s:,.1f} tok/s" if self.generated > 1 else ""
        return (f"{self.generated} token{'' if self.generated == 1 else 's'}{rate}, first token "
                f"{self.time_to_first_token_s * 1e3:.0f} ms")


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: AcmTokenizer
    checkpoint: Path
    run: str
    stage: str
    step: int
    info: dict = field(default_factory=dict)
    notice: str = ""  # newer checkpoints passed over as damaged, said where the model is named
    saved: int = 0  # its state.json's mtime (ns): which save of that checkpoint was loaded


def stage_folders(cfg: Config, run: str | None = None, stage: str | None = None) -> list[tuple[Path, str]]:
    """(run folder, stage) in the order a checkpoint is looked for: the named (or each, newest
    first) run, fine-tune before pretrain."""
    run_paths = [runs.existing_run(cfg, run)] if run is not None else runs.list_runs(cfg)
    return [(r, st) for r in run_paths for st in ([stage] if stage else ["finetune", "pretrain"])]


def find_checkpoint(cfg: Config, run: str | None = None, stage: str | None = None,
                    which: str = "best") -> tuple[checkpoint.Checkpoint, Path, str]:
    """The checkpoint to generate from: the first of `stage_folders` with a readable one (one whose
    checkpoints are all damaged is passed over: `passed_over` says so), else one line saying why."""
    return first_checkpoint(cfg, stage_folders(cfg, run, stage), run, which)


def first_checkpoint(cfg: Config, folders: list[tuple[Path, str]], run: str | None,
                     which: str) -> tuple[checkpoint.Checkpoint, Path, str]:
    """find_checkpoint over the stage folders already listed for `run` (None: every run)."""
    for r, st in folders:
        folder = Paths.checkpoints(r, st)
        ck = checkpoint.best(folder) if which == "best" else checkpoint.latest(folder)
        if ck is not None:
            return ck, r, st
    where = f"run {run}" if run is not None else str(cfg.locations.runs)
    bad = [d for r, st in folders for d in checkpoint.damaged(Paths.checkpoints(r, st))]
    if bad:
        which_bad = f"{bad[-1]} has" if len(bad) == 1 else f"{bad[-1]} and {len(bad) - 1} more have"
        raise AcmError(f"no readable checkpoint in {where}: {which_bad} a missing or damaged state.json; "
                       f"restore it, or train a new run")
    if run is not None and len(folders) == 1:  # --stage named: that stage is what is missing
        (_, stage), = folders
        raise AcmError(f"run {run} has no {stage} checkpoint: train it first (acm train {stage} --run "
                       f"{shlex.quote(run)})")
    raise AcmError(f"no checkpoint in {where}: train a model first (acm train pretrain)")


def passed_over(ck: checkpoint.Checkpoint, before: list[tuple[Path, str]], which: str = "best") -> str:
    """A line naming the damaged checkpoints the choice of `ck` passed over (empty when none): in the
    stage folders looked in `before` it, all of theirs; in its own folder, the newer ones (for the
    latest) or any (for the best: one of them might have been it)."""
    said = [f"{r.name}/{st}: {', '.join(d.name for d in bad)}"
            for r, st in before if (bad := checkpoint.damaged(Paths.checkpoints(r, st)))]
    own = [d.name for d in checkpoint.damaged(ck.path.parent) if which == "best" or d.name > ck.path.name]
    said += [", ".join(own)] if own else []
    if not said:
        return ""
    using = f"{ck.run.name}/{ck.stage} {ck.path.name}"
    return f"passed over as damaged (no readable state.json): {'; '.join(said)}; using {using}"


def checkpoint_tokenizer(cfg: Config, ck: checkpoint.Checkpoint, run_path: Path, stage: str) -> AcmTokenizer:
    """The tokenizer `ck` was trained with: the project's while it is the same, else the copy its
    stage kept, or the run's other stage (a retrained tokenizer leaves earlier runs usable)."""
    copies = [Paths.stage_tokenizer(run_path, s) for s in (stage, *(s for s in runs.TRAINING_STAGES if s != stage))]
    found = tokenizer_with(ck.state.get("tokenizer_sha256", ""), cfg, *copies)  # a fine-tune shares its pretrain's
    if found is not None:
        return found
    raise AcmError(f"{ck.path} was trained with a tokenizer that neither {cfg.locations.tokenizer_file} nor a "
                   f"readable copy in its run holds ({copies[0]}; stages trained before stages kept theirs have "
                   f"none): retrain the tokenizer it was made with, or train a new run")


PICKS = 5  # a checkpoint its run's training removed while it was read is chosen again, this many times at most


class Pruned(AcmError):
    """The checkpoint chosen was removed while it was read: its run, training, keeps only its latest."""


def load_model(cfg: Config, run: str | None = None, stage: str | None = None, which: str = "best",
               master_weights: bool = False, compute_dtype: str | None = None,
               held: LoadedModel | None = None) -> LoadedModel:
    """A checkpoint ready to generate: its weights in the compute dtype (the run's, or `compute_dtype`:
    float32 decodes as a float32 export does), unless `master_weights` keeps the float32 copy
    training made (for export). The choice is made again each call, so "the latest run's best"
    follows new runs and checkpoints; `held` (a model loaded earlier the same way) is given back
    where the choice is still its checkpoint, as saved then. A checkpoint that the run's training
    prunes while it is read is not damaged: the choice is made again."""
    for _ in range(PICKS - 1):
        with contextlib.suppress(Pruned):
            return _load_model(cfg, run, stage, which, master_weights, compute_dtype, held)
    return _load_model(cfg, run, stage, which, master_weights, compute_dtype, held)


def _load_model(cfg: Config, run: str | None, stage: str | None, which: str, master_weights: bool,
                compute_dtype: str | None, held: LoadedModel | None) -> LoadedModel:
    folders = stage_folders(cfg, run, stage)
    ck, run_path, st = first_checkpoint(cfg, folders, run, which)
    try:
        return _loaded_model(cfg, ck, run_path, st, folders, which, master_weights, compute_dtype, held)
    except (AcmError, OSError):
        if ck.path.exists():
            raise
        raise Pruned(f"checkpoint {ck.path} was removed while it was read (its run is training and keeps "
                     f"train.{st}.keep_last checkpoints): try again") from None


def _loaded_model(cfg: Config, ck: checkpoint.Checkpoint, run_path: Path, st: str, folders: list, which: str,
                  master_weights: bool, compute_dtype: str | None, held: LoadedModel | None) -> LoadedModel:
    before = folders[:folders.index((run_path, st))]
    saved = _saved_at(ck)
    ck_cfg = checkpoint.trained_with(ck) if "config" in ck.state else cfg  # the shape it was trained with
    dtype = compute_dtype or ck_cfg.model.compute_dtype
    if held is not None and (held.checkpoint, held.saved, held.model.compute_dtype) == (ck.path, saved, DTYPES[dtype]):
        return replace(held, notice=passed_over(ck, before, which))
    tok = checkpoint_tokenizer(cfg, ck, run_path, st)
    model = GPT(model_shape(ck_cfg, tok), dtype)
    params = checkpoint.load_weights(ck)
    checkpoint.check_shapes(ck, params, model.parameters())
    model.update(params)
    if not master_weights:  # an export checks them against the dtype it writes
        check_range(ck.path, params, dtype, "decode it in bfloat16 or float32")
    if not master_weights and model.compute_dtype != mx.float32:  # no per-step cast of every weight
        model.set_dtype(model.compute_dtype)
    mx.eval(model.parameters())
    return LoadedModel(model, tok, ck.path, run_path.name, st, ck.step, {"val_loss": ck.val_loss},
                       passed_over(ck, before, which), saved)


def largest_weight(params) -> float | None:
    """The largest absolute weight, or None where any weight is NaN or infinite (one reduction)."""
    values = [v for _, v in tree_flatten(params)]
    finite = mx.all(mx.stack([mx.isfinite(v).all() for v in values]))
    largest = mx.max(mx.stack([mx.abs(v).max().astype(mx.float32) for v in values]))
    mx.eval(finite, largest)
    return largest.item() if finite.item() else None


class UnusableWeights(AcmError):
    """A checkpoint whose weights are NaN or infinite, or beyond the dtype they are used in."""


def check_range(path: Path, params, dtype: str, instead: str) -> None:
    """Weights that can be used in `dtype`: finite (a diverged stage saves NaN), and within its range
    (float16 tops out at 65,504: beyond it they would be infinities); else one line, never text
    sampled from noise, saying `instead` what to do about the range."""
    largest = largest_weight(params)
    if largest is None:
        raise UnusableWeights(f"{path} holds NaN or infinite weights (its training diverged): use an earlier "
                              "checkpoint, or another run")
    limit = mx.finfo(DTYPES[dtype]).max
    if largest > limit:
        raise UnusableWeights(f"{path} has weights up to {largest:,.0f}, beyond {dtype}'s {limit:,.0f}: {instead}")


def _saved_at(ck: checkpoint.Checkpoint) -> int:
    """When `ck`'s state.json was written (ns): a run deleted and trained again under the same name
    can hold another checkpoint at the same path."""
    try:
        return (ck.path / checkpoint.STATE).stat().st_mtime_ns
    except OSError:
        return 0


class IncrementalDecoder:
    """Turns a growing list of ids into new text, holding back an incomplete UTF-8 character."""

    def __init__(self, tok: AcmTokenizer):
        self.tok, self.ids, self.emitted = tok, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new = text[len(self.emitted):]
        self.emitted = text
        return new


def generate_tokens(model: GPT, ids: list[int], params: SamplingParams,
                    should_stop=lambda: False) -> Iterator[int]:
    """Token ids after the prompt `ids`, one KV-cached step each, until max_tokens, <EOS> (yielded
    last), a full context or should_stop(). The next step is queued (mx.async_eval) before the
    current token is read, so the device never waits for Python."""
    n_ctx = model.shape.n_ctx
    cache = model.make_cache()
    key = mx.random.key(params.seed % 2**64)  # any integer seeds the generator
    penalise = params.repetition_penalty != 1.0
    seen = mx.array(ids[-PENALTY_WINDOW:], dtype=mx.int32)

    def step(inputs: mx.array) -> mx.array:
        nonlocal key, seen
        sub = None
        if params.temperature > 0:  # greedy decoding needs no randomness (and no extra kernels)
            key, sub = mx.random.split(key)
        token = sample(model(inputs, cache)[0, -1], params, seen if penalise else None, sub)
        if penalise:
            seen = mx.concatenate([seen[1 - PENALTY_WINDOW:], token.reshape(1).astype(mx.int32)])
        return token

    token = step(mx.array([ids]))
    mx.async_eval(token)
    for n in range(params.max_tokens):
        upcoming = None
        # the last token is never fed, but a client that exports run in feeds it: the context holds
        # the prompt and the new tokens, as in every other path (batch.decode_batch, the exports)
        if n + 1 < params.max_tokens and cache[0].offset < n_ctx - 1:
            upcoming = step(token.reshape(1, 1))
            mx.async_eval(upcoming)
        value = int(token.item())
        yield value
        if value == EOS_ID or upcoming is None or should_stop():
            return
        token = upcoming


def fit_prompt(ids: list[int], n_ctx: int, max_tokens: int) -> tuple[list[int], str]:
    """The prompt's ids, keeping its end and leaving room for at least min(max_tokens, n_ctx / 4)
    new tokens, and a notice when it was cut."""
    budget = max(n_ctx - min(max_tokens, n_ctx // 4), 1)
    if len(ids) <= budget:
        return ids, ""
    return ids[-budget:], (f"prompt of {len(ids)} tokens cut to its last {budget} to fit the {n_ctx}-token "
                           "context with room for new tokens")


def stream_generate(lm: LoadedModel, prompt: str, params: SamplingParams,
                    should_stop=lambda: False) -> Iterator[Chunk]:
    model, tok = lm.model, lm.tokenizer
    n_ctx = model.shape.n_ctx
    ids, notice = fit_prompt([BOS_ID] + tok.encode(prompt), n_ctx, params.max_tokens)
    room = n_ctx - len(ids)
    decoder = IncrementalDecoder(tok)
    stop_strings = tuple(s for s in params.stop if s)
    start = time.perf_counter()
    t_first, generated, text, reason = None, 0, "", "length"

    def chunk(piece: str, token: int | None, finish: str | None) -> Chunk:
        nonlocal notice
        elapsed = time.perf_counter() - (t_first or start)
        rate = (generated - 1) / elapsed if elapsed > 0 and generated > 1 else 0.0
        c = Chunk(piece, token, generated, rate, len(ids), (t_first or start) - start, mx.get_peak_memory(),
                  finish, notice)
        notice = ""
        return c

    shown = 0  # characters of `text` yielded: the end that may begin a stop string is held back
    for token in generate_tokens(model, ids, params, should_stop):
        generated += 1
        if t_first is None:
            t_first = time.perf_counter()
        if token == EOS_ID:
            reason = "eos"
            break
        text += decoder.add(token)
        hits = [text.index(s) for s in stop_strings if s in text]
        if hits:
            yield chunk(text[shown:min(hits)], token, "stop")
            return
        ready = len(text) - _stop_begun(text, stop_strings)
        if ready > shown or notice:
            yield chunk(text[shown:ready], token, None)
            shown = ready
    else:
        reason = "cancelled" if should_stop() else ("context" if params.max_tokens > generated >= room else reason)
    yield chunk(text[shown:], None, reason)


def _stop_begun(text: str, stop_strings: tuple[str, ...]) -> int:
    """How many characters at the end of `text` begin one of `stop_strings`: held back until the
    next tokens show whether the stop string follows (then the text is cut where it begins)."""
    return max((k for s in stop_strings for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)


def generate_text(lm: LoadedModel, prompt: str, params: SamplingParams) -> tuple[str, Chunk]:
    """The whole continuation and the last chunk (its stats)."""
    text, last = "", None
    for chunk in stream_generate(lm, prompt, params):
        text += chunk.text
        last = chunk
    return text, last

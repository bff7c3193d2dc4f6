"""The training stage: pretrain on language, fine-tune on code, on the engine thread.

`Trainer.run()` must be called on the thread that owns MLX (the engine). Other threads steer it
through `Control` (pause, resume, stop, save now) and hear from it through callbacks that receive
typed events (core/runs/events.py: Metrics, Eval, Checkpoint, State, Log, Sample); the trainer
writes no file itself but checkpoints (on a writer thread) and timings.json: a `Recorder` keeps the
stage's files. With several
ranks (`mlx.launch`), gradients and losses are averaged across them and only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import mlx.core as mx

from core import runs
from core.atomic import sweep_temporaries
from core.config import Config, StageConfig, parse_duration
from core.data.corpus import sha256_file
from core.devices import rank_figures
from core.errors import AcmError
from core.hardware import device_info, memory_limit, memory_now, peak_flops
from core.locks import reading_inputs
from core.model import model_shape
from core.paths import Paths
from core.runs import checkpoint, prepare_run
from core.runs.background import Background
from core.runs.events import Callback, Checkpoint, Eval, Event, Log, Metrics, Recorder, State
from core.runs.health import Health
from core.runs.writer import RunLock
from core.tokenizer.bpe import keep_copy, load_tokenizer
from core.tokenizer.shards import open_tokens
from core.train.batches import Batches, DrawnAhead
from core.train.budget import HOURS, UNPLANNED, Calibration, Plan, describe_seconds, per_step
from core.train.memory import reckoned_bytes
from core.train.ranks import join_group
from core.train.samples import LiveSampler
from core.train.schedule import lr_at
from core.train.state import TrainState, cut_batches
from core.train.step import Built, build_steps, built_for, new_model, take_kept
from core.train.timings import Timings
from core.train.tracking import trackers
from core.train.validation import group_most, mean_loss

CORPUS = {"pretrain": "language", "finetune": "code"}
OTHER = {"pretrain": "code", "finetune": "language"}  # the corpus a stage replays


class TrainingError(AcmError):
    """Training stopped on a problem the user should know about (e.g. a non-finite loss)."""


class Control:
    """Commands from other threads, checked by the training loop between steps."""

    def __init__(self):
        self._stop, self._save, self._running = threading.Event(), threading.Event(), threading.Event()
        self._running.set()
        self.interrupted = False  # the stop was Ctrl-C's: the command exits 130 once the stage has saved

    def interrupt(self) -> None:
        self.interrupted = True
        self.stop()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    def save_now(self) -> None:
        self._save.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def pending(self) -> bool:
        """Something to act on between steps: a stop, a pause or a save."""
        return self._stop.is_set() or self._save.is_set() or not self._running.is_set()

    def take_save(self) -> bool:
        if self._save.is_set():
            self._save.clear()
            return True
        return False

    def wait_while_paused(self, timeout: float = 0.1) -> None:
        self._running.wait(timeout)


@dataclass
class StageResult:
    stage: str
    run: Path
    step: int
    stopped_early: bool
    last_checkpoint: Path | None
    best_val_loss: float | None
    already_done: bool = False  # a resumed stage that had finished its plan: nothing was trained
    done: bool = False  # the stage reached its end (its plan, or early stopping), not only this call's
    interrupted: bool = False  # stopped by a Ctrl-C of the process it trained in


class Throughput:
    """Tokens per second over the steps since the last report, counting training time only.

    A window ends when its last step's loss was read, not when the report is made: the next step,
    queued meanwhile, runs on the device while the thread reports, and a thread held up before it
    reports (a busy machine) would otherwise see that step done almost at once. A stage's last
    report gives the rate of the report before it, where one was made since the last check: its own
    steps were run before the losses before them were read, where queuing a step runs it (MLX on a
    CPU: a 2-core machine's last one-step window read 47,614 tokens/s among 2,900s)."""

    def __init__(self, tokens_per_step: int, clock: Callable[[], float] = time.perf_counter):
        self.tokens_per_step, self.clock = tokens_per_step, clock
        self.restart()

    def restart(self) -> None:
        """A new window from now (after a check, a pause: time that is not training)."""
        self.t0 = self.read_at = self.clock()
        self.tokens = 0
        self.before: tuple[float, float] | None = None  # the last window taken since: tokens/s, seconds a step

    def step(self) -> None:
        """A step's loss was just read."""
        self.tokens += self.tokens_per_step
        self.read_at = self.clock()

    def take(self, last: bool = False) -> tuple[float, float]:
        """(tokens/s, seconds a step) since the last take or restart (`last`, the stage's last
        report: the window before, where there is one); the next window starts where this one's
        last step was read."""
        dt = self.read_at - self.t0
        rate = self.tokens / dt if dt > 0 else 0.0
        step_time = dt / max(self.tokens / self.tokens_per_step, 1)
        measured = self.before if last and self.before is not None else (rate, step_time)
        self.before = (rate, step_time)
        self.t0, self.tokens = self.read_at, 0
        return measured


class Trainer:
    """One stage of one run: its settings as given (`sc`, never changed), where it stands (`state`),
    and what the loop needs, built by `run()` on the engine thread."""

    def __init__(self, cfg: Config, stage: str, run: Path, emit: Callback | None = None, control: Control | None = None,
                 resume: bool = False, max_steps: int | None = None,
                 clock: Callable[[], float] = time.perf_counter, named_steps: int | None = None):
        if stage not in CORPUS:
            raise AcmError(f"unknown stage {stage!r}: pretrain or finetune")
        self.cfg, self.stage, self.run_path = cfg, stage, run
        self.sc: StageConfig = getattr(cfg.train, stage)
        self.budget_s = parse_duration(self.sc.time, f"train.{stage}.time") if self.sc.time else None
        self.callbacks: list[Callback] = [emit] if emit else []
        self.control = control or Control()
        self.resume = resume
        self.max_steps = max_steps  # stop after this many steps in this call (the schedule keeps the plan)
        self.clock = clock  # what time budgets, ETAs and tokens/s are measured with
        # steps asked for by name (--steps): a resumed run's new total, past its plan; a new stage's
        # most under a time budget
        self.named_steps = named_steps
        self.group = join_group()
        self.rank, self.world = self.group.rank(), self.group.size()
        self.is_main = self.rank == 0
        self.state = TrainState.start(self.sc, self.world)
        # what the loop obeys: with several ranks, the commands every rank agreed on at a step
        self.steer = self.control if self.world == 1 else Control()
        self.polled_at: int | None = None
        self.recorder: Recorder | None = None  # rank 0's, once the stage can start
        self.trackers: list = []
        self.said_before_recording: list[Event] = []  # events of the setup, recorded once the stage starts
        self.ck_dir = Paths.checkpoints(run, stage)
        # built by _setup
        self.tok = self.shape = self.batches = self.val_batches = self.model = self.opt = None
        self.drawn: DrawnAhead | None = None  # the training batches, each drawn while the step before is queued
        self.val_group_most = 1  # validation batches a forward pass may read
        self.fused_step = self.grad_step = self.apply_step = self.eval_loss = None
        # the loop's
        self.started = 0.0  # when run() began: a time budget counts from here
        self.start_step = 0  # the step this call began at
        self.end = 0  # the step this call stops at
        self.early_stopped = False
        self.last_ck: Path | None = None
        self.val_loss: float | None = None  # the latest validation check's
        self.calibration: Calibration | None = None  # until the first steps are timed
        self.meter = Throughput(self._tokens_per_step(), clock)
        self.health = Health(cfg.train.alert_spike)  # its alerts go to the stage's log
        self.sampler = LiveSampler(cfg, stage, self.sc.seed, clock)  # train.samples at validation checks
        self.peak = self.limit = self.flops_per_token = None
        self.timings = Timings(clock)  # where this call's wall time goes, said at its end
        self.writer = Background("acm-checkpoint-writer")  # one checkpoint written at a time, off the loop
        self.saved_step: int | None = None  # the step of the last checkpoint begun in this call

    # ------------------------------------------------------------ events

    def emit(self, event: Event) -> None:
        """Hand an event to every callback (the recorder first); other ranks stay silent."""
        if self.is_main:
            if self.recorder is None:
                self.said_before_recording.append(event)
            for callback in self.callbacks:
                callback(event)

    def log(self, text: str) -> None:
        self.emit(Log(stage=self.stage, text=text))

    def _state(self, state: str, **fields) -> None:
        self.emit(State(stage=self.stage, state=state, step=self.state.step, total=self.state.total_steps, **fields))

    # ------------------------------------------------------------ setup

    def _setup(self) -> None:
        sc = self.sc
        corpus = CORPUS[self.stage]
        check_continued_tokenizer(self.cfg, self.run_path, self.stage, self.resume)
        self.tok, train, val, pairs = open_inputs(self.cfg, self.stage)
        # the model's vocabulary is the one the tokenizer reached; the run's settings record it
        cfg = self.cfg = replace(self.cfg, tokenizer=replace(self.cfg.tokenizer, vocab_size=self.tok.vocab_size))
        self.shape = model_shape(cfg, self.tok)
        other = OTHER[self.stage]
        replay = open_tokens(cfg, other, "train", self.tok) if sc.replay > 0 else None
        self.batches = Batches(train, sc.seq_len, sc.batch_size, sc.seed, self.rank, self.world,
                               what=f"{corpus} train shards", at_documents=sc.start_at_documents,
                               replay=replay, replay_share=sc.replay, replay_what=f"{other} train shards",
                               micro_batches=self.state.grad_accum, pairs=pairs, pairs_share=pairs_share(sc),
                               pairs_what=f"{corpus} train shards' comment-to-command scripts")
        self.val_batches = Batches(val, sc.seq_len, sc.batch_size, sc.seed, self.rank, self.world,
                                   what=f"{corpus} val shards") if val.num_tokens > sc.seq_len + 1 else None
        self.drawn = DrawnAhead(self.batches.train)
        self.val_group_most = group_most(self.shape, sc, cfg.model.compute_dtype, memory_limit(), self.world)
        if self.is_main:
            checkpoint.sweep_partial(self.ck_dir)  # frees what a kill or a full disk left
        mx.random.seed(sc.seed)
        readied = take_kept(built_for(cfg, self.shape, sc)) if self.world == 1 else None
        self.model, self.opt, bare = self._new_model(cfg, readied)
        self._load_weights()
        if self.is_main:
            self._start_recording(cfg)
            self._say_unmixed(sc)
        mx.eval(self.opt.state)
        # the optimizer's buffers hold the weights from now on, and the model reads them only in a step
        # (or a check's samples, given them); a fresh step's trace leaves the model its stand-ins
        self.model.update(self.opt.parameters() if bare is None else bare)
        # Nothing in a step draws from MLX's RNG (no dropout): the only randomness after
        # initialisation is the batch order, a pure function of (seed, step) saved in checkpoints.
        self.fused_step, self.grad_step, self.apply_step, self.eval_loss = readied.steps if readied else build_steps(
            self.model, self.opt, sc.grad_clip, self.world, self.cfg.train.allreduce_buckets)

    def _say_unmixed(self, sc: StageConfig) -> None:
        """A share of the batch that rounds to no row (replay 0.5 of one row: the stage's own corpus
        keeps its row) is said in the log, never dropped silently."""
        for key, share, rows in (("replay", sc.replay, self.batches.replayed),
                                 ("pairs_share", pairs_share(sc), self.batches.paired)):
            if share > 0 and rows == 0:
                self.log(f"train.{self.stage}.{key} = {share:g} draws no row of a {self.batches.rows}-row batch "
                         f"(the stage's own corpus keeps one): raise batch_size or grad_accum for it to count")

    def _new_model(self, cfg: Config, readied: Built | None) -> tuple:
        """The stage's freshly initialised model and optimizer; where the command's readying left a
        model built the same (`readied`), that one, its optimizer's state replaced by the fresh one's
        whole, so that its compiled steps serve the stage as they are. Third: the parameters the
        readied model held, its step's trace's stand-ins (no memory), to hold again once set up."""
        if readied is None:
            return *new_model(cfg, self.shape, self.sc), None
        bare = readied.model.parameters()
        readied.opt.state.clear()  # the readying's moments go before the stage's are made
        model, opt = new_model(cfg, self.shape, self.sc)
        readied.model.update(model.parameters())  # shapes to check a checkpoint against
        readied.opt.state.update(opt.state)  # in place: the compiled steps read this dict
        return readied.model, readied.opt, bare

    def _start_recording(self, cfg: Config) -> None:
        """The run's files (its config.toml, metrics, log), written only once the stage can start:
        a refused resume leaves them as they were. What was said before reaches the files too."""
        sweep_temporaries(self.run_path, "config.toml")  # a killed stage's, this stage the run's one writer now
        sweep_temporaries(Paths.stage(self.run_path, self.stage), "tokenizer.json", "status.json", "timings.json")
        prepare_run(self._as_planned(cfg), self.run_path, self.stage)
        keep_copy(self.tok, Paths.stage_tokenizer(self.run_path, self.stage))
        self.recorder = Recorder(self.run_path, self.stage, self.state.total_steps)
        self.trackers = trackers(cfg, self.run_path, self.stage)  # train.report_to: none by default
        for event in self.said_before_recording:
            for callback in (self.recorder, *self.trackers):
                callback(event)
        self.callbacks[:0] = [self.recorder, *self.trackers]
        self.said_before_recording = []

    def _as_planned(self, cfg: Config) -> Config:
        """`cfg` with this stage's steps and warmup as it trains them where its plan is fixed (a
        resume's, kept from its checkpoint; a time budget's, once fitted), so that the run's
        config.toml says what the stage ran, not what acm.toml says now."""
        st = self.state
        if not st.planned or st.total_steps == UNPLANNED:
            return cfg
        sc = replace(getattr(cfg.train, self.stage), steps=st.total_steps, warmup_steps=st.warmup_steps)
        return replace(cfg, train=replace(cfg.train, **{self.stage: sc}))

    def _load_weights(self) -> None:
        """Resume this stage's latest checkpoint, or fine-tune from the best pretrain one."""
        existing, base = starting_point(self.run_path, self.stage, self.resume)
        if existing:
            self._restore(existing)
        elif base is not None:
            self._check_tokenizer(base)
            params = checkpoint.load_weights(base)
            checkpoint.check_shapes(base, params, self.model.parameters())
            self.opt.load(params, None)
            val = f" (val loss {base.val_loss:.4f})" if base.val_loss is not None else ""
            self.log(f"fine-tuning from pretrain step {base.step}{val}")

    def _check_tokenizer(self, ck: checkpoint.Checkpoint) -> None:
        if ck.state.get("tokenizer_sha256") != self.tok.sha256:
            raise AcmError(another_tokenizer(self.cfg, ck))

    def _restore(self, ck: checkpoint.Checkpoint) -> None:
        for bad in checkpoint.damaged(self.ck_dir):
            if bad.name > ck.path.name:
                self.log(f"checkpoint {bad.name} is damaged (its state.json is missing or damaged); "
                         f"resuming from {ck.path.name} instead")
        self._check_tokenizer(ck)
        params, opt_state = checkpoint.load_weights(ck), checkpoint.load_optimizer(ck)
        checkpoint.check_shapes(ck, params, self.model.parameters())
        self.opt.load(params, opt_state)
        if opt_state is None:
            self.log(f"checkpoint {ck.path.name} has no {checkpoint.OPTIMIZER}: the optimizer starts afresh "
                     "from its weights, so this resume is not exact")
        self.state = self.state.restored(ck.step, ck.state, self.sc.eval_batches)
        self.start_step = ck.step
        self._keep_saved_most(ck)
        if ck.step < self.state.total_steps:  # a finished plan is said once, as such (_already_done)
            self.log(f"resumed {self.stage} from step {ck.step}")
            if self.state.eval_batches:
                self.log(f"validation reads {self.state.eval_batches} of its {self.sc.eval_batches} batches "
                         "a check, as the time budget's plan cut them")
        self._say_optimizer_change(ck.state)
        self._keep_global_batch(ck.state)

    def _keep_saved_most(self, ck: checkpoint.Checkpoint) -> None:
        """A budget's stage saved before its steps were timed recorded the most steps asked for
        (planned_most): a resume with a budget keeps them as its cap; one without, as its plan, with
        the warmup a plan of that many steps gives. Steps asked for now, by name, win."""
        most = ck.state.get("planned_most")
        if type(most) is int and most > ck.step and not self.state.planned and self.named_steps is None:
            self.named_steps = most  # with a budget, _begin caps its plan at it
            if self.budget_s:
                return
            self.state.warmup_steps = min(self.state.warmup_steps, max(1, most // 10))
        self._extend_plan(ck)

    def _say_optimizer_change(self, saved: dict) -> None:
        """A run resumed under another optimizer than it trained with (acm.toml changed, or its
        defaults did) goes on with the new one, said once so that nobody is surprised."""
        before = saved
        for key in ("config", "train", self.stage):
            before = before.get(key) if isinstance(before, dict) else None
        before = before.get("optimizer", "adamw") if isinstance(before, dict) else "adamw"
        if isinstance(before, str) and before != self.sc.optimizer:
            self.log(f"this {self.stage} trained with {before} and resumes with {self.sc.optimizer} "
                     f"(train.{self.stage}.optimizer); its learning rates are acm.toml's now too")

    def _extend_plan(self, ck: checkpoint.Checkpoint) -> None:
        """A resumed stage keeps the steps it planned (a time budget's or the configured ones), so
        resuming never extends it; steps asked for by name (named_steps) may."""
        if self.named_steps is None:
            return
        if self.named_steps < ck.step:
            raise AcmError(f"run {self.run_path.name}'s {self.stage} is at step {ck.step}: --steps "
                           f"{self.named_steps} is behind it; give more steps than {ck.step}")
        self._apply_plan(self.named_steps, self.state.warmup_steps)

    def _keep_global_batch(self, saved: dict) -> None:
        """A run resumed on another number of ranks (or another batch_size) keeps the sequences of
        a step: micro-batches make up what fewer ranks cannot hold, so the next loss is the same."""
        rows, sc = saved.get("global_batch"), self.sc
        if not rows or rows == self.state.global_batch:
            return
        per_pass = sc.batch_size * self.world
        if rows % per_pass:
            raise AcmError(f"run {self.run_path.name} trains on {rows} sequences a step ({saved.get('ranks', 1)} "
                           f"rank(s)); {self.world} rank(s) of train.{self.stage}.batch_size {sc.batch_size} cannot "
                           f"make that up: choose ranks x batch_size dividing {rows}")
        self.state.grad_accum = self.batches.micro_batches = rows // per_pass
        self.log(f"{self.stage}: {self.world} rank(s) x {self.state.grad_accum} micro-batch(es) of {sc.batch_size} "
                 f"keep the run's {rows} sequences a step (it ran on {saved.get('ranks', 1)} rank(s))")

    def _tokens_per_step(self) -> int:
        return self.state.global_batch * self.sc.seq_len

    # ------------------------------------------------------------ one step

    def _lr(self, step: int) -> float:
        """The learning rate of step `step` (0-based) on the plan in effect."""
        sc, st = self.sc, self.state
        return lr_at(step, sc.learning_rate, st.warmup_steps, st.total_steps, sc.min_lr_ratio)

    def _train_step(self, step: int) -> tuple[mx.array, mx.array]:
        """Queue step `step` on the device: (loss, gradient norm), not yet evaluated."""
        self.opt.learning_rate = self._lr(step)
        if self.state.grad_accum == 1:
            x, y = self.drawn.take(step)
            out = self.fused_step(mx.array(x), mx.array(y))
            self.drawn.draw(step + 1)  # while this step is queued
        else:
            out = self._accumulated_step(step)
        mx.async_eval(*out, self.opt.state)
        return out

    def _accumulated_step(self, step: int) -> tuple[mx.array, mx.array]:
        total_loss, total_grads = None, None
        n = self.state.grad_accum
        for micro in range(n):  # summed in float32
            x, y = self.batches.train(step, micro)
            loss, grads = self.grad_step(mx.array(x), mx.array(y))
            grads = {k: g.astype(mx.float32) for k, g in grads.items()}
            total_loss = loss if total_loss is None else total_loss + loss
            total_grads = grads if total_grads is None else {k: total_grads[k] + g for k, g in grads.items()}
            mx.eval(total_loss, total_grads)
        return self.apply_step(total_loss / n, {k: g / n for k, g in total_grads.items()})

    def _finite_loss(self, loss: mx.array, step: int) -> float:
        """The step's loss (waiting for this step only); a non-finite loss stops the stage."""
        return self._finite(float(loss.item()), "loss", step + 1)

    def _finite(self, value: float, what: str, step: int) -> float:
        """`value`, the `what` of `step`; a non-finite one stops the stage before anything is saved of it."""
        if not math.isfinite(value):
            where = (f"; the last good checkpoint is {self.last_ck.name}" if self.last_ck
                     else "; no checkpoint was written")
            raise TrainingError(f"{self.stage}: the {what} became {value} at step {step}{where} "
                                f"(lower train.{self.stage}.learning_rate?)")
        return value

    def evaluate(self) -> float | None:
        """The validation loss of the weights as they are; a non-finite one stops the stage (a step's
        update can make the weights so after its own loss was finite)."""
        if self.val_batches is None:
            return None
        with self.timings.aside("validation"):
            loss = mean_loss(self.eval_loss, self.val_batches.val, self._eval_batches(), self.val_group_most)
            return self._finite(float(loss.item()), "validation loss", self.state.step)

    def _eval_batches(self) -> int:
        """Batches a validation check reads: the time budget's cut where its plan made one."""
        return self.state.eval_batches or self.sc.eval_batches

    def save(self, step: int, val_loss: float | None, late: checkpoint.LateState | None = None) -> None:
        """Checkpoint the weights as they are now: copied on the device here (queued), then copied to
        host memory, written and pruned on the writer's thread while the steps go on. `_saved` says
        it (the Checkpoint event, last_ck) once the files are complete; the next save waits for it.
        With `late` the state is given afterwards through it: the arrays are written meanwhile."""
        if not self.is_main:
            return
        with self.timings.aside("checkpoints", saves=1):
            self._saved(wait=True)  # one write in flight
            arrays = checkpoint.snapshot(self.opt.parameters(), self.opt.checkpoint_state())
            state = late if late is not None else self._checkpoint_state(step, val_loss)
            self.writer.start(partial(self._write_checkpoint, step, arrays, state), tag=(step, val_loss))
            self.saved_step = step

    def _checkpoint_state(self, step: int, val_loss: float | None) -> dict:
        """A checkpoint's state.json. A budget's stage saved before its steps were timed has no plan
        yet, only the most steps asked for (planned_most): a resume fits its steps to the budget,
        at most those."""
        seed, st = self.sc.seed, self.state
        unplanned = ({"planned_steps": None, "planned_most": self.named_steps}
                     if self.budget_s and not st.planned and step < st.total_steps else {})
        return {
            "stage": self.stage, "val_loss": val_loss, "tokenizer_sha256": self.tok.sha256,
            **st.to_checkpoint(), **unplanned,
            "rng": {"batches": "numpy default_rng([seed, step, 0]), one global batch a step", "seed": seed,
                    "next_step": step},
            "data_position": {"step": step, "seed": seed, "tokens_seen": self.state.tokens_seen},
            "config": self.cfg.to_dict(), "time": time.time(),
        }

    def _write_checkpoint(self, step: int, arrays: checkpoint.Snapshot,
                          state: dict | checkpoint.LateState) -> Path:
        """On the writer's thread (it only reads the snapshot): the files, then the pruning of older ones."""
        path = checkpoint.write(self.ck_dir, step, arrays, state)
        checkpoint.prune(self.ck_dir, self.sc.keep_last)
        return path

    def _saved(self, wait: bool) -> None:
        """The checkpoint in writing, once complete (waited for when `wait`): said, and the last
        one from now; a failed write is the one line a save gives, raised here."""
        if not (self.writer.done or (wait and self.writer.pending)):
            return
        step, val_loss = self.writer.tag
        try:
            path = self.writer.take()
        except AcmError as e:
            last = self.last_ck
            raise AcmError(f"{e}; " + (f"the last checkpoint, {last.name}, is intact: free space, then resume"
                                       if last else "no earlier checkpoint exists")) from None
        self.last_ck = path
        self.emit(Checkpoint(stage=self.stage, step=step, path=str(path), val_loss=val_loss))

    # ------------------------------------------------------------ the stage

    def run(self) -> StageResult:
        self.started = self.clock()  # a time budget counts from here
        self.since = time.time()  # a command in the control file older than this was for a process gone
        self.timings.begin(self.started)
        fresh = self.is_main and not self.run_path.exists()  # made by this call
        # one writer per run; a resume or a fine-tune of a run that is there never makes it again (one
        # that is not is made and said to be missing, then removed, as a new run's)
        made_here = fresh or not (self.resume or self.stage == "finetune")
        lock = RunLock(self.run_path).acquire(self.stage, made_here) if self.is_main else None
        try:
            with reading_inputs(self.cfg.locations.inputs_lock):  # no rebuild replaces them meanwhile
                return self._setup_and_loop()
        except BaseException:
            if fresh and not any(checkpoint.list_checkpoints(Paths.checkpoints(self.run_path, s)) for s in CORPUS):
                shutil.rmtree(self.run_path, ignore_errors=True)  # a run that never got going leaves nothing
            raise
        finally:
            if lock is not None:
                lock.release()

    def _setup_and_loop(self) -> StageResult:
        self._setup()
        try:
            if self.start_step and self.start_step >= self.state.total_steps:
                return self._already_done()
            return self._loop()
        except BaseException as e:
            with contextlib.suppress(BaseException):  # the checkpoint in writing completes; the stage's error goes up
                self._saved(wait=True)
            with contextlib.suppress(OSError):  # a full disk may refuse this too; the error still goes up
                self._state("failed", error=str(e) or type(e).__name__)
            raise
        finally:
            if self.drawn is not None:
                self.drawn.close()
            if self.recorder is not None:
                self.recorder.close()
                for tracker in self.trackers:
                    tracker.close()

    def _poll_commands(self) -> None:
        """Commands left in the stage's control file by another process (acm runs, acm-tui). With
        several ranks every rank acts alike: on rank 0's command, and on a stop or save a signal gave
        any rank (one collective)."""
        command = runs.take_command(self.run_path, self.stage, self.since) if self.is_main else None
        wanted = [command == c for c in runs.COMMANDS]
        if self.world > 1:
            wanted[2] = wanted[2] or self.control.stopping
            wanted[3] = wanted[3] or self.control.take_save()
            wanted = mx.distributed.all_sum(mx.array(wanted, mx.int32)).tolist()
        steer = self.steer
        for want, act in zip(wanted, (steer.pause, steer.resume, steer.stop, steer.save_now)):
            if want:
                act()

    def _poll_at(self, step: int) -> None:
        """Poll at `step`: every step alone; with several ranks every log_every steps (a collective
        waits for the step in flight), once a step."""
        if self.world == 1:
            self._poll_commands()
        elif step % self.sc.log_every == 0 and self.polled_at != step:
            self.polled_at = step
            self._poll_commands()

    def _may_queue(self, next_step: int) -> bool:
        """Whether the next step may be queued before this one finishes.

        Not when this step ends at an evaluation or a checkpoint (they need its weights), nor with
        gradient accumulation, nor with a stop, pause or save to act on first. Every rank decides
        alike: on step numbers and agreed commands, so their collectives keep one order.
        """
        sc = self.sc
        if (next_step >= self.end or self.state.grad_accum > 1 or next_step % sc.eval_every == 0
                or next_step % sc.save_every == 0):
            return False
        self._poll_at(next_step)
        return not self.steer.pending

    def _control_point(self) -> str:
        """Between steps: act on commands. "stop", "resumed" (after a pause) or "go"."""
        self._poll_at(self.state.step)
        if self.steer.stopping:
            return "stop"
        if not self.steer.paused:
            return "go"
        self._state("paused")
        with self.timings.aside("paused"):
            while self.steer.paused:
                self.steer.wait_while_paused(0.2)
                self._poll_commands()
        self._state("running")
        return "resumed"

    def _loop(self) -> StageResult:
        """Train from the state's step to the end of this call: each step queued (the next one
        queued while it runs, where nothing needs its weights first), counted, reported, then
        evaluated and saved as the settings ask; a stop ends it with a checkpoint."""
        self._begin()
        stopped, ahead = False, None  # ahead: the next step, queued while this one runs
        while self.state.step < self.end and not self.early_stopped:
            if ahead is None:
                action = self._control_point()
                if action == "stop":
                    stopped = True
                    break
                if action == "resumed":
                    self.meter.restart()
                    continue
                current = self._train_step(self.state.step)
            else:
                current, ahead = ahead, None
            if self._may_queue(self.state.step + 1):  # the device never waits for Python between steps
                ahead = self._train_step(self.state.step + 1)
            self._step_done(current)
            self._timed()
            self._evaluate_and_save(may_save_now=ahead is None)
            self._saved(wait=False)  # a checkpoint written meanwhile is said as soon as it is complete
        return self._finish(stopped)

    def _finish(self, stopped: bool) -> StageResult:
        """The stage's end in this call: a stopped stage saved where it is, its state said."""
        st = self.state
        self.timings.loop_done(st.step - self.start_step)
        if stopped and st.step > self.start_step and self.saved_step != st.step:  # not again, nor without its loss
            self.save(st.step, None)
        with self.timings.aside("checkpoints"):
            self._saved(wait=True)  # the last checkpoint is complete before the stage ends
        # stopped by hand or by --max-steps; early stopping finishes the stage
        state = "done" if st.step >= st.total_steps or self.early_stopped else "stopped"
        self._state(state)
        self.log(f"{self.stage} {state} at step {st.step}")
        self._say_timings()
        return StageResult(self.stage, self.run_path, st.step, stopped, self.last_ck, st.best_val_loss,
                           done=state == "done")

    def _say_timings(self) -> None:
        """Where this call's wall time went: one log line, and timings.json for benchmarks."""
        self.timings.end()
        self.log(self.timings.line(self.stage))
        if self.is_main:
            self.timings.write(Paths.stage(self.run_path, self.stage))

    def _already_done(self) -> StageResult:
        """A resumed stage whose plan is complete: said so, and nothing trained or rewritten."""
        self.log(f"{self.stage} of run {self.run_path.name} already finished its {self.state.total_steps:,} steps: "
                 "nothing to resume")
        last = checkpoint.latest(self.ck_dir)
        return StageResult(self.stage, self.run_path, self.start_step, False, last.path if last else None,
                           self.state.best_val_loss, already_done=True, done=True)

    def _set_end(self) -> None:
        total = self.state.total_steps
        self.end = total if self.max_steps is None else min(total, self.start_step + self.max_steps)

    def _apply_plan(self, total: int, warmup: int, eval_batches: int | None = None) -> None:
        st = self.state
        st.total_steps, st.warmup_steps, st.planned = total, warmup, True
        if eval_batches is not None:
            st.eval_batches = cut_batches(eval_batches, self.sc.eval_batches)
        if self.recorder is not None:  # else it is made with these steps, and config.toml written with them
            self.recorder.total = total
            self._record_plan()

    def _record_plan(self) -> None:
        """The run's config.toml rewritten with the steps a time budget fitted, keeping its time stamp
        (when the stage started: what a run's being the newest goes by); one that cannot be written
        is said in the log, and the stage trains on."""
        path = Paths.run_config(self.run_path)
        try:
            started = path.stat()
            prepare_run(self._as_planned(self.cfg), self.run_path, self.stage)
            os.utime(path, ns=(started.st_atime_ns, started.st_mtime_ns))
        except (AcmError, OSError) as e:
            self.log(f"the run's config.toml could not record the planned steps ({e}); training goes on")

    def _timed(self) -> None:
        """After a step: once the first steps are timed, fit the steps to the budget, or say how
        long the planned steps will take here (a warning when it is hours)."""
        if self.calibration is None:
            return
        now, st = self.clock(), self.state
        step_s = self.calibration.observe(st.step, now, self.timings.set_aside())
        if self.world > 1:  # every rank must plan the same steps at the same step: rank 0 decides
            step_s = self._from_main([step_s or 0.0])[0] or None
        if step_s is None:
            return
        calibration, self.calibration = self.calibration, None
        self.timings.first_steps_done(st.step - self.start_step, step_s)
        if self.budget_s:
            (self._fit_call_to_budget if st.planned else self._plan_budget)(calibration, now, step_s)
            return
        more = st.total_steps - st.step  # the stage's steps, whatever --max-steps stops this call at
        if more <= 0:
            return
        left = calibration.seconds(st.step, more, step_s)
        stops = (f"; this call stops at step {self.end:,} (--max-steps), in about "
                 f"{describe_seconds(calibration.seconds(st.step, self.end - st.step, step_s))}"
                 if self.end < st.total_steps else "")
        self.log(f"{self.stage}: {more:,} more step{'s' if more != 1 else ''} take{'s' if more == 1 else ''} about "
                 f"{describe_seconds(left)} here ({per_step(step_s)}){stops}")
        if left >= HOURS:
            self.log(f"warning: that is hours; a time budget (--time 10m, train.{self.stage}.time) "
                     "fits the steps to it")

    def _plan_budget(self, calibration: Calibration, now: float, step_s: float) -> None:
        """A new plan: the stage's steps, warmup and validation batches fitted to the time budget,
        at most the steps asked for by name."""
        st = self.state
        plan = calibration.plan(st.step, now, step_s, st.warmup_steps, most=self.named_steps,
                                last_s=self._last_samples_s())
        if self.world > 1:  # each rank's clock started on its own
            plan = Plan(*self._from_main([plan.total, plan.warmup, plan.eval_batches], mx.int32))
        self._apply_plan(plan.total, plan.warmup, plan.eval_batches)
        self._set_end()
        cut = (f"; validation reads {plan.eval_batches} of its {self.sc.eval_batches} batches a check to fit"
               if st.eval_batches else "")
        most = " (the most asked for)" if plan.total == self.named_steps else ""
        self.log(f"{self.stage}: time budget {describe_seconds(self.budget_s)}: {plan.total:,} steps{most} at "
                 f"{per_step(step_s)} (warmup {plan.warmup}){cut}")

    def _fit_call_to_budget(self, calibration: Calibration, now: float, step_s: float) -> None:
        """A stage resumed with a time budget keeps its plan (its schedule, its end) and stops this
        call where the budget runs out, as --max-steps would: resuming again goes on."""
        st = self.state
        end = calibration.plan(st.step, now, step_s, st.warmup_steps, cut=False, last_s=self._last_samples_s()).total
        if self.world > 1:
            end = int(self._from_main([end], mx.int32)[0])
        if end < self.end:
            self.end = end
            self.log(f"{self.stage}: time budget {describe_seconds(self.budget_s)}: stops at step {end:,} of the "
                     f"{st.total_steps:,} it planned ({per_step(step_s)}); resume to go on")

    def _last_samples_s(self) -> float:
        """What a budget sets aside for the last check's live samples, which always run (rank 0
        samples; its plan is every rank's)."""
        return self.sampler.last_check_s() if self.val_batches is not None else 0.0

    def _from_main(self, values: list, dtype=mx.float32) -> list:
        """Rank 0's `values`, on every rank (a collective: every rank calls it at the same step)."""
        mine = values if self.is_main else [0] * len(values)
        return mx.distributed.all_sum(mx.array(mine, dtype)).tolist()

    def _begin(self) -> None:
        """Before the first step of this call: the plan, the clocks and the device, said."""
        sc, st = self.sc, self.state
        if self.budget_s and not st.planned:  # until the first steps have been timed
            st.total_steps = UNPLANNED if self.named_steps is None else self.named_steps
            if self.named_steps is not None:  # the schedule a plan would give, should the steps end first
                st.warmup_steps = min(st.warmup_steps, max(1, self.named_steps // 10))
        batches = 0 if self.val_batches is None else self._eval_batches()
        self.calibration = Calibration(self.budget_s, self.started, sc.eval_every, batches, st.grad_accum)
        self._set_end()
        last = checkpoint.latest(self.ck_dir)
        self.last_ck = last.path if last else None
        self.meter = Throughput(self._tokens_per_step(), self.clock)
        info = device_info()
        self.peak, self.limit = peak_flops(info), memory_limit(info)
        self.flops_per_token = self.shape.flops_per_token(sc.seq_len)
        self._state("running", run=self.run_path.name)
        steps = (f"a time budget of {describe_seconds(self.budget_s)} from step {st.step}"
                 if st.total_steps == UNPLANNED else f"steps {st.step}..{self.end} of {st.total_steps}")
        self.log(f"{self.stage}: {steps}, {self.meter.tokens_per_step:,} "
                 f"tokens/step, {self._ranks_words()}, preset {self.shape.name} (vocab {self.shape.vocab_size:,}), "
                 f"{self.cfg.model.compute_dtype} compute")
        self.timings.loop()

    def _ranks_words(self) -> str:
        if self.world == 1:
            return "1 rank"
        return f"{self.world} ranks of {self.sc.batch_size * self.state.grad_accum} sequences"

    def _step_done(self, current: tuple[mx.array, mx.array]) -> None:
        """Wait for a step's loss, count it, and report every log_every steps."""
        loss, norm = current
        st = self.state
        loss_value = self._finite_loss(loss, st.step)
        st.step += 1
        st.tokens_seen += self.meter.tokens_per_step
        self.meter.step()
        if st.step % self.sc.log_every == 0 or st.step == self.end:
            self._report(loss_value, float(norm.item()))

    def _evaluate_and_save(self, may_save_now: bool) -> None:
        sc, step = self.sc, self.state.step
        want_eval = step % sc.eval_every == 0 or step == self.end
        # a save asked for while the next step is queued waits for it: the weights are that step's
        want_save = step % sc.save_every == 0 or step == self.end or (may_save_now and self.steer.take_save())
        # a save due anyway starts first: its weights are written while validation and samples run
        late = checkpoint.LateState() if want_save and want_eval and self.is_main else None
        try:
            want_save = self._check_then_save(step, want_eval, want_save, late)
        finally:
            if late is not None:
                late.abandon()  # whatever failed before the state was given (nothing, once it was)
        if want_eval or want_save:  # tokens/s counts training time only
            self.meter.restart()

    def _check_then_save(self, step: int, want_eval: bool, want_save: bool,
                         late: checkpoint.LateState | None) -> bool:
        """The validation check and the save as `_evaluate_and_save` decided (`late`: the save begun
        before the check, its state given after); whether a save was made."""
        if late is not None:
            self.save(step, None, late)
        if want_eval:
            # early stopping keeps the best weights, whatever save_every says
            want_save = self._validation_check() or want_save
        if late is not None:
            self.writer.tag = (step, self.val_loss)
            late.give(self._checkpoint_state(step, self.val_loss))
        elif want_save:
            self.save(step, self.val_loss if want_eval else None)  # last_ck follows once the files are complete
        return want_save

    def _validation_check(self) -> bool:
        """The validation loss, judged, then the check's samples; whether a new best asks for a save."""
        self.val_loss = self.evaluate()
        new_best = self._judge_progress(self.val_loss)
        with self.timings.aside("samples"):
            self._sample()
        return new_best

    def _sample(self) -> None:
        """A validation check's live samples, from the weights of the step just finished (nothing is
        queued at a check); rank 0 samples while the others wait at their next collective. The last
        check of this call (its last step's, or an early stop's) always samples; at the last step
        its checkpoint is written meanwhile."""
        if self.is_main:
            last_check = self.state.step >= self.end or self.early_stopped
            for event in self.sampler.check(self.model, self.opt.compute_views(), self.tok, self.state.step,
                                            self.clock() - self.started, last_check):
                self.emit(event)

    def _judge_progress(self, val_loss: float | None) -> bool:
        """Report a validation check and decide on early stopping; whether to save (a new best)."""
        sc, st = self.sc, self.state
        if val_loss is None:
            return False
        improved = self._report_eval(val_loss)
        if sc.patience and st.checks_without_best >= sc.patience:
            self.early_stopped = True
            self.log(f"{self.stage}: early stop at step {st.step}: {sc.patience} validation checks without a "
                     f"new best (best val loss {st.best_val_loss:.4f})")
        return bool(sc.patience) and improved

    def _report_eval(self, val_loss: float) -> bool:
        """Report a validation loss; whether it is a new best."""
        st = self.state
        improved = st.best_val_loss is None or val_loss < st.best_val_loss
        if improved:
            st.best_val_loss = val_loss
        st.checks_without_best = 0 if improved else st.checks_without_best + 1
        self.emit(Eval(stage=self.stage, step=st.step, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50)),
                       best_val_loss=st.best_val_loss))
        return improved

    def _report(self, loss: float, grad_norm: float) -> None:
        st = self.state
        tok_s, step_time = self.meter.take(last=st.step == self.end)
        mem = memory_now()
        report = Metrics(
            stage=self.stage, step=st.step, total=st.total_steps, loss=loss, lr=self._lr(st.step - 1),
            grad_norm=grad_norm, tokens_per_s=tok_s, tokens_seen=st.tokens_seen,
            epoch=st.tokens_seen / max(self.batches.num_tokens, 1),
            mfu=(self.flops_per_token * tok_s / (self.peak * self.world)) if self.peak else None,
            ranks=self.world, memory_active=mem["active"], memory_peak=mem["peak"], memory_cache=mem["cache"],
            memory_limit=self.limit, eta_s=step_time * (self.end - st.step), time=time.time(),
            devices=rank_figures(self.group, mem, tok_s / self.world, self.flops_per_token, self.peak))
        self.emit(report)
        for alert in self.health.check(report):
            self.log(alert)


def open_inputs(cfg: Config, stage: str):
    """(tokenizer, train shards, val shards, comment-to-command train shards or None) of a stage,
    each refused in one line when missing or stale (made with another tokenizer). With a pairs_share,
    the train shards leave the comment-to-command chunks to their own share of each batch."""
    sc, shape = getattr(cfg.train, stage), cfg.model.shape()
    if sc.seq_len > shape.n_ctx:
        raise AcmError(f"train.{stage}.seq_len {sc.seq_len} exceeds the model's context {shape.n_ctx}")
    check_step_fits(cfg, stage, memory_limit())
    tok = load_tokenizer(cfg)
    train, val = open_tokens(cfg, CORPUS[stage], "train", tok), open_tokens(cfg, CORPUS[stage], "val", tok)
    if not pairs_share(sc):
        return tok, train, val, None
    pairs = train.part(pairs=True)
    if not pairs.arrays:
        raise AcmError(f"train.{stage}.pairs_share = {sc.pairs_share:g}, but the {CORPUS[stage]} token shards hold "
                       f"no comment-to-command scripts: set data.code.pairs, then run `acm data fetch code` and "
                       f"`acm prepare`")
    return tok, train.part(pairs=False), val, pairs


STEP_REFUSED = 2.0  # a step reckoned above this many times the device's memory cannot run: refused


def check_step_fits(cfg: Config, stage: str, limit: int) -> None:
    """A micro-batch far beyond the device's memory (`limit` bytes; 0: unknown) is refused in one line
    before anything is built, where it ended the process (the OOM killer, a failed Metal allocation).
    The reckoning is generous (memory.reckoned_bytes), so only a step that surely cannot fit is
    refused; one near the limit is left to try."""
    sc = getattr(cfg.train, stage)
    need = reckoned_bytes(cfg.model.shape(), sc, cfg.model.compute_dtype)
    if limit and need > STEP_REFUSED * limit:
        raise AcmError(f"train.{stage}.batch_size = {sc.batch_size} at seq_len {sc.seq_len}: a step would take "
                       f"about {need / 2**30:,.0f} GB, and this device has {limit / 2**30:,.0f} GB; lower "
                       f"batch_size (grad_accum adds micro-batches to a step without more memory)")


def pairs_share(sc: StageConfig) -> float:
    """The share of each batch given to comment-to-command scripts: fine-tuning's setting."""
    return getattr(sc, "pairs_share", 0.0)


def starting_point(run: Path, stage: str, resume: bool):
    """(this stage's checkpoint to resume, the pretrain checkpoint a fine-tune starts from). A resume
    with nothing to resume (a run named wrong, checkpoints all damaged) is refused: it would start
    the stage over, hours of training where a typo was meant to continue one."""
    folder = Paths.checkpoints(run, stage)
    existing = checkpoint.latest(folder)
    if existing and not resume:
        raise AcmError(f"run {run.name} already has {stage} checkpoints (up to step "
                       f"{existing.step}): resume it (--resume) or choose another run")
    if resume and existing is None:
        raise AcmError(_nothing_to_resume(run, stage, checkpoint.damaged(folder)))
    if existing or stage != "finetune":
        return existing, None
    base = checkpoint.best(Paths.checkpoints(run, "pretrain"))
    if base is None and not Paths.run_config(run).exists():  # a fine-tune never starts a run
        raise AcmError(f"run {run.name!r} {runs.not_a_run(run)}: a fine-tune goes on from a run's pretrain "
                       "(`acm runs` lists the runs)")
    if base is None:
        raise AcmError(f"run {run.name} has no pretrain checkpoint to fine-tune: run `acm train pretrain` first")
    return None, base


def _nothing_to_resume(run: Path, stage: str, damaged: list[Path]) -> str:
    if damaged:
        return (f"run {run.name}'s {stage} has no readable checkpoint to resume: {', '.join(d.name for d in damaged)} "
                f"{'has' if len(damaged) == 1 else 'have'} a missing or damaged state.json; restore it, or train "
                f"the stage again in a new run")
    if not Paths.run_config(run).exists():
        return f"run {run.name!r} {runs.not_a_run(run)}: nothing to resume (`acm runs` lists the runs)"
    return f"run {run.name} has no {stage} checkpoint to resume: start the stage without --resume"


def check_inputs(cfg: Config, stage: str, run: Path, resume: bool) -> None:
    """What a stage needs, checked before it is launched in the background (where no one would see
    the error), without building the model."""
    if stage not in CORPUS:
        raise AcmError(f"unknown stage {stage!r}: pretrain or finetune")
    check_continued_tokenizer(cfg, run, stage, resume)
    open_inputs(cfg, stage)
    starting_point(run, stage, resume)


def check_continued_tokenizer(cfg: Config, run: Path, stage: str, resume: bool) -> None:
    """A checkpoint the stage goes on from (a resume's, a fine-tune's pretrain) made with another
    tokenizer than the project's (retrained since) is said first: the shards the new one made
    stale would otherwise send the user to rebuild them, only to be refused again. So is one of
    another preset than acm.toml's (changed since): its weights would not fit the model, and a
    line calling the checkpoint damaged would send the user to delete it."""
    try:
        existing, base = starting_point(run, stage, resume)
    except AcmError:
        return  # said in its turn, after the inputs
    ck, project = existing or base, cfg.locations.tokenizer_file
    if ck is None:
        return
    if "config" in ck.state:
        check_continued_preset(cfg, ck)
    if project.is_file() and sha256_file(project) != ck.state.get("tokenizer_sha256"):
        raise AcmError(another_tokenizer(cfg, ck))


def check_continued_preset(cfg: Config, ck: checkpoint.Checkpoint) -> None:
    """The checkpoint's model has acm.toml's preset, its layers and widths (the vocabulary is the
    tokenizer's, checked apart)."""
    try:
        trained = checkpoint.trained_with(ck).model
    except AcmError:
        return  # a damaged state.json is said where the checkpoint is read
    if trained.shape().with_vocab(0) != cfg.model.shape().with_vocab(0):
        now = ("the settings (acm.toml, or the file -c names) now select" if "preset" in cfg.explicit.get("model", {})
               else "the settings (acm.toml, or the file -c names) name none, and this machine's default is")
        raise AcmError(f"checkpoint {ck.path} was trained with preset {trained.preset}, and {now} "
                       f"{cfg.model.preset}: set model.preset = \"{trained.preset}\" to go on with this run, "
                       f"or start a new one")


def another_tokenizer(cfg: Config, ck: checkpoint.Checkpoint) -> str:
    """Why a checkpoint cannot go on with the project's tokenizer, and the way back to its own."""
    copy = Paths.stage_tokenizer(ck.run, ck.stage)
    back = (f"copy its run's {copy} back to {cfg.locations.tokenizer_file} and run `acm prepare --force`"
            if copy.is_file() else "use the tokenizer it was made with")
    return (f"checkpoint {ck.path} was trained with another tokenizer than the project's (retrained since): "
            f"{back}, or start a new run")


def train_stage(cfg: Config, stage: str, run: Path, emit: Callback | None = None, control: Control | None = None,
              resume: bool = False, max_steps: int | None = None, **options) -> StageResult:
    """Build a Trainer and run it (call on the engine thread); `options` are the Trainer's keywords."""
    return Trainer(cfg, stage, run, emit, control, resume, max_steps, **options).run()

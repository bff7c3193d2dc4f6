"""`acm eval`: validation loss and perplexity on both corpora, and the quality of generated bash.

For each stage of a run that has a checkpoint (its best): val loss / perplexity on the language and
code val splits, then `eval.samples` scripts sampled in batches from the prompts of `eval.tasks`
(then `eval.prompts`), each parsed with `bash -n` and linted with shellcheck where installed (never
run). So that trivial or cut-off output can't score, the parse rate is given over complete samples
(ended by <EOS>) and over all of them, beside the truncated share, mean lines and distinct-2; so
that bash-shaped noise can't, relevance says how many use what their task expects. The fine-tuned
checkpoint is also scored with syntax-checked sampling (the best of `generate.candidates`).
A time budget (eval.time) bounds the samples and validation batches: each part records how many it
drew of those asked, and the results whether anything was cut (core/generate/cut.py reads it back).
Results go to runs/<run>/eval.json.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx

from core import runs
from core.atomic import write_text, writing
from core.config import Config, parse_duration
from core.errors import AcmError
from core.generate.checked import BATCH_ROWS, Deadline, Judged, checked_generate, sample_and_judge
from core.generate.cut import cuts
from core.generate.decode import UnusableWeights, find_checkpoint, load_model
from core.generate.relevance import eval_prompts, expectations, relevance, uses
from core.generate.sampling import SamplingParams
from core.paths import Paths
from core.progress import CancelToken, Reporter, Ticker, no_report
from core.runs import checkpoint
from core.runs.writer import evaluating_alone, in_use
from core.tokenizer.bpe import AcmTokenizer
from core.tokenizer.shards import open_tokens
from core.train.batches import Batches


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def _not_the_project_s(cfg: Config, lm) -> str:
    """Why the run's tokenizer is not the project's: the project's is missing, damaged, or another."""
    path = cfg.locations.tokenizer_file
    if not path.exists():
        return (f"the project's tokenizer {path} is missing (acm tokenizer train makes one, then acm prepare "
                f"the shards)")
    try:
        AcmTokenizer.from_file(path)
    except (AcmError, OSError) as e:
        return f"the project's tokenizer is damaged ({e}; acm tokenizer train makes it again)"
    return f"run {lm.run}'s {lm.stage} was trained with another tokenizer than {path}"


def val_loss(lm, cfg: Config, kind: str, batches: int, deadline: Deadline | None = None) -> dict:
    """Mean loss over `batches` fixed validation batches (fewer, at least one, once a deadline
    passes), with the batches read and those asked for."""
    if lm.tokenizer.path != cfg.locations.tokenizer_file:  # the stage's own copy: the shards are another's
        raise AcmError(f"{_not_the_project_s(cfg, lm)}, so the token shards cannot measure its validation loss; "
                       f"acm generate and acm export still use the run's own copy")
    shards = open_tokens(cfg, kind, "val", lm.tokenizer)
    seq = min(cfg.train.pretrain.seq_len, lm.model.shape.n_ctx)
    b = Batches(shards, seq, cfg.train.pretrain.batch_size, seed=0, what=f"{kind} val shards")
    losses = []
    for i in range(batches):
        if losses and deadline and deadline.passed():
            break
        x, y = b.val(i)
        losses.append(lm.model.loss(mx.array(x), mx.array(y)))
        mx.eval(losses[-1])
    loss = float(mx.mean(mx.stack(losses)).item())
    return {"val_loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 2), "batches": len(losses),
            "batches_asked": batches}


def score(judged: list[Judged], expected: dict[str, re.Pattern] | None = None) -> dict:
    """The generation columns of one row of the evaluation table (relevance against the
    expectations of the samples' prompts: `expected`, prompt -> pattern)."""
    n = len(judged)
    if not n:
        return {}
    complete = [j for j in judged if j.verdict.complete]
    linted = judged[0].verdict.shellcheck_errors is not None
    return {
        "samples": n,
        "parse_rate_complete": round(sum(j.verdict.parses for j in complete) / len(complete), 4) if complete else None,
        "parse_rate": round(sum(j.verdict.parses for j in judged) / n, 4),
        "truncated": round(1 - len(complete) / n, 4),
        "shellcheck_clean": round(sum(j.verdict.clean for j in judged) / n, 4) if linted else None,
        "mean_lines": round(sum(j.sample.text.count("\n") for j in judged) / n, 1),
        "mean_tokens": round(sum(len(j.sample.tokens) for j in judged) / n, 1),
        "distinct_2": distinct_n([j.sample.tokens for j in judged], 2),
        **relevance(judged, expected or {}),
    }


def examples(judged: list[Judged], expected: dict[str, re.Pattern], n: int = 3) -> list[dict]:
    return [{"prompt": j.sample.prompt, "text": j.sample.text, "verdict": j.verdict.describe(),
             "parses": j.verdict.parses, "complete": j.verdict.complete,
             "relevant": uses(j.sample.prompt, j.sample.text, expected)} for j in judged[:n]]


class Slots:
    """A time budget (eval.time) shared evenly by the parts of an evaluation still to come, on `clock`."""

    def __init__(self, budget_s: float | None, parts: int, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + budget_s if budget_s else None
        self.parts = parts

    def next(self) -> Deadline | None:
        if self.end is None:
            return None
        now, self.parts = self.clock(), max(self.parts, 1)
        slot = Deadline(now + max(self.end - now, 0) / self.parts, clock=self.clock)
        self.parts -= 1
        return slot


def _checkpointed(cfg: Config, run: str | None) -> tuple[Path, list[str], list[str]]:
    """The run to evaluate (the latest where none is named), its stages with a checkpoint, and a line
    for each stage left out, never silently: its checkpoints all damaged, or gone."""
    run_path = runs.existing_run(cfg, run) if run is not None else runs.newest_run(cfg)
    if run_path is None:
        raise AcmError(f"no runs in {cfg.locations.runs}: train a model first (acm train pretrain)")
    stages = [s for s in runs.TRAINING_STAGES if checkpoint.best(Paths.checkpoints(run_path, s)) is not None]
    if not stages:
        find_checkpoint(cfg, run_path.name)  # says why: damaged checkpoints, or none
        raise AcmError(f"run {run_path.name} has no checkpoint to evaluate")
    left_out = []
    for s in (s for s in runs.TRAINING_STAGES if s not in stages):
        bad = checkpoint.damaged(Paths.checkpoints(run_path, s))
        if bad:
            left_out.append(f"{s}: not evaluated, no readable checkpoint ({', '.join(d.name for d in bad)}: "
                            "damaged state.json)")
        elif (state := runs.stage_state(run_path, s)) != "not started":  # it has begun, and holds no checkpoint
            left_out.append(f"{s}: not evaluated, {_no_checkpoint(state, Paths.checkpoints(run_path, s))}")
    return run_path, stages, left_out


def _no_checkpoint(state: str, folder: Path) -> str:
    """Why a stage that has begun holds no checkpoint, from its state."""
    if state in runs.LIVE:
        return f"it is {state} and has saved no checkpoint yet"
    if state in ("failed", "interrupted"):
        return f"it {'failed' if state == 'failed' else 'was interrupted'} before its first checkpoint"
    return f"it is {state} but holds no checkpoint ({folder} is empty or gone)"


def _scored(judged: list[Judged], expected: dict[str, re.Pattern], asked: int) -> dict:
    """A row's generation columns, with the samples asked for (a time budget may draw fewer), and
    its first examples."""
    return {"code_generation": {**score(judged, expected), "samples_asked": asked},
            "examples": examples(judged, expected)}


class Decoding:
    """An evaluation's progress, counted in rows x tokens decoded (what its time goes to; a validation
    loss is said, not counted): its ETA follows the work left, where counting parts (a validation loss
    and 192 syntax-checked scripts alike) held it still through the longest. Each part says itself as
    it begins, and moves at every decoding step (reported at most every `interval` seconds)."""

    def __init__(self, report: Reporter, parts_rows: list[int], max_tokens: int, interval: float = 0.5,
                 slots: Slots | None = None):
        self.asked = sum(parts_rows) * max_tokens  # rows x tokens; under a budget, less what its cuts left
        self.ticker = Ticker(report, "evaluating", self.asked, interval=interval)
        self.max_tokens, self.end = max_tokens, 0
        self.decoded = 0  # rows x tokens decoded (not counting what a cut or an early end skipped): the pace
        self.slots = slots if slots is not None and slots.end is not None else None
        self.began = self.slots.clock() if self.slots else 0.0

    def say(self, note: str) -> None:
        self.ticker.say(note)

    def part(self, rows: int, note: str, should_stop: Callable[[], bool], deadline: Deadline | None,
             group: int = 1) -> Callable[[], bool]:
        """Begin decoding `rows` scripts (in batches of BATCH_ROWS, or of `deadline.rows` prompts of
        `group` candidates each under a time budget): the `should_stop` to give their decoding, which
        counts its steps (a step of a batch: its rows; what a batch ended early or a budget cut leaves
        is counted when the next part begins or the evaluation ends)."""
        self._close()
        self.end = self.ticker.state.done + rows * self.max_tokens
        per_step = min(rows, deadline.rows * group if deadline else BATCH_ROWS)
        self.ticker.say(note)

        def counted() -> bool:
            step = min(per_step, self.end - self.ticker.state.done)
            self.decoded += step
            self._fit_to_budget(step)
            self.ticker.advance(step)
            return should_stop()
        return counted

    def _fit_to_budget(self, step: int) -> None:
        """Under a time budget, the work counted is what the pace so far gets done before the budget
        ends, where less: the ETA says when the evaluation will end, not when all it asked for would."""
        if self.slots is None:
            return
        st, now = self.ticker.state, self.slots.clock()
        if self.decoded <= 0 or now <= self.began:
            return
        done = st.done + step
        reachable = done + int(self.decoded / (now - self.began) * max(self.slots.end - now, 0.0))
        st.total = max(min(self.asked, reachable), done + 1)  # never all done before the end

    def _close(self) -> None:
        """The part under way is over: what it left (a batch ended early, a budget's cut) counts as
        done, or, under a budget, as never asked (done is then only what was decoded: the pace)."""
        st = self.ticker.state
        left = max(0, self.end - st.done)
        if self.slots is None:
            self.ticker.advance(left)
            return
        self.asked -= left
        st.total = max((st.total or 0) - left, st.done)

    def finish(self) -> None:
        self._close()
        self.ticker.state.total = self.ticker.state.done
        self.ticker.finish()


def evaluate_run(cfg: Config, report: Reporter = no_report, cancel: CancelToken | None = None,
                 run: str | None = None, samples: int | None = None, max_tokens: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> dict:
    """Evaluate a run's checkpoints (`clock`: what its time budget is measured with), holding the
    run so that it is not renamed or deleted under the evaluation."""
    run_path, stages, passed_over = _checkpointed(cfg, run)
    with in_use(run_path, "evaluated"), evaluating_alone(run_path):
        return _evaluated(cfg, report, cancel or CancelToken(), run_path, stages, passed_over,
                          samples or cfg.eval.samples, max_tokens or cfg.eval.max_tokens, clock)


def _usable(cfg: Config, run_path: Path, stage: str, stages: list[str], passed_over: list[str]):
    """The stage's checkpoint loaded, or None, said among what was left out, where its weights cannot
    be used (a diverged stage) and another stage can be evaluated."""
    try:
        return load_model(cfg, run_path.name, stage)
    except UnusableWeights as e:
        if len(stages) == 1:
            raise
        passed_over.append(f"{stage}: not evaluated, {e}")
        return None


def _evaluated(cfg: Config, report: Reporter, cancel: CancelToken, run_path: Path, stages: list[str],
               passed_over: list[str], samples: int, max_tokens: int, clock: Callable[[], float]) -> dict:
    params = SamplingParams.from_config(cfg.generate, max_tokens=max_tokens)
    prompts, expected = eval_prompts(cfg.eval, samples), expectations(cfg.eval)
    results = {"run": run_path.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "samples": samples,
               "tasks": [asdict(task) for task in cfg.eval.tasks], "prompts": cfg.eval.prompts,
               "candidates": cfg.generate.candidates, "time_budget": cfg.eval.time or None, "stages": {}}
    k = cfg.generate.candidates
    slots = Slots(parse_duration(cfg.eval.time, "eval.time") if cfg.eval.time else None, len(stages) * 3 + 1, clock)
    decoding = Decoding(report, [samples] * len(stages) + [samples * k], params.max_tokens, slots=slots)
    timeout = cfg.data.code.syntax_timeout_s
    started = time.perf_counter()
    for stage in stages:
        lm = _usable(cfg, run_path, stage, stages, passed_over)
        if lm is None:
            continue
        passed_over += [f"{stage}: {lm.notice}"] if lm.notice else []
        row = {"checkpoint": str(lm.checkpoint), "step": lm.step}
        for kind in ("language", "code"):
            cancel.check()
            decoding.say(f"{stage}: {kind} val loss")
            row[kind] = val_loss(lm, cfg, kind, cfg.train.pretrain.eval_batches, slots.next())
        deadline = slots.next()
        stop = decoding.part(samples, f"{stage}: {samples} samples", lambda: cancel.cancelled, deadline)
        judged = sample_and_judge(lm, prompts, params, timeout, stop, deadline)
        cancel.check()
        row |= _scored(judged, expected, samples)
        results["stages"][stage] = row
        if stage == stages[-1]:  # the model a user would use: also with syntax-checked sampling
            deadline = slots.next()
            stop = decoding.part(samples * k, f"{stage}: {samples} x {k} syntax-checked", lambda: cancel.cancelled,
                                 deadline, k)
            chosen = checked_generate(lm, prompts, params, k, timeout, stop, deadline)
            cancel.check()
            results["stages"][f"{stage}+checked"] = {
                "checkpoint": row["checkpoint"], "step": lm.step, "language": row["language"], "code": row["code"],
                **_scored(chosen, expected, samples)}
    if not results["stages"]:  # every stage's weights unusable: nothing measured, nothing written
        raise UnusableWeights("; ".join(passed_over))
    decoding.finish()
    results["seconds"] = round(time.perf_counter() - started, 2)
    results["cut"] = any(cuts(results).values())  # fewer samples or validation batches than asked
    results["passed_over"] = passed_over  # damaged checkpoints, said with the cut (cut_note)
    cancel.check()
    with writing(f"the evaluation {Paths.eval_results(run_path)}"):
        write_text(Paths.eval_results(run_path), json.dumps(results, indent=1) + "\n")
    return results

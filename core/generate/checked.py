"""Syntax-checked sampling: k candidates of a prompt sampled in one batch, and the first that parses
with `bash -n` (and has no shellcheck errors, when shellcheck is installed) returned, with how many
were tried and why the others were turned down. A complete candidate (ended by <EOS>) is preferred
to a truncated one; candidates after the first clean and complete one are not looked at."""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.generate.batch import Sample, generate_batch
from core.generate.decode import LoadedModel
from core.generate.sampling import SamplingParams
from core.generate.verdicts import Verdict, judge, shellcheck_errors, shellcheck_path

BATCH_ROWS = 512  # rows decoded at once; more are split into several batches


@dataclass
class Judged:
    sample: Sample
    verdict: Verdict

    def describe(self) -> str:
        return self.verdict.describe()


@dataclass
class Checked(Judged):
    tried: int = 1
    rejected: Counter = field(default_factory=Counter)  # reason -> candidates turned down for it

    def describe(self) -> str:
        """Its verdicts, how many candidates were tried and why the others were turned down."""
        why = ", ".join(f"{n} {reason}" for reason, n in self.rejected.most_common())
        return f"{self.verdict.describe()}; {self.tried} tried" + (f"; turned down: {why}" if why else "")


@dataclass
class Deadline:
    """Sample in small batches until a moment (of `clock`), at least one batch: a time budget
    bounds the number of samples, never cuts one short."""
    until: float
    rows: int = 8
    clock: Callable[[], float] = time.monotonic

    def passed(self) -> bool:
        return self.clock() >= self.until


def _sample(lm: LoadedModel, prompts: list[str], params: SamplingParams, should_stop,
            deadline: Deadline | None = None, group: int = 1) -> list[Sample]:
    samples: list[Sample] = []
    rows = deadline.rows * group if deadline else BATCH_ROWS
    for start in range(0, len(prompts), rows):
        if should_stop() or (deadline and samples and deadline.passed()):
            break
        batch, _ = generate_batch(lm, prompts[start:start + rows], params, should_stop)
        samples += batch
    return samples


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2))  # bash -n, shellcheck: subprocesses


def sample_and_judge(lm: LoadedModel, prompts: list[str], params: SamplingParams, timeout_s: float,
                     should_stop=lambda: False, deadline: Deadline | None = None) -> list[Judged]:
    """One sample per prompt (in batches of BATCH_ROWS, or fewer until a deadline), each with its verdicts."""
    samples = _sample(lm, prompts, params, should_stop, deadline)
    with _pool() as pool:
        verdicts = list(pool.map(lambda s: judge(s.prompt + s.text, s.complete, timeout_s), samples))
    return [Judged(s, v) for s, v in zip(samples, verdicts)]


def checked_generate(lm: LoadedModel, prompts: list[str], params: SamplingParams, k: int, timeout_s: float,
                     should_stop=lambda: False, deadline: Deadline | None = None) -> list[Checked]:
    """For each prompt, the best of k candidates sampled together (judged in order, until one is
    clean and complete: the rest are not looked at)."""
    samples = _sample(lm, [p for p in prompts for _ in range(k)], params, should_stop, deadline, group=k)
    groups = [samples[i * k:(i + 1) * k] for i in range(len(samples) // k)]
    lint = shellcheck_path() is not None
    with _pool() as pool:
        return list(pool.map(lambda g: _pick(g, timeout_s, lint), groups))


def _pick(group: list[Sample], timeout_s: float, lint: bool) -> Checked:
    """Parse each candidate in turn, lint those that parse, stop at the first clean and complete one."""
    judged = []
    for s in group:
        verdict = judge(s.prompt + s.text, s.complete, timeout_s, lint=False)
        if verdict.parses and lint:
            verdict.shellcheck_errors = shellcheck_errors(s.prompt + s.text)
        judged.append(Judged(s, verdict))
        if verdict.clean and verdict.complete:
            break
    best = choose(judged)
    if lint and best.verdict.shellcheck_errors is None:  # a pick that does not parse, linted for its verdict
        best.verdict.shellcheck_errors = shellcheck_errors(best.sample.prompt + best.sample.text)
    return best


def choose(candidates: list[Judged]) -> Checked:
    """The first clean and complete candidate, else the first clean, else the first that parses,
    else the first; the rest are counted by why they were turned down."""
    def rank(j: Judged) -> int:
        return 0 if j.verdict.clean and j.verdict.complete else 1 if j.verdict.clean else 2 if j.verdict.parses else 3

    best = min(candidates, key=rank)
    rejected = Counter(_reason(j.verdict) for j in candidates if j is not best)
    return Checked(best.sample, best.verdict, len(candidates), rejected)


def _reason(v: Verdict) -> str:
    if not v.parses:
        return "does not parse"
    if v.shellcheck_errors:
        return "shellcheck errors"
    return "truncated" if not v.complete else "a better one came first"


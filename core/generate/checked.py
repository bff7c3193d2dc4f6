"""Syntax-checked sampling: k candidates of a prompt sampled in one batch, and the first that parses
with `bash -n` (and has no shellcheck errors, when shellcheck is installed) returned, with how many
were tried and why the others were turned down. A complete candidate (ended by <EOS>) is preferred
to a truncated one."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.generate.batch import Sample, generate_batch
from core.generate.decode import LoadedModel
from core.generate.sampling import SamplingParams
from core.generate.verdicts import Verdict, judge

BATCH_ROWS = 256  # rows decoded at once; more are split into several batches


@dataclass
class Judged:
    sample: Sample
    verdict: Verdict


@dataclass
class Checked(Judged):
    tried: int = 1
    rejected: Counter = field(default_factory=Counter)  # reason -> candidates turned down for it

    def describe(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.rejected.most_common())
        return f"{self.tried} tried" + (f"; turned down: {why}" if why else "")


def sample_and_judge(lm: LoadedModel, prompts: list[str], params: SamplingParams, timeout_s: float,
                     should_stop=lambda: False) -> list[Judged]:
    """One sample per prompt (in batches of BATCH_ROWS), each with its verdicts."""
    samples: list[Sample] = []
    for start in range(0, len(prompts), BATCH_ROWS):
        if should_stop():
            break
        rows, _ = generate_batch(lm, prompts[start:start + BATCH_ROWS], params, should_stop)
        samples += rows
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2)) as pool:  # bash -n, shellcheck: subprocesses
        verdicts = list(pool.map(lambda s: judge(s.prompt + s.text, s.complete, timeout_s), samples))
    return [Judged(s, v) for s, v in zip(samples, verdicts)]


def checked_generate(lm: LoadedModel, prompts: list[str], params: SamplingParams, k: int, timeout_s: float,
                     should_stop=lambda: False) -> list[Checked]:
    """For each prompt, the best of k candidates sampled together."""
    judged = sample_and_judge(lm, [p for p in prompts for _ in range(k)], params, timeout_s, should_stop)
    return [choose(judged[i * k:(i + 1) * k]) for i in range(len(judged) // k)]


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


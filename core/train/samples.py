"""Live samples: a few short scripts generated at a stage's validation checks, with their verdicts.

What the validation loss cannot show, read at a glance while training: does the model write bash
that parses, ends, and uses what its task needs? Generation and verdicts are `acm eval`'s (one
batch, `bash -n`, shellcheck where installed, a task's `expect`); the sampler draws from a key of
its own (never MLX's global generator), so training goes on as it would have without it. Both
stages sample: pretraining's scripts show a language model's attempt at bash.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from core.config import Config
from core.generate.checked import sample_and_judge
from core.generate.decode import LoadedModel
from core.generate.relevance import eval_prompts, expectations, uses
from core.generate.sampling import SamplingParams
from core.model.gpt import GPT
from core.runs.events import Event, Log, Sample
from core.tokenizer.bpe import AcmTokenizer


def sample_prompts(cfg: Config) -> tuple[list[str], dict[str, re.Pattern]]:
    """The prompt of each of a check's train.samples scripts (train.sample_prompts cycled, else the
    eval tasks' in order), and the expectation of every prompt that is an eval task's."""
    count, chosen = cfg.train.samples, cfg.train.sample_prompts
    prompts = [chosen[i % len(chosen)] for i in range(count)] if chosen else eval_prompts(cfg.eval, count)
    return prompts, expectations(cfg.eval)


def generate_samples(model: GPT, tok: AcmTokenizer, prompts: list[str], expected: dict[str, re.Pattern],
                     params: SamplingParams, stage: str, step: int, timeout_s: float = 5.0,
                     clock: Callable[[], float] = time.perf_counter) -> tuple[list[Sample], float]:
    """One script per prompt, decoded as one batch with `params` (its seed fixes the draw), each
    judged; the events to report and the seconds it all took (by `clock`)."""
    start = clock()
    lm = LoadedModel(model, tok, Path(), "", stage, step)
    judged = sample_and_judge(lm, prompts, params, timeout_s)
    seconds = clock() - start
    return [Sample(stage=stage, step=step, prompt=j.sample.prompt, text=j.sample.text, parses=j.verdict.parses,
                   shellcheck_errors=j.verdict.shellcheck_errors, complete=j.verdict.complete,
                   relevant=uses(j.sample.prompt, j.sample.text, expected), seconds=round(seconds, 3))
            for j in judged], seconds


FIRST_CHECK_S = 1.0  # a first check's cost, reckoned before any was measured (0.4-1.1 s on GPUs)


class LiveSampler:
    """A stage's live samples: at validation checks, train.samples scripts from the weights of the
    step just finished. A check samples unless sampling so far and this check (reckoned at the last
    one's cost, the first at FIRST_CHECK_S) would be over train.sample_share of the stage's time (a
    skip said once); the last check of a call (its last step's, or an early stop's) always samples,
    so a short stage shows what the weights it ends on write; at the last step the stage's final
    checkpoint is written meanwhile, so that costs its wall time little.
    The seed of a check's draw is the stage's seed and the step."""

    def __init__(self, cfg: Config, stage: str, seed: int, clock: Callable[[], float] = time.perf_counter):
        self.cfg, self.stage, self.seed, self.clock = cfg, stage, seed, clock
        self.spent, self.last, self.skipped = 0.0, FIRST_CHECK_S, False  # last: the latest check's seconds

    def due(self, elapsed: float, last_check: bool = False) -> bool:
        """Whether a check `elapsed` seconds into the stage keeps the sampling within train.sample_share
        of the stage's time, reckoning it at the last check's cost; a call's last check always is."""
        return last_check or self.spent + self.last <= self.cfg.train.sample_share * (elapsed + self.last)

    def _skipped(self, step: int, elapsed: float) -> str:
        """The line saying checks are skipped from `step`, and until when."""
        cost = (f"with this check's (about {self.last:.2f} s, as the last one) the sampling would take "
                f"{self.spent + self.last:.2f} s," if self.spent else
                f"a check, reckoned at {FIRST_CHECK_S:.0f} s until one is measured, would take the sampling")
        return (f"samples skipped from step {step}: {cost} over train.sample_share ({self.cfg.train.sample_share:.1%}) "
                f"of the stage's {elapsed:.0f} s so far; they resume once under it, and the stage's last check "
                "samples")

    def last_check_s(self) -> float:
        """What a call's last check's samples are reckoned to take: the latest check's cost, or
        FIRST_CHECK_S before any (0 with train.samples off)."""
        return self.last if self.cfg.train.samples else 0.0

    def check(self, model: GPT, weights: dict, tok: AcmTokenizer, step: int, elapsed: float,
              last_check: bool = False) -> list[Event]:
        """The events of a check `elapsed` seconds into the stage (`last_check`: this call's last):
        its samples and a line of their cost, or the line saying checks are skipped. `model` reads
        `weights` meanwhile, then gets back those it had."""
        t = self.cfg.train
        if not t.samples:
            return []
        if not self.due(elapsed, last_check):
            said, self.skipped = self.skipped, True
            return [] if said else [Log(stage=self.stage, text=self._skipped(step, elapsed))]
        prompts, expected = sample_prompts(self.cfg)
        params = SamplingParams.from_config(self.cfg.generate, max_tokens=t.sample_tokens,
                                            seed=self.seed * 1_000_003 + step)
        kept = model.parameters()
        model.update(weights)
        try:
            samples, seconds = generate_samples(model, tok, prompts, expected, params, self.stage, step,
                                                self.cfg.data.code.syntax_timeout_s, self.clock)
        finally:
            model.update(kept)
        self.spent += seconds
        self.last = seconds
        share = self.spent / (elapsed + seconds) if elapsed + seconds > 0 else 0.0
        return [*samples, Log(stage=self.stage, text=f"samples at step {step}: {seconds:.2f} s, {share:.1%} of "
                                                      f"the stage so far")]

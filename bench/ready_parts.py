"""What `acm train`'s readying spends, part by part, in a fresh process: MLX's import, the settings
and the tokenizer's vocabulary, the throwaway model and its state (MLX's first GPU work), the step's
trace and first run, the validation loss and the live samples' decode, as
`core/train/ready_step.run_step` runs them; then the stage's own first steps, validation loss and two
live-samples checks on a new model of the project's shape: what the readying leaves to the stage (its
trace, and whatever the first run did not load).

usage: python bench/ready_parts.py --project DIR [--stage pretrain] [--layers 0 1] [--imports on off]
           [--cache clear keep] [--readying all step] [--rounds 1]
DIR holds acm.toml and a tokenizer (`acm tokenizer train` done). Each process readies the stage's
step on a model of the preset's layers (--layers 0) or of N layers, with acm's command line imported
on the main thread meanwhile (--imports on, as `acm train` does) or not; runs all the readying's parts
or stops after the step (--readying step, as when the stage is queued while the step runs); then
frees MLX's cache of what the throwaway model took (--cache clear, as `ready_stage` does) or leaves it
for the stage to reuse (--cache keep); the processes of a round take the combinations in turn. One
JSON line a process: `marks_s`, seconds from the process's start to each mark, and `parts_s`, each
part's seconds (the readying's start waits for the imports it needs; the stage's parts begin once the
readying has ended).
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from first_run import project_env

READYING = ("settings_and_vocabulary", "model_built", "state_evaluated", "step_traced", "step_first_run",
            "validation_loss", "samples_decoded", "readying_ended")
STAGE = ("stage_model_built", "stage_step_1", "stage_step_2", "stage_step_3", "stage_validation_loss",
         "stage_samples_decoded", "stage_samples_again")
ENGINE = "acm-engine"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--layers", type=int, nargs="+", default=[0], help="the readying model's layers (0: the preset's)")
    p.add_argument("--imports", nargs="+", choices=["on", "off"], default=["on"],
                   help="acm's command line imported beside the readying (on, as `acm train` does) or not")
    p.add_argument("--cache", nargs="+", choices=["clear", "keep"], default=["clear"],
                   help="MLX's cache freed after the readying (clear, as acm does) or kept for the stage")
    p.add_argument("--readying", nargs="+", choices=["all", "step"], default=["all"],
                   help="the readying runs all its parts, or stops after the step (as when the stage comes meanwhile)")
    p.add_argument("--rounds", type=int, default=1)
    return p.parse_args()


def main() -> None:
    a = parse_args()
    for n, layers, imports, cache, readying in itertools.product(range(1, a.rounds + 1), a.layers, a.imports,
                                                                  a.cache, a.readying):
        started = time.time()
        done = subprocess.run([sys.executable, __file__, "--child", str(started), a.stage, str(layers), imports, cache,
                               readying],
                              cwd=a.project, env=project_env(), capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the readying failed: {done.stderr.strip()[-800:]}")
        print(json.dumps(json.loads(done.stdout) | {"round": n}), flush=True)


class Marked:
    """mlx.core as `ready_step` sees it, each `eval` marked in turn with the names in `names`."""

    def __init__(self, mx, mark, names):
        self._mx, self._mark, self._names = mx, mark, iter(names)

    def __getattr__(self, name):
        return getattr(self._mx, name)

    def eval(self, *arrays):
        self._mx.eval(*arrays)
        self._mark(next(self._names))


def child(started: float, stage: str, layers: int, imports: bool, cache: str, readying_all: bool) -> dict:
    marks = {"script": time.time() - started}

    def mark(name: str) -> None:
        marks[name] = time.time() - started

    import mlx.core as mx
    mark("mlx_imported")
    from dataclasses import replace

    from tokenizers import Tokenizer

    from core import config
    from core.hardware import configure_mlx, device_label
    from core.train import ready_step
    from core.train.step import build_steps, new_model
    mark("readying_imported")
    configure_mlx()  # as the engine does before its first MLX work
    cfg = config.load(Path(config.CONFIG_NAME))
    sc = getattr(cfg.train, stage)
    if sc.grad_accum > 1:  # the readying then runs the accumulating steps, which the stage's part does not time
        sys.exit(f"train.{stage}.grad_accum is {sc.grad_accum}: this bench times steps without accumulation")
    shape = cfg.model.shape().with_vocab(Tokenizer.from_file(str(cfg.locations.tokenizer_file)).get_vocab_size())
    mark("settings_and_vocabulary")

    def readying() -> None:
        ready_step.mx = Marked(mx, mark, ["state_evaluated", "step_first_run", "validation_loss"])

        def built(*args):
            found = new_model(*args)
            mark("model_built")
            return found

        def steps(*args):
            fused_step, *rest = build_steps(*args)

            def traced(x, y):
                out = fused_step(x, y)
                mark("step_traced")
                return out
            return traced, *rest

        ready_step.new_model, ready_step.build_steps = built, steps
        tokenizer = (lambda: ready_step._project_tokenizer(cfg)) if cfg.train.samples else None
        whole = ready_step.run_step(cfg, sc, replace(shape, n_layer=layers or shape.n_layer), tokenizer,
                                    lambda: not readying_all, stage)  # step: waited for at once
        if tokenizer and whole:
            mark("samples_decoded")
        mark("readying_ended")
        mx.synchronize()  # on the engine's own stream: its last queued work done, its buffers back in the cache

    failed = []

    def kept(work):
        try:
            work()
        except BaseException as e:  # raised again in the main thread: no row from a readying that failed
            failed.append(e)

    thread = threading.Thread(target=kept, args=(readying,), name=ENGINE)
    thread.start()
    if imports:
        import core.cli.commands  # noqa: F401  what `acm train` imports while its engine readies
        import core.train.trainer  # noqa: F401
        mark("command_imported")
    thread.join()
    if failed:
        raise failed[0]
    ready_step.mx = mx
    if cache == "clear":
        mx.clear_cache()
    cached = mx.get_cache_memory()  # what the stage may reuse of the readying's buffers
    stage_parts(cfg, stage, shape, mark)
    return {"bench": "ready_parts", "device": device_label(), "stage": stage, "layers": layers or shape.n_layer,
            "preset_layers": shape.n_layer, "imports": imports, "cache": cache,
            "readying": "all" if readying_all else "step",
            "cached_bytes": cached, "marks_s": {k: round(v, 4) for k, v in marks.items()},
            "parts_s": parts(marks)}


def stage_parts(cfg, stage: str, shape, mark) -> None:
    """The stage's own first steps on a new model of `shape`, its validation loss, then (with
    train.samples) its first live samples and a later check's, each marked."""
    import mlx.core as mx

    from core.train import ready_step
    from core.train.step import build_steps, new_model

    sc = getattr(cfg.train, stage)
    model, opt = new_model(cfg, shape, sc)
    mx.eval(opt.state)
    model.update(opt.parameters())
    mark("stage_model_built")
    fused_step, _, _, eval_loss = build_steps(model, opt, sc.grad_clip)
    x = mx.zeros((sc.batch_size, sc.seq_len), mx.int32)
    for n in (1, 2, 3):
        mx.eval(fused_step(x, x), opt.state)
        mark(f"stage_step_{n}")
    mx.eval(eval_loss(x, x))
    mark("stage_validation_loss")
    if cfg.train.samples:
        from core.train.samples import LiveSampler

        tok = ready_step._project_tokenizer(cfg)
        for name in ("stage_samples_decoded", "stage_samples_again"):
            LiveSampler(cfg, stage, sc.seed).check(model, opt.compute_views(), tok, 0, 0.0, last_check=True)
            mark(name)


def parts(marks: dict) -> dict:
    """Each part's seconds: from the mark before it in its thread's order (the readying's first from
    the end of its imports, the stage's first from the later of the readying's end and the command's
    imports)."""
    out, before = {}, marks["readying_imported"]
    for name in READYING:
        if name in marks:
            out[name], before = marks[name] - before, marks[name]
    before = max(before, marks.get("command_imported", 0.0))
    for name in STAGE:
        if name in marks:
            out[name], before = marks[name] - before, marks[name]
    return {k: round(v, 4) for k, v in out.items()}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "on", sys.argv[6],
                               sys.argv[7] == "all")))
    else:
        main()

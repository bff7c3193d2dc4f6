"""`acm generate`, `acm chat`, `acm eval`, `acm export`: use a trained checkpoint."""
from __future__ import annotations

import argparse
import os
import select
import sys
import threading
from functools import partial
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from core import config
from core.cli.args import bounded_int, duration, setting_int
from core.cli.output import console_for, err_console, for_stream, print_json
from core.cli.progress import progress_bars
from core.config import Config
from core.engine import POLL_S, Engine, wait_for
from core.errors import INTERRUPTED, AcmError, politely_killed
from core.escapes import unescape, utf8, visible
from core.generate.batch import ended
from core.generate.checked import checked_generate, sample_and_judge
from core.generate.cut import cut_note
from core.generate.decode import load_model, stream_generate
from core.generate.evaluate import evaluate_run
from core.generate.export import export_checkpoint
from core.generate.export.upload import check_repo_id, upload_folder
from core.generate.relevance import expectations, task_verdict, uses
from core.generate.sampling import MAX_N, SamplingParams
from core.generate.verdicts import judge
from core.pipeline.tables import EVAL_COLUMNS, eval_rows, plain
from core.progress import CancelToken


def params_from(args, cfg: Config) -> SamplingParams:
    """Sampling settings from acm.toml with the flags applied, checked as `acm config set` checks them."""
    g = config.overridden(cfg.generate, "generate.", "command line", temperature=args.temp, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          max_tokens=args.max_tokens, seed=args.seed)
    read = unescape if getattr(args, "escapes", False) else utf8  # -e reads the stop strings' escapes too
    return SamplingParams.from_config(g, stop=tuple(read(s, "--stop") for s in args.stop or ()))


def stream_to_stdout(lm, prompt: str, params: SamplingParams, echo_prompt: bool,
                     should_stop=lambda: False, expected: dict | None = None) -> str:
    if echo_prompt:
        sys.stdout.write(for_stream(prompt))
    text, last = "", None
    for chunk in stream_generate(lm, prompt, params, should_stop):
        if chunk.notice:
            err_console().print(f"[yellow]{chunk.notice}[/]")
        sys.stdout.write(for_stream(chunk.text))  # each character escapes alone: no escape spans chunks
        sys.stdout.flush()
        text += chunk.text
        last = chunk
    sys.stdout.write("\n")
    verdict = judge(prompt + text, ended(last.finish_reason))
    err_console().print(f"[dim]{last.pace()}, stop: {last.finish_reason}; {verdict.describe()}"
                        f"{escape(task_verdict(prompt, text, expected or {}))}[/]")
    return text


def print_candidates(judged: list, echo_prompt: bool, expected: dict) -> None:
    """Candidates of one batch, each under a line with its verdicts (and, syntax-checked, what was tried)."""
    for notice in dict.fromkeys(j.sample.notice for j in judged if j.sample.notice):  # the same prompt: once
        err_console().print(f"[yellow]{escape(notice)}[/]")
    for i, j in enumerate(judged, 1):
        err_console().print(f"[bold]── {i}/{len(judged)}[/] [dim]{j.describe()}"
                            f"{escape(task_verdict(j.sample.prompt, j.sample.text, expected))}[/]")
        sys.stdout.write(for_stream((j.sample.prompt if echo_prompt else "") + j.sample.text) + "\n")
        sys.stdout.flush()


LOAD_JOB = "load"  # the model's load on the engine: a Ctrl-C or a TERM meanwhile does not wait for it


def _loaded(args, cfg: Config, engine: Engine):
    """The model, loaded on the engine, waited for in slices (a signal is acted on at once); a command
    interrupted meanwhile shuts its engine down past the load (`shutdown(abandon=LOAD_JOB)`), whatever
    holds it (a read from a slow disk), and ends."""
    lm = wait_for(engine.submit_named(LOAD_JOB, partial(load_model, compute_dtype=args.dtype), cfg, args.run,
                                      args.stage, args.checkpoint))
    err_console().print(f"[dim]{escape(visible(lm.run))} / {lm.stage} / step {lm.step} ({lm.checkpoint.name}, "
                        f"{str(lm.model.compute_dtype).removeprefix('mlx.core.')})[/]")
    if lm.notice:
        err_console().print(f"[yellow]{escape(lm.notice)}[/]")
    return lm


def cmd_generate(args, cfg: Config) -> int:
    params = params_from(args, cfg)
    prompt = unescape(args.prompt, "the prompt") if args.escapes else utf8(args.prompt, "the prompt")
    check = args.syntax_check or cfg.generate.syntax_check
    batched = check or args.n > 1 or args.json  # JSON is written once every script is judged
    expected = expectations(cfg.eval)  # a task's prompt also gets whether the script uses what it expects
    engine, stop, timeout_s = Engine(), threading.Event(), cfg.data.code.syntax_timeout_s
    try:
        lm = _loaded(args, cfg, engine)
        if check:
            k = args.candidates or cfg.generate.candidates
            job = engine.submit(checked_generate, lm, [prompt] * args.n, params, k, timeout_s, stop.is_set)
        elif batched:
            job = engine.submit(sample_and_judge, lm, [prompt] * args.n, params, timeout_s, stop.is_set)
        else:
            job = engine.submit(stream_to_stdout, lm, prompt, params, not args.no_echo, stop.is_set, expected)
        stopped = wait_or_stop(job, stop)
        if args.json:
            print_json(generated_json(lm, job.result(), expected, args.n, stopped))
        elif batched:
            print_candidates(job.result(), not args.no_echo, expected)
    finally:
        engine.shutdown(abandon=LOAD_JOB)
    if stopped:
        err_console().print(f"(stopped{f': {len(job.result())} of {args.n} printed' if batched else ''})")
        return INTERRUPTED
    return 0


def generated_json(lm, judged: list, expected: dict, asked: int, stopped: bool) -> dict:
    """`acm generate --json`: the checkpoint, then each script apart with its verdicts, so that a
    program reading stdout gets the N scripts one by one."""
    return {"run": lm.run, "stage": lm.stage, "step": lm.step, "checkpoint": str(lm.checkpoint),
            "notice": lm.notice or None, "asked": asked, "stopped": stopped,
            "scripts": [{"prompt": j.sample.prompt, "prompt_notice": j.sample.notice or None,
                         "text": j.sample.text, "finish_reason": j.sample.finish_reason,
                         "parses": j.verdict.parses, "shellcheck_errors": j.verdict.shellcheck_errors,
                         "complete": j.verdict.complete,
                         "uses_expected": uses(j.sample.prompt, j.sample.text, expected),
                         "tried": getattr(j, "tried", 1)} for j in judged]}


def wait_or_stop(job, stop: threading.Event) -> bool:
    """Wait for a generation on the engine; the first Ctrl-C sets `stop` (it ends at the next token,
    keeping what it made) and waits for it to end: whether it was stopped. A second Ctrl-C exits."""
    try:
        wait_for(job)
        return False
    except KeyboardInterrupt:
        stop.set()
        wait_for(job)
        return True


class PromptLines:
    """The chat's lines, as input() reads them, but on a pipe read in slices of POLL_S: a signal that
    lands between the prompt and the read (a polite kill right after the prompt) then ends the chat
    at once, where a read already blocked would keep Python from running its handler until the next
    line. A terminal keeps input() and its line editing; bytes that are not UTF-8 arrive as lone
    surrogates, which `utf8` names."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        try:
            self.fd = None if self.stream.isatty() else self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # no descriptor (a test's stand-in): input()
            self.fd = None
        self.pending = b""

    def __call__(self, prompt: str) -> str:
        if self.fd is None:
            return input(prompt)
        sys.stdout.write(prompt)
        sys.stdout.flush()
        while b"\n" not in self.pending:
            if not select.select([self.fd], [], [], POLL_S)[0]:
                continue  # Python runs a pending signal's handler here
            chunk = os.read(self.fd, 65536)
            if not chunk:
                if not self.pending:
                    raise EOFError
                self.pending += b"\n"  # a last line without its newline
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode(getattr(self.stream, "encoding", None) or "utf-8", "surrogateescape")


def cmd_chat(args, cfg: Config) -> int:
    params = params_from(args, cfg)
    engine = Engine()
    try:
        lm = _loaded(args, cfg, engine)
        err_console().print("[dim]type a prompt; end a line with \\ to continue it; Ctrl-D quits[/]")
        if hasattr(sys.stdin, "reconfigure"):  # a byte that is not UTF-8 reaches `utf8` below, never fails the read
            sys.stdin.reconfigure(errors="surrogateescape")
        read_line = PromptLines()
        while True:
            lines = []
            try:
                line = read_line("> " if not lines else "… ")
                while line.endswith("\\"):
                    lines.append(line[:-1])
                    line = read_line("… ")
                lines.append(line)
                prompt = utf8("\n".join(lines), "the prompt")
            except EOFError:
                return 0
            except KeyboardInterrupt:
                print()
                if politely_killed():  # SIGTERM ends the chat; Ctrl-C only the line
                    return INTERRUPTED
                continue
            except AcmError as e:  # a line the terminal did not send as UTF-8: said, and the chat goes on
                print(f"acm: error: {e}", file=sys.stderr)
                continue
            chat_turn(engine, lm, prompt, params)
            if politely_killed():
                return INTERRUPTED
    finally:
        engine.shutdown(abandon=LOAD_JOB)


def chat_turn(engine: Engine, lm, prompt: str, params: SamplingParams, stop: threading.Event | None = None) -> None:
    """One generation; Ctrl-C stops it (sets `stop`), and the next prompt waits until it has stopped writing."""
    stop = stop or threading.Event()
    job = engine.submit(stream_to_stdout, lm, prompt, params, False, stop.is_set)
    if wait_or_stop(job, stop):
        print("\n(stopped)")


def cmd_eval(args, cfg: Config) -> int:
    cfg.eval.time = args.time or cfg.eval.time
    engine, cancel = Engine(), CancelToken()
    try:
        with progress_bars() as report:
            job = engine.submit(evaluate_run, cfg, report, cancel, args.run, args.samples, args.max_tokens)
            results = cancelled_on_interrupt(job, cancel)  # it stops at its next check, eval.json left as it was
    finally:
        engine.shutdown()
    if args.json:
        print_json(results)
        return 0
    print_eval_table(results)
    return 0


def cancelled_on_interrupt(job, cancel: CancelToken):
    """The job's result; a Ctrl-C or SIGTERM meanwhile cancels it, and the command ends interrupted
    once the job has stopped at its next check. One that came after the job's last check (its folder
    or eval.json put in place already) finds it done: said so, and its result is the command's.
    A second Ctrl-C while it stops ends the command at once."""
    try:
        return wait_for(job)
    except KeyboardInterrupt as interrupt:
        cancel.cancel()
        try:
            result = wait_for(job)
        except Exception:  # stopped (Cancelled), or failed meanwhile: the interrupt is what ends it
            raise interrupt from None
        print("acm: the interrupt came after its last point of stopping: it is done", file=sys.stderr)
        return result


def print_eval_table(results: dict) -> None:
    """The evaluation as a table on stdout: `acm eval` and the end of `acm pipeline run` print it;
    under it, what its time budget cut, if anything."""
    run = escape(visible(results["run"]))  # a name from disk: neither markup nor control characters
    table = Table(*EVAL_COLUMNS, title=f"Evaluation of run {run} (samples drawn/asked, perplexity; "
                  "generated bash: share parsing with bash -n, share using what its task expects, mean lines, "
                  "distinct-2)", title_justify="left", caption=escape(cut_note(results)) or None,
                  caption_justify="left", caption_style="yellow")
    rows = eval_rows(results)
    table.columns[0].no_wrap, table.columns[0].min_width = True, max(len(row[0]) for row in rows)  # never cut
    for row in rows:
        table.add_row(*map(plain, row))  # read from eval.json: text, not markup
    console_for().print(table)


def cmd_export(args, cfg: Config) -> int:
    if args.private and not args.upload:
        raise AcmError("--private makes the repository --upload creates private: give --upload REPO_ID too")
    if args.upload:
        check_repo_id(args.upload)
    engine, cancel = Engine(), CancelToken()
    try:
        job = engine.submit(export_checkpoint, cfg, args.to, args.run, args.stage, args.checkpoint, args.dtype,
                            args.format, cancel)
        info = cancelled_on_interrupt(job, cancel)  # it stops before its folder is put in place
    finally:
        engine.shutdown()
    if info.get("notice"):
        err_console().print(f"[yellow]{escape(info['notice'])}[/]")
    print(f"exported {info['checkpoint']} ({info['preset']}, {info['model_type']}, {info['dtype']}) as "
          f"{info['format']} to {info['folder']} with a model card (README.md)")
    print(f"try: {info['try']}")
    if args.upload:
        url = upload_folder(Path(info["folder"]), args.upload, private=args.private)
        print(f"uploaded to {url}")
    return 0


def add_checkpoint_args(p) -> None:
    p.add_argument("--run", help="run name (default: the latest run)")
    p.add_argument("--stage", choices=["pretrain", "finetune"], help="default: finetune if it has a checkpoint")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")


def add_dtype_arg(p) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype to decode in (default: the run's model.compute_dtype); float32 gives what a "
                        "float32 export gives in mlx-lm, transformers or llama.cpp")


def add_sampling_args(p) -> None:
    p.add_argument("--temp", type=float, help="temperature (0: greedy; default generate.temperature)")
    p.add_argument("--top-k", type=setting_int("generate.top_k"))
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--max-tokens", type=setting_int("generate.max_tokens"))
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append",
                   help="stop string (repeatable; acm generate -e reads its \\n-style escapes); <EOS> always stops")


# Prompts in single quotes: in double quotes, bash reads the `!` of `#!` as history expansion.
GENERATE_EXAMPLES = ("acm generate -e '#!/bin/bash\\n# Back up a directory\\n'",
                     "acm generate -e --syntax-check --n 3 '#!/usr/bin/env bash\\n# Delete logs older than 7 days\\n'")


def register(sub, add) -> None:
    gen = add(sub, "generate", cmd_generate, "stream a continuation of PROMPT to stdout")
    gen.formatter_class = argparse.RawDescriptionHelpFormatter
    gen.epilog = ("examples (the prompt in single quotes, so that bash leaves its `#!` alone; -e turns \\n into "
                  "a newline):\n" + "\n".join(f"  {line}" for line in GENERATE_EXAMPLES))
    gen.add_argument("prompt")
    gen.add_argument("-e", "--escapes", action="store_true", help="read \\n-style escapes in PROMPT and --stop")
    gen.add_argument("--no-echo", action="store_true", help="print only the continuation")
    gen.add_argument("--n", type=bounded_int(1, MAX_N), default=1,
                     help=f"candidates sampled together in one batch (at most {MAX_N}; Ctrl-C stops and prints "
                          "what is done)")
    gen.add_argument("--syntax-check", action="store_true",
                     help="for each of the N, the best of K candidates: one that parses (generate.syntax_check)")
    gen.add_argument("--candidates", type=setting_int("generate.candidates"), metavar="K",
                     help="candidates per syntax-checked result (default: generate.candidates)")
    add_checkpoint_args(gen)
    add_dtype_arg(gen)
    add_sampling_args(gen)
    chat = add(sub, "chat", cmd_chat, "the generator as a REPL on standard input", json_flag=False)
    add_checkpoint_args(chat)
    add_dtype_arg(chat)
    add_sampling_args(chat)
    ev = add(sub, "eval", cmd_eval, "val loss / perplexity and generated-bash quality of a run's checkpoints")
    ev.add_argument("--run", help="run name (default: the latest run)")
    ev.add_argument("--samples", type=setting_int("eval.samples"),
                    help="scripts to generate per checkpoint (default: eval.samples)")
    ev.add_argument("--max-tokens", type=setting_int("eval.max_tokens"),
                    help="new tokens per script (default: eval.max_tokens)")
    ev.add_argument("--time", type=duration, metavar="DURATION",
                    help="wall-clock budget (90s, 10m): fewer samples and validation batches once it is spent, "
                         "as the results say (default: eval.time)")
    ex = add(sub, "export", cmd_export, "write a checkpoint as a folder for mlx-lm, transformers or llama.cpp",
             json_flag=False)
    ex.add_argument("run", nargs="?", help="run name (default: the latest run)")
    ex.add_argument("--to", required=True, help="new folder to write")
    ex.add_argument("--stage", choices=["pretrain", "finetune"])
    ex.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    ex.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ex.add_argument("--format", choices=["mlx", "hf", "gguf"], default="mlx",
                    help="mlx: mlx_lm.load; hf: transformers GPT2LMHeadModel; gguf: llama.cpp (default: mlx)")
    ex.add_argument("--upload", metavar="REPO_ID", help="then upload the folder to this Hugging Face Hub model repo "
                                                        "(needs a token: hf auth login, or HF_TOKEN)")
    ex.add_argument("--private", action="store_true", help="create the uploaded repo as private")

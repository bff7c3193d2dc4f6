"""The Generate pane: a REPL over a checkpoint (streamed, stoppable, with history and sampling
settings), a `bash -n` badge on each result, and the evaluation table.

Generation runs on the engine thread and appends chunks to a buffer that a 20 Hz timer drains.
"""
from __future__ import annotations

import collections
import threading
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static

from acm_tui.text_input import TextInput
from core import config, runs
from core.atomic import read_json
from core.errors import AcmError, one_line
from core.escapes import stop_strings, unescape, visible
from core.generate.batch import ended
from core.generate.checked import checked_generate, sample_and_judge
from core.generate.cut import cut_note
from core.generate.decode import load_model, stream_generate
from core.generate.evaluate import evaluate_run
from core.generate.relevance import expectations, task_verdict
from core.generate.sampling import MAX_N, SamplingParams
from core.generate.verdicts import judge
from core.model.gpt import DTYPES
from core.paths import Paths
from core.pipeline.tables import EVAL_COLUMNS, eval_rows, plain

from ..messages import EngineResult, EvaluateRun
from .base import CANCEL_BINDING, Pane

SETTINGS = [  # (field, label, type)
    ("temperature", "temp", float), ("top_k", "top-k", int), ("top_p", "top-p", float), ("min_p", "min-p", float),
    ("repetition_penalty", "rep", float), ("max_tokens", "max", int), ("seed", "seed", int),
    ("candidates", "cand", int),
]
AUTO = "auto"
DTYPE_CHOICES = [("run's", AUTO)] + [(name, name) for name in DTYPES]  # as `acm generate --dtype`


class GeneratePane(Pane):
    TITLE = "Generate"
    BINDINGS = [
        CANCEL_BINDING,
        Binding("escape", "stop_or_leave", "Stop",
                tooltip="Stop the generation in progress; with none, leave the prompt so the pane's keys work"),
        Binding("ctrl+c", "stop_generation", "Stop", show=False),
        Binding("e", "evaluate", "Evaluate", tooltip="Val loss, perplexity and bash parse rate of the run"),
        Binding("k", "toggle_check", "Syntax check",
                tooltip="Return the best of generate.candidates samples: one that parses (toggle)"),
        Binding("i", "focus_prompt", "Prompt"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.chunks: collections.deque = collections.deque()
        self.stop_event: threading.Event | None = None
        self.loaded = None
        self.model_line = ""  # the checkpoint generated from, kept in view beside the figures
        self.history: list[str] = []
        self.history_pos = 0
        self.current_prompt = ""
        self.current_text = ""
        self.transcript: list[Text] = []
        self.syntax_check = self.app.cfg.generate.syntax_check
        self.last_finish: str | None = None
        self.asked = 1  # results asked for by the generation under way (n)

    def compose(self) -> ComposeResult:
        yield Static("[b]enter[/b] generate  [b]escape[/b] stop  [b]up/down[/b] prompt history  [b]tab[/b] "
                     "settings (n: candidates a batch)  [b]k[/b] syntax check  [b]e[/b] evaluate  (type \\n for a new "
                     "line)", classes="hint")
        yield Select([("latest run (best)", AUTO)], id="gen-checkpoint", allow_blank=False)
        g = self.app.cfg.generate
        for row in (SETTINGS[:4], SETTINGS[4:7]):
            with Horizontal(classes="gen-settings"):
                yield from self._setting_boxes(row, g)
                if row[0][0] == "repetition_penalty":
                    yield Label("n", classes="gen-label")
                    yield TextInput("1", id="gen-n", classes="gen-setting")
        with Horizontal(classes="gen-settings"):
            yield Label("stop", classes="gen-label")
            yield TextInput(placeholder='\\n\\n or "a", "b"', id="gen-stop")
            yield Label("dtype", classes="gen-label")
            yield Select(DTYPE_CHOICES, id="gen-dtype", allow_blank=False)
            yield from self._setting_boxes(SETTINGS[7:], g)
        yield Static("", id="gen-output")
        yield Static("", id="gen-status")
        yield TextInput(placeholder="prompt, e.g. #!/bin/bash\\n# Install docker\\n", id="gen-prompt")
        yield Static("Evaluation ([b]acm eval[/b])", classes="heading")
        yield from self.compose_step()
        yield DataTable(id="eval-table", cursor_type="none")
        yield Static("", id="eval-note")  # what a time budget cut, if anything

    @staticmethod
    def _setting_boxes(row, g) -> ComposeResult:
        for name, label, _ in row:
            yield Label(label, classes="gen-label")
            yield TextInput(str(getattr(g, name)), id=f"gen-{name}", classes="gen-setting")

    def disk_changed(self) -> None:
        self.refresh_checkpoints()

    def on_mount(self) -> None:
        self.query_one("#eval-table", DataTable).add_columns(*EVAL_COLUMNS)
        self._show_check()
        self.refresh_checkpoints()
        self.set_interval(0.05, self.drain)

    def on_show(self) -> None:
        self.refresh_checkpoints()

    def refresh_checkpoints(self) -> None:
        """Every run's best and latest checkpoint of each stage, newest run first."""
        try:
            all_runs = runs.list_runs(self.cfg)
        except AcmError as e:
            self.notify(str(e), severity="error")
            all_runs = []
        options = [("latest run (best)", AUTO)] + [
            (f"{run.name} / {stage} / {which}", f"{run.name}|{stage}|{which}")
            for run in all_runs for stage in runs.TRAINING_STAGES if Paths.checkpoints(run, stage).exists()
            for which in ("best", "latest")]
        select = self.query_one("#gen-checkpoint", Select)
        keep = select.value if select.value in {value for _, value in options} else AUTO
        if select.value not in (keep, Select.BLANK, None):  # renamed or deleted meanwhile: never a silent switch
            self.notify(f"the checkpoint chosen ({str(select.value).replace('|', ' / ')}) is gone: "
                        "generating from the latest run's best until another is chosen", severity="warning")
        select.set_options(options)
        select.value = keep
        self._show_chosen_eval(all_runs[0] if all_runs else None)

    @on(Select.Changed, "#gen-checkpoint")
    def _chosen(self) -> None:
        try:
            newest = runs.newest_run(self.cfg)
        except AcmError:
            newest = None
        self._show_chosen_eval(newest)

    def _show_chosen_eval(self, newest: Path | None) -> None:
        """The evaluation of the run the checkpoint list has chosen (`newest`'s for "latest run"), the
        run `e` evaluates."""
        name, _, _ = self.checkpoint_choice()
        run = self.cfg.locations.run(name) if name else newest
        if run is not None:
            self._show_eval(run)

    # ------------------------------------------------------------ settings

    def busy(self) -> bool:
        return self.stop_event is not None or super().busy()

    def read_params(self) -> tuple[SamplingParams, int]:
        """The sampling settings and the candidates tried for a syntax-checked result, from the boxes,
        checked as `acm config set` checks them; the stop strings as `stop_strings` reads them."""
        values = {}
        for name, label, typ in SETTINGS:
            if name == "candidates" and not self.syntax_check:  # tried only for a syntax-checked result
                continue
            raw = self.query_one(f"#gen-{name}", Input).value.strip()
            try:
                values[name] = typ(raw)
            except ValueError:
                kind = "an integer" if typ is int else "a number"
                raise AcmError(f"{label} must be {kind}, got {config.shown(raw)}") from None
        g = config.overridden(self.cfg.generate, "generate.", "Generate pane", **values)
        stop = stop_strings(self.query_one("#gen-stop", Input).value)
        return SamplingParams.from_config(g, stop=stop), g.candidates

    def decode_dtype(self) -> str | None:
        """The dtype chosen to decode in; None: the run's `model.compute_dtype`."""
        value = self.query_one("#gen-dtype", Select).value
        return None if value in (AUTO, Select.BLANK, None) else str(value)

    def checkpoint_choice(self) -> tuple[str | None, str | None, str]:
        value = self.query_one("#gen-checkpoint", Select).value
        if value in (AUTO, Select.BLANK, None):
            return None, None, "best"
        run, stage, which = str(value).split("|")
        return run, stage, which

    # ------------------------------------------------------------ REPL

    def action_focus_prompt(self) -> None:
        self.query_one("#gen-prompt", Input).focus()

    @on(Input.Submitted, "#gen-prompt")
    def submit(self, event: Input.Submitted) -> None:
        if self.stop_event is not None:
            self.notify("a generation is running: escape stops it", severity="warning")
            return
        raw = event.value
        try:
            params, candidates = self.read_params()
            n = self.candidate_count()
            prompt = unescape(raw, "the prompt")  # as `acm generate -e` reads it
        except AcmError as e:
            self.notify(str(e), severity="error")
            return
        if raw and (not self.history or self.history[-1] != raw):
            self.history.append(raw)
        self.history_pos = len(self.history)
        event.input.value = ""
        self.current_prompt, self.current_text, self.last_finish, self.asked = prompt, "", None, n
        self.stop_event = threading.Event()
        self.query_one("#gen-status", Static).update("loading the checkpoint…" if self.loaded is None else "…")
        choice = (*self.checkpoint_choice(), self.decode_dtype())
        if n > 1 or self.syntax_check:
            self.run_on_engine("generate", self._generate_batch, choice, self.current_prompt, params, n,
                               candidates if self.syntax_check else 0, self.stop_event)
        else:
            self.run_on_engine("generate", self._generate, choice, self.current_prompt, params, self.stop_event)
        self._render_output()

    def candidate_count(self) -> int:
        """n, the candidates sampled together: 1 to MAX_N, as `acm generate --n` takes it (an empty
        box: 1); anything else refused in one line."""
        raw = self.query_one("#gen-n", Input).value.strip() or "1"
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_N):
            raise AcmError(f"n = {raw[:20]!r}: give a whole number of candidates from 1 to {MAX_N}")
        return int(raw)

    def action_toggle_check(self) -> None:
        self.syntax_check = not self.syntax_check
        self._show_check()
        self.notify(f"syntax-checked sampling {'on' if self.syntax_check else 'off'}: "
                    + (f"the best of {self.query_one('#gen-candidates', Input).value.strip()} candidates (cand)"
                       if self.syntax_check else "one sample as it streams"))

    def _show_check(self) -> None:
        """The syntax check's state stays in view on the prompt's border, not only in a passing notice."""
        self.query_one("#gen-prompt", Input).border_subtitle = f"k syntax check: {'on' if self.syntax_check else 'off'}"

    def _load(self, choice) -> None:
        """The checkpoint the choice names now (the latest run's best follows new runs and saves),
        loaded again only where it is not the one already held."""
        run, stage, which, dtype = choice
        self.loaded = load_model(self.cfg, run, stage, which, compute_dtype=dtype, held=self.loaded)
        notice = f"; {self.loaded.notice}" if self.loaded.notice else ""
        self.chunks.append(("model", f"{self.loaded.run} / {self.loaded.stage} / step {self.loaded.step}{notice}"))

    def _generate_batch(self, choice, prompt: str, params: SamplingParams, n: int, candidates: int,
                        stop: threading.Event) -> None:
        """Engine thread: n candidates from one batch (each the best of `candidates` when syntax-checked,
        as the toggle was at enter)."""
        self._load(choice)
        timeout = self.cfg.data.code.syntax_timeout_s
        if candidates:
            found = checked_generate(self.loaded, [prompt] * n, params, candidates, timeout, stop.is_set)
        else:
            found = sample_and_judge(self.loaded, [prompt] * n, params, timeout, stop.is_set)
        self.chunks.append(("candidates", found))

    def _generate(self, choice, prompt: str, params: SamplingParams, stop: threading.Event) -> None:
        """Engine thread: load (once per checkpoint choice) and stream chunks into the buffer."""
        self._load(choice)
        for chunk in stream_generate(self.loaded, prompt, params, should_stop=stop.is_set):
            self.chunks.append(("chunk", chunk))

    def action_stop_generation(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    def stop_work(self) -> None:
        self.action_stop_generation()  # quitting: a generation ends at its next token
        super().stop_work()

    def action_stop_or_leave(self) -> None:
        """escape: stop the generation in progress; with none, or pressed again (a generation waiting
        for the engine ends only when it starts), leave the prompt (or a setting), so that k, e and i
        act instead of typing."""
        if self.stop_event is not None and not self.stop_event.is_set():
            self.stop_event.set()
        elif self.app.focused is not self:
            self.focus()

    def on_key(self, event) -> None:
        prompt = self.query_one("#gen-prompt", Input)
        if not prompt.has_focus or event.key not in ("up", "down") or not self.history:
            return
        self.history_pos = max(0, min(len(self.history), self.history_pos + (-1 if event.key == "up" else 1)))
        prompt.value = self.history[self.history_pos] if self.history_pos < len(self.history) else ""
        prompt.cursor_position = len(prompt.value)
        event.stop()

    def drain(self) -> None:
        if not self.chunks:
            return
        status = self.query_one("#gen-status", Static)
        last = None
        while self.chunks:
            kind, item = self.chunks.popleft()
            if kind == "model":
                self.model_line = visible(item)  # a run name from disk: its control characters escaped
                status.update(Text(self.model_line, style="dim"))
                continue
            if kind == "candidates":
                self._show_candidates(item)
                continue
            self.current_text += item.text
            self.last_finish = item.finish_reason or self.last_finish
            if item.notice:
                self.notify(item.notice, severity="warning")
            last = item
        if last is not None:
            status.update(Text(f"{self.model_line}: {last.pace()}, peak memory {last.peak_memory / 2**20:.0f} MiB" +
                               (f", stopped: {last.finish_reason}" if last.finish_reason else ""), style="dim"))
        self._render_output()

    def _render_output(self) -> None:
        current = Text()
        current.append(visible(self.current_prompt, lines=True), style="bold")
        current.append(visible(self.current_text, lines=True))
        self.query_one("#gen-output", Static).update(Text("\n\n").join([*self.transcript[-3:], current]))
        self._keep_prompt_in_view()

    def _keep_prompt_in_view(self) -> None:
        """The output grows above the prompt: at 80x24 the prompt typed into would scroll off screen."""
        prompt = self.query_one("#gen-prompt", Input)
        if prompt.has_focus:
            prompt.call_after_refresh(prompt.scroll_visible, animate=False)

    @on(EngineResult)
    def engine_done(self, message: EngineResult) -> None:
        if message.job != "generate":
            return
        self.drain()
        self.stop_event = None
        error = message.future.exception()
        if error is not None:
            text = one_line(error)
            self.query_one("#gen-status", Static).update(Text(f"failed: {text}", style="red"))
            self.notify(text, title="Generation failed", severity="error")
            return
        if self.current_prompt or self.current_text:  # a streamed sample (candidates are shown as they come)
            script = self.current_prompt + self.current_text
            verdict = judge(script, ended(self.last_finish), self.cfg.data.code.syntax_timeout_s)
            uses = task_verdict(self.current_prompt, self.current_text, expectations(self.cfg.eval))
            self.transcript.append(self._entry(self.current_prompt, self.current_text, verdict.describe() + uses,
                                               verdict.parses))
        self.current_prompt = self.current_text = ""
        self.query_one("#gen-output", Static).update(Text("\n\n").join(self.transcript[-4:]))
        self._keep_prompt_in_view()

    def _entry(self, prompt: str, text: str, verdict: str, good: bool) -> Text:
        entry = Text()
        entry.append(visible(prompt, lines=True), style="bold")  # the model's control characters: escaped
        entry.append(visible(text, lines=True))
        entry.append(f"  [{verdict}]", style="bold green" if good else "bold red")
        return entry

    def _show_candidates(self, found: list) -> None:
        """Each candidate of a batch under its verdicts (and, syntax-checked, what was tried)."""
        expected = expectations(self.cfg.eval)
        for i, j in enumerate(found, 1):
            uses = task_verdict(j.sample.prompt, j.sample.text, expected)
            self.transcript.append(self._entry(f"{i}/{len(found)} {j.sample.prompt}", j.sample.text,
                                               j.describe() + uses, j.verdict.parses))
        self.current_prompt = self.current_text = ""
        stopped = f" (stopped: {len(found)} of {self.asked} asked)" if len(found) < self.asked else ""
        self.query_one("#gen-status", Static).update(Text(f"{self.model_line}: {len(found)} results{stopped}",
                                                          style="dim"))  # as `acm generate --n` says a stop

    # ------------------------------------------------------------ evaluation

    def action_evaluate(self) -> None:
        run, _, _ = self.checkpoint_choice()
        self.start_step("evaluating", evaluate_run, run, on_engine=True)

    @on(EvaluateRun)
    def _evaluate_requested(self, request: EvaluateRun) -> None:
        self.action_evaluate()

    def step_done(self, name: str, results: dict) -> None:
        self._status(f"[green]evaluated run {results['run']}[/]")
        self._fill_eval(results)
        self.step_ended()

    def _show_eval(self, run) -> None:
        results = read_json(Paths.eval_results(run))
        if isinstance(results, dict) and "stages" in results:
            self._fill_eval(results)
            return
        self.query_one("#eval-table", DataTable).clear()  # never another run's figures under this one's name
        note = self.query_one("#eval-note", Static)
        note.update(Text(f"run {visible(run.name)}: not evaluated yet (e evaluates it)"))
        note.display = True

    def _fill_eval(self, results: dict) -> None:
        table = self.query_one("#eval-table", DataTable)
        table.clear()
        for row in eval_rows(results):
            table.add_row(*map(plain, row))  # read from eval.json: text, not markup
        note, said = self.query_one("#eval-note", Static), cut_note(results)
        note.update(Text(said))
        note.display = bool(said)


"""How each client runs an export as acm does: the commands of the model card.

Every command is meant to be pasted: shell lines quote the prompt singly (in double quotes an
interactive bash reads the `!` of `#!` as history expansion), ask for no more new tokens than the
context leaves after the prompt (past it, learned positions run out: llama.cpp aborts, transformers
raises, mlx-lm writes noise), and pass acm's sampling settings, its repetition penalty with the
window acm applies it over included.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from core.config import GenerateConfig
from core.generate.decode import LoadedModel
from core.generate.sampling import PENALTY_WINDOW, SamplingParams

PROMPT = "#!/bin/bash\n# Back up a directory\n"
TYPED = PROMPT.replace("\n", "\\n")  # as typed: each client reads \n as a newline


@dataclass(frozen=True)
class Plan:
    """What the commands ask for: the context, the example prompt's tokens, acm's sampling."""

    n_ctx: int
    prompt_tokens: int  # with its <BOS>
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def new_tokens(self) -> int:
        """acm's max_tokens, within what the context leaves after the prompt."""
        return max(min(self.sampling.max_tokens, self.n_ctx - self.prompt_tokens), 1)

    @property
    def window(self) -> int:
        """The tokens acm's repetition penalty looks back on, prompt and <BOS> included."""
        return min(PENALTY_WINDOW, self.n_ctx)


def plan(lm: LoadedModel, sampling: dict) -> Plan:
    """The commands for this model with acm's sampling settings (`[generate]`'s defaults where not given)."""
    known = {k: v for k, v in sampling.items() if k in SamplingParams.__dataclass_fields__}
    return Plan(lm.model.shape.n_ctx, 1 + len(lm.tokenizer.encode(PROMPT)),
                SamplingParams.from_config(GenerateConfig(), **known))


def _g(x: float) -> str:
    return f"{x:g}"


def mlx_cli(p: Plan, model: str = ".") -> str:
    s = p.sampling
    return (f"mlx_lm.generate --model {model} --prompt '{TYPED}' --max-tokens {p.new_tokens} "
            f"--temp {_g(s.temperature)} --top-k {s.top_k} --top-p {_g(s.top_p)} --min-p {_g(s.min_p)}")


def mlx_python(p: Plan, model: str = ".") -> list[str]:
    s = p.sampling
    return ["from mlx_lm import generate, load",
            "from mlx_lm.sample_utils import make_logits_processors, make_sampler", "",
            f"model, tokenizer = load('{model}')",
            f"prompt = '{TYPED}'",
            f"room = {p.n_ctx} - len(tokenizer.encode(prompt))  # the context, less the prompt and its <BOS>",
            f"text = generate(model, tokenizer, prompt, max_tokens=min({s.max_tokens}, room),",
            f"                sampler=make_sampler(temp={_g(s.temperature)}, top_p={_g(s.top_p)}, "
            f"min_p={_g(s.min_p)}, top_k={s.top_k}),",
            f"                logits_processors=make_logits_processors(repetition_penalty={_g(s.repetition_penalty)}, "
            f"repetition_context_size={p.window}))",
            "print(prompt + text)"]


def mlx_server(p: Plan, model: str = ".", port: int = 8080) -> list[str]:
    s = p.sampling
    body = (f'{{"prompt": "{TYPED}", "max_tokens": {p.new_tokens}, "temperature": {_g(s.temperature)}, '
            f'"top_k": {s.top_k}, "top_p": {_g(s.top_p)}, "min_p": {_g(s.min_p)}, '
            f'"repetition_penalty": {_g(s.repetition_penalty)}, "repetition_context_size": {p.window}}}')
    return [f"mlx_lm.server --model {model} --port {port}",
            f"curl -s localhost:{port}/v1/completions -H 'Content-Type: application/json' -d '{body}'"]


def hf_python(p: Plan, model: str = ".") -> list[str]:
    s = p.sampling
    sampling = ("do_sample=False" if s.temperature <= 0 else
                f"do_sample=True, temperature={_g(s.temperature)}, top_k={s.top_k}, top_p={_g(s.top_p)}"
                + (f", min_p={_g(s.min_p)}" if s.min_p > 0 else ""))
    return ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f"tok = AutoTokenizer.from_pretrained('{model}')",
            f"model = AutoModelForCausalLM.from_pretrained('{model}')",
            f"ids = tok('{TYPED}', return_tensors='pt').input_ids  # <BOS> first",
            f"room = {p.n_ctx} - ids.shape[1]  # the context, less the prompt",
            f"out = model.generate(ids, max_new_tokens=min({s.max_tokens}, room), {sampling},",
            f"                     repetition_penalty={_g(s.repetition_penalty)})",
            "print(tok.decode(out[0], skip_special_tokens=True))"]


def llama_cpp(p: Plan, model: str = "model.gguf") -> str:
    s = p.sampling
    return (f"llama-completion -m {model} -c {p.n_ctx} -n {p.new_tokens} -p '{TYPED}' --temp {_g(s.temperature)} "
            f"--top-k {s.top_k} --top-p {_g(s.top_p)} --min-p {_g(s.min_p)} "
            f"--repeat-penalty {_g(s.repetition_penalty)} --repeat-last-n {p.window}")


def try_line(fmt: str, p: Plan, folder: str) -> str:
    """One command to try an export at `folder` (what `acm export` prints)."""
    if fmt == "mlx":
        return mlx_cli(p, shlex.quote(folder))
    if fmt == "gguf":
        return llama_cpp(p, shlex.quote(f"{folder}/model.gguf"))
    return f"AutoModelForCausalLM.from_pretrained('{folder}') in transformers: {folder}/README.md shows how"

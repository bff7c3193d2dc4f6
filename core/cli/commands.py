"""`acm`: every stage from the command line, for scripts and machines without a terminal UI."""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from rich.table import Table

from core import __version__, config
from core.cli import data as cli_data
from core.cli import devices as cli_devices
from core.cli import generate as cli_generate
from core.cli import pipeline as cli_pipeline
from core.cli import runs as cli_runs
from core.cli import tokenizer as cli_tokenizer
from core.cli import train as cli_train
from core.cli.args import bounded_int, positive_int
from core.cli.early import EarlyEngine
from core.cli.output import console_for, print_json
from core.engine import engines_made, exit_past_abandoned_work
from core.errors import AcmError, Parser, command_done, polite_kill_as_ctrl_c, run_command
from core.escapes import utf8
from core.hardware import configure_mlx
from core.pipeline import doctor
from core.pipeline.tables import DOCTOR_COLUMNS, PRESET_COLUMNS, doctor_row, preset_row
from core.presets import PRESETS, get_preset, human_count

# ---------------------------------------------------------------- doctor

def cmd_doctor(args, cfg: config.Config) -> int:
    checks = doctor.run_checks(cfg)
    ok = doctor.healthy(checks)
    if args.json:
        print_json({"ok": ok, "checks": [c.__dict__ | {"status": c.status} for c in checks]})
    else:
        table = Table(*DOCTOR_COLUMNS, title="acm doctor", title_justify="left")
        for c in checks:
            table.add_row(*doctor_row(c))
        console_for().print(table)
        for c in checks:
            if not c.ok:
                console_for().print(f"[{'red' if c.required else 'yellow'}]{c.name}[/]: {c.fix}")
        console_for().print("[green]ready[/]" if ok else "[red]not ready: fix the MISSING lines above[/]")
    return 0 if ok else 1


# ---------------------------------------------------------------- presets and model

def preset_rows() -> list[dict]:
    return [p.as_dict() | {"parameters": p.param_count()} for p in PRESETS.values()]


def cmd_presets(args, cfg: config.Config) -> int:
    if args.json:
        print_json(preset_rows())
        return 0
    table = Table(*PRESET_COLUMNS, title="Model presets", title_justify="left")
    for p in PRESETS.values():
        table.add_row(*preset_row(p, selected=p.name == cfg.model.preset))
    console_for().print(table)
    chosen = "preset" in (cfg.explicit.get("model") or {})
    console_for().print("* the preset acm.toml selects (model.preset)" if chosen else
                        "* the preset that suits this machine (acm.toml sets no model.preset)")
    return 0


def cmd_model_info(args, cfg: config.Config) -> int:
    p = get_preset(args.name or cfg.model.preset)
    if args.json:
        print_json(p.as_dict() | {"parameters": p.param_count()})
        return 0
    lines = [
        f"Model Configuration: {p.name.upper()}",
        f"  Parameters: {human_count(p.param_count())} ({p.param_count():,})",
        f"  Layers: {p.n_layer}",
        f"  Hidden dim: {p.n_embd}",
        f"  Attention heads: {p.n_head}",
        f"  FFN dim: {p.n_ffn}",
        f"  Max sequence: {p.n_ctx}",
        f"  Vocabulary: {p.vocab_size}",
        f"  Embeddings: {'tied input/output' if p.tie_embeddings else 'untied output head'}",
        f"  Memory (fp32 weights): {p.param_count() * 4 / 2**30:.2f} GiB",
    ]
    print("\n".join(lines))
    return 0


def cmd_model_test(args, cfg: config.Config) -> int:
    from core.model.check import architecture_test

    shape = get_preset(args.preset or cfg.model.preset)
    if args.seq > shape.n_ctx:
        raise AcmError(f"--seq {args.seq:,} is longer than preset {shape.name}'s context of {shape.n_ctx:,} tokens")
    r = architecture_test(shape, batch=args.batch, seq=args.seq, compute_dtype=args.dtype)
    if args.json:
        print_json(r)
        return 0 if r["shape_ok"] else 1
    print(f"Model: {shape.name} on {r['device']} ({r['compute_dtype']} compute)")
    print(f"Input shape: {tuple(r['input_shape'])}")
    print(f"Output shape: {tuple(r['output_shape'])}")
    print(f"Forward pass time: {r['forward_ms']:.2f}ms")
    print(f"Total parameters: {human_count(r['parameters'])}")
    print(f"Memory footprint: ~{r['memory_bytes'] / 2**30:.2f} GB (FP32)")
    print(f"Tokens/sec: ~{r['tokens_per_s']:,.0f}")
    print("passed" if r["shape_ok"] else "FAILED: unexpected output shape")
    return 0 if r["shape_ok"] else 1


# ---------------------------------------------------------------- config

def cmd_config_show(args, cfg: config.Config) -> int:
    if args.json:
        print_json(cfg.to_dict())
    else:
        print(config.dumps(cfg), end="")
    return 0


def cmd_config_check(args, cfg: config.Config) -> int:
    print(f"{args.config}: ok")
    return 0


def cmd_config_set(args, cfg: config.Config) -> int:
    new, notes = config.with_value(cfg, args.key, utf8(args.value, f"the value of {args.key}"), source=str(args.config))
    created = not Path(args.config).exists()
    new = config.save_settings(new, args.config, since=cfg, key=args.key)
    written, used = config.written_value(new, args.key), config.get_value(new, args.key)
    cut = args.key.endswith(".seq_len") and written != used  # set for a larger model than the machine's
    print(f"{args.key} = {config.one_line(written)} saved to {args.config}"
          + (f"; in effect here: {used}, the context of preset {new.model.preset!r}, the machine's choice"
             if cut else "")
          + (" (a new settings file: every other setting is its default)" if created else ""))
    for note in notes:
        print(f"also: {note}")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="acm", description="Train a small code-generation model with MLX.")
    p.add_argument("--version", action="version", version=f"acm {__version__}")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="settings file (default: ./acm.toml, or $ACM_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parser, name, func, help, json_flag=True):
        sp = parser.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    add(sub, "doctor", cmd_doctor, "check MLX, the device, dependencies and free disk")
    add(sub, "presets", cmd_presets, "list the model presets")

    model = sub.add_parser("model", help="model shapes and the architecture test").add_subparsers(
        dest="model_command", required=True, metavar="ACTION")
    info = add(model, "info", cmd_model_info, "show one preset's configuration")
    info.add_argument("name", nargs="?", help="preset name (default: model.preset)")
    test = add(model, "test", cmd_model_test, "build a preset and time one forward pass")
    test.add_argument("--preset", help="preset name (default: model.preset)")
    test.add_argument("--batch", type=bounded_int(1, 1024), default=2, help="sequences (1 to 1024)")
    test.add_argument("--seq", type=positive_int, default=128)
    test.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                      help="compute dtype (weights stay float32)")

    cli_data.register(sub, add)
    cli_tokenizer.register(sub, add)
    cli_train.register(sub, add)
    cli_generate.register(sub, add)
    cli_runs.register(sub, add)
    cli_pipeline.register(sub, add)
    cli_devices.register(sub, add)

    cfgp = sub.add_parser("config", help="show, check or change acm.toml").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    add(cfgp, "show", cmd_config_show, "print every setting, defaults filled in")
    add(cfgp, "check", cmd_config_check, "validate acm.toml", json_flag=False)
    setp = add(cfgp, "set", cmd_config_set, "change one setting, e.g. acm config set model.preset tiny",
               json_flag=False)
    setp.add_argument("key")
    setp.add_argument("value")
    return p


def settings_path(args) -> Path:
    """-c, else $ACM_CONFIG, else ./acm.toml; a file named by -c or $ACM_CONFIG must exist (only the
    default may be absent, meaning every default)."""
    named = config.named_file(args.config)
    if named is None:
        return Path(config.CONFIG_NAME)
    creating = args.command == "config" and getattr(args, "config_command", "") == "set"
    if not named.exists() and not named.is_symlink() and not creating:
        raise AcmError(f"settings file {named} does not exist")
    return named


def main(argv: list[str] | None = None, early: EarlyEngine | None = None) -> int:
    """`acm ARGV`; `early`: the engine `acm train` started before its imports (core/cli/early.py),
    for the stage to train on (acm's entry ends past it where the command trained nothing)."""
    args = build_parser().parse_args(argv)
    args.early = early
    configure_mlx()
    with polite_kill_as_ctrl_c(), engines_made() as engines:
        status = command_done(run_command(partial(_run, args), quiet_pipe=True))
    exit_past_abandoned_work(status, engines)  # a pipeline stopped while its engine readied the training step
    return status


def _run(args) -> int:
    args.config = settings_path(args)
    return args.func(args, config.load(args.config))


if __name__ == "__main__":
    sys.exit(main())

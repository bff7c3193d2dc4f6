"""`acm tokenizer ...` and `acm prepare`: train and probe the tokenizer, write token shards."""
from __future__ import annotations

from rich.table import Table

from core.cli.output import console_for, print_json
from core.cli.progress import progress_bars
from core.config import Config
from core.errors import AcmError, read_back
from core.escapes import unescape, utf8
from core.pipeline.tables import (
    SHARD_COLUMNS,
    TOKENIZER_COLUMNS,
    coloured_tokens,
    shard_row,
    tokenizer_rows,
)
from core.progress import CancelToken, within_reach
from core.tokenizer.bpe import load_meta, load_tokenizer, train_tokenizer
from core.tokenizer.shards import prepare


def cmd_train(args, cfg: Config) -> int:
    with progress_bars() as report:
        cancel = CancelToken()  # a Ctrl-C is taken at once, even while the trainer merges (within_reach)
        meta = within_reach(lambda: train_tokenizer(cfg, report, cancel, args.compare), cancel)
    if args.json:
        print_json(meta)
        return 0
    print(f"tokenizer: {meta['vocab_size']:,} tokens{short_of(meta)}, code share {meta['mix']['code_share']:.1%} of "
          f"{(meta['mix']['language_chars'] + meta['mix']['code_chars']) / 1e6:.1f}M training characters, "
          f"saved to {cfg.locations.tokenizer}")
    print_eval(meta)
    return 0


def short_of(meta: dict) -> str:
    """Where the corpus ran out of pairs before the vocabulary aimed for (the model takes the size reached)."""
    target = meta.get("vocab_target", meta["vocab_size"])
    return f" (of {target:,} aimed for: the corpus had no more pairs to merge)" if target > meta["vocab_size"] else ""


def print_eval(meta: dict) -> None:
    table = Table(*TOKENIZER_COLUMNS, title=f"Held-out text ({meta['held_out']['language']} documents, "
                  f"{meta['held_out']['code']} scripts)", title_justify="left")
    for row in tokenizer_rows(meta):
        table.add_row(*row)
    console_for().print(table)


def cmd_info(args, cfg: Config) -> int:
    meta = load_meta(cfg)
    if meta is None and cfg.locations.tokenizer_file.exists():
        load_tokenizer(cfg)  # one that does not read (a FIFO, damaged) is said as such
        raise AcmError(f"the tokenizer in {cfg.locations.tokenizer} has no metadata of its own (its training "
                       "ended before writing it): run `acm tokenizer train` again")
    if meta is None:
        raise AcmError(f"no tokenizer in {cfg.locations.tokenizer}: run `acm tokenizer train` first")
    if args.json:
        print_json(meta)
        return 0
    with read_back(str(cfg.locations.tokenizer_meta), "run `acm tokenizer train` again"):
        print(f"vocab {meta['vocab_size']:,}{short_of(meta)}; special tokens "
              + ", ".join(f"{k}={v}" for k, v in meta["special_tokens"].items())
              + f"; sha256 {meta['tokenizer_sha256'][:12]}")
        print_eval(meta)
    return 0


def cmd_probe(args, cfg: Config) -> int:
    text = unescape(args.text) if args.escapes else utf8(args.text, "the text")
    r = load_tokenizer(cfg).probe(text)
    if args.json:
        print_json(r, indent=None, ensure_ascii=False)
        return 0
    console_for().print(coloured_tokens(r["tokens"]))
    print(f"Tokens: {r['token_strings']}")
    print(f"IDs:    {r['ids']}")
    print(f"Bytes:  {r['byte_offsets']}")
    print(f"{r['count']} tokens, {r['chars_per_token']} chars/token")
    return 0


def cmd_prepare(args, cfg: Config) -> int:
    with progress_bars() as report:
        manifests = prepare(cfg, report, force=args.force)
    if args.json:
        print_json({k: {f: m[f] for f in ("tokens", "documents", "dtype", "tokenizer_sha256")}
                    for k, m in manifests.items()})
        return 0
    table = Table(*SHARD_COLUMNS, title="Token shards", title_justify="left")
    for kind, m in manifests.items():
        table.add_row(*shard_row(kind, m))
    console_for().print(table)
    return 0


def register(sub, add) -> None:
    tok = sub.add_parser("tokenizer", help="train and probe the BPE tokenizer").add_subparsers(
        dest="tokenizer_command", required=True, metavar="ACTION")
    train = add(tok, "train", cmd_train, "train the byte-level BPE tokenizer on both corpora")
    train.add_argument("--compare", action="store_true",
                       help="also train one at the original's mix (0.3%% code) and compare chars/token")
    add(tok, "info", cmd_info, "the trained tokenizer's metadata and evaluation")
    probe = add(tok, "probe", cmd_probe, "show the tokens, ids and byte offsets of a text")
    probe.add_argument("text")
    probe.add_argument("-e", "--escapes", action="store_true", help="read \\n, \\t and \\\" escapes in TEXT")
    prep = add(sub, "prepare", cmd_prepare, "tokenize both corpora into train/val token shards")
    prep.add_argument("--force", action="store_true", help="rebuild the shards from scratch")

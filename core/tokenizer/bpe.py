"""The byte-level BPE tokenizer: trained on both corpora with a code/language mix, probed, loaded.

Byte-level means every string encodes (no byte is ever unknown) and decode(encode(x)) == x.
Special tokens sit at fixed ids: <PAD> 0, <UNK> 1, <BOS> 2, <EOS> 3. Text never produces them:
a literal "<EOS>" inside a document is ordinary text; the pipeline adds the real ones.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from core.atomic import JSON_LIMIT, read_json, read_regular, replace_keeping_mode, write_bytes, write_text, writing
from core.config import Config
from core.data.corpus import Corpus, corpus_sha256, sha256_file
from core.errors import AcmError
from core.locks import rebuilding_inputs
from core.progress import CancelToken, Reporter, Ticker, no_report

SPECIAL_TOKENS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
# one document in N (by content hash) is kept out of training, for evaluation
HOLDOUT_EVERY = {"language": 50, "code": 10}
# The original's tokenizer saw 5.35 MB of bash beside 1.77 GB of language: 0.3% of its text.
ORIGINAL_CODE_SHARE = 0.003




def held_out(text: str, kind: str) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HOLDOUT_EVERY[kind] == 0


@dataclass
class AcmTokenizer:
    tok: Tokenizer
    path: Path
    sha256: str

    @classmethod
    def from_file(cls, path: Path) -> AcmTokenizer:
        """The tokenizer in `path`, read once (a FIFO or a device there is refused, never waited on)."""
        data = read_regular(path, JSON_LIMIT)
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:
            raise AcmError(f"{path} is not a tokenizer file ({str(e).splitlines()[0] if str(e) else e})") from None
        if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [PAD_ID, UNK_ID, BOS_ID, EOS_ID]:
            raise AcmError(f"{path}: special tokens are not at ids 0-3 ({', '.join(SPECIAL_TOKENS)})")
        tok.encode_special_tokens = True  # "<EOS>" typed in text stays text
        return cls(tok, path, hashlib.sha256(data).hexdigest())

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch_fast(texts)]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def probe(self, text: str) -> dict:
        """Tokens, ids and byte offsets of `text`, with count and characters per token."""
        enc = self.tok.encode(text)
        # char offsets -> byte offsets (prefix byte lengths of the UTF-8 encoding)
        byte_at = [0]
        for ch in text:
            byte_at.append(byte_at[-1] + len(ch.encode("utf-8", "surrogatepass")))
        pieces, seen_end = [], -1
        for (start, end) in enc.offsets:
            # several byte-level tokens can share one character: show the character once
            pieces.append(text[start:end] if start >= seen_end or end > seen_end else "")
            seen_end = max(seen_end, end)
        return {
            "text": text,
            "tokens": pieces,
            "token_strings": enc.tokens,
            "ids": enc.ids,
            "byte_offsets": [(byte_at[s], byte_at[e]) for s, e in enc.offsets],
            "count": len(enc.ids),
            "chars_per_token": round(len(text) / len(enc.ids), 3) if enc.ids else 0.0,
        }

    def chars_per_token(self, texts: list[str]) -> float:
        chars = sum(map(len, texts))
        tokens = sum(len(e.ids) for e in self.tok.encode_batch_fast(texts))
        return round(chars / tokens, 3) if tokens else 0.0


def load_tokenizer(cfg: Config) -> AcmTokenizer:
    path = cfg.locations.tokenizer_file
    if not path.exists():
        raise AcmError(f"no tokenizer at {path}: run `acm tokenizer train` first")
    return AcmTokenizer.from_file(path)


def keep_copy(tok: AcmTokenizer, copy: Path) -> None:
    """`copy` holds the tokenizer `tok` was loaded from (a stage's own, so that its checkpoints
    still decode after the project's tokenizer is retrained); written only when it differs."""
    if copy.is_file() and sha256_file(copy) == tok.sha256:
        return
    data = tok.path.read_bytes()
    if hashlib.sha256(data).hexdigest() == tok.sha256:  # the file read is the one the stage loaded
        copy.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(copy, data)


def tokenizer_with(sha256: str, cfg: Config, *copies: Path) -> AcmTokenizer | None:
    """The tokenizer whose file hashes to `sha256`: the project's, else the first of `copies` that
    does (a damaged or missing copy is passed over)."""
    for path in (cfg.locations.tokenizer_file, *copies):
        if path.is_file() and sha256_file(path) == sha256:
            try:
                return AcmTokenizer.from_file(path)
            except AcmError:
                continue
    return None


def load_meta(cfg: Config) -> dict | None:
    """The tokenizer's metadata; None where there is none, or it is not of the tokenizer in force (a
    kill between a new tokenizer's swap and its metadata's write leaves the old one's)."""
    meta = read_json(cfg.locations.tokenizer_meta)
    try:
        return meta if meta is not None and meta.get("tokenizer_sha256") == sha256_file(cfg.locations.tokenizer_file) \
            else None
    except OSError:  # no tokenizer, or none that reads
        return None


# ---------------------------------------------------------------- training

def new_bpe(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE(unk_token="<UNK>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tok, trainer


@dataclass
class Corpora:
    """Training and held-out texts of both corpora, read once."""

    language: list[str]
    code: list[str]
    language_eval: list[str]
    code_eval: list[str]
    hashes: dict


def read_corpora(cfg: Config, max_language_chars: int | None) -> Corpora:
    out = {"language": ([], []), "code": ([], [])}
    hashes = {}
    for kind in ("language", "code"):
        folder = cfg.locations.data / kind
        corpus = Corpus.open(folder, kind)
        hashes[kind] = {"manifest_sha256": corpus_sha256(folder / "manifest.json"), "documents": len(corpus)}
        train, held = out[kind]
        chars = 0
        for text in corpus.texts():
            (held if held_out(text, kind) else train).append(text)
            chars += len(text)
            if kind == "language" and max_language_chars and chars >= max_language_chars:
                break
    return Corpora(out["language"][0], out["code"][0], out["language"][1], out["code"][1], hashes)


def mixed_texts(language: list[str], code: list[str], code_weight: float) -> tuple[Iterator[str], int, int]:
    """Interleave language and code so code is `code_weight` of the characters: scripts repeat
    when code is scarce, and are skipped when it is plentiful. Returns the iterator and the
    characters of language and code it yields (exactly: a progress bar's total)."""
    lang_chars, code_chars = sum(map(len, language)), sum(map(len, code))
    if code_weight >= 1 or not language:
        return iter(code), 0, code_chars
    if code_weight <= 0 or not code:
        return iter(language), lang_chars, 0
    target = code_weight / (1 - code_weight) * lang_chars  # code characters to feed over all the language
    lang_lengths, code_lengths = [len(t) for t in language], [len(t) for t in code]
    fed_code = sum(code_lengths[i] for kind, i in _mix_order(lang_lengths, code_lengths, target) if kind == "code")
    texts = {"language": language, "code": code}
    return (texts[kind][i] for kind, i in _mix_order(lang_lengths, code_lengths, target)), lang_chars, fed_code


def _mix_order(lang_lengths: list[int], code_lengths: list[int], target: float) -> Iterator[tuple[str, int]]:
    """Which text comes next, as (corpus, index): each language text, then scripts (cycled) until
    code has caught up with its share of `target` characters so far. Walked once to count what will
    be fed and once to feed it, so the count is exact (whole scripts overshoot the share)."""
    lang_chars = sum(lang_lengths)
    fed_lang, fed_code, ci = 0, 0, 0
    for i, n in enumerate(lang_lengths):
        yield "language", i
        fed_lang += n
        while fed_code < target * fed_lang / lang_chars:
            j = ci % len(code_lengths)
            ci += 1
            fed_code += code_lengths[j]
            yield "code", j


def train_one(corp: Corpora, vocab_size: int, min_frequency: int, code_weight: float,
              report: Reporter, cancel: CancelToken, task: str) -> tuple[Tokenizer, dict]:
    texts, lang_chars, code_chars = mixed_texts(corp.language, corp.code, code_weight)
    tok, trainer = new_bpe(vocab_size, min_frequency)
    ticker = Ticker(report, task, lang_chars + code_chars)
    fed = {"chars": 0}

    def counted() -> Iterator[str]:
        for t in texts:
            cancel.check()
            fed["chars"] += len(t)
            ticker.advance(len(t))
            yield t

    with cancel.out_of_reach():  # the merges, in Rust once the texts are read: no cancel is seen there
        tok.train_from_iterator(counted(), trainer)
    cancel.check()
    ticker.finish()
    code_fed = fed["chars"] - lang_chars
    mix = {"language_chars": lang_chars, "code_chars": code_fed,
           "code_share": round(code_fed / max(fed["chars"], 1), 4)}
    return tok, mix


def evaluate(tok: AcmTokenizer, corp: Corpora) -> dict:
    return {"language": tok.chars_per_token(corp.language_eval or corp.language[:200]),
            "code": tok.chars_per_token(corp.code_eval or corp.code[:50])}


def train_tokenizer(cfg: Config, report: Reporter = no_report, cancel: CancelToken | None = None,
                    compare: bool = False) -> dict:
    """Train on both corpora; save tokenizer.json and its metadata atomically. Returns the metadata.

    compare: also train one at the original's mix (0.3% code) and report both
    tokenizers' characters per token on held-out language and bash."""
    cancel = cancel or CancelToken()
    with rebuilding_inputs(cfg.locations.inputs_lock, "the tokenizer"):
        return _train_and_save(cfg, report, cancel, compare)


def _train_and_save(cfg: Config, report: Reporter, cancel: CancelToken, compare: bool) -> dict:
    tc = cfg.tokenizer
    folder = cfg.locations.tokenizer
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():  # said now, not after the training
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(folder))
    corp = read_corpora(cfg, tc.max_language_mb * 2**20 if tc.max_language_mb else None)
    tok, mix = train_one(corp, cfg.vocab_target(), tc.min_frequency, tc.code_weight, report, cancel, "training")
    folder.mkdir(parents=True, exist_ok=True)
    path = cfg.locations.tokenizer_file
    built = folder / f".{path.name}.new"  # beside the tokenizer in force, which stays until the end
    with writing(f"the tokenizer {path}", built):
        write_text(built, tok.to_str())
    try:
        meta = _metadata(cfg, AcmTokenizer.from_file(built), corp, mix, report, cancel, compare)
        cancel.check()  # a Ctrl-C while the held-out text was counted (no check there) swaps nothing in
    except BaseException:
        built.unlink(missing_ok=True)  # a cancelled or failed rebuild leaves no trace
        raise
    replace_keeping_mode(built, path)  # the swap: the new tokenizer and its metadata, one right after the other
    with writing(f"the tokenizer's metadata {cfg.locations.tokenizer_meta}"):
        write_text(cfg.locations.tokenizer_meta, json.dumps(meta, indent=2) + "\n")
    return meta


def _metadata(cfg: Config, acm_tok: AcmTokenizer, corp, mix: dict, report: Reporter, cancel: CancelToken,
              compare: bool) -> dict:
    """What tokenizer-meta.json records; with compare, a second tokenizer at the original's mix too."""
    tc, folder = cfg.tokenizer, cfg.locations.tokenizer
    meta = {
        "vocab_size": acm_tok.vocab_size,
        "vocab_target": cfg.vocab_target(),  # a small corpus stops short of it: the model takes vocab_size
        "special_tokens": dict(zip(SPECIAL_TOKENS, range(4))),
        "code_weight": tc.code_weight,
        "min_frequency": tc.min_frequency,
        "corpora": corp.hashes,
        "mix": mix,
        "tokenizer_sha256": acm_tok.sha256,
        "held_out": {"language": len(corp.language_eval), "code": len(corp.code_eval)},
        "chars_per_token": evaluate(acm_tok, corp),
    }
    if compare:
        base, base_mix = train_one(corp, cfg.vocab_target(), tc.min_frequency, ORIGINAL_CODE_SHARE, report, cancel,
                                   "training (original mix)")
        base_path = folder / "tokenizer-original-mix.json"
        write_text(base_path, base.to_str())
        meta["original_mix"] = {"code_weight": ORIGINAL_CODE_SHARE, "mix": base_mix,
                                "chars_per_token": evaluate(AcmTokenizer.from_file(base_path), corp)}
    return meta

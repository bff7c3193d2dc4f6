"""Prepare throughput against raw `Tokenizer.encode_batch` on the same text, in the same run.

usage: python bench/prepare.py [-c acm.toml] [--corpus language] [--repeat 3]   prints one JSON line
Needs a fetched corpus and a trained tokenizer (acm data fetch ...; acm tokenizer train).
The goal: prepare within 1.2x of raw encoding (writing shards must not be the bottleneck).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from core import config  # noqa: E402
from core.data.corpus import Corpus  # noqa: E402
from core.progress import CancelToken, no_report  # noqa: E402
from core.tokenizer.bpe import load_tokenizer  # noqa: E402
from core.tokenizer.shards import BATCH_DOCUMENTS, prepare_corpus  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", default="acm.toml")
    p.add_argument("--corpus", default="language", choices=["language", "code"])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    cfg = config.load(a.config)
    tok = load_tokenizer(cfg)
    texts = list(Corpus.open(cfg.data_dir / a.corpus, a.corpus).texts())
    raw_best = fast_best = prep_best = float("inf")
    tokens = 0

    def encode_all(encode) -> int:
        return sum(len(e.ids) for i in range(0, len(texts), BATCH_DOCUMENTS)
                   for e in encode(texts[i:i + BATCH_DOCUMENTS]))

    for _ in range(a.repeat):
        t = time.perf_counter()
        tokens = encode_all(tok.tok.encode_batch)
        raw_best = min(raw_best, time.perf_counter() - t)
        t = time.perf_counter()
        encode_all(tok.tok.encode_batch_fast)  # the same without offsets, as prepare uses
        fast_best = min(fast_best, time.perf_counter() - t)
        t = time.perf_counter()
        m = prepare_corpus(cfg, a.corpus, tok, no_report, CancelToken(), force=True)
        prep_best = min(prep_best, time.perf_counter() - t)
    written = m["tokens"]["train"] + m["tokens"]["val"]
    print(json.dumps({
        "bench": "prepare", "machine": f"{platform.machine()} {os.cpu_count()} cores", "corpus": a.corpus,
        "documents": len(texts), "tokens": tokens, "tokens_written": written,
        "raw_encode_batch_s": round(raw_best, 3), "raw_encode_batch_fast_s": round(fast_best, 3),
        "prepare_s": round(prep_best, 3),
        "raw_tokens_per_s": round(tokens / raw_best), "prepare_tokens_per_s": round(written / prep_best),
        "prepare_time_ratio": round(prep_best / raw_best, 3),
        "prepare_time_ratio_vs_fast": round(prep_best / fast_best, 3),
    }))


if __name__ == "__main__":
    main()

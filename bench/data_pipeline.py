"""Scripts/s through validation (`bash -n`) and deduplication on the offline default corpus.

usage: python bench/data_pipeline.py [--repeat 3]     prints one JSON line
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

from core.config import CodeDataConfig
from core.data.code import CodeReport, builtin_candidates, deduplicate, validate_all
from core.progress import CancelToken, no_report


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    cc = CodeDataConfig()
    t = time.perf_counter()
    found = list(builtin_candidates(cc.max_file_bytes))
    scan_s = time.perf_counter() - t
    best_validate = best_dedupe = float("inf")
    for _ in range(a.repeat):
        t = time.perf_counter()
        checked = validate_all(found, cc, no_report, CancelToken())
        best_validate = min(best_validate, time.perf_counter() - t)
        valid = [v for v in checked if not v.reason]
        t = time.perf_counter()
        kept = deduplicate(valid, cc.near_duplicate_threshold, CodeReport(), no_report, CancelToken())
        best_dedupe = min(best_dedupe, time.perf_counter() - t)
    print(json.dumps({
        "bench": "data_pipeline", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "scripts": len(found), "valid": len(valid), "unique": len(kept),
        "scan_s": round(scan_s, 3), "validate_s": round(best_validate, 3), "dedupe_s": round(best_dedupe, 3),
        "validate_scripts_per_s": round(len(found) / best_validate, 1),
        "dedupe_scripts_per_s": round(len(valid) / best_dedupe, 1),
        "validate_dedupe_scripts_per_s": round(len(found) / (best_validate + best_dedupe), 1),
    }))


if __name__ == "__main__":
    main()

"""What each BigCode-style quality filter, the decontamination and the near-duplicate threshold
remove from a real corpus: clones of repositories, the offline builtin scripts and, where given,
the tldr-pages and NL2Bash comment-to-command scripts.

usage: python bench/data_filters.py --repos DIR [--tldr DIR] [--nl2bash DIR]     prints one JSON object
  DIR of --repos holds one clone per folder (each named owner+name).

Every script is validated once with the quality filters off (`bash -n` included); each filter is then
applied alone to the scripts that passed, so a script caught by two filters counts under both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from core import config
from core.data.code import (
    CONTENT_FILTERS,
    CodeReport,
    Validated,
    builtin_candidates,
    deduplicate,
    pair_candidates,
    repair_pairs,
    scan_folder,
    validate_all,
)
from core.data.decontaminate import EvalSpans, prompt_comments
from core.progress import CancelToken, no_report

QUALITY = ("low_alnum", "long_mean_line", "generated", "base64_blob")
EXAMPLES = 4


def corpus(repos: Path, tldr: str, nl2bash: str) -> tuple[config.Config, list]:
    pairs = [name for name, path in (("tldr", tldr), ("nl2bash", nl2bash)) if path]
    cfg = config.from_dict({"data": {"code": {"pairs": pairs, "tldr_path": tldr, "nl2bash_path": nl2bash}}},
                           root=Path.cwd())
    cc = cfg.data.code
    found = [c for d in sorted(repos.iterdir()) if d.is_dir()
             for c in scan_folder(d, "github", cc.max_file_bytes, contained=True, repo=d.name, category=d.name)]
    found += builtin_candidates(cc.max_file_bytes)
    found += pair_candidates(cfg, no_report, CancelToken())[0] if pairs else []
    return cfg, found


def removed(valid: list[Validated], rejects) -> dict:
    """How many of `valid` a check removes, by source, with a few of them named."""
    hit = [v for v in valid if rejects(v)]
    return {"removed": len(hit), "by_source": dict(Counter(v.candidate.source for v in hit)),
            "examples": [f"{v.candidate.repo or v.candidate.source}:{v.candidate.origin}" for v in hit[:EXAMPLES]]}


def quality(valid: list[Validated], cc) -> tuple[dict, list[Validated]]:
    """What each quality filter removes alone, and what passes them all."""
    filters = {name: removed(valid, lambda v, f=CONTENT_FILTERS[name]: f(v.text, cc)) for name in QUALITY}
    return filters, [v for v in valid if not any(CONTENT_FILTERS[name](v.text, cc) for name in QUALITY)]


def near_duplicates(valid: list[Validated], threshold: float) -> dict:
    rep = CodeReport()
    kept = deduplicate(valid, threshold, rep, no_report, CancelToken())
    ids = {id(v) for v in kept}
    dropped = Counter(v.candidate.source for v in valid if id(v) not in ids)
    return {"exact": rep.exact_duplicates, "near": rep.near_duplicates, "unique": rep.unique or len(kept),
            "removed_by_source": dict(dropped)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repos", type=Path, required=True)
    p.add_argument("--tldr", default="")
    p.add_argument("--nl2bash", default="")
    a = p.parse_args()
    t0 = time.perf_counter()
    cfg, found = corpus(a.repos, a.tldr, a.nl2bash)
    cc = cfg.data.code
    off = replace(cc, min_alnum_share=0.0, max_mean_line_length=0, generated_header_lines=0, max_base64_run=0)
    checked = repair_pairs(validate_all(found, off, no_report, CancelToken()), off, CodeReport(), no_report,
                           CancelToken())
    valid = [v for v in checked if not v.reason]
    filters, clean = quality(valid, cfg.data.code)
    evals = EvalSpans(prompt_comments(cfg.eval))
    contaminated = removed(clean, lambda v: evals.matches(v.text))
    kept = [v for v in clean if not evals.matches(v.text)]
    print(json.dumps({
        "bench": "data_filters", "machine": f"{platform.system()} {platform.machine()} {os.cpu_count()} cores",
        "repositories": sorted({c.repo for c in found if c.source == "github"}),
        "scripts_by_source": dict(Counter(c.source for c in found)), "raw": len(found),
        "valid_without_filters": len(valid),
        "rejected_without_filters": dict(Counter(v.reason for v in checked if v.reason)),
        "filters": filters, "removed_by_all_filters": len(valid) - len(clean),
        "decontamination": contaminated,
        "near_duplicates": {str(t): near_duplicates(kept, t) for t in (0.85, 0.7)},
        "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()

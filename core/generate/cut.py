"""What a time budget (eval.time, `acm eval --time`), or a damaged checkpoint, left out of an
evaluation, read back from its results (eval.json). Every place that shows an evaluation says so:
one scored on fewer samples or validation batches than asked is never compared with a whole one
unawares. An eval.json written before the evaluation recorded what it asked for still shows its
samples' cut (its `samples`).
"""
from __future__ import annotations

from core.errors import READ_BACK_ERRORS

KINDS = ("language", "code")  # the validation splits of a row


def asked_samples(results: dict, generation: dict) -> int | None:
    """The samples a row's generation was asked for (None where the file does not say)."""
    return generation.get("samples_asked", results.get("samples"))


def drawn_of_asked(results: dict, generation: dict) -> str:
    """A row's samples as "drawn/asked" ("24/64"), or what the file says of them."""
    drawn, asked = generation.get("samples"), asked_samples(results, generation)
    return "–" if drawn is None else f"{drawn}/{asked}" if asked is not None else str(drawn)


def cuts(results: dict, every: bool = False) -> dict[str, list[tuple[str, int, int]]]:
    """(where, drawn, asked) of each part drawn short (`every`: of each part that says both), "samples"
    by row, "batches" by row and split."""
    out: dict[str, list[tuple[str, int, int]]] = {"samples": [], "batches": []}
    for name, row in results["stages"].items():
        g = row["code_generation"]
        out["samples"].append((name, g.get("samples"), asked_samples(results, g)))
        if not name.endswith("+checked"):  # its validation is its row's, counted once
            out["batches"] += [(f"{name} {k}", row[k]["batches"], row[k]["batches_asked"])
                               for k in KINDS if "batches" in row[k]]
    return {part: [(w, d, a) for w, d, a in found if None not in (d, a) and (every or d < a)]
            for part, found in out.items()}


def _fewer(found: list[tuple[str, int, int]], units: tuple[str, str], per: str, every: bool) -> str:
    """e.g. "8 to 24 samples a checkpoint instead of 64" where every part was cut (units: the word
    for one, for several), else the parts named: "finetune+checked: 16 samples instead of 64"."""
    low, high = min(d for _, d, _ in found), max(d for _, d, _ in found)
    drawn = f"{low} {units[low != 1]}" if low == high else f"{low} to {high} {units[1]}"
    asked = max(a for _, _, a in found)
    if every:
        return f"{drawn} a {per} instead of {asked}"
    return f"{', '.join(w for w, _, _ in found)}: {drawn} instead of {asked}"


def cut_note(results: dict) -> str:
    """One line saying what the evaluation left out: what the time budget cut, and the checkpoints
    it passed over as damaged ("" where nothing was)."""
    try:
        found = cuts(results)
    except READ_BACK_ERRORS:
        return "whether a time budget cut this evaluation is unknown: eval.json is damaged"
    every = {part: len(found[part]) == len(all_parts) for part, all_parts in cuts(results, every=True).items()}
    pieces = ([_fewer(found["samples"], ("sample", "samples"), "checkpoint", every["samples"])]
              if found["samples"] else []) + (
        [f"validation on {_fewer(found['batches'], ('batch', 'batches'), 'split', every['batches'])}"]
        if found["batches"] else [])
    budget = results.get("time_budget")
    named = f" ({budget})" if isinstance(budget, str) and budget else ""
    passed = results.get("passed_over")
    return "; ".join(([f"cut by its time budget{named}: " + ", ".join(pieces)] if pieces else [])
                     + ([p for p in passed if isinstance(p, str)] if isinstance(passed, list) else []))

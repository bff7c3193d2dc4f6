"""Line charts (textual-plotext) as both chart panes draw them: an x axis labelled with whole
steps even at 80x24, a legend naming each series, and a fine-tune drawn after its pretrain (its
steps offset by the pretrain's last) so the two stages never lie on top of each other."""
from __future__ import annotations

Series = tuple[list[float], list[float], str]  # xs, ys, label


def draw(plt, title: str, series: list[Series], log: bool = False) -> None:
    plt.clear_data()
    plt.clear_figure()
    plt.title(title)
    drawn = [(xs, ys, label) for xs, ys, label in series if xs]
    for xs, ys, label in drawn:
        plt.plot(xs, ys, label=label, marker="braille")
    if not drawn:
        return
    lo, hi = min(min(xs) for xs, _, _ in drawn), max(max(xs) for xs, _, _ in drawn)
    ticks = sorted({int(lo), int((lo + hi) / 2), int(hi)})
    plt.xticks(ticks, [f"{t:,}" for t in ticks])
    plt.xlabel("step")
    if log:
        plt.yscale("log")


def stage_series(by_stage: dict[str, list[dict]], value: str, suffix: str = "") -> list[Series]:
    """One series per stage (pretrain, then fine-tune placed after the pretrain's last step)."""
    out, offset = [], 0
    for stage, rows in by_stage.items():
        if not rows:
            continue
        out.append(([r["step"] + offset for r in rows], [r[value] for r in rows], f"{STAGE_NAMES[stage]}{suffix}"))
        if stage == "pretrain":
            offset = rows[-1]["step"]
    return out


STAGE_NAMES = {"pretrain": "pretrain", "finetune": "fine-tune"}

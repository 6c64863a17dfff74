"""The report's plots: top-1 per stage per method for probes, mIoU per method and protocol for segmentation.

Both read the aggregated report of :func:`crossmodal.eval.report.aggregate` and write a PNG atomically.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable


def stage_order(stages: Iterable[str]) -> list[str]:
    """Stage names in network order: indices ascending, then ``embedding``."""
    return sorted(set(stages), key=lambda stage: (0, int(stage), "") if stage.isdigit() else (1, 0, stage))


def protocol_order(protocols: Iterable[str]) -> list[str]:
    """Segmentation protocols: ``finetune``, ``frozen``, then any other by name."""
    first = {"finetune": 0, "frozen": 1}
    return sorted(set(protocols), key=lambda protocol: (first.get(protocol, 2), protocol))


def _subplots(count: int, width: float):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, count, figsize=(width * count, 4), squeeze=False)
    return figure, axes[0]


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    from crossmodal.files import atomic_output

    figure.tight_layout()
    with atomic_output(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def _percent(summary: dict | None) -> tuple[float, float]:
    if not summary or summary["mean"] is None:
        return math.nan, 0.0
    return 100 * summary["mean"], 100 * (summary["std"] or 0.0)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _offset(index: int, count: int, spread: float = 0.2) -> float:
    """A small horizontal shift of method ``index`` of ``count`` so identical points do not hide each other."""
    return 0.0 if count <= 1 else spread * (index / (count - 1) - 0.5)


def _points(axis, positions, means, stds, marker: str, label: str) -> None:
    """A line with markers; error bars with caps only where some std is above zero (one seed: plain markers)."""
    if any(std > 0 for std in stds):
        axis.errorbar(positions, means, yerr=stds, marker=marker, capsize=3, label=label)
    else:
        axis.plot(positions, means, marker=marker, label=label)


def integer_ticks(axis, which: str = "x") -> None:
    """Whole-number ticks on an epoch (or other count) axis."""
    from matplotlib.ticker import MaxNLocator

    (axis.xaxis if which == "x" else axis.yaxis).set_major_locator(MaxNLocator(integer=True))


def plot_probe(report: dict, kind: str, path: Path) -> None:
    """Top-1 per stage per method (lines with std error bars), chance dashed; one panel per probe group."""
    figure, axes = _subplots(len(report["probe"]), 6)
    for axis, table in zip(axes, report["probe"]):
        stages = stage_order(stage for entry in table["methods"].values() for stage in entry[kind])
        count = len(table["methods"])
        for index, (method, entry) in enumerate(table["methods"].items()):
            means, stds = zip(*(_percent(entry[kind].get(stage)) for stage in stages)) if stages else ((), ())
            positions = [stage + _offset(index, count) for stage in range(len(stages))]
            _points(axis, positions, means, stds, MARKERS[index % len(MARKERS)], method)
        chance = table["chance"]
        for value in (chance if isinstance(chance, list) else [chance] if chance is not None else []):
            axis.axhline(100 * value, linestyle="--", color="gray", label="chance")
        axis.set_xticks(range(len(stages)), stages)
        axis.set_xlim(-0.5, len(stages) - 0.5)  # the methods' offsets stay small beside their stage
        axis.set(xlabel="stage", ylabel="top-1 (%)", title=f"{kind}: {Path(table['data']).name} / {table['labels']}"
                                                          + (f" ({len(table['classes'])} classes)"
                                                             if table.get("classes") else ""))
        axis.legend(fontsize="small")
    _save(figure, path)


def plot_segmentation(report: dict, path: Path) -> None:
    """mIoU per method, bars grouped by protocol with std error bars; one panel per segmentation group."""
    figure, axes = _subplots(len(report["segment"]), 6)
    for axis, table in zip(axes, report["segment"]):
        methods = list(table["methods"])
        protocols = protocol_order(name for entry in table["methods"].values() for name in entry if name != "seeds")
        width = 0.8 / max(len(protocols), 1)
        for index, protocol in enumerate(protocols):
            means, stds = zip(*(_percent(table["methods"][method].get(protocol, {}).get("miou"))
                                for method in methods))
            spread = any(std > 0 for std in stds)
            bars = axis.bar([position + index * width for position in range(len(methods))], means, width,
                            yerr=stds if spread else None, capsize=3 if spread else 0, label=protocol)
            axis.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)  # the value read off each bar
        axis.set_xticks([position + width * (len(protocols) - 1) / 2 for position in range(len(methods))], methods)
        axis.set(ylabel="mIoU (%)", title=f"{Path(table['data']).name} / {table['labels']}")
        axis.legend(fontsize="small")
    _save(figure, path)

"""Run metrics: one JSON line per record while training; CSV tables and PNG curves at the end."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping

from crossmodal.files import atomic_output
from crossmodal.run_folder import CURVES as PLOT
from crossmodal.run_folder import EPOCHS_CSV, STEPS_CSV
from crossmodal.run_folder import METRICS_JSONL as JSONL


class MetricsLog:
    """Append-only ``RUN_DIR/metrics.jsonl``: records ``{"scope": "step" | "epoch", "step": ..., ...}``.

    Each record is flushed as written, so a killed run keeps everything up to its last step. On resume,
    :meth:`rewind` drops the records past the checkpoint's step: the resumed run writes them again.
    Only the process that owns the run folder (rank 0) writes; on the others every method does nothing.
    """

    def __init__(self, run_dir: str, enabled: bool = True) -> None:
        self.path = os.path.join(run_dir, JSONL)
        self.run_dir = run_dir
        self.enabled = enabled
        self._tail_checked = False

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            if not self._tail_checked:
                # A line cut short by a kill has no newline: start a new line, or this record would be lost
                # with it.
                self._tail_checked = True
                if _ends_without_newline(self.path):
                    handle.write("\n")
            handle.write(json.dumps(_plain(record)) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def rewind(self, step: int) -> None:
        """Keep only the records of steps up to ``step`` (those the checkpoint being resumed had seen)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        with atomic_output(self.path) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in kept)

    def finish(self) -> None:
        """Write the step and epoch CSV tables and the curves PNG."""
        if not self.enabled:
            return
        records = self.records()
        for scope, name in (("step", STEPS_CSV), ("epoch", EPOCHS_CSV)):
            write_csv(os.path.join(self.run_dir, name), [r for r in records if r.get("scope") == scope])
        plot_curves(os.path.join(self.run_dir, PLOT), records)


def write_csv(path: str, records: list[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for record in records for key in record if key != "scope"))
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)


def plot_curves(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Losses per step, the learning rate, and every per-epoch metric, in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    steps = [r for r in records if r.get("scope") == "step"]
    epochs = [r for r in records if r.get("scope") == "epoch"]
    skip = {"scope", "step", "epoch", "lr", "samples_per_s", "time_s"}
    loss_keys = list(dict.fromkeys(k for r in steps for k in r if k not in skip))
    epoch_keys = list(dict.fromkeys(k for r in epochs for k in r if k not in skip and not k.startswith("train_")))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in loss_keys:
        points = [(r["step"], r[key]) for r in steps if _finite(r.get(key))]
        if points:
            axes[0].plot(*zip(*points), label=key, linewidth=1.5 if key == "loss" else 0.8)
    axes[0].set(title="training losses (unweighted terms)", xlabel="step")
    lr = [(r["step"], r["lr"]) for r in steps if _finite(r.get("lr"))]
    if lr:
        axes[1].plot(*zip(*lr))
    axes[1].set(title="learning rate", xlabel="step")
    for key in epoch_keys:
        points = [(r["epoch"], r[key]) for r in epochs if _finite(r.get(key))]
        if points:
            axes[2].plot(*zip(*points), marker="o", label=key)
    axes[2].set(title="per-epoch evaluation", xlabel="epoch")
    for axis in (axes[0], axes[2]):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def _ends_without_newline(path: str) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors and numpy scalars to Python numbers (JSON cannot hold them)."""
    out = {}
    for key, value in record.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out

"""Run metrics: one JSON line per record while training (and the same as TensorBoard events); CSV tables and PNG
curves at the end."""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from crossmodal.engine.events import EventFile, finite
from crossmodal.files import atomic_output, refused_write
from crossmodal.run_folder import CURVES as PLOT
from crossmodal.run_folder import EPOCHS_CSV, STEPS_CSV
from crossmodal.run_folder import METRICS_JSONL as JSONL

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def epoch_line(record: Mapping[str, Any]) -> str:
    """The console summary of an epoch record: the training loss terms as numbers and the evaluation metrics,
    accuracies and mIoU (fractions in the record and in JSON) as percentages like every table a person reads.

    Examples:
        >>> epoch_line({"epoch": 1, "train_loss": 1.23456, "eval_top1": 0.4752, "time_s": 3.0})
        'train_loss 1.235, eval_top1 47.5%'
    """
    shown = [f"{key} {value:.4g}" for key, value in record.items() if key.startswith("train_loss")]
    shown += [f"{key} {100 * value:.1f}%" if is_fraction(key) else f"{key} {value:.4g}"
              for key, value in record.items() if key.startswith("eval_")]
    return ", ".join(shown)


def is_fraction(key: str) -> bool:
    """Whether a metric is a fraction shown as a percentage: accuracies (``top1``, ``*_acc``) and ``miou``; a
    task's other metrics (a loss, a distance) print as numbers."""
    name = key.rsplit("/", 1)[-1].removeprefix("eval_")
    return name.endswith(("top1", "top5", "_acc", "accuracy")) or name == "miou"


class MetricsLog:
    """Append-only ``RUN_DIR/metrics.jsonl``: records ``{"scope": "step" | "epoch", "step": ..., ...}``.

    Each record is flushed as written, so a killed run keeps everything up to its last step. On resume,
    :meth:`rewind` drops the records past the checkpoint's step: the resumed run writes them again.
    Only the process that owns the run folder (rank 0) writes; on the others every method does nothing.

    With ``events`` (:class:`~crossmodal.engine.events.EventFile`), every record also goes to TensorBoard under
    the same names at the same steps, with the run's hyper-parameters (:meth:`start`), its pictures
    (:meth:`image`; the curves at the end) and its end; :meth:`rewind` rewinds both.
    """

    def __init__(self, run_dir: str, enabled: bool = True, events: EventFile | None = None) -> None:
        self.path = os.path.join(run_dir, JSONL)
        self.run_dir = run_dir
        self.enabled = enabled
        self.events = events if enabled else None
        self._tail_checked = False

    def start(self, hparams: Mapping[str, Any]) -> None:
        """The run's hyper-parameters (a flat config) in TensorBoard's hparams view."""
        if self.events is not None:
            self.events.hparams(hparams)

    def image(self, tag: str, png: bytes, step: int) -> None:
        """A picture of the run (PNG bytes) at ``step``, in TensorBoard."""
        if self.events is not None:
            self.events.image(tag, png, step)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append ``record``. A refused write (a full disk, the run folder deleted while training) stops the
        run with one line naming the file or the folder, as the checkpoint writer does."""
        if not self.enabled:
            return
        record = _plain(record)
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                if not self._tail_checked:
                    # A line cut short by a kill has no newline: start a new line, or this record would be lost
                    # with it.
                    self._tail_checked = True
                    if _ends_without_newline(self.path):
                        handle.write("\n")
                handle.write(json.dumps(record) + "\n")
        except OSError as err:
            refused = refused_write(err, self.path)
            if refused is None:
                raise
            raise refused from None
        if self.events is not None:
            self.events.scalars(record)

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
        if self.events is not None:
            self.events.rewind(step)
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        with atomic_output(self.path) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in kept)

    def finish(self) -> None:
        """Write the step and epoch CSV tables and the curves PNG (in TensorBoard too, with the run's end, at its
        last step)."""
        if not self.enabled:
            return
        records = self.records()
        for scope, name in (("step", STEPS_CSV), ("epoch", EPOCHS_CSV)):
            write_csv(os.path.join(self.run_dir, name), [r for r in records if r.get("scope") == scope])
        plot_curves(os.path.join(self.run_dir, PLOT), records)
        if self.events is not None:
            last = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=0)
            with open(os.path.join(self.run_dir, PLOT), "rb") as handle:
                self.events.image("curves", handle.read(), last)
            self.events.end(last)


def write_csv(path: str, records: list[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for record in records for key in record if key != "scope"))
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)


def plot_curves(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """The run's curves (see :func:`curves_figure`) as a PNG, written atomically."""
    figure = curves_figure(records)
    with atomic_output(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=90, format="png")


# Logged values that describe training rather than being a loss term: matched against the last part of the
# name (``crd/z_student`` -> ``z_student``). CRD's normalising constants and positive score, KD's agreement,
# VID's variance, the gradient norm, accuracies.
_DIAGNOSTIC = re.compile(r"^z_|score|agreement|variance|norm|acc|top\d|iou")
_NOT_PLOTTED = {"scope", "step", "epoch", "lr", "samples_per_s", "time_s"}
_LOG_RANGE = 100.0  # a panel of positive values spanning more than this factor gets a log scale
_COLUMNS = 3


def is_diagnostic(key: str) -> bool:
    """Whether a per-step series is a diagnostic (its own panels) rather than a loss term (the loss panel)."""
    return bool(_DIAGNOSTIC.search(key.rsplit("/", 1)[-1]))


@dataclass
class Panel:
    """One axes of the curves figure: its series (name -> (x, y) points), title, x and y labels and y scale."""
    title: str
    xlabel: str
    series: dict[str, tuple[list[float], list[float]]]
    ylabel: str = ""
    yscale: str = "linear"
    marker: str | None = None
    legend: bool = True


def curve_panels(records: Iterable[Mapping[str, Any]]) -> list[Panel]:
    """The panels of the curves, each only when it has something to draw.

    * training losses per step: the total ``loss`` and every unweighted term (``ce``, ``crd``,
      ``crd/loss_student_anchor``, ``at/stage_s1_t1`` ...);
    * diagnostics per step (``crd/z_student``, ``crd/positive_score``, ``kd/agreement``, ``grad_norm`` ...),
      kept off the loss axis: the series that stay positive share one panel, on a log scale when they span
      more than a factor 100 (CRD's normalisers of thousands beside a score below one); the others are
      grouped by magnitude, one linear panel per group; each panel's title says which it is, so no two match;
    * the learning rate per step;
    * the per-epoch evaluation (``eval_*``), only for a run that evaluates: accuracies and mIoU in percent,
      as the console prints them (:func:`is_fraction`), any other metric in a panel of its own.
    """
    records = list(records)
    steps = [r for r in records if r.get("scope") == "step"]
    epochs = [r for r in records if r.get("scope") == "epoch"]
    keys = [k for k in dict.fromkeys(k for r in steps for k in r) if k not in _NOT_PLOTTED]
    step_series = {key: _points(steps, "step", key) for key in keys}
    step_series = {key: points for key, points in step_series.items() if points[0]}
    losses = {key: points for key, points in step_series.items() if not is_diagnostic(key)}
    losses = {key: losses[key] for key in sorted(losses, key=lambda k: k != "loss")}  # the total first
    diagnostics = {key: points for key, points in step_series.items() if is_diagnostic(key)}
    panels = []
    if losses:
        panels.append(_scaled(Panel("training losses (unweighted terms)", "step", losses, "loss")))
    lr = _points(steps, "step", "lr")
    if lr[0]:
        panels.append(Panel("learning rate", "step", {"lr": lr}, "learning rate", legend=False))
    positive = {key: points for key, points in diagnostics.items() if min(points[1]) > 0}
    if positive:
        panels.append(_scaled(Panel("diagnostics, positive", "step", positive, "value")))
    signed = _by_magnitude({k: p for k, p in diagnostics.items() if k not in positive})
    for group in signed:
        top = max(abs(v) for _, y in group.values() for v in y)
        title = "diagnostics, signed" + (f", |value| up to {top:.3g}" if len(signed) > 1 else "")
        panels.append(Panel(title, "step", group, "value"))
    evaluation = [k for k in dict.fromkeys(k for r in epochs for k in r) if k.startswith("eval_")]
    evaluation_series = {key: _points(epochs, "epoch", key) for key in evaluation}
    evaluation_series = {key: points for key, points in evaluation_series.items() if points[0]}
    percent = {key: (x, [100 * v for v in y]) for key, (x, y) in evaluation_series.items() if is_fraction(key)}
    if percent:
        panels.append(Panel("per-epoch evaluation", "epoch", percent, "percent", marker="o"))
    other = {key: points for key, points in evaluation_series.items() if key not in percent}
    if other:
        panels.append(Panel("per-epoch evaluation, other metrics", "epoch", other, "value", marker="o"))
    return panels


def curves_figure(records: Iterable[Mapping[str, Any]]) -> Figure:
    """A matplotlib figure of :func:`curve_panels`, up to three panels a row, two for four (one placeholder
    axes when nothing was logged). No pyplot state is involved: nothing to close."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(records)
    columns = 2 if len(panels) == 4 else max(1, min(_COLUMNS, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    grid = figure.add_gridspec(rows, columns)
    if not panels:
        axis = figure.add_subplot(grid[0, 0])
        axis.set(title="no metrics logged")
        return figure
    for position, panel in enumerate(panels):
        axis = figure.add_subplot(grid[position // columns, position % columns])
        for key, (x, y) in panel.series.items():
            total = {"color": "black", "linewidth": 1.8} if key == "loss" else {"linewidth": 1.0}
            axis.plot(x, y, label=key, marker=panel.marker, markersize=4, **total)
        axis.set_yscale(panel.yscale)
        title = panel.title + (" (log scale)" if panel.yscale == "log" else "")
        axis.set(title=title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        axis.grid(True, which="major", alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole numbers
        if panel.legend:
            axis.legend(fontsize=7)
    return figure


def _points(records: list[Mapping[str, Any]], x: str, key: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[key]) for r in records if finite(r.get(key)) and finite(r.get(x))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _scaled(panel: Panel) -> Panel:
    """A log scale for a panel of positive values only, spanning more than ``_LOG_RANGE``."""
    values = [v for _, y in panel.series.values() for v in y]
    if values and min(values) > 0 and max(values) / min(values) > _LOG_RANGE:
        panel.yscale = "log"
    return panel


def _by_magnitude(series: dict[str, tuple[list[float], list[float]]]) -> list[dict]:
    """Series grouped so that the largest magnitude in a group is at most ``_LOG_RANGE`` times the smallest
    (all-zero series join the smallest group)."""
    size = {key: max(abs(v) for v in y) for key, (_, y) in series.items()}
    groups: list[dict] = []
    top = 0.0
    for key in sorted(series, key=lambda k: -size[k]):
        if not groups or (size[key] > 0 and top > _LOG_RANGE * size[key]):
            groups.append({})
            top = size[key]
        groups[-1][key] = series[key]
    return [dict(sorted(group.items(), key=lambda item: list(series).index(item[0]))) for group in groups]


def _ends_without_newline(path: str) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors and numpy scalars to Python numbers (JSON cannot hold them)."""
    out = {}
    for key, value in record.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out

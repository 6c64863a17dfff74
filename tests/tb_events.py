"""Reading a run's TensorBoard events back with TensorBoard's own reader, for the tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TIMING = ("samples_per_s", "time_s")  # measured, so they differ between two runs of the same config


def accumulator(folder: Path) -> Any:
    """TensorBoard's EventAccumulator over ``folder``, loaded whole (nothing sampled away)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard reads them."""
    events = accumulator(folder)
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The same from ``metrics.jsonl``: every number of every record but its step, rounded to float32 as
    TensorBoard keeps scalars."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("scope", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                if (record["step"], float(np.float32(value))) not in out.get(key, []):  # `epoch` of both scopes
                    out.setdefault(key, []).append((record["step"], float(np.float32(value))))
    return out


def assert_events_match_metrics(run: Path, folder: Path | None = None) -> dict[str, list[tuple[int, float]]]:
    """The run's events hold exactly the scalars of its ``metrics.jsonl`` at the same steps (float32), one event
    per tag and step, and its hparams session's start and end; returns them."""
    folder = folder or run / "tb"
    assert [path.name for path in folder.iterdir() if "tfevents" in path.name] == ["events.out.tfevents.crossmodal"]
    got = scalars(folder)
    assert got == jsonl_scalars(run)
    for tag, points in got.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: steps {steps} repeat or go back"
    tags = accumulator(folder).Tags()["tensors"]
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(tags)
    return got


def hparams(folder: Path) -> dict[str, Any]:
    """The hyper-parameters of the run's hparams session."""
    from tensorboard.plugins.hparams import metadata

    events = accumulator(folder)
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def images(folder: Path) -> dict[str, list[tuple[int, int, int]]]:
    """tag -> [(step, width, height)]."""
    events = accumulator(folder)
    return {tag: [(image.step, image.width, image.height) for image in events.Images(tag)]
            for tag in events.Tags()["images"]}

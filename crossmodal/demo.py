"""``crossmodal demo``: the whole cross-modal flow on generated RGB-D scenes, in minutes on a laptop CPU.

1. generate the synthetic NYU-style scenes (RGB, depth, scene class, 13-class segmentation);
2. train an RGB teacher on their labels;
3. distil a depth student from it with CRD, using no depth label;
4. linear-probe the CRD student and a scratch student (the same architecture, randomly initialised) on the
   scene classes (every choice made on a holdout of the train split, scored once on the test split);
5. segmentation transfer of both: a decoder trained on the depth segmentation labels over each frozen
   encoder, scored on the test split;
6. a comparison table, ``results.json`` and the report (tables, plots, previews).

Finished steps are reused when the demo runs again into the same folder, and an interrupted training step is
resumed from its checkpoint; delete the folder to start over.

Examples:
    >>> results = run_demo(DemoOptions(out="runs/demo"))
    >>> results["crd"]["miou"] > results["scratch"]["miou"]
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Optional

from crossmodal import runtime
from crossmodal.errors import DataError
from crossmodal.files import ensure_folder, write_json
from crossmodal.pipeline import probe_or_reuse, segment_or_reuse, train_or_reuse

METHODS = ("crd", "scratch")
PROTOCOL = "frozen"  # segmentation transfer over the frozen encoder
DEMO_DATA = {"num": 2000, "size": 64}
REQUIRED = {"modalities": ("rgb", "depth"), "labels": ("label", "seg")}


@dataclass
class DemoOptions:
    """What ``crossmodal demo`` is asked to do.

    Args:
        out: the output folder (created; finished steps in it are reused).
        seed: seed of the data, of every training run, of the scratch initialisation and of the probes.
        num, size: scenes to generate and their side in pixels.
        teacher_epochs, student_epochs: None keeps the shipped configs' values (10, 15).
        segment_epochs: epochs of each segmentation decoder.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        progress: tqdm progress bars.
    """

    out: str = "runs/demo"
    seed: int = 0
    num: int = DEMO_DATA["num"]
    size: int = DEMO_DATA["size"]
    teacher_epochs: Optional[int] = None
    student_epochs: Optional[int] = None
    segment_epochs: int = 8
    device: str = "auto"
    progress: bool = True


def config_path(name: str) -> str:
    """The path of a config shipped in ``crossmodal/configs`` (``demo_teacher``, ``demo_distill``)."""
    return str(resources.files("crossmodal") / "configs" / f"{name}.yaml")


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Run every step (reusing finished ones) and return ``results.json``'s content."""
    start = time.monotonic()
    out = os.path.abspath(options.out)
    ensure_folder(out)
    data = os.path.join(out, "synthetic.h5")
    common = [f"seed={options.seed}", f"device={options.device}", f"train.progress={str(options.progress).lower()}"]

    say(f"[1/6] data: {options.num} synthetic RGB-D scenes of {options.size} x {options.size} -> {data}")
    _ensure_data(data, options, say)
    say(f"[2/6] RGB teacher on the scene classes and segmentation -> {out}/teacher")
    teacher = train_or_reuse("train-teacher", config_path("demo_teacher"), common + [f"data.path={data}"]
                             + _epochs(options.teacher_epochs), os.path.join(out, "teacher"), say)
    say(f"[3/6] depth student distilled from the teacher with CRD, no depth labels -> {out}/crd")
    student = train_or_reuse("distill", config_path("demo_distill"),
                             common + [f"data.path={data}", f"teacher.weights={teacher}"]
                             + _epochs(options.student_epochs), os.path.join(out, "crd"), say)

    say("[4/6] linear probes on the scene classes: the CRD student and a scratch student (random init)")
    probes = {method: _probe(method, student, data, out, options, say) for method in METHODS}
    say(f"[5/6] segmentation transfer over each frozen encoder, {options.segment_epochs} epochs")
    segments = {method: _segment(method, student, data, out, options, say) for method in METHODS}

    say("[6/6] report")
    results = {method: _summary(probes[method], segments[method]) for method in METHODS}
    write_json(os.path.join(out, "results.json"), results)
    from crossmodal.eval.report import write_report

    write_report([os.path.join(out, "probe"), os.path.join(out, "segment")], os.path.join(out, "report"),
                 "crossmodal demo: a depth student distilled from an RGB teacher (CRD) vs scratch")
    say(format_results(results))
    say(f"wrote {out}/results.json and {out}/report/ (report.md, plots; previews in {out}/segment/*/frozen) "
        f"in {(time.monotonic() - start) / 60:.1f} min")
    note = runtime.busy_machine_note()
    if note:
        say(f"note: {note} (the README's time is for 2 idle cores)")
    return results


def _epochs(epochs: Optional[int]) -> list[str]:
    return [] if epochs is None else [f"train.epochs={epochs}"]


def _ensure_data(path: str, options: DemoOptions, say: Callable[[str], None]) -> None:
    """Generate the scenes, or check that an existing file is the demo's data with the asked-for options."""
    if not os.path.exists(path):
        from crossmodal.data.synthetic import generate

        generate(path, num=options.num, size=options.size, seed=options.seed)
        return
    from crossmodal.data.format import read_layout

    layout = read_layout(path)
    stored = layout.provenance.get("options", {})
    asked = {"num": options.num, "size": options.size, "seed": options.seed}
    differing = {key: stored.get(key) for key, value in asked.items() if stored.get(key) != value}
    missing = [name for name in REQUIRED["modalities"] if name not in layout.modalities]
    missing += [name for name in REQUIRED["labels"] if name not in layout.labels]
    if differing or missing:
        problem = (f"lacks {missing}" if missing else
                   "was generated with " + ", ".join(f"{key}={value}" for key, value in differing.items()))
        raise DataError(path, f"{problem}, not this demo's data ({asked}); delete it or choose another --out")
    say(f"      reusing {path}")


def _probe(method: str, student: str, data: str, out: str, options: DemoOptions,
           say: Callable[[str], None]) -> dict[str, Any]:
    from crossmodal.eval.probe_run import ProbeOptions

    return probe_or_reuse(os.path.join(out, "probe", f"{method}.json"), ProbeOptions(
        checkpoint=student, data=data, stages=[], random_init=method == "scratch", seed=options.seed,
        method=method, device=options.device, feature_cache=os.path.join(out, "features", method),
        progress=options.progress), say)


def _segment(method: str, student: str, data: str, out: str, options: DemoOptions,
             say: Callable[[str], None]) -> dict[str, Any]:
    from crossmodal.eval.segment import SegmentOptions

    return segment_or_reuse(SegmentOptions(
        checkpoint=student, data=data, labels="seg", protocols=(PROTOCOL,), random_init=method == "scratch",
        epochs=options.segment_epochs, lr=0.05, batch_size=32, augment=False, seed=options.seed,
        out=os.path.join(out, "segment", method), method=method, device=options.device, progress=options.progress),
        say)


def _summary(probe: dict[str, Any], segment: dict[str, Any]) -> dict[str, float]:
    """The headline numbers: the linear probe and kNN on the pooled embedding, and the frozen segmentation."""
    embedding = next(row for row in probe["stages"] if row["stage"] == "embedding")
    frozen = segment["results"][PROTOCOL]
    return {"probe_top1": embedding["linear"]["top1"], "knn_top1": embedding["knn"]["top1"],
            "miou": frozen["miou"], "pixel_acc": frozen["pixel_acc"]}


def format_results(results: dict[str, dict[str, float]]) -> str:
    """The comparison table printed at the end of the demo."""
    names = {"probe_top1": "linear probe top-1", "knn_top1": "kNN top-1", "miou": "segmentation mIoU",
             "pixel_acc": "pixel accuracy"}
    lines = [f"{'depth student':<22}" + "".join(f"{name:>21}" for name in names.values())]
    for method in METHODS:
        label = "CRD from RGB teacher" if method == "crd" else "scratch (random init)"
        lines.append(f"{label:<22}" + "".join(f"{100 * results[method][key]:20.1f}%" for key in names))
    gain = "".join(f"{100 * (results['crd'][key] - results['scratch'][key]):+20.1f} " for key in names)
    lines.append(f"{'CRD - scratch (points)':<22}" + gain)
    return "\n".join(lines)

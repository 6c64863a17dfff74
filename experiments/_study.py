"""Shared by the experiment scripts: a teacher, students by several methods and seeds, their evaluation, a report.

Every step is reused when its result exists (``crossmodal.pipeline``), so a study stopped at any point
continues where it was when its command runs again; delete its folder to start over.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from crossmodal.eval.probe_run import ProbeOptions  # noqa: E402
from crossmodal.eval.report import render_markdown, write_report  # noqa: E402
from crossmodal.eval.segment import SegmentOptions  # noqa: E402
from crossmodal.pipeline import probe_or_reuse, segment_or_reuse, train_or_reuse  # noqa: E402

START = time.monotonic()


def say(message: str) -> None:
    print(f"[{(time.monotonic() - START) / 60:5.1f} min] {message}", flush=True)


@dataclass
class Evaluation:
    """How every student is judged: probes of a class label set and/or segmentation transfer."""
    probe_labels: Optional[str] = None
    probe_stages: Optional[Sequence[int]] = None  # None: every stage
    segment_labels: Optional[str] = None
    segment_protocols: Sequence[str] = ("finetune", "frozen")
    segment_epochs: int = 8
    segment_lr: float = 0.05
    segment_batch: int = 32
    device: str = "auto"


@dataclass
class Study:
    """A teacher on modality A, then one student on modality B per (method, seed), each evaluated."""
    out: str
    data: str
    student_modality: str
    teacher_config: str
    teacher_overrides: list[str]
    distill_config: str
    distill_overrides: list[str]
    methods: dict[str, list[str]]  # distillation method -> its config overrides
    evaluation: Evaluation
    seeds: Sequence[int] = (0,)
    supervised_overrides: Optional[list[str]] = None  # train-teacher overrides of the supervised student
    scratch: bool = True

    def teacher(self, seed: int) -> str:
        say(f"teacher (seed {seed})")
        return train_or_reuse("train-teacher", self.teacher_config,
                              self.teacher_overrides + [f"seed={seed}"], f"{self.out}/teacher-s{seed}", say)

    def run(self) -> None:
        for seed in self.seeds:
            teacher = self.teacher(seed)
            students: dict[str, str] = {}
            for method, overrides in self.methods.items():
                say(f"{method} student (seed {seed})")
                students[method] = train_or_reuse(
                    "distill", self.distill_config,
                    self.distill_overrides + overrides + [f"seed={seed}", f"teacher.weights={teacher}"],
                    f"{self.out}/{method}-s{seed}", say)
            if self.supervised_overrides is not None:
                say(f"supervised student, with labels (seed {seed})")
                students["supervised"] = train_or_reuse(
                    "train-teacher", self.teacher_config, self.supervised_overrides + [f"seed={seed}"],
                    f"{self.out}/supervised-s{seed}", say)
            for method, run_dir in students.items():
                self.evaluate(method, run_dir, seed, random_init=False)
            if self.scratch:  # the students' architecture (CRD's: no classifier), randomly initialised with this seed
                self.evaluate("scratch", students.get("crd") or next(iter(students.values())), seed, random_init=True)
        self.report()

    def evaluate(self, method: str, run_dir: str, seed: int, random_init: bool) -> None:
        ev = self.evaluation
        name = f"{method}-s{seed}"
        if ev.probe_labels:
            say(f"probe {name}")
            path = f"{self.out}/results/probe-{name}.json"
            probe_or_reuse(path, ProbeOptions(
                checkpoint=run_dir, data=self.data, modality=self.student_modality, labels=ev.probe_labels,
                stages=ev.probe_stages, random_init=random_init, seed=seed, method=method, device=ev.device,
                feature_cache=f"{self.out}/features/{name}"), say)
        if ev.segment_labels:
            say(f"segmentation transfer {name}")
            options = SegmentOptions(
                checkpoint=run_dir, data=self.data, labels=ev.segment_labels, modality=self.student_modality,
                protocols=tuple(ev.segment_protocols), random_init=random_init, epochs=ev.segment_epochs,
                lr=ev.segment_lr, batch_size=ev.segment_batch, augment=False, seed=seed,
                out=f"{self.out}/segment-{name}", method=method, device=ev.device)
            segment_or_reuse(options, say)

    def report(self) -> None:
        """Tables over every result in the study's folder: the seeds of earlier invocations too."""
        report = write_report([self.out], f"{self.out}/report", Path(self.out).name)
        print(render_markdown(report), end="")
        say(f"wrote {self.out}/report/report.md")

"""Shared by the experiment scripts: a teacher, students by several methods and seeds, their evaluation, a report,
and a summary over seeds with paired comparisons.

Every step is reused when its result exists (``crossmodal.pipeline``), so a study stopped at any point
continues where it was when its command runs again; delete its folder to start over. ``OUT/study.json`` records
what the folder was made for (protocol, preset, data, class split), the wall time of every invocation and the
plan of the latest one; a command asking for another protocol or setting in the same folder stops before touching
anything. At start a study prints its plan (its steps per kind, how many are done and reused), and each step's
line carries ``[i/N]`` and an estimate of the time left (``_plan.py``).

The protocols and class splits are in ``_protocol.py``; the summary over seeds in ``_summary.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from _plan import Plan, Step  # noqa: E402

from _protocol import Headline, StudyError  # noqa: E402,F401  (StudyError: the studies' own refusals)

from _summary import StudySummary  # noqa: E402

from crossmodal import run_folder  # noqa: E402
from crossmodal.errors import CrossmodalError  # noqa: E402
from crossmodal.eval.report import render_markdown, write_report  # noqa: E402
from crossmodal.files import write_json  # noqa: E402
from crossmodal.pipeline import (head_or_reuse, import_or_reuse, initialised_or_reuse, probe_or_reuse,  # noqa: E402
                                 segment_or_reuse, train_or_reuse)

START = time.monotonic()
STUDY_FORMAT = "crossmodal-study/1"


def shared_teacher_cache(out: str | Path) -> list[str]:
    """Distill overrides that share one teacher cache among a study's students (the pretrained teacher is one for
    every seed and method; the cache is rebuilt only when a method needs outputs it lacks), stage maps in float16."""
    return [f"teacher.cache_path={Path(out).resolve() / 'teacher_cache.h5'}", "teacher.cache_dtype=float16"]


def say(message: str) -> None:
    print(f"[{(time.monotonic() - START) / 60:5.1f} min] {message}", flush=True)


def training(kind: str, name: str, verb: str, config: str, overrides: list[str], run_dir: str) -> Step:
    """A ``train-teacher`` / ``distill`` run into ``run_dir``, reused when finished."""
    return Step(kind, name, run_dir, partial(train_or_reuse, verb, config, overrides, run_dir, say),
                partial(run_folder.is_finished, run_dir))


def run_probe(path: Path, options: dict) -> None:
    from crossmodal.eval.probe_run import ProbeOptions  # torch and timm: imported once there is work

    probe_or_reuse(str(path), ProbeOptions(**options), say)


def run_segment(options: dict) -> None:
    from crossmodal.eval.segment import SegmentOptions

    segment_or_reuse(SegmentOptions(**options), say)


def guarded(main: Callable[[], None]) -> None:
    """Run a study's ``main``; a known problem is one line on stderr and exit 2, an interrupt (Ctrl-C or SIGTERM)
    exit 130, after its wall time is added to ``study.json``."""
    from crossmodal import interrupts

    name = Path(sys.argv[0]).name
    interrupts.install()  # SIGTERM (and SIGINT, also in a background job) stop it as Ctrl-C does: wall time kept
    try:
        main()
    except CrossmodalError as err:  # StudyError, ConfigError, DataError, a diverged training
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except subprocess.CalledProcessError as err:  # a data-preparation command, which said why on stderr
        sys.exit(err.returncode if err.returncode > 0 else 2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished steps are kept, run the same command to continue", file=sys.stderr)
        sys.exit(130)


@dataclass
class Evaluation:
    """How every student is judged: probes of class subsets and/or segmentation transfer.

    ``probe_sets`` maps a name (``held-out``, ``all``) to the classes probed (None: every class).
    """
    probe_labels: Optional[str] = None
    probe_sets: Mapping[str, Optional[Sequence[str]]] = field(default_factory=lambda: {"all": None})
    probe_stages: Optional[Sequence[int]] = None  # None: every stage
    segment_labels: Optional[str] = None
    segment_protocols: Sequence[str] = ("finetune", "frozen")
    segment_epochs: int = 8
    segment_lr: float = 0.05
    segment_batch: int = 32
    segment_loader: str = "workers"  # or "device": the splits held and augmented on the device
    device: str = "auto"


@dataclass
class Pretrained:
    """The ``pretrained-teacher`` protocol's teacher: a network imported once (``crossmodal import-teacher``),
    frozen, that never saw an image or label of the study's data. ``modality`` is what it reads (modality A; a
    luminance teacher has its first convolution summed); ``input_size`` None feeds it its card's size."""
    source: str = "efficientnet-lite"
    modality: str = "rgb"
    input_size: Optional[Sequence[int]] = None


@dataclass
class Study(StudySummary):
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
    protocol: str = "unseen-labels"
    setting: Mapping[str, object] = field(default_factory=dict)  # what the folder is for, checked on every run
    headlines: Sequence[Headline] = ()
    seeds: Sequence[int] = (0,)
    supervised_overrides: Optional[list[str]] = None  # train-teacher overrides of the supervised student
    scratch: bool = True
    pretrained: Optional[Pretrained] = None  # the pretrained-teacher protocol: one imported teacher for every seed
    head_labels: Optional[str] = None  # supervised-student: the imported teacher gets a head over these classes

    # ------------------------------------------------------------------------------------------- the folder
    @property
    def record_path(self) -> Path:
        return Path(self.out) / "study.json"

    def wanted_setting(self) -> dict:
        """What the folder is for; the data file by its path relative to the folder when it lies inside (so the
        folder can move)."""
        setting = {"protocol": self.protocol, **self.setting}
        data = Path(self.data).resolve()
        if data.is_relative_to(Path(self.out).resolve()):
            setting["data"] = str(data.relative_to(Path(self.out).resolve()))
        return setting

    def claim_folder(self) -> None:
        """Create or check ``OUT/study.json``: a folder holds one protocol and setting, and a command asking for
        another stops before touching anything. While no teacher has started there, the setting may change (a
        typo corrected after a refused start)."""
        wanted = self.wanted_setting()
        started = any(Path(self.out).glob("teacher-*"))
        if self.record_path.exists():
            try:
                record = json.loads(self.record_path.read_text())
                recorded = {"protocol": record["protocol"], **record["setting"]}
            except (OSError, ValueError, KeyError, TypeError):
                raise StudyError(f"{self.record_path}: unreadable study record; move the folder aside") from None
            changed = [f"{key}: {recorded.get(key)!r} there, {wanted.get(key)!r} asked"
                       for key in dict.fromkeys([*wanted, *recorded]) if recorded.get(key) != wanted.get(key)]
            if not changed:
                return
            if started:
                raise StudyError(f"{self.out} holds a study of another protocol or setting ({'; '.join(changed)}); "
                                 f"give another --out")
            say(f"nothing trained in {self.out} yet: its setting is now the one asked ({'; '.join(changed)})")
        else:
            earlier = [name for name in ("results", "report") if (Path(self.out) / name).exists()]
            if earlier or started:
                raise StudyError(f"{self.out} holds results without a study.json (an earlier release's protocol, "
                                 f"result names and CRD recipes); give another --out")
        invocations = json.loads(self.record_path.read_text())["invocations"] if self.record_path.exists() else []
        write_json(self.record_path, {"format": STUDY_FORMAT, "protocol": self.protocol,
                                      "setting": {k: v for k, v in wanted.items() if k != "protocol"},
                                      "invocations": invocations})

    def add_wall_time(self, seconds: float) -> float:
        """Append this invocation to ``study.json`` (read again: another invocation may have written since) and
        return the wall time summed over every invocation."""
        record = json.loads(self.record_path.read_text())
        record["invocations"].append({"seconds": round(seconds, 1), "seeds": list(self.seeds),
                                      "methods": list(self.methods),
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        write_json(self.record_path, record)
        return sum(item["seconds"] for item in record["invocations"])

    def write_plan(self, plan: Plan) -> None:
        """``study.json``'s ``plan``: this invocation's steps and which were done when it started (the rest of the
        record as it is)."""
        record = json.loads(self.record_path.read_text())
        record["plan"] = plan.record()
        write_json(self.record_path, record)

    # ------------------------------------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """Every seed's steps, then the report, in the order they run; nothing is computed or read here but whether
        each step's result is there (see ``_plan.py`` for the kinds)."""
        steps = [step for seed in self.seeds for step in self.seed_steps(seed)]
        if self.evaluation.probe_labels or self.evaluation.segment_labels:
            steps.append(Step("report", "the report of every result in the folder",
                              Path(self.out) / "report" / "report.md", self.report))
        return Plan(steps, self.out)

    def seed_steps(self, seed: int) -> list[Step]:
        """The teacher, the students, their evaluation, the references (pretrained-teacher) and scratch."""
        teacher, steps = self.teacher_steps(seed)
        students: dict[str, str] = {}
        for method, overrides in self.methods.items():
            students[method] = f"{self.out}/{method}-s{seed}"
            steps.append(training("student", f"{method} student (seed {seed})", "distill", self.distill_config,
                                  self.distill_overrides + overrides + [f"seed={seed}", f"teacher.weights={teacher}"],
                                  students[method]))
        if self.supervised_overrides is not None:
            students["supervised"] = f"{self.out}/supervised-s{seed}"
            steps.append(training("student", f"supervised student, with the evaluation's labels (seed {seed})",
                                  "train-teacher", self.teacher_config, self.supervised_overrides + [f"seed={seed}"],
                                  students["supervised"]))
        for method, run_dir in students.items():
            steps += self.evaluation_steps(method, run_dir, seed, random_init=False)
        if self.pretrained is not None and not self.head_labels:
            steps += self.reference_steps(teacher, seed)
        if self.scratch and students:  # the students' architecture (CRD's: no classifier), randomly initialised
            steps += self.evaluation_steps("scratch", students.get("crd") or next(iter(students.values())), seed,
                                           random_init=True)
        return steps

    def teacher_steps(self, seed: int) -> tuple[str, list[Step]]:
        """The teacher's folder and its steps: trained per seed, or imported once (with its head)."""
        if self.pretrained is None:
            run_dir = f"{self.out}/teacher-s{seed}"
            return run_dir, [training("teacher", f"teacher (seed {seed})", "train-teacher", self.teacher_config,
                                      self.teacher_overrides + [f"seed={seed}"], run_dir)]
        modality = self.pretrained.modality
        imported, steps = self.imported_teacher(modality)
        if not self.head_labels:
            return imported, steps
        run_dir = f"{self.out}/teacher-head-{modality}"
        work = partial(head_or_reuse, run_dir, imported, self.data, self.head_labels, say, modality=modality,
                       device=self.evaluation.device)
        return run_dir, steps + [Step("teacher", f"the teacher's head over '{self.head_labels}', fitted on {modality}",
                                      run_dir, work, partial(run_folder.is_finished, run_dir))]

    def imported_teacher(self, modality: str) -> tuple[str, list[Step]]:
        """``OUT/teacher-pretrained-MODALITY``, imported once for every seed."""
        run_dir = f"{self.out}/teacher-pretrained-{modality}"
        size = self.pretrained.input_size
        work = partial(import_or_reuse, run_dir, self.pretrained.source, say, modality=modality,
                       input_size=None if size is None else list(size))
        return run_dir, [Step("teacher", f"pretrained teacher ({self.pretrained.source}, reading {modality})",
                              run_dir, work, partial(run_folder.is_finished, run_dir))]

    def reference_steps(self, teacher: str, seed: int) -> list[Step]:
        """The pretrained-teacher protocol's references: the teacher probed on its own modality, and its network
        initialised from ImageNet with the input convolution adapted to the students' modality (probed, and
        segmented when the study segments: fine-tuned from that initialisation, or frozen)."""
        modality = self.pretrained.modality
        steps = self.evaluation_steps("teacher", teacher, seed, random_init=False, modality=modality,
                                      segment=False, features="teacher")
        rgb, imported = (teacher, []) if modality == "rgb" else self.imported_teacher("rgb")
        run_dir = f"{self.out}/imagenet-init"
        work = partial(initialised_or_reuse, run_dir, f"{rgb}/teacher.safetensors", self.student_modality, say)
        steps += imported + [Step("teacher", f"ImageNet initialisation for {self.student_modality}", run_dir, work,
                                  partial(run_folder.is_finished, run_dir))]
        return steps + self.evaluation_steps("imagenet", run_dir, seed, random_init=False, features="imagenet")

    def probe_path(self, probe_set: str, name: str) -> Path:
        return Path(self.out) / "results" / f"probe-{probe_set}-{name}.json"

    def segment_path(self, name: str) -> Path:
        return Path(self.out) / f"segment-{name}" / "segment.json"

    def evaluation_steps(self, method: str, run_dir: str, seed: int, random_init: bool,
                         modality: Optional[str] = None, segment: bool = True,
                         features: Optional[str] = None) -> list[Step]:
        """Probe (and segment) one encoder on ``modality`` (default: the students'); ``features`` names a feature
        cache shared across seeds (an encoder that does not change with the seed)."""
        ev = self.evaluation
        name = f"{method}-s{seed}"
        steps = []
        if ev.probe_labels:
            for probe_set, classes in ev.probe_sets.items():
                path = self.probe_path(probe_set, name)
                options = dict(checkpoint=run_dir, data=self.data, modality=modality or self.student_modality,
                               labels=ev.probe_labels, classes=classes, stages=ev.probe_stages,
                               random_init=random_init, seed=seed, method=method, device=ev.device,
                               feature_cache=f"{self.out}/features/{features or name}", progress=False)
                where = f"{probe_set} classes" + (f", on {modality}" if modality else "")
                steps.append(Step("probe", f"probe {name} ({where})", path, partial(run_probe, path, options),
                                  partial(os.path.exists, path)))
        if ev.segment_labels and segment:
            path = self.segment_path(name)
            options = dict(checkpoint=run_dir, data=self.data, labels=ev.segment_labels,
                           modality=self.student_modality, protocols=tuple(ev.segment_protocols),
                           random_init=random_init, epochs=ev.segment_epochs, lr=ev.segment_lr,
                           batch_size=ev.segment_batch, augment=False, seed=seed, out=str(path.parent), method=method,
                           device=ev.device, loader=ev.segment_loader)
            steps.append(Step("segment", f"segmentation transfer {name}", path, partial(run_segment, options),
                              partial(os.path.exists, path)))
        return steps

    # ------------------------------------------------------------------------------------------- the work
    def run(self) -> None:
        """The plan's steps, then the summary; the wall time counts from the script's start (data preparation
        included) to the report, and is recorded even when a step fails or the run is interrupted."""
        self.claim_folder()
        try:
            plan = self.plan()
            self.write_plan(plan)
            say(plan.line())
            plan.run(say)
        finally:
            wall = self.add_wall_time(time.monotonic() - START)
        if self.headlines:
            self.summarize(wall)

    def report(self) -> None:
        """Tables over every result in the study's folder (the seeds of earlier invocations too); none where the
        students are judged by their own test top-1 alone (supervised-student without segmentation: the summary
        is the table)."""
        if not self.evaluation.probe_labels and not self.evaluation.segment_labels:
            return
        report = write_report([self.out], f"{self.out}/report", Path(self.out).name)
        print(render_markdown(report), end="")
        say(f"wrote {self.out}/report/report.md")

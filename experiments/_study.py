"""Shared by the experiment scripts: a teacher, students by several methods and seeds, their evaluation, a report,
and a summary over seeds with paired comparisons.

Every step is reused when its result exists (``crossmodal.pipeline``), so a study stopped at any point
continues where it was when its command runs again; delete its folder to start over. ``OUT/study.json`` records
what the folder was made for (protocol, preset, data, class split) and the wall time of every invocation; a
command asking for another protocol or setting in the same folder stops before touching anything.

The protocols and class splits are in ``_protocol.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from _protocol import Headline, StudyError  # noqa: E402,F401  (StudyError: the studies' own refusals)

from crossmodal.errors import CrossmodalError  # noqa: E402
from crossmodal.eval.paired import MIN_SEEDS, compare  # noqa: E402
from crossmodal.eval.report import render_markdown, summarize, write_report  # noqa: E402
from crossmodal.files import write_json  # noqa: E402
from crossmodal.pipeline import (import_or_reuse, initialised_or_reuse, probe_or_reuse, segment_or_reuse,  # noqa: E402
                                 train_or_reuse)

START = time.monotonic()
STUDY_FORMAT = "crossmodal-study/1"
FEATURE_METHODS = ("fitnet", "at", "sp", "cc", "rkd", "pkt", "vid", "nst")
BEST_FEATURE = "best feature method"
# The pairwise claims a study checks, seed by seed ("A beats B"); BEST_FEATURE is resolved per study.
CLAIMS = (("crd", "scratch"), ("crd", "kd"), ("crd", "crd-repdistiller"), ("crd+kd", "crd"), ("crd", BEST_FEATURE),
          ("kd", "scratch"), ("supervised", "crd"), ("crd", "imagenet"))
# The pretrained-teacher protocol's two references, evaluated like the students but not distilled: the teacher on
# its own modality (what there is to transfer) and its architecture initialised from ImageNet for modality B.
REFERENCES = ("teacher", "imagenet")
NAMES = {"scratch": "scratch (random init)", "supervised": "supervised on the evaluation's labels (oracle)",
         "kd": "KD", "fitnet": "FitNet", "at": "AT", "sp": "SP", "cc": "CC", "rkd": "RKD", "pkt": "PKT", "vid": "VID",
         "nst": "NST", "crd": "CRD (queue, InfoNCE; ours)",
         "crd-repdistiller": "CRD (RepDistiller's bank and NCE, bare head)", "crd+kd": "CRD+KD",
         "teacher": "the teacher itself, on modality A (reference)",
         "imagenet": "ImageNet init of the teacher's network, input conv adapted, not distilled (reference)",
         "crd-t0.2": "CRD, temperature 0.2 (0.07)", "crd-k256": "CRD, 256 negatives (1,024)",
         "crd-bare-head": "CRD, bare linear heads (BN heads)", "crd-2x-epochs": "CRD, 20 epochs (10)",
         "crd-imagenet-init": "CRD on the teacher's network initialised from ImageNet",
         "crd-imagenet-init-lr0.01": "CRD on the teacher's network initialised from ImageNet, lr 0.01 (0.1)"}


def mean_std(values: Mapping[int, float], separator: str, count: str) -> str:
    """``52.3 ± 1.2 (3)`` for per-seed fractions (percent; no spread for one seed; ``–`` for none)."""
    stats = summarize(list(values.values()))
    if stats["mean"] is None:
        return "–"
    spread = f"{separator}{100 * stats['std']:.1f}" if stats["std"] is not None else ""
    return f"{100 * stats['mean']:.1f}{spread}{count.format(n=stats['n'])}"


def shared_teacher_cache(out: str | Path) -> list[str]:
    """Distill overrides that share one teacher cache among a study's students (the pretrained teacher is one for
    every seed and method; the cache is rebuilt only when a method needs outputs it lacks), stage maps in float16."""
    return [f"teacher.cache_path={Path(out).resolve() / 'teacher_cache.h5'}", "teacher.cache_dtype=float16"]


def say(message: str) -> None:
    print(f"[{(time.monotonic() - START) / 60:5.1f} min] {message}", flush=True)


def guarded(main: Callable[[], None]) -> None:
    """Run a study's ``main``; a known problem is one line on stderr and exit 2, an interrupt exit 130."""
    name = Path(sys.argv[0]).name
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
    protocol: str = "unseen-labels"
    setting: Mapping[str, object] = field(default_factory=dict)  # what the folder is for, checked on every run
    headlines: Sequence[Headline] = ()
    seeds: Sequence[int] = (0,)
    supervised_overrides: Optional[list[str]] = None  # train-teacher overrides of the supervised student
    scratch: bool = True
    pretrained: Optional[Pretrained] = None  # the pretrained-teacher protocol: one imported teacher for every seed

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

    # ------------------------------------------------------------------------------------------- the work
    def teacher(self, seed: int) -> str:
        if self.pretrained is not None:
            return self.imported_teacher(self.pretrained.modality)
        say(f"teacher (seed {seed})")
        return train_or_reuse("train-teacher", self.teacher_config,
                              self.teacher_overrides + [f"seed={seed}"], f"{self.out}/teacher-s{seed}", say)

    def imported_teacher(self, modality: str) -> str:
        """``OUT/teacher-pretrained-MODALITY``, imported once for every seed."""
        say(f"pretrained teacher ({self.pretrained.source}, reading {modality})")
        size = self.pretrained.input_size
        return import_or_reuse(f"{self.out}/teacher-pretrained-{modality}", self.pretrained.source, say,
                               modality=modality, input_size=None if size is None else list(size))

    def references(self, teacher: str, seed: int) -> None:
        """The pretrained-teacher protocol's references: the teacher probed on its own modality, and its network
        initialised from ImageNet with the input convolution adapted to the students' modality (probed, and
        segmented when the study segments: fine-tuned from that initialisation, or frozen)."""
        say(f"the teacher on {self.pretrained.modality} (seed {seed})")
        self.evaluate("teacher", teacher, seed, random_init=False, modality=self.pretrained.modality,
                      segment=False, features="teacher")
        rgb = teacher if self.pretrained.modality == "rgb" else self.imported_teacher("rgb")
        say(f"ImageNet initialisation for {self.student_modality} (seed {seed})")
        initialised = initialised_or_reuse(f"{self.out}/imagenet-init", f"{rgb}/teacher.safetensors",
                                           self.student_modality, say)
        self.evaluate("imagenet", initialised, seed, random_init=False, features="imagenet")

    def run(self) -> None:
        """Every seed's steps, then the report; the wall time counts from the script's start (data preparation
        included) to the report, and is recorded even when a step fails or the run is interrupted."""
        self.claim_folder()
        try:
            for seed in self.seeds:
                self.run_seed(seed)
            self.report()
        finally:
            wall = self.add_wall_time(time.monotonic() - START)
        if self.headlines:
            self.summarize(wall)

    def run_seed(self, seed: int) -> None:
        teacher = self.teacher(seed)
        students: dict[str, str] = {}
        for method, overrides in self.methods.items():
            say(f"{method} student (seed {seed})")
            students[method] = train_or_reuse(
                "distill", self.distill_config,
                self.distill_overrides + overrides + [f"seed={seed}", f"teacher.weights={teacher}"],
                f"{self.out}/{method}-s{seed}", say)
        if self.supervised_overrides is not None:
            say(f"supervised student, with the evaluation's labels (seed {seed})")
            students["supervised"] = train_or_reuse(
                "train-teacher", self.teacher_config, self.supervised_overrides + [f"seed={seed}"],
                f"{self.out}/supervised-s{seed}", say)
        for method, run_dir in students.items():
            self.evaluate(method, run_dir, seed, random_init=False)
        if self.pretrained is not None:
            self.references(teacher, seed)
        if self.scratch:  # the students' architecture (CRD's: no classifier), randomly initialised with this seed
            self.evaluate("scratch", students.get("crd") or next(iter(students.values())), seed, random_init=True)

    def probe_path(self, probe_set: str, name: str) -> Path:
        return Path(self.out) / "results" / f"probe-{probe_set}-{name}.json"

    def segment_path(self, name: str) -> Path:
        return Path(self.out) / f"segment-{name}" / "segment.json"

    def evaluate(self, method: str, run_dir: str, seed: int, random_init: bool, modality: Optional[str] = None,
                 segment: bool = True, features: Optional[str] = None) -> None:
        """Probe (and segment) one encoder on ``modality`` (default: the students'); ``features`` names a feature
        cache shared across seeds (an encoder that does not change with the seed)."""
        from crossmodal.eval.probe_run import ProbeOptions
        from crossmodal.eval.segment import SegmentOptions  # torch and timm: imported once there is work

        ev = self.evaluation
        name = f"{method}-s{seed}"
        if ev.probe_labels:
            for probe_set, classes in ev.probe_sets.items():
                say(f"probe {name} ({probe_set} classes)")
                probe_or_reuse(str(self.probe_path(probe_set, name)), ProbeOptions(
                    checkpoint=run_dir, data=self.data, modality=modality or self.student_modality,
                    labels=ev.probe_labels, classes=classes, stages=ev.probe_stages, random_init=random_init,
                    seed=seed, method=method, device=ev.device,
                    feature_cache=f"{self.out}/features/{features or name}", progress=False), say)
        if ev.segment_labels and segment:
            say(f"segmentation transfer {name}")
            options = SegmentOptions(
                checkpoint=run_dir, data=self.data, labels=ev.segment_labels, modality=self.student_modality,
                protocols=tuple(ev.segment_protocols), random_init=random_init, epochs=ev.segment_epochs,
                lr=ev.segment_lr, batch_size=ev.segment_batch, augment=False, seed=seed,
                out=str(self.segment_path(name).parent), method=method, device=ev.device,
                loader=ev.segment_loader)
            segment_or_reuse(options, say)

    # ------------------------------------------------------------------------------------------- the summary
    def values(self, headline: Headline, method: str) -> dict[int, float]:
        """Per seed, the headline number of ``method`` (seeds whose result is missing are left out)."""
        found = {}
        for seed in sorted(set(self.all_seeds())):
            name = f"{method}-s{seed}"
            if headline.source == "probe":
                path = self.probe_path(headline.where, name)
                if not path.exists():
                    continue
                kind, stage = headline.what.split(":")
                rows = [row for row in json.loads(path.read_text())["stages"]
                        if row["stage"] == stage or stage in (row.get("same_as") or [])]
                if rows:
                    found[seed] = float(rows[0][kind]["top1"])
            else:
                path = self.segment_path(name)
                if path.exists():
                    scores = json.loads(path.read_text())["results"].get(headline.where)
                    if scores and scores.get(headline.what) is not None:
                        found[seed] = float(scores[headline.what])
        return found

    def all_seeds(self) -> list[int]:
        """Every seed with a teacher in the folder (earlier invocations' too); under the pretrained-teacher protocol,
        every seed with a student (the teacher is one for all)."""
        pattern = "teacher-s*" if self.pretrained is None else "*-s*"
        seeds = {path.name.rsplit("-s", 1)[1] for path in Path(self.out).glob(pattern)
                 if path.is_dir() and not path.name.startswith("segment-")}
        return sorted(int(seed) for seed in seeds if seed.isdigit())

    def method_names(self) -> list[str]:
        present = {path.name.rsplit("-s", 1)[0] for path in Path(self.out).glob("*-s*")
                   if path.is_dir() and not path.name.startswith(("teacher-", "segment-"))}
        present |= {"scratch"} if self.scratch else set()
        if self.pretrained is not None:
            present |= {name for name in REFERENCES
                        if any(Path(self.out, "results").glob(f"probe-*-{name}-s*.json"))}
        order = ["scratch", "supervised", "teacher", "imagenet", "kd", *FEATURE_METHODS, "crd", "crd-repdistiller",
                 "crd+kd"]
        return [name for name in order if name in present] + sorted(present - set(order))

    def summary(self, wall_seconds: float) -> tuple[str, str]:
        """The study's markdown summary (mean ± std per headline, paired comparisons) and its final line."""
        methods = self.method_names()
        table = {method: [self.values(headline, method) for headline in self.headlines] for method in methods}
        columns = " | ".join(headline.label for headline in self.headlines)
        rule = "|---|" + "---|" * len(self.headlines)
        lines = [f"# {Path(self.out).name}: protocol {self.protocol}", "",
                 f"Seeds {', '.join(map(str, self.all_seeds()))}; mean ± sample std over seeds (number of seeds), "
                 f"%. Wall time {wall_seconds / 60:.1f} min over {len(self.runs())} invocation(s).", "",
                 f"| student | {columns} |", rule]
        for method in methods:
            cells = [mean_std(values, " ± ", " ({n})") for values in table[method]]
            lines.append(f"| {NAMES.get(method, method)} | " + " | ".join(cells) + " |")
        lines += self.gap_shares(methods, table)
        lines += ["", f"Paired over seeds (same teacher, data and seed in each pair). A - B in points, mean ± std of "
                      f"the per-seed differences, then the seeds where A is ahead. **A** or **B** names the better "
                      f"method when it is ahead in every seed (at least {MIN_SEEDS}) by a mean larger than that std; "
                      f"otherwise a tie.", "", f"| claim | {columns} |", rule]
        for a, b in self.claims(methods, table):
            cells = []
            for first, second in zip(table[a], table[b]):
                if not set(first) & set(second):
                    cells.append("–")
                    continue
                result = compare(first, second)
                verdict = {"A": f"**{a}**", "B": f"**{b}**", "tie": "tie"}[result.verdict]
                spread = f" ± {100 * result.std_difference:.1f}" if result.std_difference is not None else ""
                cells.append(f"{verdict}: {100 * result.mean_difference:+.1f}{spread}, "
                             f"{result.wins}/{len(result.seeds)}")
            lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
        parts = [f"{method}={mean_std(table[method][0], '±', ' ({n} seeds)')}" for method in methods
                 if table[method][0]]
        final = (f"study {self.protocol} [{self.headlines[0].label}]: {' '.join(parts)}; "
                 f"wall={wall_seconds / 60:.1f}min")
        return "\n".join(lines) + "\n", final

    def gap_shares(self, methods: list[str], table: dict) -> list[str]:
        """Markdown lines: per method, the share of the scratch-to-oracle gap its mean closes on each headline,
        (method - scratch) / (oracle - scratch) of the means (100%: the oracle's level; none where the oracle is
        not ahead of scratch)."""
        if "scratch" not in table or "supervised" not in table:
            return []
        means = {m: [summarize(list(values.values()))["mean"] for values in table[m]] for m in methods}
        rows = []
        for method in methods:
            if method in ("scratch", "supervised", "teacher"):  # the teacher reads the other modality
                continue
            cells = []
            for mine, low, high in zip(means[method], means["scratch"], means["supervised"]):
                ok = None not in (mine, low, high) and high > low
                cells.append(f"{100 * (mine - low) / (high - low):+.0f}%" if ok else "–")
            rows.append(f"| {NAMES.get(method, method)} | " + " | ".join(cells) + " |")
        columns = " | ".join(headline.label for headline in self.headlines)
        return ["", "Share of the scratch-to-oracle gap closed: (method - scratch) / (oracle - scratch), of the means.",
                "", f"| student | {columns} |", "|---|" + "---|" * len(self.headlines), *rows]

    def claims(self, methods: list[str], table: dict) -> list[tuple[str, str]]:
        """CLAIMS among the methods present, the best feature method being the one with the highest mean on the
        first headline."""
        features = [m for m in methods if m in FEATURE_METHODS and table[m][0]]
        best = max(features, key=lambda m: summarize(list(table[m][0].values()))["mean"], default=None)
        pairs = [(a, best if b == BEST_FEATURE else b) for a, b in CLAIMS]
        return [(a, b) for a, b in pairs if a in methods and b in methods]

    def runs(self) -> list[dict]:
        return json.loads(self.record_path.read_text())["invocations"]

    def report(self) -> None:
        """Tables over every result in the study's folder (the seeds of earlier invocations too)."""
        report = write_report([self.out], f"{self.out}/report", Path(self.out).name)
        print(render_markdown(report), end="")
        say(f"wrote {self.out}/report/report.md")

    def summarize(self, wall_seconds: float) -> None:
        """``OUT/report/study.md`` (mean ± std over seeds, paired comparisons) and the final line, printed."""
        from crossmodal.files import atomic_output

        text, final = self.summary(wall_seconds)
        with atomic_output(Path(self.out) / "report" / "study.md") as temporary:
            Path(temporary).write_text(text + "\n" + final + "\n")
        print(text)
        print(final)

"""A study's plan: its steps listed before any work, the plan's line and its record in ``study.json``, and the
estimate of the time left from the steps measured so far (``_study.Study`` builds the steps and runs them here).

Each step has a kind, a name (what the study prints when the step starts), the path that marks it done and the
check of that path (the one ``crossmodal.pipeline`` makes before reusing it). The kinds, and what each counts:

- ``teacher``: what the students learn from: a trained teacher (one per seed), an imported pretrained teacher (one
  for every seed), its classifier head (supervised-student), and the pretrained-teacher protocol's ImageNet
  initialisation of the students' architecture; done when its folder holds its model card.
- ``student``: one trained student per method and seed, the supervised oracle among them; done when finished.
- ``probe``: one probe set of one encoder (a student, scratch, a reference); done when its JSON exists.
- ``segment``: the segmentation transfer of one encoder (all its protocols); done when its ``segment.json`` exists.
- ``report``: the report over every result in the folder; never done, as it is written again at every invocation.

A step whose path is already in the plan is listed once (the imported teacher serves every seed). Steps found done
are numbered like the others (``[i/N]``) and reused; they take no time and are no measurement of their kind.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

KINDS = ("teacher", "student", "probe", "segment", "report")
WORDS = {"segment": "segmentation"}  # the plan line's word for a kind


def never() -> bool:
    return False


@dataclass(frozen=True)
class Step:
    kind: str
    name: str
    path: str | os.PathLike  # what marks the step done
    work: Callable[[], object]  # does the step, or reuses it when done
    is_done: Callable[[], bool] = never

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"step kind {self.kind!r}: not one of {', '.join(KINDS)}")


def time_left(measured: Mapping[str, Sequence[float]], remaining: Mapping[str, int]) -> Optional[float]:
    """Seconds left: per kind, the mean measured seconds of that kind times its remaining steps; a kind not yet
    measured takes the mean over every measured step. None (unknown) while steps remain and none was measured."""
    if not any(remaining.values()):
        return 0.0
    pooled = [seconds for kind in measured for seconds in measured[kind]]
    if not pooled:
        return None
    total = 0.0
    for kind, count in remaining.items():
        if count:
            seconds = measured.get(kind) or pooled
            total += count * sum(seconds) / len(seconds)
    return total


def describe_left(seconds: Optional[float]) -> str:
    if seconds is None:
        return "time left unknown"
    if seconds <= 0:
        return "nothing left to run"
    if seconds < 60:
        return "under a minute left"
    if seconds < 100 * 60:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


class Plan:
    """The steps of one invocation, in the order they run, with whether each was done when the plan was made."""

    def __init__(self, steps: Iterable[Step], root: str | os.PathLike):
        unique: dict[str, Step] = {}
        for step in steps:
            unique.setdefault(os.path.normpath(os.path.abspath(step.path)), step)
        self.steps = list(unique.values())
        self.root = Path(root)
        self.done = [step.is_done() for step in self.steps]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per kind, its steps and those done."""
        return {kind: {"total": sum(step.kind == kind for step in self.steps),
                       "done": sum(done for step, done in zip(self.steps, self.done) if step.kind == kind)}
                for kind in KINDS}

    def line(self) -> str:
        """``plan: 25 steps — 2 teacher, 6 student, 16 probe, 0 segmentation, 1 report; 0 done (reused), 25 to
        run``"""
        kinds = ", ".join(f"{count['total']} {WORDS.get(kind, kind)}" for kind, count in self.counts().items())
        done = sum(self.done)
        return f"plan: {len(self.steps)} steps — {kinds}; {done} done (reused), {len(self.steps) - done} to run"

    def record(self) -> dict:
        """The plan as ``study.json`` keeps it: paths relative to the study folder."""
        root = os.path.abspath(self.root)
        return {"total": len(self.steps), "done": sum(self.done), "to_run": len(self.steps) - sum(self.done),
                "kinds": self.counts(),
                "steps": [{"kind": step.kind, "name": step.name,
                           "path": os.path.relpath(os.path.abspath(step.path), root), "done": done}
                          for step, done in zip(self.steps, self.done)]}

    def run(self, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        """Every step in turn, its line ``[i/N] NAME — about X min left``; a step found done when it starts is
        reused and not measured."""
        measured: dict[str, list[float]] = {}
        for index, step in enumerate(self.steps):
            reused = step.is_done()
            later = [s.kind for s, done in zip(self.steps[index + 1:], self.done[index + 1:]) if not done]
            remaining = Counter(later + ([] if reused else [step.kind]))
            say(f"[{index + 1}/{len(self.steps)}] {step.name} — {describe_left(time_left(measured, remaining))}")
            started = clock()
            step.work()
            if not reused:
                measured.setdefault(step.kind, []).append(clock() - started)

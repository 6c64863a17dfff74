"""A study's plan (experiments/_plan.py): the estimate of the time left on hand-computed cases, the step lines of a
run with a fake clock, and the plan of a Study built in a folder where some steps are marked done by hand (nothing
is trained), with its record in ``study.json``."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
try:
    from _plan import Plan, Step, describe_left, time_left
    from _study import Evaluation, Pretrained, Study
finally:
    sys.path.remove(str(ROOT / "experiments"))


# ----------------------------------------------------------------------------------------------- the estimate
def test_nothing_measured_is_unknown_and_nothing_remaining_is_zero():
    assert time_left({}, {"teacher": 1, "probe": 4}) is None
    assert time_left({"teacher": []}, {"teacher": 1}) is None
    assert time_left({}, {"teacher": 0, "report": 0}) == 0.0
    assert time_left({"student": [30.0]}, {}) == 0.0


def test_each_kind_takes_its_own_mean_and_an_unmeasured_kind_the_mean_of_all():
    measured = {"teacher": [100.0], "student": [30.0, 50.0]}
    # students: mean 40 x 2; probes unmeasured: (100 + 30 + 50) / 3 = 60 x 3; teachers: none left
    assert time_left(measured, {"teacher": 0, "student": 2, "probe": 3}) == pytest.approx(80 + 180)
    assert time_left({"probe": [2.0, 4.0]}, {"probe": 5, "report": 0}) == pytest.approx(15)
    assert time_left({"probe": [2.0, 4.0]}, {"probe": 1, "report": 2}) == pytest.approx(3 + 2 * 3)


def test_the_time_left_in_words():
    assert describe_left(None) == "time left unknown"
    assert describe_left(0.0) == "nothing left to run"
    assert describe_left(59) == "under a minute left"
    assert describe_left(12 * 60 + 10) == "about 12 min left"
    assert describe_left(99 * 60) == "about 99 min left"
    assert describe_left(3 * 3600) == "about 3.0 h left"


# ----------------------------------------------------------------------------------------------- running a plan
def test_steps_are_numbered_reused_ones_too_and_only_the_ones_run_are_measured(tmp_path):
    now = [0.0]
    ran = []

    def step(kind: str, name: str, seconds: float, done: bool = False) -> Step:
        def work():
            ran.append(name)
            now[0] += seconds

        return Step(kind, name, tmp_path / name, work, lambda: done)

    plan = Plan([step("teacher", "a", 600), step("student", "b", 1000, done=True), step("student", "c", 1800),
                 step("probe", "d", 60), step("report", "e", 30)], tmp_path)
    lines = []
    plan.run(lines.append, clock=lambda: now[0])
    assert ran == ["a", "b", "c", "d", "e"]  # a reused step still runs (and says "reusing")
    assert lines == [
        "[1/5] a — time left unknown",
        "[2/5] b — about 30 min left",  # c, d, e at the teacher's 600 s; b's 1000 s is no measurement
        "[3/5] c — about 30 min left",
        "[4/5] d — about 40 min left",  # d, e at the mean of 600 and 1800 s
        "[5/5] e — about 14 min left"]  # (600 + 1800 + 60) / 3 = 820 s


def test_a_step_already_in_the_plan_is_listed_once(tmp_path):
    steps = [Step("teacher", "import", tmp_path / "t", print), Step("student", "s", tmp_path / "s0", print),
             Step("teacher", "import again", f"{tmp_path}/t/", print)]
    assert [step.name for step in Plan(steps, tmp_path).steps] == ["import", "s"]
    with pytest.raises(ValueError, match="step kind 'segmentation': not one of teacher, student, probe, segment"):
        Step("segmentation", "x", tmp_path, print)


# ----------------------------------------------------------------------------------------------- a study's plan
def study(out, **options) -> Study:
    defaults = dict(out=str(out), data=str(out / "d.h5"), student_modality="depth", teacher_config="t.yaml",
                    teacher_overrides=[], distill_config="d.yaml", distill_overrides=[],
                    methods={"kd": [], "crd": []}, supervised_overrides=[], seeds=(0, 1),
                    evaluation=Evaluation(probe_labels="label", probe_sets={"held-out": ["cat"], "all": None},
                                          segment_labels="seg"))
    return Study(**{**defaults, **options})


def finished(folder) -> None:
    """A run folder as ``run_folder.is_finished`` sees a finished one: its model card written."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    (folder / "model_card.json").write_text("{}\n")


def touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")


def test_the_plan_counts_every_step_and_those_done(tmp_path):
    out = tmp_path / "s"
    finished(out / "teacher-s0")
    finished(out / "kd-s0")
    (out / "crd-s0").mkdir()  # stopped after its checkpoint: resumed, not done
    (out / "crd-s0" / "checkpoint.pt").write_text("")
    touch(out / "results" / "probe-all-kd-s0.json")
    touch(out / "segment-kd-s0" / "segment.json")
    touch(out / "segment-crd-s0" / "frozen" / "checkpoint.pt")  # a segmentation under way: not done
    touch(out / "report" / "report.md")  # written again at every invocation: never done
    plan = study(out).plan()
    # per seed: a teacher, kd, crd and the supervised oracle; 2 probes and a segmentation of each student and scratch
    assert plan.line() == ("plan: 33 steps — 2 teacher, 6 student, 16 probe, 8 segmentation, 1 report; "
                           "4 done (reused), 29 to run")
    record = plan.record()
    assert record["kinds"] == {"teacher": {"total": 2, "done": 1}, "student": {"total": 6, "done": 1},
                               "probe": {"total": 16, "done": 1}, "segment": {"total": 8, "done": 1},
                               "report": {"total": 1, "done": 0}}
    assert (record["total"], record["done"], record["to_run"]) == (33, 4, 29)
    first = [(step["kind"], step["name"], step["path"], step["done"]) for step in record["steps"][:8]]
    assert first == [
        ("teacher", "teacher (seed 0)", "teacher-s0", True),
        ("student", "kd student (seed 0)", "kd-s0", True),
        ("student", "crd student (seed 0)", "crd-s0", False),
        ("student", "supervised student, with the evaluation's labels (seed 0)", "supervised-s0", False),
        ("probe", "probe kd-s0 (held-out classes)", "results/probe-held-out-kd-s0.json", False),
        ("probe", "probe kd-s0 (all classes)", "results/probe-all-kd-s0.json", True),
        ("segment", "segmentation transfer kd-s0", "segment-kd-s0/segment.json", True),
        ("probe", "probe crd-s0 (held-out classes)", "results/probe-held-out-crd-s0.json", False)]
    assert [step["path"] for step in record["steps"][13:17]] == [
        "results/probe-held-out-scratch-s0.json", "results/probe-all-scratch-s0.json",
        "segment-scratch-s0/segment.json", "teacher-s1"]
    assert record["steps"][-1] == {"kind": "report", "name": "the report of every result in the folder",
                                   "path": "report/report.md", "done": False}
    # the students of seed 1 learn from the teacher of seed 1; scratch takes CRD's architecture
    kd1 = next(step for step in plan.steps if step.name == "kd student (seed 1)")
    assert f"teacher.weights={out}/teacher-s1" in kd1.work.args[2] and "seed=1" in kd1.work.args[2]
    scratch = next(step for step in plan.steps if step.name == "probe scratch-s0 (all classes)")
    assert scratch.work.args[1]["checkpoint"] == f"{out}/crd-s0" and scratch.work.args[1]["random_init"]


def test_one_imported_teacher_and_the_references_under_the_pretrained_teacher_protocol(tmp_path):
    out = tmp_path / "s"
    finished(out / "teacher-pretrained-lab_l")
    plan = study(out, student_modality="lab_ab", methods={"crd": []}, pretrained=Pretrained(modality="lab_l"),
                 evaluation=Evaluation(probe_labels="label")).plan()
    names = [step.name for step in plan.steps]
    assert names[:9] == ["pretrained teacher (efficientnet-lite, reading lab_l)", "crd student (seed 0)",
                         "supervised student, with the evaluation's labels (seed 0)", "probe crd-s0 (all classes)",
                         "probe supervised-s0 (all classes)", "probe teacher-s0 (all classes, on lab_l)",
                         "pretrained teacher (efficientnet-lite, reading rgb)", "ImageNet initialisation for lab_ab",
                         "probe imagenet-s0 (all classes)"]
    assert names[9:] == ["probe scratch-s0 (all classes)", "crd student (seed 1)",
                         "supervised student, with the evaluation's labels (seed 1)", "probe crd-s1 (all classes)",
                         "probe supervised-s1 (all classes)", "probe teacher-s1 (all classes, on lab_l)",
                         "probe imagenet-s1 (all classes)", "probe scratch-s1 (all classes)",
                         "the report of every result in the folder"]
    assert plan.line() == ("plan: 18 steps — 3 teacher, 4 student, 10 probe, 0 segmentation, 1 report; "
                           "1 done (reused), 17 to run")
    crd1 = plan.steps[10]
    assert f"teacher.weights={out}/teacher-pretrained-lab_l" in crd1.work.args[2]


def test_the_supervised_student_protocol_has_a_head_and_no_report_without_probes(tmp_path):
    out = tmp_path / "s"
    plan = study(out, methods={"ce": [], "kd": []}, supervised_overrides=None, scratch=False,
                 pretrained=Pretrained(modality="rgb"), head_labels="label", evaluation=Evaluation()).plan()
    assert [(step.kind, step.name) for step in plan.steps] == [
        ("teacher", "pretrained teacher (efficientnet-lite, reading rgb)"),
        ("teacher", "the teacher's head over 'label', fitted on rgb"),
        ("student", "ce student (seed 0)"), ("student", "kd student (seed 0)"),
        ("student", "ce student (seed 1)"), ("student", "kd student (seed 1)")]
    assert f"teacher.weights={out}/teacher-head-rgb" in plan.steps[-1].work.args[2]


def test_study_json_holds_the_plan_of_each_invocation_beside_its_record(tmp_path):
    out = tmp_path / "s"
    first = study(out)
    first.claim_folder()
    first.write_plan(first.plan())
    first.add_wall_time(12.5)
    record = json.loads((out / "study.json").read_text())
    assert record["setting"] == {"data": "d.h5"} and [run["seconds"] for run in record["invocations"]] == [12.5]
    assert record["plan"]["done"] == 0 and record["plan"]["total"] == 33
    finished(out / "teacher-s0")
    again = study(out)
    again.claim_folder()  # the same setting: the record stays
    again.write_plan(again.plan())
    record = json.loads((out / "study.json").read_text())
    assert [run["seconds"] for run in record["invocations"]] == [12.5] and record["setting"] == {"data": "d.h5"}
    assert record["plan"]["done"] == 1 and record["plan"]["steps"][0] == {
        "kind": "teacher", "name": "teacher (seed 0)", "path": "teacher-s0", "done": True}
    assert again.add_wall_time(7.5) == 20.0
    record = json.loads((out / "study.json").read_text())
    assert record["plan"]["done"] == 1 and len(record["invocations"]) == 2

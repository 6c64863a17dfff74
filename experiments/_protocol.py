"""The protocols of a study: which image classes the teacher learns, which ones the students are judged on, and
the one-line refusals of a class split that cannot work.

- ``unseen-labels`` (the default): the teacher is trained on a subset of the image classes only (no
  segmentation); students are judged on the other classes (linear probe and kNN) and by segmentation transfer,
  labels the teacher never saw. Logit methods (KD, CRD+KD) distil the teacher's subset classes.
- ``seen-labels`` (the previous releases' protocol): the teacher is trained on every class (and segmentation)
  that the students are then judged on.
- ``pretrained-teacher`` (the paper's setting): the teacher is a network pretrained at scale elsewhere (ImageNet,
  imported with ``crossmodal import-teacher``), frozen, that never saw an image or label of the study's data;
  students are judged on every class (and on the classes the student's modality can see, where a study names
  them) and by segmentation transfer. Logit methods distil its ImageNet outputs.
- ``supervised-student`` (the setting of the 2023-25 cross-modal KD papers): the same frozen ImageNet teacher, its
  classifier replaced by a linear head over the data's classes fitted on modality A's training labels (its
  backbone unchanged); each student trains on its own modality's labels with cross-entropy (weight 1) plus one
  distiller at its default weight, and is judged by its own test top-1 (and a frozen-encoder segmentation for
  depth). The question: which distiller adds most over cross-entropy alone across the modality gap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from crossmodal.errors import CrossmodalError, DataError

PROTOCOLS = ("unseen-labels", "seen-labels", "pretrained-teacher", "supervised-student")
IMAGENET_CLASSES = 1000  # the imported teacher's outputs, which KD's student copies


class StudyError(CrossmodalError):
    """A study that cannot start: a bad class split, a folder made for another protocol or setting."""


@dataclass(frozen=True)
class Headline:
    """One number per student and seed: a probe score (set, kind, stage) or a segmentation score."""
    label: str
    source: str  # "probe", "segment" or "run" (the run's model card)
    where: str  # probe set name, or segmentation protocol ("" for a run)
    what: str  # probe: "linear:embedding", "knn:3"; segment: "miou", "pixel_acc"; run: a final metric


def check_label_set(data: str, name: str, kind: str, option: str) -> None:
    """``name`` must be a ``kind`` (class / segmentation) label set of ``data``; one line otherwise."""
    from crossmodal.data.format import read_layout

    labels = read_layout(data).labels
    if name not in labels or labels[name].type != kind:
        choices = sorted(label for label, info in labels.items() if info.type == kind)
        raise DataError(data, f"{option}: no {kind} label set '{name}'; it has {choices or 'none'}")


def class_split(data: str, labels: str, teacher_classes: Optional[Sequence[str]]) -> tuple[list[str], list[str]]:
    """The teacher's classes and the held-out ones (the rest) of class label set ``labels``.

    ``teacher_classes`` None takes every other class (ids 0, 2, 4, ...). Every class of both parts must have
    training and test images, and each part at least two classes.

    Raises:
        StudyError, ConfigError, DataError: one line naming the class, split or file.
    """
    import h5py

    from crossmodal.data.classes import class_names, missing_classes, resolve_classes
    from crossmodal.data.format import read_layout

    layout = read_layout(data)
    info = layout.labels[labels]
    ids = (list(range(0, info.num_classes, 2)) if teacher_classes is None
           else resolve_classes(info, teacher_classes, "--teacher-classes"))
    held_out = [i for i in range(info.num_classes) if i not in ids]
    if len(held_out) < 2:
        raise StudyError(f"the teacher's classes leave {len(held_out)} class(es) of '{labels}' held out; the "
                         f"transfer probe needs at least 2")
    with h5py.File(data, "r") as handle:
        values = handle["labels"][labels][()]
        for split in ("train", "test"):
            if split not in layout.splits:
                raise DataError(data, f"no split '{split}'; it has {sorted(layout.splits)}")
            empty = missing_classes(values[handle["splits"][split][()]], ids + held_out)
            if empty:
                raise StudyError(f"{data}: class {', '.join(class_names(info, empty))} of '{labels}' has no image "
                                 f"in split '{split}'; the class split needs every class in train and test")
    return class_names(info, ids), class_names(info, held_out)


def add_protocol_arguments(parser) -> None:
    """The options every study shares: protocol, the teacher's classes, seeds."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default="unseen-labels",
                        help="unseen-labels (default): the teacher learns a subset of the image classes only, the "
                             "students are judged on labels it never saw; seen-labels: the teacher learns the "
                             "labels the students are judged on (the previous releases' protocol); "
                             "pretrained-teacher: the teacher is ImageNet EfficientNet-Lite0, imported and frozen, "
                             "that never saw the study's data (the paper's setting); supervised-student: that "
                             "teacher with a linear head fitted on modality A's labels, and students trained on "
                             "their own labels with cross-entropy plus one distiller each, judged by their test "
                             "top-1 (the setting of recent cross-modal KD papers)")
    parser.add_argument("--teacher-classes", nargs="+", metavar="CLASS",
                        help="unseen-labels: the teacher's classes (names or ids; default every other class)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one teacher, one student per method and one scratch draw per seed (default 0 1 2)")


@dataclass
class ClassPlan:
    """Which image classes the teacher learns and which ones the students are probed on."""
    protocol: str
    labels: Optional[str]  # the class label set, None when the data have none
    teacher: Optional[list[str]] = None  # unseen-labels: the teacher's classes
    held_out: Optional[list[str]] = None
    num_classes: Optional[int] = None  # outputs of the teacher's classifier (KD's student needs as many)
    visible: Optional[list[str]] = None  # pretrained-teacher: the classes the students' modality can tell apart
    visible_label: str = "visible"

    @property
    def unseen(self) -> bool:
        return self.protocol == "unseen-labels"

    def teacher_task(self) -> list[str]:
        """The teacher's ``task.classes`` (and ``task.class_subset``) overrides."""
        subset = [f"task.class_subset=[{', '.join(self.teacher)}]"] if self.unseen else []
        return [f"task.classes={self.labels or 'null'}"] + subset

    def probe_sets(self) -> dict[str, Optional[list[str]]]:
        if self.unseen:
            return {"held-out": self.held_out, "all": None}
        return {self.visible_label: self.visible, "all": None} if self.visible else {"all": None}

    def headlines(self, stage: str, knn_on_all: bool) -> list[Headline]:
        """Probe headlines: held-out classes first (unseen-labels) or the visible ones (pretrained-teacher), then
        all classes."""
        if not self.labels:
            return []
        found = []
        if self.unseen:
            found += [Headline("linear, held-out classes", "probe", "held-out", f"linear:{stage}"),
                      Headline("kNN, held-out classes", "probe", "held-out", f"knn:{stage}")]
        elif self.visible:
            found += [Headline(f"linear, {self.visible_label} classes", "probe", self.visible_label, f"linear:{stage}"),
                      Headline(f"kNN, {self.visible_label} classes", "probe", self.visible_label, f"knn:{stage}")]
        found.append(Headline("linear, all classes", "probe", "all", f"linear:{stage}"))
        if knn_on_all:
            found.append(Headline("kNN, all classes", "probe", "all", f"knn:{stage}"))
        return found


def plan_classes(args, data: str, labels: Optional[str], say: Callable[[str], None]) -> ClassPlan:
    """The class plan of ``args.protocol`` / ``args.teacher_classes`` on ``data``'s class set ``labels``."""
    from crossmodal.data.format import read_layout

    if args.protocol != "unseen-labels" and args.teacher_classes:
        raise StudyError("--teacher-classes goes with --protocol unseen-labels")
    if labels is None:
        if args.protocol == "supervised-student":
            raise StudyError("--protocol supervised-student trains the students on class labels, and none are given; "
                             "name a class label set")
        if args.protocol == "unseen-labels":
            raise StudyError("--protocol unseen-labels trains the teacher on image classes, and none are given; "
                             "name a class label set or use --protocol seen-labels")
        return ClassPlan(args.protocol, None,
                         num_classes=IMAGENET_CLASSES if args.protocol == "pretrained-teacher" else None)
    check_label_set(data, labels, "class", "class labels")
    if args.protocol == "pretrained-teacher":
        return ClassPlan(args.protocol, labels, num_classes=IMAGENET_CLASSES)
    if args.protocol in ("seen-labels", "supervised-student"):
        return ClassPlan(args.protocol, labels, num_classes=read_layout(data).labels[labels].num_classes)
    teacher, held_out = class_split(data, labels, args.teacher_classes)
    say(f"teacher classes: {', '.join(teacher)}; held out: {', '.join(held_out)}")
    return ClassPlan(args.protocol, labels, teacher, held_out, len(teacher))


# The supervised-student protocol's rows: cross-entropy on the student's labels (weight 1) plus one distiller at its
# registry weight; "ce" is cross-entropy alone, the baseline every row is compared with.
SUPERVISED_METHODS = ("ce", "kd", "dkd", "mlld", "c2kd", "fitnet", "crd+ce")
SUPERVISED_TOP1 = Headline("test top-1", "run", "", "eval_student_top1")


def check_supervised_methods(names: Optional[Sequence[str]]) -> None:
    """``--methods`` of the supervised-student protocol must be its rows; one line otherwise, before any work."""
    unknown = [name for name in dict.fromkeys(names or ()) if name not in SUPERVISED_METHODS]
    if unknown:
        raise StudyError(f"--methods {' '.join(unknown)}: not a row of --protocol supervised-student "
                         f"({', '.join(SUPERVISED_METHODS)})")


def supervised_methods(labels: str, crd_options: str, epochs: int, names: Optional[Sequence[str]] = None
                       ) -> dict[str, list[str]]:
    """Each row's distill overrides; ``crd_options`` is the study's CRD recipe. DKD warms its weight up over the
    first third of the run: the paper's 20 of 240 epochs are about 15,000 steps of warm-up; a twelfth of these
    runs is one epoch, which at the official per-epoch factor is no warm-up at all, and DKD's training loss then
    collapsed to chance in the first epoch (seed 0 of both studies)."""
    common = ["loss.ce=1.0", f"loss.class_labels={labels}"]
    warmup = max(1, round(epochs / 3))
    rows = {"ce": ["distill.name=[]"], "kd": ["distill.name=kd"],
            "dkd": ["distill.name=dkd", f"distill.options.dkd={{warmup: {warmup}}}"],
            "mlld": ["distill.name=mlld"], "c2kd": ["distill.name=c2kd"], "fitnet": ["distill.name=fitnet"],
            "crd+ce": ["distill.name=crd", f"distill.options.crd={crd_options}"]}
    check_supervised_methods(names)
    return {name: common + rows[name] for name in (names or SUPERVISED_METHODS)}

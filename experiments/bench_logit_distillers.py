"""Time per distillation step of DKD, MLLD and C2KD against KD's, side by side, on the L -> ab study's student.

A step is what ``crossmodal distill`` runs under the supervised-student protocol: the student (resnet10t, 2-channel
ab input of 32 x 32, a classifier over 10 classes) forward, cross-entropy on its labels plus one distiller against
the teacher's cached outputs (ImageNet EfficientNet-Lite0's sizes: a 1280-d embedding, its stage maps at 224 px,
logits over the same 10 classes), backward and an SGD step. The teacher's outputs are fixed random tensors, as the
teacher-feature cache hands them over (the teacher never runs in a step). The methods are timed in interleaved
rounds, so that a change of machine load hits all of them alike; the median step is reported.

Usage: python experiments/bench_logit_distillers.py [--batch 64] [--classes 10] [--rounds 15] [--steps 5]
Ends with: distill-step-vs-kd dkd=<ratio>x mlld=<ratio>x c2kd=<ratio>x (target: each <= 1.5x)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crossmodal.distill import create_distiller  # noqa: E402
from crossmodal.models import Encoder  # noqa: E402
from crossmodal.models.outputs import EncoderOutput, FeatureSpec  # noqa: E402
from crossmodal.runtime import machine_description  # noqa: E402
from crossmodal.train.distillation import DistillTask  # noqa: E402

METHODS = ("kd", "dkd", "mlld", "c2kd")
# tf_efficientnet_lite0's stages at 224 px: channels and side of each map, then the embedding size
TEACHER_STAGES = ((16, 112), (24, 56), (40, 28), (112, 14), (320, 7))
TEACHER_EMBED = 1280


class CachedTeacher:
    """The teacher's outputs for a batch, as the feature cache returns them (detached, fixed)."""

    def __init__(self, output: EncoderOutput) -> None:
        self.output = output

    def __call__(self, batch) -> EncoderOutput:
        return self.output


def make_task(method: str, batch: int, classes: int) -> tuple[DistillTask, dict, torch.optim.Optimizer]:
    torch.manual_seed(0)
    student = Encoder("resnet10t", in_chans=2, num_classes=classes)
    teacher_spec = FeatureSpec(tuple(c for c, _ in TEACHER_STAGES), (2, 4, 8, 16, 32), TEACHER_EMBED, classes)
    generator = torch.Generator().manual_seed(1)
    teacher = EncoderOutput([torch.randn(batch, c, side, side, generator=generator).relu()
                             for c, side in TEACHER_STAGES],
                            torch.randn(batch, TEACHER_EMBED, generator=generator),
                            3 * torch.randn(batch, classes, generator=generator))
    distiller = create_distiller(method, student.spec, teacher_spec, num_samples=2000)
    task = DistillTask(student, "lab_ab", CachedTeacher(teacher), {method: distiller},
                       {method: type(distiller).default_weight}, ce_weight=1.0, class_labels="label")
    data = {"lab_ab": torch.randn(batch, 2, 32, 32, generator=generator),
            "label": torch.randint(0, classes, (batch,), generator=generator),
            "index": torch.arange(batch)}
    optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    task.set_epoch(0)
    return task.train(), data, optimizer


def step(task: DistillTask, data: dict, optimizer: torch.optim.Optimizer) -> None:
    loss, _ = task(data)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per method in each round")
    args = parser.parse_args()
    print(f"distillation step (student forward, CE + distiller, backward, SGD) at batch {args.batch}, "
          f"{args.classes} classes, resnet10t on 2 x 32 x 32; {machine_description()}")
    setups = {method: make_task(method, args.batch, args.classes) for method in METHODS}
    for method in METHODS:  # warm-up: allocator, kernels' first calls
        for _ in range(3):
            step(*setups[method])
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(args.rounds):
        for method in METHODS:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*setups[method])
            times[method].append((time.perf_counter() - start) / args.steps)
    median = {method: statistics.median(values) for method, values in times.items()}
    print(f"{'method':<8}{'ms/step':>10}{'vs KD':>8}")
    for method in METHODS:
        print(f"{method:<8}{median[method] * 1e3:>10.1f}{median[method] / median['kd']:>7.2f}x")
    print(f"after the run: {machine_description()}")
    print("distill-step-vs-kd " + " ".join(f"{method}={median[method] / median['kd']:.2f}x"
                                          for method in METHODS if method != "kd"))


if __name__ == "__main__":
    main()

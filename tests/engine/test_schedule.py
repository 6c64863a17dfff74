"""Learning-rate schedules against values worked out by hand."""
import math

import pytest

from crossmodal.config import ScheduleSection
from crossmodal.engine.schedule import learning_rate


def schedule(name="cosine", warmup_epochs=0.0, milestones=(), gamma=0.1, min_lr=0.0):
    return ScheduleSection(name=name, warmup_epochs=warmup_epochs, milestones=list(milestones), gamma=gamma,
                           min_lr=min_lr)


def rates(config, base_lr, steps_per_epoch, epochs):
    return [learning_rate(config, base_lr, step, steps_per_epoch, epochs)
            for step in range(steps_per_epoch * epochs)]


def test_constant():
    assert rates(schedule("constant"), 0.1, 3, 2) == [0.1] * 6


def test_linear_warmup_then_constant():
    # 1.5 epochs x 2 steps = 3 warm-up steps: base/3, 2 base/3, base, then base.
    got = rates(schedule("constant", warmup_epochs=1.5), 0.3, 2, 3)
    assert got == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])


def test_cosine_endpoints_and_midpoint():
    # 4 steps, no warm-up: progress 0, 1/4, 1/2, 3/4; the curve reaches min_lr after the last step (progress 1).
    got = rates(schedule(min_lr=0.1), 1.1, 4, 1)
    half_cos = [0.5 * (1 + math.cos(math.pi * p)) for p in (0, 0.25, 0.5, 0.75)]
    assert got == pytest.approx([0.1 + 1.0 * c for c in half_cos])
    assert got[0] == pytest.approx(1.1) and got[2] == pytest.approx(0.6)
    assert got[1] == pytest.approx(0.1 + 0.5 * (1 + math.sqrt(0.5)))
    assert got[-1] > 0.1  # no step runs at min_lr itself


def test_cosine_after_warmup_starts_at_the_peak():
    # 6 steps, 2 of warm-up (0.5, 1.0), then the cosine over steps 2..5: progress 0, 1/4, 1/2, 3/4.
    warm = schedule(warmup_epochs=1)
    assert rates(warm, 1.0, 2, 3) == pytest.approx(
        [0.5, 1.0, 1.0] + [0.5 * (1 + math.cos(math.pi * p)) for p in (0.25, 0.5, 0.75)])


def test_cosine_is_monotonic_and_clamped_after_the_end():
    got = rates(schedule(min_lr=0.01), 0.5, 7, 3)
    assert all(a >= b for a, b in zip(got, got[1:]))
    assert learning_rate(schedule(min_lr=0.01), 0.5, 100, 7, 3) == pytest.approx(0.01)


def test_step_milestones_multiply_by_gamma():
    # milestones at epochs 1 and 3, 2 steps per epoch: x1 for steps 0-1, x0.5 for steps 2-5, x0.25 from step 6.
    got = rates(schedule("step", milestones=[3, 1], gamma=0.5), 0.8, 2, 4)
    assert got == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.4, 0.4, 0.2, 0.2])


def test_step_with_warmup():
    got = rates(schedule("step", warmup_epochs=0.5, milestones=[1], gamma=0.1), 1.0, 4, 2)
    assert got == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1])


def test_warmup_longer_than_the_run_is_cut_to_the_run():
    # 10 warm-up epochs in a 2-step run: the warm-up spans the 2 steps.
    assert rates(schedule(warmup_epochs=10), 1.0, 1, 2) == pytest.approx([0.5, 1.0])


def test_single_step_run():
    assert learning_rate(schedule(min_lr=0.1), 1.0, 0, 1, 1) == pytest.approx(1.0)

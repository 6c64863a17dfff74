"""RKD: distances and angles of three points in the plane, by hand and by an independent loop (in float64: a check
of the formula, ``tests/tolerance.py``)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from crossmodal.distill.rkd import RKD, angles, pairwise_distances, rkd_losses
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64

SPEC = FeatureSpec((2,), (32,), 2)


def output(embedding: torch.Tensor) -> EncoderOutput:
    return EncoderOutput([torch.zeros(len(embedding), 2, 1, 1)], embedding)


def smooth_l1(a: list[float], b: list[float]) -> float:
    return sum(0.5 * (x - y) ** 2 if abs(x - y) < 1 else abs(x - y) - 0.5 for x, y in zip(a, b)) / len(a)


def loop_distances(points: list[tuple[float, float]]) -> list[float]:
    distances = [math.dist(p, q) for p, q in itertools.product(points, repeat=2)]
    mean = sum(distances) / sum(d > 0 for d in distances)
    return [d / mean for d in distances]


def loop_angles(points: list[tuple[float, float]]) -> list[float]:
    """cos of the angle at point i between j - i and k - i, zero where j or k is i (the normalised zero vector)."""
    def unit(p, q):
        v = (q[0] - p[0], q[1] - p[1])
        n = math.hypot(*v)
        return (v[0] / n, v[1] / n) if n > 0 else (0.0, 0.0)

    return [sum(a * b for a, b in zip(unit(points[i], points[j]), unit(points[i], points[k])))
            for i, j, k in itertools.product(range(len(points)), repeat=3)]


def test_distances_of_a_3_4_5_triangle():
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    distances = pairwise_distances(teacher)
    expected = torch.tensor([[0.0, 3.0, 4.0], [3.0, 0.0, 5.0], [4.0, 5.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(distances, expected, rtol=FLOAT64, atol=0)
    assert torch.equal(pairwise_distances(torch.zeros(2, 2)), torch.tensor([[0.0, 1e-6], [1e-6, 0.0]]))


def test_losses_on_three_points_match_an_independent_loop():
    student_points = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    teacher_points = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0)]
    expected_distance = smooth_l1(loop_distances(student_points), loop_distances(teacher_points))
    expected_angle = smooth_l1(loop_angles(student_points), loop_angles(teacher_points))
    # the teacher's normalised distances are 0.75, 1 and 1.25; the student's 3/(2+sqrt 2) * (1, 1, sqrt 2)
    assert loop_distances(teacher_points)[1:3] == pytest.approx([0.75, 1.0])
    assert expected_distance > 0 and expected_angle > 0
    rkd = RKD(SPEC, SPEC, num_samples=3)
    student, teacher = (torch.tensor(points, dtype=torch.float64) for points in (student_points, teacher_points))
    result = rkd(output(student), output(teacher), torch.arange(3))
    assert result.logs["distance"].item() == pytest.approx(expected_distance, rel=FLOAT64)
    assert result.logs["angle"].item() == pytest.approx(expected_angle, rel=FLOAT64)
    assert result.loss.item() == pytest.approx(25 * expected_distance + 50 * expected_angle, rel=FLOAT64)
    assert angles(student).tolist() == pytest.approx(loop_angles(student_points), rel=0, abs=FLOAT64)  # cosines


def test_similar_configurations_give_zero_and_weights_apply():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    rotated_scaled = 2.0 * student @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64) + 5.0
    distance, angle = rkd_losses(student, rotated_scaled)
    # normalised distances and cosines of order one: rounding leaves differences of order FLOAT64
    assert distance.item() == pytest.approx(0.0, abs=FLOAT64) and angle.item() == pytest.approx(0.0, abs=FLOAT64)
    other = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    distance, angle = rkd_losses(student, other)
    rkd = RKD(SPEC, FeatureSpec((2,), (32,), 7), num_samples=3, distance_weight=1.0, angle_weight=0.0)
    assert torch.equal(rkd(output(student), output(other), torch.arange(3)).loss, distance)  # 1 x distance


def test_a_batch_of_one_gives_zero_in_the_graph():
    student = torch.randn(1, 2, requires_grad=True)
    result = RKD(SPEC, SPEC, num_samples=3)(output(student), output(torch.randn(1, 2)), torch.arange(1))
    result.loss.backward()
    assert result.loss.item() == 0.0 and student.grad is not None


def test_rejects_negative_weights():
    with pytest.raises(ConfigError, match="angle_weight"):
        RKD(SPEC, SPEC, num_samples=3, angle_weight=-1.0)

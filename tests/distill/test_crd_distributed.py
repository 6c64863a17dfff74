"""Two gloo processes with batch B each give the same banks, Z, loss and gradients as one process with 2B."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _crd_bounds import linear_condition, standardised_error

from crossmodal.distill import create_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import gamma

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


def float32_allowance(batch: int) -> dict[str, float]:
    """How far the two runs may differ (``tests/tolerance.py``). They compute the same float32 step with sums in
    other orders: the heads' BatchNorm moments over the 2B rows, Z's mean over the 2B (K + 1) scores, the loss
    over each rank's anchors. Each value may differ by twice one evaluation's rounding bound:

    - an anchor: the linear head's gamma(din + 1) kappa (kappa = |(|W||x| + |b|)| / |Wx + b|), the moments'
      gamma(2B + 1) max|h| / std per column (the centring's cancellation; the standardised values are then off by
      that times (1 + |z|), over |z| once normalised), the normalisation's gamma(d + 3);
    - a score s = m . v: |m| (that + gamma(d)), with bank rows of norm <= sqrt(3) (uniform in +-sqrt(3 / d));
    - exp(s / T), so q, P and every per-score gradient: that over T relatively, plus gamma(3) |s| / T (s / T and
      the shift by log Z) and gamma(2) (exp); Z and the loss add their sums' gamma(2B (K + 1));
    - the loss, a mean over anchors of (K + 1) terms per direction that change with log q at a rate below one:
      2 (K + 1) times that, absolutely;
    - BatchNorm's running moments, moving averages of the batch moments: gamma(2B + 3) max|h| for the mean,
      gamma(2B + 4) max h^2 for the variance;
    - a head's gradient, a sum over the batch of |x| times the anchor gradient (whose K + 1 terms sum to at most
      2 / (T B) times the row norm, through a normalisation of gain 1 / |z|), errs by that relative error times
      2 |m| max|x| / (T min|z|); the bias's likewise with |x| = 1.
    """
    torch.manual_seed(0)
    crd = build({}).double()
    student, teacher, _ = next(global_batches(batch))
    d, T, M = 8, 0.07, math.sqrt(3)
    anchor, spread, largest = 0.0, 0.0, 0.0
    with torch.no_grad():
        for head, x in ((crd.embed_student, student.double()), (crd.embed_teacher, teacher.double())):
            h = head.linear(x)
            z = (h - h.mean(0)) / h.std(0, unbiased=False)
            linear = gamma(x.shape[1] + 1) * linear_condition(head.linear, x)
            anchor = max(anchor, standardised_error(h, z, count=2 * batch, relative=linear))
            spread = max(spread, 2 * M * float(x.abs().max()) / (T * float(z.norm(dim=1).min())))
            largest = max(largest, float(h.abs().max()))
    score = M * (anchor + gamma(d))
    q = score / T + gamma(3) * M / T * 2 + gamma(2)  # |s| <= M; log Z shifts by at most M / T again
    relative = 2 * (q + gamma(2 * batch * (K + 1)))
    return {"z": relative, "loss": 2 * (K + 1) * relative, "bank": 2 * (anchor + gamma(2 + d + 3)),
            "grad": relative * spread, "running_mean": 2 * gamma(2 * batch + 3) * largest,
            "running_var": 2 * gamma(2 * batch + 4) * largest ** 2}


@pytest.mark.parametrize("split", RANK_BATCHES)
@pytest.mark.parametrize("name", VARIANTS)
def test_two_processes_equal_one_process_with_the_whole_batch(rank_results, name, split):
    single = run(build(VARIANTS[name]), global_batches(sum(RANK_BATCHES[split])))
    ranks = [results[name, split] for results in rank_results]
    batch = sum(RANK_BATCHES[split])
    allow = float32_allowance(batch)
    for step, expected in enumerate(single[:-1]):
        # one process's mean over 2B equals the ranks' means weighted by their batch sizes
        weights = [r[step]["loss_weight"] for r in ranks]
        combined = sum(r[step]["loss"] * w for r, w in zip(ranks, weights)) / sum(weights)
        torch.testing.assert_close(combined, expected["loss"], rtol=gamma(2 * batch * (K + 1)),
                                   atol=allow["loss"])
        if split == "even":  # DDP averages gradients unweighted: equal to 2B only for equal rank batches
            for rank in ranks:
                for got, want in zip(rank[step]["grads"], expected["grads"]):
                    torch.testing.assert_close(got, want, rtol=0, atol=allow["grad"])
    for rank in ranks:
        for key, value in single[-1]["state"].items():
            if key.startswith(("student_memory.rows", "teacher_memory.rows")):
                torch.testing.assert_close(rank[-1]["state"][key], value, rtol=0, atol=allow["bank"], msg=key)
            elif key in ("z_student", "z_teacher"):
                torch.testing.assert_close(rank[-1]["state"][key], value, rtol=allow["z"], atol=0, msg=key)
            elif key.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(rank[-1]["state"][key], value, rtol=0, atol=allow[key.split(".")[-1]],
                                           msg=key)
            else:  # the heads' weights (no optimiser step) and counters
                assert torch.equal(rank[-1]["state"][key], value), key
    assert torch.equal(ranks[0][-1]["state"]["student_memory.rows"], ranks[1][-1]["state"]["student_memory.rows"])

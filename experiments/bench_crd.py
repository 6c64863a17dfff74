"""Time per CRD step: a straightforward per-sample-gather implementation against ours, side by side.

The baseline is RepDistiller's ``ContrastMemory`` + ``ContrastLoss`` written out plainly: every step gathers
the (K + 1) memory rows of every anchor from each bank (B x (K+1) x d floats) and lets autograd differentiate
the batched product through them. Ours computes the same per-sample objective from one dense product with the
bank (default ``exact`` mode) or from K rows shared by the batch (``shared_negatives``). A step is forward
(embedding heads, scores, loss), backward and the bank update, at the paper's settings: batch 64, 128-d,
K = 16384, N = 50,000, 512-d pooled features (a ResNet-18's). Modes are timed in interleaved rounds; the
median step is reported. Peak memory is measured per mode in a fresh process (peak RSS over the steps minus
the RSS after set-up). Before timing, the baseline and the default mode are run on the same rows and must
agree to 1e-5 (relative) in loss and gradients.

Usage: python experiments/bench_crd.py [--batch 64] [--negatives 16384] [--samples 50000] [--rounds 12]
Ends with: crd-speedup exact=<ratio>x shared=<ratio>x
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crossmodal.distill import create_distiller  # noqa: E402
from crossmodal.models.outputs import EncoderOutput, FeatureSpec  # noqa: E402
from crossmodal.runtime import machine_description  # noqa: E402

FEATURE_DIM = 512


class PerSampleGatherCRD(nn.Module):
    """RepDistiller's CRD (``CRDLoss`` with ``ContrastMemory`` and ``ContrastLoss``), written plainly."""

    def __init__(self, in_dim: int, feat_dim: int, num_samples: int, num_negatives: int,
                 temperature: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        self.embed_s, self.embed_t = nn.Linear(in_dim, feat_dim), nn.Linear(in_dim, feat_dim)
        self.n, self.k, self.t, self.m = num_samples, num_negatives, temperature, momentum
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_samples, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(num_samples, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.z_v1 = self.z_v2 = -1.0

    def nce(self, x: torch.Tensor) -> torch.Tensor:  # ContrastLoss
        batch, eps, noise = x.shape[0], 1e-7, self.k / self.n
        p_pos = x[:, 0]
        log_d1 = torch.log(p_pos / (p_pos + noise + eps))
        p_neg = x[:, 1:]
        log_d0 = torch.log(torch.full_like(p_neg, noise) / (p_neg + noise + eps))
        return -(log_d1.sum() + log_d0.sum()) / batch

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: torch.Tensor) -> torch.Tensor:
        v1 = F.normalize(self.embed_s(f_s), dim=1)
        v2 = F.normalize(self.embed_t(f_t), dim=1)
        batch, d = v1.shape
        weight_v1 = torch.index_select(self.memory_v1, 0, contrast_idx.view(-1)).detach().view(batch, -1, d)
        out_v2 = torch.exp(torch.bmm(weight_v1, v2.view(batch, d, 1)).squeeze(2) / self.t)
        weight_v2 = torch.index_select(self.memory_v2, 0, contrast_idx.view(-1)).detach().view(batch, -1, d)
        out_v1 = torch.exp(torch.bmm(weight_v2, v1.view(batch, d, 1)).squeeze(2) / self.t)
        if self.z_v1 < 0:
            self.z_v1 = float(out_v1.detach().mean()) * self.n
        if self.z_v2 < 0:
            self.z_v2 = float(out_v2.detach().mean()) * self.n
        loss = self.nce(out_v1 / self.z_v1) + self.nce(out_v2 / self.z_v2)
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                pos = torch.index_select(memory, 0, idx).mul_(self.m).add_(v.detach() * (1 - self.m))
                memory.index_copy_(0, idx, F.normalize(pos, dim=1))
        return loss


def draw_contrast_index(batch: int, k: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The AliasMethod draw of RepDistiller with uniform weights: K+1 rows, column 0 set to the sample."""
    idx = torch.randint(n, (batch,), generator=generator)
    contrast_idx = torch.randint(n, (batch, k + 1), generator=generator)
    contrast_idx[:, 0] = idx
    return idx, contrast_idx


def ours(args, shared: bool = False) -> nn.Module:
    spec = FeatureSpec(channels=(FEATURE_DIM,), reductions=(32,), embed_dim=FEATURE_DIM)
    # RepDistiller's bare linear heads, so that both sides compute the same numbers (the default BatchNorm head
    # adds one (B, 128) normalisation per head, noise next to the contrast itself)
    return create_distiller("crd", spec, spec, num_samples=args.samples, num_negatives=args.negatives,
                            shared_negatives=shared, head_batchnorm=False)


def copy_into(crd: nn.Module, baseline: PerSampleGatherCRD) -> None:
    """Give the baseline our heads and banks, so both compute on the same numbers."""
    with torch.no_grad():
        baseline.embed_s.load_state_dict(crd.embed_student.linear.state_dict())
        baseline.embed_t.load_state_dict(crd.embed_teacher.linear.state_dict())
        baseline.memory_v1.copy_(crd.student_memory.rows)
        baseline.memory_v2.copy_(crd.teacher_memory.rows)


def batch_features(args, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    f_s = torch.randn(args.batch, FEATURE_DIM, generator=generator).requires_grad_()
    f_t = torch.randn(args.batch, FEATURE_DIM, generator=generator)
    return f_s, f_t


def step(mode: str, model: nn.Module, f_s, f_t, idx, contrast_idx) -> torch.Tensor:
    """One step: forward, backward, bank update (inside forward for both)."""
    f_s.grad = None
    if mode == "baseline":
        loss = model(f_s, f_t, idx, contrast_idx)
    else:
        student, teacher = EncoderOutput([], f_s), EncoderOutput([], f_t)
        loss = model(student, teacher, idx, contrast_index=contrast_idx).loss
    loss.backward()
    return loss


def check_agreement(args) -> float:
    """Largest relative difference between baseline and default mode (loss and input gradient) over 3 steps."""
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(2)
    crd = ours(args)
    baseline = PerSampleGatherCRD(FEATURE_DIM, 128, args.samples, args.negatives)
    copy_into(crd, baseline)
    baseline.double()  # the reference in float64: the float32 baseline itself rounds by ~1e-4 (see README)
    worst = 0.0
    for _ in range(3):
        f_s, f_t = batch_features(args, generator)
        idx, contrast_idx = draw_contrast_index(args.batch, args.negatives, args.samples, generator)
        loss_ours = step("exact", crd, f_s, f_t, idx, contrast_idx)
        grad_ours = f_s.grad.clone()
        f_s64 = f_s.detach().double().requires_grad_()
        loss_base = step("baseline", baseline, f_s64, f_t.double(), idx, contrast_idx)
        worst = max(worst, abs(float(loss_ours.detach() - loss_base.detach())) / abs(float(loss_base.detach())),
                    float((grad_ours - f_s64.grad).norm() / f_s64.grad.norm()))
        with torch.no_grad():  # keep the heads identical; the banks were updated identically
            baseline.embed_s.weight.copy_(crd.embed_student.linear.weight)
            baseline.embed_s.bias.copy_(crd.embed_student.linear.bias)
            baseline.embed_t.weight.copy_(crd.embed_teacher.linear.weight)
            baseline.embed_t.bias.copy_(crd.embed_teacher.linear.bias)
    bank_difference = float((crd.student_memory.rows - baseline.memory_v1).abs().max())
    return max(worst, bank_difference)


def make_models(args) -> dict[str, nn.Module]:
    return {"baseline": PerSampleGatherCRD(FEATURE_DIM, 128, args.samples, args.negatives),
            "exact": ours(args), "shared": ours(args, shared=True)}


def time_modes(args) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    models = make_models(args)
    times: dict[str, list[float]] = {mode: [] for mode in models}
    for round_index in range(args.rounds + 2):
        for mode, model in models.items():
            f_s, f_t = batch_features(args, generator)
            idx = torch.randint(args.samples, (args.batch,), generator=generator)
            start = time.perf_counter()
            timed_step(mode, model, f_s, f_t, idx, generator, args)
            if round_index >= 2:  # two warm-up rounds
                times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(values) for mode, values in times.items()}


def timed_step(mode, model, f_s, f_t, idx, generator, args) -> None:
    """Drawing the rows is part of the step: the baseline draws K+1 per sample, ours draws its own."""
    if mode == "baseline":
        contrast_idx = torch.randint(args.samples, (args.batch, args.negatives + 1), generator=generator)
        contrast_idx[:, 0] = idx
        step("baseline", model, f_s, f_t, idx, contrast_idx)
    else:
        step(mode, model, f_s, f_t, idx, None)


def peak_memory(args, mode: str) -> float:
    """Peak RSS growth in MB of ``rounds`` steps of one mode, measured in a fresh process."""
    command = [sys.executable, __file__, "--memory-of", mode, "--batch", str(args.batch), "--negatives",
               str(args.negatives), "--samples", str(args.samples)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def memory_child(args) -> None:
    generator = torch.Generator().manual_seed(0)
    model = make_models(args)[args.memory_of]
    f_s, f_t = batch_features(args, generator)
    idx = torch.randint(args.samples, (args.batch,), generator=generator)
    before_mb = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    for _ in range(3):
        timed_step(args.memory_of, model, f_s, f_t, idx, generator, args)
    print(json.dumps({"peak_mb": _status_mb("VmHWM") - before_mb}))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=16384)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--memory-of", choices=("baseline", "exact", "shared"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return memory_child(args)
    print(f"CRD step at batch {args.batch}, 128-d, K={args.negatives}, N={args.samples}, {FEATURE_DIM}-d features; "
          f"{machine_description()}")
    disagreement = check_agreement(args)
    print(f"exact (float32) vs the baseline in float64 on the same rows: largest relative difference "
          f"{disagreement:.1e} (loss, gradient, bank over 3 steps)")
    if disagreement > 1e-5:
        raise SystemExit("the fast path disagrees with the per-sample gather: not timing it")
    times = time_modes(args)
    memory = {mode: peak_memory(args, mode) for mode in times}
    print(f"{'mode':<10}{'ms/step':>10}{'peak MB':>10}{'speed-up':>10}")
    for mode, seconds in times.items():
        print(f"{mode:<10}{seconds * 1e3:>10.1f}{memory[mode]:>10.0f}{times['baseline'] / seconds:>9.1f}x")
    print(f"crd-speedup exact={times['baseline'] / times['exact']:.1f}x "
          f"shared={times['baseline'] / times['shared']:.1f}x")


if __name__ == "__main__":
    main()

"""Samples/s of a CRD distillation training step against a plain supervised step of the same student.

Three training steps of one student architecture on the same batch, each a full step of the training engine
(``Trainer._step`` itself: move the batch, set the learning rate, forward the task, ``zero_grad``, backward,
SGD with momentum 0.9 and weight decay 5e-4, the config defaults):

- ``supervised``: :class:`SupervisedTask`, the student with a 10-class classifier and cross-entropy on the
  labels. No distillation can be cheaper than this: it is the lower bound.
- ``distill cached``: :class:`DistillTask` with CRD at RepDistiller's defaults (128-d, K = 16384, N rows per
  memory bank), the teacher's embeddings looked up by sample index in a :class:`TeacherFeatureCache` of N rows.
- ``distill uncached``: the same task with the frozen teacher run on the batch's RGB view every step.

The student is a depth (1-channel) ResNet-18 and the teacher an RGB (3-channel) ResNet-18, both CIFAR-style
(``small_input=True``: stride-1 stem, no max-pool) at 32 x 32 and, by default, at 64 x 64 too. The batch is
real synthetic RGB-D scenes from the built-in generator; each step draws fresh sample indices in [0, N), as a
shuffled epoch over an N-sample transfer set would. The cache goes through the product's own build path
(``TeacherFeatureCache.build_or_load`` over a small synthetic split); its rows are then repeated to N rows in
a file of the same format, so every lookup indexes a cache of N rows (held in memory, as any cache under
1 GB is).

The steps are timed in interleaved rounds (the order rotates every round), after warm-up rounds; the table
reports the median step, and a ratio is the median distillation step over the median supervised step. Its
``spread`` column gives the quartiles of the per-round ratios (each distillation step over the supervised
step of the same round), a measure of the noise. To show where the distillation's extra time goes, the same
rounds also time the parts on their own: the cache lookup, the CRD distiller's forward and backward on
random 512-d embeddings (heads, negative draw, scores, loss, bank update), and the teacher's forward. With
``--device cuda`` every timed call is bracketed by ``torch.cuda.synchronize``, and after the timing the host
synchronisations of a CRD step (the distiller's forward and backward on inputs already on the device) and of a
whole cached distillation step are counted over ``--sync-steps`` calls: ``torch.cuda.set_sync_debug_mode("warn")``
makes every synchronising CUDA call warn, and the warnings are counted. The load average (1, 5 and 15 minutes)
is printed at the start and the end, as a busy machine skews the figures. The defaults take about 3 to
4 minutes on 2 quiet CPU cores; ``--quick`` (tiny ``test_resnet`` models) a few seconds.

The cost of the TensorBoard event sink is measured inside a real run of the demo's distillation
(``demo_distill``: a depth resnet10t from the imported EfficientNet-Lite0 teacher's cached embeddings, CRD with a
queue of 1,024 negatives, batch 64, 64 x 64 scenes, a record every 5 steps), three epochs of 8 steps on 640
generated scenes: every step is timed from one engine hook call to the next (data, forward, backward, logging:
the whole step), and every write of the event sink from the second step on (the scalars of each record, the
curves picture and the end, written after the last step: counted against the steps, so the share errs high) is
timed where it happens. The overhead is the sink's total time over the steps' total, with the one-off import of
TensorBoard's protocol buffers (measured in a fresh interpreter) beside it.
``--only-tensorboard`` runs this part alone (about 1 minute).

Usage: python experiments/bench_train.py [--rounds 10] [--rounds-64 5] [--batch-size 64] [--samples 50000]
                                         [--sizes 32 64] [--stem-64 cifar|imagenet] [--device cpu] [--quick]
                                         [--sync-steps 10] [--only-tensorboard]
Ends with: crd host syncs/step=<count> ...   (on CUDA; on the CPU a line saying it needs CUDA)
           distill-vs-supervised cached=<ratio>x uncached=<ratio>x   (the ratios of step times at 32 x 32)
           tensorboard-overhead=<percent>%   (the event sink's share of a demo-size distillation step)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crossmodal.data import PairedDataset  # noqa: E402
from crossmodal.data.synthetic import generate  # noqa: E402
from crossmodal.distill import create_distiller  # noqa: E402
from crossmodal.distill.teacher_cache import TeacherFeatureCache  # noqa: E402
from crossmodal.models import Encoder, FrozenTeacher  # noqa: E402
from crossmodal.models.outputs import EncoderOutput, TeacherNeeds  # noqa: E402
from crossmodal.config import RunConfig  # noqa: E402
from crossmodal.engine import SupervisedTask, Trainer, TrainSetup  # noqa: E402
from crossmodal.train.distillation import DistillTask, TeacherView  # noqa: E402
from crossmodal.runtime import load_average, machine_description  # noqa: E402

STUDENT, TEACHER = "depth", "rgb"
CLASSES = "label"
STEPS = ("supervised", "distill cached", "distill uncached")
PARTS = ("cache lookup", "crd fwd+bwd", "teacher forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds at 32 x 32 (default 10)")
    parser.add_argument("--rounds-64", type=int, default=5, help="timed rounds at 64 x 64 (default 5; a step "
                        "there costs about 5x one at 32 x 32)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=50_000, help="N, the transfer set's size (default 50,000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], choices=(32, 64))
    parser.add_argument("--stem-64", choices=("cifar", "imagenet"), default="cifar",
                        help="ResNet-18 stem at 64 x 64: cifar (small_input, the default) or imagenet (stride-2 "
                             "stem and max-pool: 16x less compute, so CRD's fixed cost weighs more)")
    parser.add_argument("--model", default="resnet18", help="timm encoder of student and teacher")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--sync-steps", type=int, default=10,
                        help="steps over which host synchronisations are counted on CUDA (default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check in seconds: test_resnet, batch 32, N=4096, K=1024, 2 rounds")
    parser.add_argument("--only-tensorboard", action="store_true",
                        help="only the event sink's overhead in a demo-size distillation (about 1 minute)")
    args = parser.parse_args()
    if args.only_tensorboard:
        print(machine_description())
        tensorboard_overhead()
        return
    if args.quick:
        args.model, args.samples, args.rounds, args.rounds_64, args.batch_size = "test_resnet", 4096, 2, 2, 32
    negatives = 1024 if args.quick else 16384
    device = torch.device(args.device)
    started = time.perf_counter()
    print(f"training step, batch {args.batch_size}, {args.model} student (depth, 1 channel) and teacher (rgb, 3 "
          f"channels), CRD 128-d K={negatives} N={args.samples}, SGD momentum 0.9, float32, "
          f"{device}; {machine_description()}")
    results: dict[int, dict[str, list[float]]] = {}
    syncs: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as workdir:
        for size in args.sizes:
            small_input = size == 32 or args.stem_64 == "cifar"
            rounds = args.rounds if size == 32 else args.rounds_64
            bench = SizeBench(args, size, small_input, negatives, device, os.path.join(workdir, str(size)))
            results[size] = bench.time(rounds, args.warmup)
            if device.type == "cuda" and not syncs:  # counted at the first size (32 x 32 by default)
                syncs = bench.host_syncs(args.sync_steps)
            print(f"  {size} x {size} done: {rounds} rounds, {time.perf_counter() - started:.0f} s so far",
                  flush=True)
            del bench
    report(args, results)
    print(f"total {time.perf_counter() - started:.0f} s, {load_average()}")
    if syncs:
        print(f"crd host syncs/step={syncs['crd']:.2f} (the distiller's forward and backward, over "
              f"{args.sync_steps} steps; a whole cached distillation step: {syncs['distill cached']:.2f})")
    else:
        print("crd host syncs/step: not counted, it needs CUDA (--device cuda: torch.cuda.set_sync_debug_mode)")
    size = 32 if 32 in results else args.sizes[0]  # 32 x 32 unless --sizes leaves it out
    ratio = ratios(medians(results[size]))
    print(f"distill-vs-supervised cached={ratio['distill cached']:.2f}x uncached={ratio['distill uncached']:.2f}x"
          + ("" if size == 32 else f" (at {size}x{size})"))
    tensorboard_overhead()


def tensorboard_overhead() -> None:
    """The event sink's time over the steps' time in a real demo-size distillation (see the module docstring)."""
    import subprocess

    from crossmodal.pipeline import import_or_reuse
    from crossmodal.shipped_configs import shipped_path
    from crossmodal.train.run import run_training

    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with tempfile.TemporaryDirectory(prefix="bench_tensorboard_") as workdir:
        data = os.path.join(workdir, "scenes.h5")
        with quiet[0], quiet[1]:
            generate(data, num=640, size=64, seed=0, workers=1)
            teacher = import_or_reuse(os.path.join(workdir, "teacher"), "efficientnet-lite")
        marks: list[float] = []
        sink: list[float] = []

        def timed(method: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    sink.append(time.perf_counter() - start)
            return call

        def hook(trainer: Trainer) -> None:
            marks.append(time.perf_counter())
            events = trainer.metrics.events
            if len(marks) == 1 and events is not None:  # from the second step on, every write is timed
                for name in ("scalars", "image", "hparams", "end"):
                    setattr(events, name, timed(getattr(events, name)))

        overrides = [f"data.path={data}", f"teacher.weights={teacher}", "train.epochs=3", "train.progress=false",
                     "teacher.cache_dtype=float16"]
        with quiet[0], quiet[1]:
            run_training("distill", shipped_path("demo_distill"), overrides, out=os.path.join(workdir, "run"),
                         hooks=[hook])
        steps = [after - before for before, after in zip(marks, marks[1:])]
        records = len(sink)
        code = ("import time; t = time.perf_counter(); from tensorboard.compat.proto import event_pb2, summary_pb2; "
                "from tensorboard.plugins.hparams import metadata, plugin_data_pb2; print(time.perf_counter() - t)")
        imported = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout)
    share = sum(sink) / sum(steps)
    print(f"\nevent sink in the demo's distillation (64 x 64, batch 64, resnet10t, CRD queue K=1024, a record every 5 "
          f"steps): {len(steps)} steps, median {statistics.median(steps) * 1e3:.1f} ms; {records} writes of the sink "
          f"(scalars, curves, end), {sum(sink) * 1e3:.2f} ms in all, median "
          f"{statistics.median(sink) * 1e3:.3f} ms; the one-off import {imported * 1e3:.0f} ms "
          f"({100 * imported / (statistics.median(steps) * 1800):.2f}% of the demo's 1,800 steps)")
    print(f"tensorboard-overhead={100 * share:.3f}% (the sink's time over the steps' time; {load_average()})")


class SizeBench:
    """The three training steps and the timed parts at one image size."""

    def __init__(self, args: argparse.Namespace, size: int, small_input: bool, negatives: int,
                 device: torch.device, workdir: str) -> None:
        os.makedirs(workdir)
        self.size, self.small_input, self.device = size, small_input, device
        self.batch_size, self.num_samples = args.batch_size, args.samples
        self.generator = torch.Generator().manual_seed(size)
        data_path = os.path.join(workdir, "synthetic.h5")
        # enough scenes for one batch in the train split (a fifth goes to test)
        with contextlib.redirect_stderr(io.StringIO()):  # the generator's progress bar
            generate(data_path, num=int(np.ceil(args.batch_size / 0.8)) + 8, size=size, seed=0, workers=1)
        train = PairedDataset(data_path, "train", modalities=[STUDENT, TEACHER], labels=[CLASSES])
        self.batch = default_collate([train[i] for i in range(args.batch_size)])
        del self.batch["row"]
        if device.type == "cuda":
            self.batch = {k: v.pin_memory() for k, v in self.batch.items()}

        def encoder(in_chans: int, num_classes: int = 0) -> Encoder:
            torch.manual_seed(0)
            return Encoder(args.model, in_chans=in_chans, num_classes=num_classes, small_input=small_input)

        self.teacher = FrozenTeacher(encoder(3)).to(device)

        def crd() -> torch.nn.Module:
            return create_distiller("crd", encoder(1).spec, self.teacher.spec, num_samples=args.samples,
                                    num_negatives=negatives)

        self.cache = _cache_of_n_rows(self.teacher, data_path, workdir, args.samples, crd().teacher_needs())
        config = RunConfig.validated({"data": {"path": data_path}, "train": {
            "epochs": 1, "batch_size": args.batch_size, "progress": False}}, "bench_train")
        num_classes = train.layout.labels[CLASSES].num_classes
        tasks = {
            "supervised": SupervisedTask(encoder(1, num_classes), STUDENT, classes=CLASSES),
            "distill cached": DistillTask(encoder(1), STUDENT, TeacherView(self.teacher, TEACHER, self.cache),
                                          {"crd": crd()}, {"crd": 0.8}),
            "distill uncached": DistillTask(encoder(1), STUDENT, TeacherView(self.teacher, TEACHER, None),
                                            {"crd": crd()}, {"crd": 0.8}),
        }
        self.trainers = {name: Trainer(TrainSetup("distill", config, workdir, task, range(args.samples), None,
                                                  device)) for name, task in tasks.items()}
        for trainer in self.trainers.values():
            trainer.model.train()
        self.crd_alone = crd().to(device).train()

    def time(self, rounds: int, warmup: int) -> dict[str, list[float]]:
        """Seconds of each step and part in each of ``rounds`` interleaved rounds, after ``warmup`` rounds."""
        jobs: dict[str, Callable[[torch.Tensor], Any]] = {name: self._train_step(name) for name in STEPS}
        jobs.update(zip(PARTS, (self._lookup, self._crd, self._teacher)))
        names = list(jobs)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(warmup + rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = self._timed(jobs[name])
                if round_index >= warmup:
                    times[name].append(seconds)
        return times

    def _timed(self, job: Callable[[torch.Tensor], Any]) -> float:
        index = self._index()
        self._sync()
        start = time.perf_counter()
        job(index)
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _train_step(self, name: str) -> Callable[[torch.Tensor], Any]:
        trainer = self.trainers[name]
        # the real builder does not read the teacher's modality when the cache serves the teacher
        keys = [k for k in self.batch if not (name == "distill cached" and k == TEACHER)]

        def step(index: torch.Tensor) -> None:
            trainer._step({**{k: self.batch[k] for k in keys}, "index": index})
        return step

    def _lookup(self, index: torch.Tensor) -> EncoderOutput:
        return self.cache.lookup(index.to(self.device))

    def _teacher(self, index: torch.Tensor) -> EncoderOutput:
        return self.teacher(self.batch[TEACHER].to(self.device, non_blocking=True))

    def _crd(self, index: torch.Tensor) -> None:
        """The distiller alone, on random 512-d embeddings: forward, bank update, backward to the embedding."""
        self._crd_step(*self._crd_inputs(index))

    def _crd_inputs(self, index: torch.Tensor) -> tuple[EncoderOutput, EncoderOutput, torch.Tensor]:
        dim = self.crd_alone.embed_student.linear.in_features
        student = torch.randn(self.batch_size, dim, generator=self.generator).to(self.device).requires_grad_()
        teacher = torch.randn(self.batch_size, dim, generator=self.generator).to(self.device)
        return EncoderOutput([], student), EncoderOutput([], teacher), index.to(self.device)

    def _crd_step(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor) -> None:
        (0.8 * self.crd_alone(student, teacher, index).loss).backward()

    def host_syncs(self, steps: int) -> dict[str, float]:
        """Host synchronisations per call (CUDA only) of the CRD step, its inputs moved to the device
        beforehand, and of the whole cached distillation step, its index pinned as a DataLoader would."""
        crd_inputs = [self._crd_inputs(self._index()) for _ in range(steps)]
        indices = [self._index().pin_memory() for _ in range(steps)]
        step = self._train_step("distill cached")
        self._sync()
        return {"crd": count_host_syncs([lambda inputs=inputs: self._crd_step(*inputs) for inputs in crd_inputs]),
                "distill cached": count_host_syncs([lambda index=index: step(index) for index in indices])}

    def _index(self) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=self.generator)[:self.batch_size]


def _cache_of_n_rows(teacher: FrozenTeacher, data_path: str, workdir: str, num_samples: int,
                     needs: TeacherNeeds) -> TeacherFeatureCache:
    """A teacher cache built by the product over the small synthetic split, then its rows repeated to
    ``num_samples`` in a file of the same format (attributes and chunking copied), opened as the product does."""
    view = PairedDataset(data_path, "train", modalities=[TEACHER])
    small_path = os.path.join(workdir, "teacher_cache_small.h5")
    small = TeacherFeatureCache.build_or_load(small_path, teacher, view, TEACHER, needs, progress=False)
    path = os.path.join(workdir, "teacher_cache.h5")
    with h5py.File(small_path, "r") as source, h5py.File(path, "w") as target:
        target.attrs.update(dict(source.attrs))
        for name in source:
            rows = source[name][()]
            array = rows[np.arange(num_samples) % len(rows)]
            target.create_dataset(name, data=array, chunks=(min(64, num_samples),) + array.shape[1:])
    return TeacherFeatureCache(path, needs, teacher.spec.num_stages, small.key)


def count_host_syncs(calls: list[Callable[[], Any]]) -> float:
    """Host synchronisations per call on CUDA: under ``torch.cuda.set_sync_debug_mode("warn")`` every
    synchronising CUDA call (``.item()``, ``float(t)``, a device-to-host copy, ``torch.unique``, boolean-mask
    indexing, ...) warns once; the warnings over ``calls`` are counted."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for call in calls:
                call()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message).lower() for w in caught) / max(len(calls), 1)


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def ratios(times: dict[str, float]) -> dict[str, float]:
    return {name: times[name] / times["supervised"] for name in STEPS}


def round_ratio_spread(times: dict[str, list[float]], name: str) -> str:
    """Quartiles of the per-round ratios of ``name`` to the supervised step of the same round (the noise)."""
    per_round = sorted(a / b for a, b in zip(times[name], times["supervised"]))
    if len(per_round) < 4:
        return f"{per_round[0]:.2f}-{per_round[-1]:.2f}"
    low, _, high = statistics.quantiles(per_round, n=4)
    return f"{low:.2f}-{high:.2f}"


def report(args: argparse.Namespace, results: dict[int, dict[str, list[float]]]) -> None:
    print(f"\nmedian training step, batch {args.batch_size} (the last line's ratios are the 32 x 32 ones; "
          f"spread: quartiles of the per-round ratios, or their range under 4 rounds)")
    print(f"{'size':<9}{'step':<19}{'ms/step':>10}{'samples/s':>11}{'vs supervised':>15}{'spread':>12}")
    for size, all_times in results.items():
        times = medians(all_times)
        label = f"{size}x{size}" + ("" if size == 32 or args.stem_64 == "cifar" else "*")
        for name, ratio in ratios(times).items():
            spread = "" if name == "supervised" else round_ratio_spread(all_times, name)
            print(f"{label:<9}{name:<19}{times[name] * 1e3:>10.1f}{args.batch_size / times[name]:>11.1f}"
                  f"{ratio:>14.2f}x{spread:>12}")
    if args.stem_64 == "imagenet" and 64 in results:
        print("* 64 x 64 with the ImageNet stem (stride 2 and max-pool), not small_input")
    print("\nwhere the extra time goes (median ms of each part timed alone, in the same rounds)")
    print(f"{'size':<9}{'extra cached':>13}{'cache lookup':>13}{'crd fwd+bwd':>12}{'rest':>8}"
          f"{'extra uncached':>16}{'teacher fwd':>12}")
    for size, all_times in results.items():
        times = medians(all_times)
        extra_cached = times["distill cached"] - times["supervised"]
        extra_uncached = times["distill uncached"] - times["supervised"]
        rest = extra_cached - times["cache lookup"] - times["crd fwd+bwd"]
        print(f"{f'{size}x{size}':<9}{extra_cached * 1e3:>13.1f}{times['cache lookup'] * 1e3:>13.2f}"
              f"{times['crd fwd+bwd'] * 1e3:>12.1f}{rest * 1e3:>8.1f}{extra_uncached * 1e3:>16.1f}"
              f"{times['teacher forward'] * 1e3:>12.1f}")
    print("(extra = distill step - supervised step; rest = extra cached - lookup - crd: the CRD gradient "
          "through the student, the heads' optimizer update, and noise)")


if __name__ == "__main__":
    main()

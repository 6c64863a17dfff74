"""The training loop shared by every training verb: steps, schedule, logging, checkpoints, resume, DDP.

A verb builds a :class:`~crossmodal.engine.task.Task` and hands it to :class:`Trainer` with its data and its
typed :class:`~crossmodal.config.RunConfig`. The trainer owns everything else, so that each verb is only what
makes it different.
"""
from __future__ import annotations

import inspect
import math
import os
import signal
import threading
import time
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossmodal import interrupts, run_folder, runtime
from crossmodal.config import RESUME_MAY_CHANGE, flatten
from crossmodal.data.dataset import collate
from crossmodal.engine.checkpoint import (data_file_identity, load_checkpoint, load_module_state, rng_state,
                                          save_checkpoint, set_rng_state)
from crossmodal.engine.events import open_events
from crossmodal.engine.metrics_log import MetricsLog, epoch_line
from crossmodal.engine.optim import build_optimizer
from crossmodal.engine.sampler import EpochBatchSampler, check_batch_size
from crossmodal.engine.schedule import learning_rate
from crossmodal.engine.setup import BatchSource, TrainData, TrainSetup
from crossmodal.engine.task import Task
from crossmodal.errors import CrossmodalError

PREFETCH = 2  # batches in flight per DataLoader worker


def _recycle_in_worker(worker_id: int) -> None:
    """A training loader's ``worker_init_fn``: this worker's copy of the data set reuses its batch buffers."""
    torch.utils.data.get_worker_info().dataset.recycle_batches(PREFETCH + 2)


class TrainingDiverged(CrossmodalError):
    """The loss became NaN or infinite."""


class Trainer:
    """Runs a :class:`TrainSetup` to the end, resuming from ``RUN_DIR/checkpoint.pt`` when asked.

    Every ``optim``/``schedule``/``train`` key of the config is honoured here: SGD or AdamW, warm-up then
    cosine / step / constant rates set per step, bf16 autocast, channels-last, gradient clipping, a record
    every ``log_every`` steps and per epoch, a checkpoint every epoch, every ``checkpoint_every_steps`` steps
    and on SIGUSR1 (the signal clusters send before a time limit). Hooks run after every step (tests use one
    to kill the process at a chosen step).
    """

    def __init__(self, setup: TrainSetup) -> None:
        self.setup = setup
        self.config = setup.config
        self.train_cfg = setup.config.train
        self.device = setup.device
        self.rank, self.world = runtime.rank(), runtime.world_size()
        self.is_main = self.rank == 0
        self.task = setup.task.to(self.device)
        if self.train_cfg.channels_last:
            self.task.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.task
        if self.world > 1 and any(p.requires_grad for p in self.task.parameters()):
            # Buffers are not broadcast each step: the memory banks are kept equal by their own collectives and
            # BatchNorm statistics are averaged once per epoch (sync_batchnorm_statistics).
            self.model = _data_parallel(self.task, self.device)
        self.parameters = [p for p in self.task.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.config.optim, self.parameters)
        self.sampler = EpochBatchSampler(len(setup.train_data), self.train_cfg.batch_size, shuffle=True,
                                         seed=self.config.seed, rank=self.rank, world_size=self.world)
        check_batch_size(self.train_cfg.batch_size, len(setup.train_data))
        self.steps_per_epoch = len(self.sampler)
        self.epochs = self.train_cfg.epochs
        events = open_events(self.train_cfg.tensorboard, self.train_cfg.logdir, setup.run_dir,
                             tqdm.write) if self.is_main else None
        self.metrics = MetricsLog(setup.run_dir, enabled=self.is_main, events=events)
        self.checkpoint_path = run_folder.checkpoint_path(setup.run_dir)
        self.data_file = data_file_identity(self.config.data.path)  # a regenerated file refuses --resume
        self.epoch = self.batch_in_epoch = self.step = 0
        self.lr = 0.0
        self.epoch_sums: dict[str, torch.Tensor] = {}
        self.epoch_batches = 0
        # Sums since the last step record; checkpointed, so that a resumed run logs the same records.
        self.window_sums: dict[str, torch.Tensor] = {}
        self.window_steps = 0
        self._checkpoint_requested = threading.Event()
        self._busy_said = False

    # ----------------------------------------------------------------------------------------- public
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the last epoch; returns the last epoch's record."""
        if resume and os.path.exists(self.checkpoint_path):
            self._restore()
        elif resume:  # killed before its first checkpoint: it starts again, so its records go (its events too, the
            self.metrics.rewind(-1)  # step-0 hyper-parameters included: the run may start with other settings)
            if self.is_main:
                tqdm.write(f"{self.setup.run_dir}: no checkpoint yet (the run stopped before its first one); "
                           f"starting it from the beginning")
        self.metrics.start({"verb": self.setup.verb, **flatten(self.config.to_tree())})
        previous_handler = self._install_signal()
        record: dict[str, Any] = {}
        try:
            # SIGTERM (a scheduler's preemption, `timeout`, `docker stop`) or Ctrl-C: finish the step, save, stop
            with torch.enable_grad(), interrupts.deferred_termination():
                while self.epoch < self.epochs:
                    record = self._run_epoch()
                    self._stop_if_terminated(epoch_end=True)  # the epoch's end has just saved a checkpoint
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGUSR1, previous_handler)
        if not record:  # resumed a finished run: report its last epoch again
            record = next((r for r in reversed(self.metrics.records()) if r.get("scope") == "epoch"), {})
        self._check_replicas()
        if self.is_main:
            self.metrics.finish()
            self.setup.finish(record)
        if self.world > 1:
            dist.barrier()
        return record

    def request_checkpoint(self) -> None:
        """Checkpoint after the current step (what SIGUSR1 does)."""
        self._checkpoint_requested.set()

    # ----------------------------------------------------------------------------------------- epoch
    def _loader(self, data: TrainData, sampler: EpochBatchSampler) -> Iterable[Mapping[str, Any]]:
        if isinstance(data, BatchSource):  # built on the device, from the sampler's index lists; no workers
            return (data.batch(torch.as_tensor(indices, dtype=torch.int64, device=self.device))
                    for indices in sampler)
        workers = self.config.data.num_workers
        # A private generator: creating the loader's iterator must not draw from the global torch RNG, or a
        # run resumed mid-epoch would diverge from an uninterrupted one.
        # Each batch is done with inside its step (moved to the device or used there) before the next is
        # fetched, so the workers, and only they, may write into a ring of shared-memory buffers.
        recycle = workers > 0 and hasattr(data, "recycle_batches")
        return DataLoader(data, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                          prefetch_factor=PREFETCH if workers > 0 else None,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.config.seed),
                          worker_init_fn=_recycle_in_worker if recycle else None)

    def _run_epoch(self) -> dict[str, Any]:
        data = self.setup.train_data
        if hasattr(data, "set_epoch"):
            data.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.task.set_epoch(self.epoch)
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/"
                   f"{self.epochs}", disable=not (self.is_main and self.train_cfg.progress), leave=False,
                   dynamic_ncols=True, unit="step")
        window_start, window_samples = time.perf_counter(), 0
        epoch_start = time.perf_counter()
        with interrupts.unseen_by_new_processes():  # a Ctrl-C to the process group stops no loader worker
            batches = iter(self._loader(data, self.sampler))
        for batch in batches:
            interrupts.check()  # a Ctrl-C swallowed inside a callback still stops the run
            logs, samples = self._step(batch)
            window_samples += samples
            self.window_steps += 1
            for key, value in logs.items():
                self.window_sums[key] = self.window_sums[key] + value if key in self.window_sums else value
                self.epoch_sums[key] = self.epoch_sums[key] + value if key in self.epoch_sums else value
            self.epoch_batches += 1
            bar.update(1)
            if self.step % self.train_cfg.log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = self._log_steps(window_samples * self.world / elapsed)
                self._say_if_busy()
                bar.set_postfix(loss=f"{record['loss']:.4g}", samples_s=f"{record['samples_per_s']:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            saved = self._checkpoint_due()
            if saved:
                self._save()
            for hook in self.setup.hooks:
                hook(self)
            if self.batch_in_epoch < self.steps_per_epoch:  # at the epoch's end, after its checkpoint
                self._stop_if_terminated(saved=saved)
        bar.close()
        record = self._end_epoch(time.perf_counter() - epoch_start)
        return record

    def _step(self, batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
        batch = self._to_device(batch)
        lr = learning_rate(self.config.schedule, self.config.optim.lr, self.step, self.steps_per_epoch,
                           self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train_cfg.bf16):
            loss, logs = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        logs = {"loss": loss.detach().double(), **{k: v.detach().double() for k, v in logs.items()}}
        clip = self.train_cfg.clip_grad_norm
        if clip is not None:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.parameters, clip).detach().double()
        self.optimizer.step()
        self.step += 1
        self.batch_in_epoch += 1
        self.lr = lr
        return logs, len(batch["index"])

    def _say_if_busy(self) -> None:
        """Once per run, on rank 0: a line when the machine is busy or oversubscribed (slow steps explained)."""
        if self._busy_said or not self.is_main:
            return
        self._busy_said = True
        note = runtime.busy_machine_note()
        if note:
            tqdm.write(f"note: {note}")

    def _log_steps(self, samples_per_s: float) -> dict[str, Any]:
        """One record of the means over the steps since the last one (converting the tensors only here keeps
        the steps free of device synchronisation)."""
        values = self._mean_over_ranks({key: value / self.window_steps for key, value in self.window_sums.items()})
        self.window_sums, self.window_steps = {}, 0
        self._check_finite(values)
        record = {"scope": "step", "step": self.step, "epoch": self.step / self.steps_per_epoch, "lr": self.lr,
                  **values, "samples_per_s": samples_per_s}
        self.metrics.log(record)
        return record

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        means = {f"train_{k}": v for k, v in self._mean_over_ranks(
            {k: v / max(1, self.epoch_batches) for k, v in self.epoch_sums.items()}).items()}
        self._check_finite(means)
        self._sync_batchnorm_statistics()
        record = {"scope": "epoch", "step": self.step, "epoch": self.epoch + 1, **means, "time_s": seconds}
        if self.setup.eval_data is not None and ((self.epoch + 1) % self.train_cfg.eval_every == 0
                                                 or self.epoch + 1 == self.epochs):
            record.update({f"eval_{k}": v for k, v in self._evaluate().items()})
        self.metrics.log(record)
        if self.is_main:
            tqdm.write(f"epoch {self.epoch + 1}/{self.epochs}: {epoch_line(record)}")
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums, self.epoch_batches = {}, 0
        self._save()
        return record

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """The task's metrics on the evaluation split; each rank takes every world-th sample, no padding, and
        the task sums its counts over ranks."""
        sampler = EpochBatchSampler(len(self.setup.eval_data), self.train_cfg.batch_size, shuffle=False,
                                    rank=self.rank, world_size=self.world, drop_last=False, pad=False)
        self.task.eval()
        try:
            with interrupts.unseen_by_new_processes():
                loaded = iter(self._loader(self.setup.eval_data, sampler))
            batches = (self._to_device(batch) for batch in loaded)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train_cfg.bf16):
                return self.task.evaluate(batches)
        finally:
            self.task.train()

    # ----------------------------------------------------------------------------------------- checkpoints
    def _checkpoint_due(self) -> bool:
        """Every ``checkpoint_every_steps`` steps (the same on every rank), or after a SIGUSR1 request. Under
        DDP the signal may reach only some ranks, so a request is agreed on at logging steps only: no extra
        collective, and no host synchronisation, on the other steps."""
        every = self.train_cfg.checkpoint_every_steps
        scheduled = every is not None and self.step % every == 0
        requested = self._checkpoint_requested.is_set()
        if self.world > 1:
            if self.step % self.train_cfg.log_every == 0:
                flag = torch.tensor([int(requested)], device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                requested = bool(flag.item())
            else:
                requested = False
        return (scheduled or requested) and self.batch_in_epoch < self.steps_per_epoch  # the epoch's end saves

    def _stop_if_terminated(self, saved: bool = False, epoch_end: bool = False) -> None:
        """After SIGTERM or Ctrl-C: save a checkpoint at this step (unless one was just saved) and stop the run.
        Under DDP the signal may reach only some ranks, so the ranks agree at logging steps and epoch ends (as for
        SIGUSR1)."""
        saved = saved or epoch_end
        pending = interrupts.termination_pending()
        if self.world > 1:
            if not epoch_end and self.step % self.train_cfg.log_every != 0:
                return
            flag = torch.tensor([int(pending)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            pending = bool(flag.item())
        if not pending:
            return
        if not saved:
            self._save()
        raise interrupts.stopped(
            f"after saving a checkpoint at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch}); "
            f"--resume {self.setup.run_dir} continues from it")

    def _save(self) -> None:
        self._checkpoint_requested.clear()
        self._check_savable()
        # Every rank's random state (dropout and drop-path masks differ by rank), so that each resumes its own.
        rng_per_rank = runtime.gather_objects(rng_state())
        if not self.is_main:
            return
        save_checkpoint(self.checkpoint_path, verb=self.setup.verb, config=self.config.to_tree(), module=self.task,
                        optimizer=self.optimizer, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                        step=self.step, extra={"epoch_sums": {k: v.cpu() for k, v in self.epoch_sums.items()},
                                               "epoch_batches": self.epoch_batches,
                                               "window_sums": {k: v.cpu() for k, v in self.window_sums.items()},
                                               "window_steps": self.window_steps,
                                               "rng_per_rank": rng_per_rank}, data_file=self.data_file)

    def _restore(self) -> None:
        payload = load_checkpoint(self.checkpoint_path, verb=self.setup.verb, config=self.config.to_tree(),
                                  may_change=RESUME_MAY_CHANGE, defaults=type(self.config).defaults(),
                                  data_file=self.data_file)
        load_module_state(self.task, payload["model"], self.checkpoint_path)
        self.optimizer.load_state_dict(payload["optimizer"])
        per_rank = payload["extra"].get("rng_per_rank") or [payload["rng"]]
        # a run resumed on another number of processes: every rank continues rank 0's stream
        set_rng_state(per_rank[self.rank] if len(per_rank) == self.world else payload["rng"])
        self.epoch, self.batch_in_epoch, self.step = payload["epoch"], payload["batch_in_epoch"], payload["step"]
        extra = payload["extra"]
        self.epoch_sums = {k: v.to(self.device) for k, v in extra["epoch_sums"].items()}
        self.epoch_batches = extra["epoch_batches"]
        self.window_sums = {k: v.to(self.device) for k, v in extra.get("window_sums", {}).items()}
        self.window_steps = extra.get("window_steps", 0)
        self.metrics.rewind(self.step)
        if self.is_main and self.epoch >= self.epochs:
            tqdm.write(f"{self.checkpoint_path}: the run has finished ({self.epochs} epochs, step {self.step}); "
                       f"writing its exports again")
        elif self.is_main:
            tqdm.write(f"resumed {self.checkpoint_path} at epoch {self.epoch + 1}, step {self.step}")

    def _install_signal(self) -> Any:
        """Make SIGUSR1 request a checkpoint; returns the handler it replaces (None: nothing installed)."""
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGUSR1, lambda signum, frame: self.request_checkpoint())
            return signal.SIG_DFL if previous is None else previous
        return None

    # ----------------------------------------------------------------------------------------- helpers
    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
                if value.ndim == 4 and value.is_floating_point() and self.train_cfg.channels_last:
                    value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    def _check_finite(self, values: Mapping[str, float]) -> None:
        bad = [key for key, value in values.items() if not math.isfinite(value)]
        if bad:
            raise TrainingDiverged(f"step {self.step}: {', '.join(bad)} became {values[bad[0]]}; lower optim.lr, "
                                   f"set train.clip_grad_norm, or check the data for NaNs")

    def _check_savable(self) -> None:
        """Refuse to overwrite the last good checkpoint with a run that diverged since its last record: a loss
        of this epoch or a weight that is NaN or infinite (all ranks call this, and agree)."""
        values = {f"train_{k}": v / max(1, self.epoch_batches) for k, v in self.epoch_sums.items()}
        values["nonfinite_weights"] = sum((~torch.isfinite(p.detach())).sum() for p in self.parameters)
        values = self._mean_over_ranks(values)
        if values.pop("nonfinite_weights"):
            raise TrainingDiverged(f"step {self.step}: some weights became NaN or infinite; lower optim.lr, set "
                                   f"train.clip_grad_norm, or check the data for NaNs")
        self._check_finite(values)

    def _mean_over_ranks(self, values: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Logged means as Python floats, averaged over ranks (every rank takes as many steps, so the plain
        mean of the per-rank means is the mean over all samples' batches)."""
        if not values:
            return {}
        keys = sorted(values)
        packed = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).to(self.device) for k in keys])
        if self.world > 1:
            dist.all_reduce(packed)
            packed /= self.world
        return dict(zip(keys, packed.tolist()))

    def _sync_batchnorm_statistics(self) -> None:
        """Average BatchNorm running statistics over ranks once per epoch (each rank saw its own batches)."""
        if self.world == 1:
            return
        for module in self.task.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    dist.all_reduce(buffer)
                    buffer /= self.world

    def _check_replicas(self) -> None:
        """Every rank must end with the same trainable state and the same buffers (memory banks included)."""
        if self.world == 1:
            return
        digest = torch.stack([t.detach().double().sum() + t.detach().double().abs().sum()
                              for t in self.task.state_dict().values()
                              if isinstance(t, torch.Tensor) and t.is_floating_point()]).to(self.device)
        gathered = [torch.empty_like(digest) for _ in range(self.world)]
        dist.all_gather(gathered, digest)
        if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
            raise RuntimeError("the processes ended with different model states; please report this")


def _data_parallel(task: Task, device: torch.device) -> nn.Module:
    """DDP without per-step buffer broadcasts: the memory banks stay equal through their own collectives, and
    BatchNorm statistics are averaged once per epoch (``_sync_batchnorm_statistics``)."""
    options: dict[str, Any] = dict(device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=task.may_leave_parameters_unused())
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = False  # newer torch; the buffers are still made equal at start
    else:
        options["broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(task, **options)

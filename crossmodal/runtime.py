"""The process's runtime: its device, its seeds and its process group.

The collective helpers degrade to no-ops in a single process, so that every caller is written once for one
process and for ``torchrun``.
"""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from crossmodal.errors import ConfigError


# --------------------------------------------------------------------------------------------------- device
def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda:LOCAL_RANK when CUDA is available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``; a name torch
    does not know, or CUDA asked for where there is none, is a one-line :class:`ConfigError`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': CUDA is not available on this machine")
    return device


# --------------------------------------------------------------------------------------------------- seeds
def seed_random(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_everything(seed: int, deterministic: bool) -> None:
    """:func:`seed_random`, and with ``deterministic`` torch's deterministic algorithms (warn-only)."""
    seed_random(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


# --------------------------------------------------------------------------------------------------- process group
def init_process_group() -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) initialise the process group (NCCL on GPUs, gloo on CPU); whether
    this call created it (and so must tear it down with :func:`destroy_process_group`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's picklable ``value`` on every rank (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]



def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def gather_sizes(count: int, device: torch.device) -> list[int]:
    """Every rank's ``count``, in rank order."""
    if not is_distributed():
        return [count]
    local = torch.tensor([count], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(size.item()) for size in sizes]


@torch.no_grad()
def all_gather_rows(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; ranks may hold different row counts.

    No gradient flows through the result. ``sizes`` (from :func:`gather_sizes`) saves one collective when the
    caller already knows every rank's row count.
    """
    if not is_distributed():
        return tensor
    sizes = sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device)
    largest = max(sizes)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


@torch.no_grad()
def all_reduce_mean(value: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Weighted mean of ``value`` over ranks (weight: e.g. the number of elements it averages)."""
    if not is_distributed():
        return value
    weighted = value.detach().double() * weight if weight else torch.zeros((), dtype=torch.float64,
                                                                             device=value.device)
    packed = torch.stack([weighted, torch.tensor(float(weight), dtype=torch.float64, device=value.device)])
    dist.all_reduce(packed)
    return (packed[0] / packed[1]).to(value.dtype)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


@torch.no_grad()
def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (a new tensor; counts and confusion matrices)."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value)
    return value


def load_average() -> str:
    """The system's load average for a benchmark's output, beside its figures (other work on the machine
    skews timings): ``load average 0.89 0.96 0.96 (1/5/15 min, 2 CPUs)``."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):  # not on every platform
        return "load average unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


# The variables that cap the CPU kernels each library picks (tests/kernel_passes.py sets them).
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its widest vector units, e.g. ``Intel(R) Xeon(R) Processor (AVX-512, AMX)``
    or ``AMD EPYC 7B13 (AVX2)``: float32 results and speed ratios depend on it (the platform's processor
    string where there is no ``/proc/cpuinfo``)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)  # the last CPU's
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name") or fields.get("Model") or platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    units = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
    if not units and "avx2" in flags:
        units = ["AVX2"]
    return f"{model} ({', '.join(units)})" if units else model


def kernel_description() -> str:
    """Which CPU kernels torch runs: ``torch CPU kernels AVX512``, with any variable that caps them
    (``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ...``)."""
    capped = " ".join(f"{name}={os.environ[name]}" for name in KERNEL_VARIABLES if os.environ.get(name))
    line = f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"
    return f"{line} ({capped})" if capped else line


def machine_description() -> str:
    """One line for a benchmark's header: the CPU, the kernels and threads torch runs, and the load average.
    A ratio measured on one CPU is not that of another, so every benchmark prints this beside its figures."""
    return (f"CPU {cpu_description()}, {kernel_description()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}; {load_average()}")


def busy_machine_note() -> str | None:
    """A line saying why steps may run slowly, when they may: the CPUs are busy with other work (a load
    average above the CPU count) or torch runs more threads than there are CPUs; None otherwise."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    if load > 1.5 * cpus:
        return (f"the machine is busy (load average {load:.1f} on {cpus} CPUs): steps run slower than on an idle "
                f"machine, and times quoted for one do not apply")
    if torch.get_num_threads() > cpus:
        return (f"torch runs {torch.get_num_threads()} threads on {cpus} CPUs; set OMP_NUM_THREADS={cpus} (or "
                f"fewer) for faster steps")
    return None

"""Rerun the numerics-sensitive tests under each set of CPU kernels this machine can run (``make test-kernels``).

Float32 results differ in their last bits between CPUs because each library picks its kernels from the CPU it
finds: PyTorch's own vectorised kernels from ``ATEN_CPU_CAPABILITY`` (default, avx2, avx512), MKL's matrix
products from ``MKL_ENABLE_INSTRUCTIONS`` and oneDNN's convolutions from ``ONEDNN_MAX_CPU_ISA``. Each variable
caps what the library may use, so one machine can run the kernels of an older or a different CPU: an AVX-512
Xeon runs those an AVX2-only AMD EPYC would. A test whose tolerance holds only on the CPU it was written on fails
here, in CI, rather than on a user's machine.

Each pass runs ``pytest -m numerics`` (the tests marked ``numerics``: the distillers against their references,
CRD, the probe solver against scikit-learn, the codecs' round trips, the device ops, the encoders) in a fresh
interpreter with the three variables set, and prints the kernels torch reports. A level above the one torch picks
on this CPU by itself is named and left out (torch would run it without checking the CPU). Exit status 1 when a
pass fails, 0 otherwise.

    python tests/kernel_passes.py                       # every level this CPU can run
    python tests/kernel_passes.py --levels avx2         # one level
    python tests/kernel_passes.py -- tests/distill      # other pytest arguments instead of -m numerics
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from crossmodal.runtime import KERNEL_VARIABLES, cpu_description

ROOT = Path(__file__).resolve().parents[1]

# The lowest level each library can be held to, then AVX2 (the AMD EPYC machines of 2019-22), then AVX-512
# without AMX (what torch uses on an AVX-512 Xeon for float32; oneDNN may add AMX for bfloat16 natively).
LEVELS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def uncapped_environment() -> dict[str, str]:
    """This process's environment without any variable that caps the kernels."""
    return {key: value for key, value in os.environ.items() if key not in KERNEL_VARIABLES}


def reported_capability(env: dict[str, str]) -> str:
    """The kernel level torch actually runs under ``env``: a level above the CPU's is lowered to the CPU's."""
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def run_pass(level: str, native: str, pytest_args: list[str]) -> tuple[str, int]:
    """Run one pass; returns (its one-line outcome, pytest's exit status). ``native`` is the level torch picks on
    this CPU unasked: torch honours a request above it without checking the CPU (its AVX-512 kernels would
    stop on an illegal instruction), so such a level is left out here."""
    order = list(LEVELS)
    highest = order.index(native.lower()) if native.lower() in order else 0  # another architecture: default only
    if order.index(level) > highest:
        return f"{level}: left out, this CPU runs at most {native}", 0
    env = {**uncapped_environment(), **LEVELS[level]}
    got = reported_capability(env)
    knobs = " ".join(f"{key}={value}" for key, value in LEVELS[level].items())
    print(f"=== kernel pass {level}: torch CPU capability {got}; {knobs}", flush=True)
    started = time.perf_counter()
    # quiet: progress dots, then failures, errors and skips with their reasons (not the suite's durations)
    status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                             "-rfEs", *pytest_args], env=env, cwd=ROOT).returncode
    seconds = time.perf_counter() - started
    verdict = "passed" if status == 0 else ("no tests collected" if status == 5 else "FAILED")
    return f"{level}: {verdict} in {seconds:.0f} s (torch CPU capability {got})", status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", choices=tuple(LEVELS), default=list(LEVELS),
                        help="kernel levels to run (default: all this CPU can)")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest arguments (default: -m numerics)")
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args or ["-m", "numerics"]
    native = reported_capability(uncapped_environment())
    print(f"CPU {cpu_description()}, torch's own choice {native}; pytest {' '.join(pytest_args)}", flush=True)
    outcomes = [run_pass(level, native, pytest_args) for level in args.levels]
    print("kernel passes:")
    for line, _ in outcomes:
        print(f"  {line}")
    return 1 if any(status != 0 for _, status in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

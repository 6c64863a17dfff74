"""tests/kernel_passes.py: one pass per CPU kernel level, levels the CPU cannot run named and left out."""
from __future__ import annotations

import kernel_passes


def test_a_level_above_the_cpus_own_is_left_out_not_run():
    assert kernel_passes.run_pass("avx512", "AVX2", ["no-such-test"]) == (
        "avx512: left out, this CPU runs at most AVX2", 0)
    assert kernel_passes.run_pass("avx2", "SVE256", ["no-such-test"])[0] == "avx2: left out, this CPU runs at most SVE256"


def test_a_pass_runs_pytest_under_the_level_and_says_how_it_went(capfd):
    line, status = kernel_passes.run_pass("default", "DEFAULT", ["tests/distill/test_kd.py", "-k", "explicit_math"])
    assert status == 0 and line.startswith("default: passed in ") and line.endswith("(torch CPU capability DEFAULT)")
    out = capfd.readouterr().out
    assert "=== kernel pass default: torch CPU capability DEFAULT; ATEN_CPU_CAPABILITY=default" in out
    assert "1 passed" in out

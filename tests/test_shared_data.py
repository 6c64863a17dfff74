"""The developers' test data (../shared): a user without it gets visible skips and a passing run; CI gets failures."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

# a quick test that reads the shared data through the fixture
READER = "tests/data/test_format_v2.py::test_the_default_file_is_no_larger_than_v1_lzf"


def run_reader(tmp_path, **variables: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "CROSSMODAL_REQUIRE_TEST_DATA")}
    env.update(CROSSMODAL_TEST_DATA=str(tmp_path / "no-such-folder"), **variables)
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", READER],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def test_a_user_without_the_data_gets_a_named_skip_and_a_passing_run(tmp_path):
    result = run_reader(tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"SKIPPED [1] {READER.split('::')[0]}" in result.stdout
    assert f"needs the developers' test data in {tmp_path / 'no-such-folder'} (absent)" in result.stdout
    assert "1 skipped" in result.stdout


def test_under_ci_the_missing_data_fails_the_run(tmp_path):
    for variables in ({"CI": "true"}, {"CROSSMODAL_REQUIRE_TEST_DATA": "1"}):
        result = run_reader(tmp_path, **variables)
        assert result.returncode == 1, (variables, result.stdout[-2000:])
        assert "under CI the tests that read it must run" in result.stdout and "1 error" in result.stdout

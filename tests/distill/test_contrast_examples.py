"""The runnable examples in the docstrings of the public contrast modules and the option checks."""
from __future__ import annotations

import doctest

import pytest

from crossmodal.distill import options
from crossmodal.distill.contrast import memory, objective, sampler


@pytest.mark.parametrize("module", [memory, sampler, objective, options], ids=lambda module: module.__name__)
def test_docstring_examples_run(module):
    failed, attempted = doctest.testmod(module, raise_on_error=False, report=True, verbose=False)
    assert attempted > 0
    assert failed == 0

"""The registry: filled in the paper's order on import, and one check of option names with two messages."""
from __future__ import annotations

import pytest

from crossmodal.distill import check_options, distiller_options, list_distillers
from crossmodal.errors import ConfigError


def test_builtin_distillers_are_registered_in_the_papers_order():
    assert list_distillers() == ["kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "crd", "crd+kd",
                                "dkd", "mlld", "c2kd"]


def test_check_options_accepts_known_options():
    check_options("crd", dict.fromkeys(distiller_options("crd")))
    check_options("pkt", {})


def test_check_options_names_the_first_unknown_option():
    accepted = ", ".join(distiller_options("kd"))
    with pytest.raises(ConfigError) as info:
        check_options("kd", {"z": 1, "y": 2, "temperature": 4})
    assert str(info.value) == f"distiller 'kd' has no option 'y'; its options: {accepted}"
    with pytest.raises(ConfigError) as info:
        check_options("pkt", {"x": 1}, key="distill.options.pkt")
    assert str(info.value) == "distill.options.pkt.x: 'pkt' has no such option; its options: (none)"


def test_check_options_refuses_an_unknown_distiller():
    with pytest.raises(ConfigError, match="unknown distiller 'nope'"):
        check_options("nope", {})

"""CRD says once, with the numbers, when its K negatives are more than half of the N training samples."""
from __future__ import annotations

from crossmodal.distill import create_distiller
from crossmodal.models import FeatureSpec


def spec() -> FeatureSpec:
    return FeatureSpec(channels=(8, 16), reductions=(2, 4), embed_dim=16, num_classes=0)


def make(capsys, **options) -> str:
    create_distiller("crd", spec(), spec(), **options)
    return capsys.readouterr().err


def test_k_above_n_warns_with_the_numbers(capsys):
    message = make(capsys, num_samples=2000, num_negatives=16384)
    assert message.strip() == ("crd: K = 16384 negatives per anchor with N = 2000 training samples: each anchor's "
                               "negatives hold every sample about 8.2 times (RepDistiller: K = 16384 for N = "
                               "50,000); consider distill.options.crd.num_negatives <= 666")


def test_k_a_large_fraction_of_n_warns_and_a_small_one_does_not(capsys):
    assert "cover 75% of them" in make(capsys, num_samples=2000, num_negatives=1500)
    assert make(capsys, num_samples=50000, num_negatives=16384) == ""  # RepDistiller's own setting: a third
    assert make(capsys, num_samples=2000, num_negatives=1000) == ""


def test_a_queue_is_not_a_bank_of_n_rows(capsys):
    assert make(capsys, num_samples=100, num_negatives=1024, memory="queue", objective="info_nce") == ""

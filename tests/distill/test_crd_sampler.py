"""CRD's sampler: exact, relax and other-class draws, shared negatives, and its saved state."""
from __future__ import annotations

import torch

from crossmodal.distill.contrast import ContrastSampler

N, K, B = 40, 16, 6


def test_exact_relax_and_other_class_sampling():
    labels = torch.arange(N) % 4
    index = torch.arange(0, N, 3)
    positives, negatives = ContrastSampler(N, 500, seed=1).draw(index)
    assert torch.equal(positives, index) and negatives.shape == (len(index), 500)
    assert len(torch.unique(negatives)) == N  # uniform over the whole set
    positives, negatives = ContrastSampler(N, 500, labels=labels, mode="relax", other_classes=True,
                                           seed=1).draw(index)
    assert torch.equal(labels[positives], labels[index]) and not torch.equal(positives, index)
    assert (labels[negatives] != labels[index].unsqueeze(1)).all()
    for row, anchor in zip(negatives, index):  # every sample of the other classes can be drawn
        assert set(row.tolist()) == set(torch.nonzero(labels != labels[anchor]).flatten().tolist())
    positives, negatives = ContrastSampler(N, 500, shared=True, seed=1).draw(index)
    assert negatives.shape == (500,)


def test_sampler_state_saved_on_another_device_is_moved_to_the_cpu_on_load():
    sampler = ContrastSampler(N, K, seed=3)
    sampler.draw(torch.arange(B))
    state = sampler.state()

    class Elsewhere(torch.Tensor):  # stands for a CUDA tensor produced by torch.load(map_location=...)
        def cpu(self):
            return torch.Tensor(self).clone()

    restored = ContrastSampler(N, K, seed=3)
    restored.load_state({**state, "state": state["state"].as_subclass(Elsewhere)})
    assert torch.equal(restored.draw(torch.arange(B))[1], sampler.draw(torch.arange(B))[1])

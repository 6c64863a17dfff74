"""Whole-batch reads (``PairedDataset.__getitems__`` + ``collate``): the same tensors as reading sample by
sample and stacking, through DataLoader workers too, and the values of the unfused reference computation."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crossmodal.data import codecs
from crossmodal.data.dataset import PairedDataset, SampleBatch, collate
from crossmodal.data.modalities import MODALITIES
from crossmodal.data.synthetic import generate
from crossmodal.data.transforms import PairedTransform

MODALITY_NAMES = ["rgb", "depth", "raw_depth", "lab_l", "lab_ab"]


@pytest.fixture(scope="module", params=["uint16", "float32"])
def scenes(request, tmp_path_factory):
    """A 70-row synthetic file (40 px: more than one block of rows), depth in mm (v2 default) or in metres."""
    path = tmp_path_factory.mktemp("batched") / f"scenes_{request.param}.h5"
    generate(str(path), num=70, size=40, seed=2, workers=1, depth_storage=request.param)
    return path


def dataset(path, transform=None):
    return PairedDataset(path, "train", modalities=MODALITY_NAMES, labels=["seg", "label"], transform=transform,
                         seed=5)


def assert_same(batch, reference):
    assert batch.keys() == reference.keys()
    for key, value in reference.items():
        assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key


@pytest.mark.parametrize("augment", [False, True])
def test_a_batch_equals_its_samples_stacked(scenes, augment):
    data = dataset(scenes, PairedTransform(size=(32, 32), train=True) if augment else None)
    indices = [5, 0, 17, 5, 33]
    batch = data.__getitems__(indices)
    assert isinstance(batch, SampleBatch) and len(batch) == len(indices)
    assert_same(collate(batch), torch.utils.data.default_collate([data[i] for i in indices]))
    # torch's default collate of the per-sample views gives the same batch (a user's plain DataLoader)
    assert_same(torch.utils.data.default_collate(batch), collate(batch))


def test_fused_normalisation_matches_converting_dequantising_and_normalising_in_turn(scenes):
    data = dataset(scenes)
    sample = data[7]
    with h5py.File(scenes, "r") as handle:
        for name in ("rgb", "depth", "raw_depth"):
            physical = codecs.read_physical(handle[f"modalities/{name}"], int(data.rows[7]))
            expected = MODALITIES[name].normalize(np.ascontiguousarray(physical.transpose(2, 0, 1)).astype(np.float32))
            assert np.array_equal(sample[name].numpy(), expected), name


def test_loader_batches_agree_with_and_without_workers_and_with_the_default_collate(scenes):
    data = dataset(scenes)
    kwargs = dict(batch_size=16, shuffle=False)
    plain = list(DataLoader(data, **kwargs))
    for workers in (0, 2):
        batches = list(DataLoader(data, num_workers=workers, collate_fn=collate, **kwargs))
        assert len(batches) == len(plain) == 4  # 56 training rows: 3 x 16 + 8
        for batch, reference in zip(batches, plain):
            assert_same(batch, reference)


def test_an_empty_or_out_of_range_batch(scenes):
    data = dataset(scenes)
    assert list(data.__getitems__([])) == []
    with pytest.raises(IndexError):
        data.__getitems__([0, len(data)])


def test_recycling_workers_reuse_their_buffers_round_robin(scenes, monkeypatch):
    import crossmodal.data.dataset as module

    data = dataset(scenes)
    data.recycle_batches(3)
    monkeypatch.setattr(module, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    made = [collate(data.__getitems__([i, i + 1])) for i in range(7)]
    pointers = [batch["rgb"].data_ptr() for batch in made]
    assert pointers[3:6] == pointers[0:3] and len(set(pointers[:3])) == 3
    assert made[6]["rgb"].is_shared()
    data.recycle_batches(0)
    assert len({collate(data.__getitems__([0, 1]))["rgb"].data_ptr() for _ in range(2)} - set(pointers)) >= 1


def test_a_consumer_done_with_each_batch_reads_the_same_batches_from_recycling_workers(scenes):
    data = dataset(scenes, PairedTransform(size=(32, 32), train=True))
    reference = [{key: value.clone() for key, value in batch.items()}
                 for batch in DataLoader(data, batch_size=8, collate_fn=collate)]
    data.recycle_batches(4)  # the training loop's ring: prefetch_factor 2 + 2
    loader = DataLoader(data, batch_size=8, num_workers=2, prefetch_factor=2, collate_fn=collate)
    for epoch in range(2):
        count = 0
        for batch, expected in zip(loader, reference):
            assert_same(batch, expected)
            count += 1
        assert count == len(reference) == 7

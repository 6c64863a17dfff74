"""EpochBatchSampler: order from (seed, epoch) only, exact mid-epoch resume, disjoint shards across ranks."""
import pytest
import torch

from crossmodal.engine.sampler import EpochBatchSampler


def batches(sampler, epoch=0, start_batch=0):
    sampler.set_epoch(epoch, start_batch)
    return list(sampler)


def test_order_depends_only_on_seed_and_epoch():
    first = batches(EpochBatchSampler(20, 4, seed=3), epoch=2)
    again = EpochBatchSampler(20, 4, seed=3)
    batches(again, epoch=5)  # drawing another epoch first changes nothing
    assert batches(again, epoch=2) == first
    assert batches(EpochBatchSampler(20, 4, seed=3), epoch=3) != first
    assert batches(EpochBatchSampler(20, 4, seed=4), epoch=2) != first


def test_order_is_the_seeded_permutation_and_ignores_global_rng():
    torch.manual_seed(123)
    got = batches(EpochBatchSampler(10, 5, seed=7), epoch=1)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(8)).tolist()
    assert got == [expected[:5], expected[5:]]
    torch.manual_seed(999)
    assert batches(EpochBatchSampler(10, 5, seed=7), epoch=1) == got


def test_every_epoch_is_a_permutation():
    sampler = EpochBatchSampler(12, 3, seed=0)
    orders = [sum(batches(sampler, epoch=e), []) for e in range(3)]
    assert all(sorted(order) == list(range(12)) for order in orders)
    assert len({tuple(order) for order in orders}) == 3


@pytest.mark.parametrize("start", [0, 1, 3, 4, 5])
def test_start_batch_yields_the_tail_of_the_epoch(start):
    sampler = EpochBatchSampler(23, 4, seed=1, drop_last=False)
    full = batches(sampler, epoch=2)
    assert len(full) == 6 and [len(b) for b in full] == [4, 4, 4, 4, 4, 3]
    assert batches(sampler, epoch=2, start_batch=start) == full[start:]
    assert batches(sampler, epoch=2) == full  # the next set_epoch starts from 0 again


def test_start_batch_past_the_end_yields_nothing():
    assert batches(EpochBatchSampler(8, 4), epoch=0, start_batch=2) == []


def test_drop_last():
    dropped = EpochBatchSampler(10, 4, seed=2, drop_last=True)
    kept = EpochBatchSampler(10, 4, seed=2, drop_last=False)
    assert len(dropped) == 2 and len(kept) == 3
    assert [len(b) for b in batches(dropped)] == [4, 4]
    assert [len(b) for b in batches(kept)] == [4, 4, 2]
    assert batches(kept)[:2] == batches(dropped)
    assert len(EpochBatchSampler(3, 4, drop_last=True)) == 0 and batches(EpochBatchSampler(3, 4)) == []


def test_no_shuffle_keeps_the_order():
    sampler = EpochBatchSampler(7, 3, shuffle=False, drop_last=False)
    assert batches(sampler, epoch=0) == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches(sampler, epoch=4) == [[0, 1, 2], [3, 4, 5], [6]]


def test_two_ranks_padded_are_disjoint_equal_and_wrap_around():
    shards = [EpochBatchSampler(11, 2, seed=5, rank=r, world_size=2, drop_last=False, pad=True) for r in (0, 1)]
    mine = [sum(batches(s, epoch=1), []) for s in shards]
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(6)).tolist()
    padded = permutation + permutation[:1]  # 12 = 2 x 6: one sample wraps around
    assert mine == [padded[0::2], padded[1::2]]
    assert len(mine[0]) == len(mine[1]) == 6 and len(shards[0]) == len(shards[1]) == 3
    assert set(mine[0]) | set(mine[1]) == set(range(11))
    assert mine[1][-1] == permutation[0]  # the only repeat is the wrapped first sample


def test_two_ranks_padded_with_drop_last_take_the_same_number_of_steps():
    shards = [EpochBatchSampler(11, 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in shards] == [1, 1]
    got = [batches(s) for s in shards]
    assert [len(b) for b in got[0] + got[1]] == [4, 4]
    assert not set(got[0][0]) & set(got[1][0])


def test_two_ranks_unpadded_cover_the_data_once():
    shards = [EpochBatchSampler(11, 4, shuffle=False, rank=r, world_size=2, drop_last=False, pad=False)
              for r in (0, 1)]
    assert batches(shards[0]) == [[0, 2, 4, 6], [8, 10]]
    assert batches(shards[1]) == [[1, 3, 5, 7], [9]]
    shuffled = [sum(batches(EpochBatchSampler(11, 4, seed=9, rank=r, world_size=2, drop_last=False, pad=False),
                            epoch=3), []) for r in (0, 1)]
    assert sorted(shuffled[0] + shuffled[1]) == list(range(11))
    assert [len(s) for s in shuffled] == [6, 5]


def test_more_ranks_than_samples_still_pad_every_rank():
    shards = [EpochBatchSampler(2, 1, seed=0, rank=r, world_size=5, drop_last=False) for r in range(5)]
    got = [sum(batches(s), []) for s in shards]
    assert [len(g) for g in got] == [1] * 5
    permutation = torch.randperm(2, generator=torch.Generator().manual_seed(0)).tolist()
    assert sum(got, []) == (permutation * 3)[:5]


def test_resume_on_every_rank_matches_the_uninterrupted_shard():
    for rank in (0, 1, 2):
        sampler = EpochBatchSampler(30, 3, seed=4, rank=rank, world_size=3)
        full = batches(sampler, epoch=7)
        assert batches(sampler, epoch=7, start_batch=2) == full[2:]


@pytest.mark.parametrize("kwargs", [dict(num_samples=0, batch_size=1), dict(num_samples=4, batch_size=0),
                                    dict(num_samples=4, batch_size=1, rank=2, world_size=2),
                                    dict(num_samples=4, batch_size=1, rank=-1, world_size=2)])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        EpochBatchSampler(**kwargs)

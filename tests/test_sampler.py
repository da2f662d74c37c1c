"""ShardedBatchSampler: every sample once per epoch across ranks, seeded epoch-dependent order,
equal batch counts on every rank, the documented remainder policy, and a mid-epoch position that
only the same batches may resume."""
import numpy as np
import pytest

from butd.loading.sampler import ShardedBatchSampler


def epoch_batches(n, batch_size, world, epoch=0, **kw):
    ranks = []
    for rank in range(world):
        s = ShardedBatchSampler(n, batch_size, rank=rank, world_size=world, **kw)
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        ranks.append(batches)
    return ranks


def flat(ranks):
    return np.concatenate([np.concatenate(b) for b in ranks if b]).astype(int)


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_ranks_see_every_sample_exactly_once(shuffle):
    ranks = epoch_batches(1000, 64, 2, shuffle=shuffle, seed=3)
    assert len(ranks[0]) == len(ranks[1]) == 8
    assert sorted(flat(ranks)) == list(range(1000))
    assert all(len(b) <= 64 for r in ranks for b in r)


def test_remainder_is_padded_from_the_permutation_start():
    n, world = 1001, 4  # 3 samples short of 4 * 251
    ranks = epoch_batches(n, 50, world, seed=5)
    assert len({len(r) for r in ranks}) == 1  # equal step counts on every rank
    assert [sum(map(len, r)) for r in ranks] == [251] * 4
    seen = flat(ranks)
    assert set(seen) == set(range(n))
    perm = np.random.default_rng([5, 0]).permutation(n)
    counts = np.bincount(seen, minlength=n)
    assert sorted(np.flatnonzero(counts == 2)) == sorted(perm[:3]) and counts.max() == 2


def test_drop_last_gives_full_equal_batches_without_repeats():
    ranks = epoch_batches(1001, 50, 4, drop_last=True, seed=5)
    assert [len(r) for r in ranks] == [5] * 4
    assert all(len(b) == 50 for r in ranks for b in r)
    seen = flat(ranks)
    assert len(seen) == len(set(seen)) == 1000


def test_order_depends_on_seed_and_epoch_only():
    a = epoch_batches(500, 32, 2, epoch=1, seed=7)
    assert a == epoch_batches(500, 32, 2, epoch=1, seed=7)
    assert flat(a).tolist() != flat(epoch_batches(500, 32, 2, epoch=2, seed=7)).tolist()
    assert flat(a).tolist() != flat(epoch_batches(500, 32, 2, epoch=1, seed=8)).tolist()


def test_unshuffled_single_rank_is_in_order():
    batches = list(ShardedBatchSampler(10, 4, shuffle=False))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_fewer_samples_than_ranks_still_gives_every_rank_a_batch():
    ranks = epoch_batches(1, 4, 3, seed=0)
    assert ranks == [[[0]], [[0]], [[0]]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        ShardedBatchSampler(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        ShardedBatchSampler(10, 2, rank=0)


def test_a_mid_epoch_position_needs_the_same_batches():
    sampler = ShardedBatchSampler(100, 8, rank=0, world_size=2)
    state = sampler.state_dict(3)
    other = ShardedBatchSampler(100, 8, rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"world_size 2 -> 1.*same --bsz"):
        other.load_state_dict(state)
    other.load_state_dict(sampler.state_dict(len(sampler)))       # an epoch's end: anything goes
    assert (other.epoch, other.start) == (1, 0)

"""Batches of sample indices: seeded, epoch-aware, and sharded across DDP ranks by the sampler itself.

    sampler = ShardedBatchSampler(len(dataset), batch_size=256, shuffle=True, seed=7)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None)  # dataset[list_of_indices] -> batch
    sampler.set_epoch(epoch)                                         # Lightning calls this each epoch

It is a plain iterable, not a ``torch.utils.data.BatchSampler`` subclass: Lightning replaces the
inner sampler of those with a ``DistributedSampler`` under DDP. Because this sampler shards
itself, train with ``Trainer(use_distributed_sampler=False)``.

Order: epoch ``e`` uses the permutation ``np.random.default_rng([seed, e]).permutation(n)`` (or
``arange(n)`` without shuffling), the same on every rank; rank ``r`` of ``W`` takes positions
``r, r + W, r + 2W, ...`` of it and cuts them into batches in that order.

The remainder, when ``n`` is not a multiple of ``W``: DDP needs the same number of steps on every
rank, so

- ``drop_last=False`` (default): the permutation is padded with its own first ``(-n) % W``
  entries, so every rank gets ``ceil(n / W)`` samples; those few samples (at most ``W - 1``) are
  seen twice in the epoch, every other sample exactly once. The last batch of each rank may be
  smaller than ``batch_size``. With one rank nothing is padded.
- ``drop_last=True``: every rank gets ``floor(n / (W * batch_size))`` full batches; the rest of the
  permutation (fewer than ``W * batch_size`` samples, a different set each epoch) is skipped.
"""
from __future__ import annotations

import numpy as np


def _dist_rank_world():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedBatchSampler:
    """Yields lists of indices in ``range(num_samples)``, one list per batch, for this rank."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed decides)")
        if rank is None:
            rank, world_size = _dist_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def _per_rank(self) -> int:
        n, W, B = self.num_samples, self.world_size, self.batch_size
        return (n // (W * B)) * B if self.drop_last else -(-n // W)

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, in batch order."""
        n, W = self.num_samples, self.world_size
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        per_rank = self._per_rank()
        if per_rank * W > n:  # pad with the permutation's first entries (drop_last=False only)
            order = np.resize(order, per_rank * W)
        return order[self.rank: per_rank * W: W]

    def __iter__(self):
        mine = self.indices()
        for start in range(0, len(mine), self.batch_size):
            yield mine[start: start + self.batch_size].tolist()

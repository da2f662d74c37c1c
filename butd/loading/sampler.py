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
- ``even=False`` (validation, evaluation): no padding and nothing dropped; rank ``r`` takes positions
  ``r, r + W, ...`` below ``n``, so every sample counts exactly once across ranks and the ranks'
  batch counts may differ by one. Scores summed over ranks then equal one process's exactly.

Position: ``start`` is the number of this epoch's batches already taken, where the next pass over
the sampler begins. The loaders (``butd.loading.loaders``) count the batches their consumer has
taken and save ``state_dict(taken)`` in Lightning's checkpoints; ``load_state_dict`` restores it,
so a run resumed from a mid-epoch checkpoint trains on exactly the rest of that epoch.
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
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
                 even: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed decides)")
        if rank is None:
            rank, world_size = _dist_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if not even and drop_last:
            raise ValueError("even=False takes every sample exactly once; drop_last would leave some out")
        if not even and world_size > 1 and num_samples < world_size:
            # A rank without a batch would skip the collective calls of the others and hang them.
            raise ValueError(f"even=False shares {num_samples} samples among {world_size} ranks without "
                             "repeats: it needs at least one sample per rank")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int):
        """Lightning calls this before every epoch; a restored position belongs to its own epoch only."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def _per_rank(self) -> int:
        n, W, B = self.num_samples, self.world_size, self.batch_size
        if not self.even:
            return len(range(self.rank, n, W))
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
        if not self.even:
            return order[self.rank::W]
        per_rank = self._per_rank()
        if per_rank * W > n:  # pad with the permutation's first entries (drop_last=False only)
            order = np.resize(order, per_rank * W)
        return order[self.rank: per_rank * W: W]

    def __iter__(self):
        start, self.start = self.start, 0     # a restored position is used by one pass only
        mine = self.indices()
        for first in range(start * self.batch_size, len(mine), self.batch_size):
            yield mine[first: first + self.batch_size].tolist()

    # -- position, for resuming mid-epoch -----------------------------------------------------------
    def _shape(self) -> dict:
        """What fixes the batches of an epoch: a position means nothing under other values."""
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "world_size": self.world_size,
                "shuffle": bool(self.shuffle), "seed": self.seed, "drop_last": bool(self.drop_last),
                "even": bool(self.even)}

    def state_dict(self, taken: int) -> dict:
        """The position after ``taken`` batches of the current epoch: ``{"epoch", "batches"}`` (a
        finished epoch is the next one's start) and the values that fix the batches."""
        epoch, batches = self.epoch, int(taken)
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches, **self._shape()}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state`` (from ``state_dict``): the next pass starts after its batches. A
        mid-epoch position needs the same samples, batch size, seed and number of ranks; raises
        ValueError naming what changed."""
        batches = int(state.get("batches", 0))
        changed = [f"{k} {state[k]} -> {v}" for k, v in self._shape().items() if k in state and state[k] != v]
        if batches and changed:
            raise ValueError(f"the checkpoint was saved after batch {batches} of epoch {state['epoch']}, by a "
                             f"loader whose batches differ from this one's ({', '.join(changed)}); resume with "
                             "the same --bsz, number of processes and data, or from an end-of-epoch checkpoint")
        self.epoch, self.start = int(state["epoch"]), batches

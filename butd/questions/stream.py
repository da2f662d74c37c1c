"""Streaming a split's WebDataset shards (``butd.questions.shards``) across DDP ranks and DataLoader
workers, each consumer an equal share (``stream_shards``; ``butd.questions.cache.stream_split``).

    stream = stream_shards(paths, shard_counts(len(arrays), SHARD_SAMPLES))

Apart from the shards' writer because webdataset imports torch (a second or more): building a
question cache needs neither.
"""
from __future__ import annotations

import json
from itertools import islice

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset


def decode_sample(sample: dict) -> dict:
    """A streamed sample as arrays: tokens int64 [max_length], image rows int64 [images]."""
    fields = json.loads(sample["json"])
    fields["tokens"] = np.asarray(fields["tokens"], dtype=np.int64)
    fields["image_rows"] = np.asarray(fields["image_rows"], dtype=np.int64)
    return fields


def share(num_samples: int, consumers: int, drop_last: bool = False) -> int:
    """Samples each of ``consumers`` gets from ``num_samples``: ``ceil`` (padded) or ``floor`` (dropped)."""
    return num_samples // consumers if drop_last else -(-num_samples // consumers)


class EqualShares(IterableDataset):
    """The raw samples (``__key__``, ``json``) of this consumer's share of shards ``paths`` holding
    ``counts`` samples each. See ``stream_shards`` for who gets what."""

    def __init__(self, paths: list, counts: list, shard_shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if len(paths) != len(counts):
            raise ValueError(f"{len(paths)} shard paths but {len(counts)} sample counts")
        self.paths, self.counts = list(paths), [int(c) for c in counts]
        self.shard_shuffle, self.seed, self.drop_last = bool(shard_shuffle), int(seed), drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def segments(self, consumer: int, consumers: int, epoch: int = 0) -> list:
        """This consumer's ``(path, first member, count)`` runs, in reading order."""
        n = sum(self.counts)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths)) if self.shard_shuffle \
            else np.arange(len(self.paths))
        counts = np.asarray(self.counts, dtype=np.int64)[order]
        starts = np.cumsum(counts) - counts
        per = share(n, consumers, self.drop_last)
        position, left, out = (consumer * per) % max(n, 1), per, []
        while left:
            j = int(np.searchsorted(starts, position, side="right")) - 1
            skip = position - int(starts[j])
            take = min(left, int(counts[j]) - skip)
            out.append((self.paths[order[j]], skip, take))
            position, left = (position + take) % n, left - take
        return out

    def __iter__(self):
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        epoch, self.epoch = self.epoch, self.epoch + 1
        for path, skip, take in self.segments(rank * num_workers + worker, world_size * num_workers, epoch):
            got = 0
            for sample in islice(wds.tariterators.tarfile_samples([{"url": path}]), skip, skip + take):
                got += 1
                yield sample
            if got < take:
                raise ValueError(f"{path}: holds fewer samples than the {skip + take} the question cache's "
                                 "manifest promises; the cache is damaged: rebuild it with --force")


class QuestionStream(wds.DataPipeline, wds.FluidInterface):
    """``EqualShares`` decoded (``decode_sample``): what ``stream_shards`` returns."""

    def __init__(self, shares: EqualShares):
        self.shares = shares   # shared by the copies that .map, .shuffle, ... make
        super().__init__(shares, wds.map(decode_sample))

    def set_epoch(self, epoch: int) -> None:
        self.shares.set_epoch(epoch)


def stream_shards(paths: list, counts: list, shard_shuffle: bool = False, seed: int = 0,
                  drop_last: bool = False) -> QuestionStream:
    """A WebDataset pipeline (``.shuffle``, ``.batched``, ... apply) over shards ``paths`` holding
    ``counts`` samples each, yielding ``decode_sample`` dicts: this consumer's equal share.

    Consumers are the (DDP rank, DataLoader worker) pairs (``webdataset.utils.pytorch_worker_info``:
    ``RANK``/``WORLD_SIZE``/``WORKER``/``NUM_WORKERS`` or torch's), C = world size x workers, and
    consumer ``c = rank * workers + worker`` reads the c-th of C contiguous parts of the
    concatenated shards (few shards each, seeking into at most one): positions ``c * s`` to
    ``(c + 1) * s - 1``, where ``s`` is, as in the loader's ``ShardedBatchSampler``,

    - ``drop_last=False`` (default): ``ceil(n / C)``; positions past the end wrap to the start, so
      the first ``(-n) % C`` samples are read twice in an epoch and every other sample once;
    - ``drop_last=True``: ``floor(n / C)``; the last ``n % C`` samples are not read.

    Every consumer gets the same count (DDP needs equal steps) however few shards there are: more
    consumers than shards, or than samples (padded; with ``drop_last``, nothing), never raises.
    ``shard_shuffle`` permutes the shard order (seeded by ``seed`` and the epoch) before it is cut
    into parts; within a shard samples stay in written order (add ``.shuffle(buffer)`` to mix them).
    The epoch is the one given to ``set_epoch``, else 0, and advances by one with each pass (of this
    object: DataLoader workers pass over copies, so call ``set_epoch`` before each epoch).
    Raises ValueError while reading a shard with fewer samples than ``counts`` says.
    """
    return QuestionStream(EqualShares(paths, counts, shard_shuffle, seed, drop_last))

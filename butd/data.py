"""The data layer: question arrays joined with feature-store gathers, one whole batch at a time.

    dm = GQADataModule("data/GQA-Cache", batch_size=256, num_workers=2)
    trainer = pl.Trainer(use_distributed_sampler=False, ...)   # the sampler shards itself under DDP
    trainer.fit(model, datamodule=dm)

A batch is a dict: ``features`` [B, K, D] (store dtype), ``spatials`` [B, K, 6] float32, ``tokens``
[B, 40] int64, ``labels`` [B] int64 (-1 = no answer) and ``index`` [B] int64, the position of each
question in ``dm.questions(split)`` (so ``question_ids[index]`` names them). Within a batch the
questions are ordered by feature row, which keeps memory-mapped reads sequential.

How a batch is made: ``ShardedBatchSampler`` yields a list of question positions;
``DataLoader(batch_size=None)`` hands the whole list to ``BatchDataset[indices]``, which gathers
features with one vectorised read per store chunk into the batch's own buffers, so there is no
collate step and no per-item work. Where those buffers live depends on the process:

- in a DataLoader worker: fresh shared-memory tensors (as PyTorch's default collate makes), so
  handing the batch to the main process copies nothing; the DataLoader's pin-memory thread then
  makes the one copy into page-locked memory (``pin_memory=True`` with CUDA).
- in the main process (``num_workers=0``) with CUDA: page-locked tensors from PyTorch's caching
  host allocator, ready for ``non_blocking`` transfer (the allocator reuses a block only after the
  copies that read it have finished), and the DataLoader does not pin again.
- in the main process without CUDA: a small pool of buffers, each reused once nothing else holds
  its storage.

``feature_cache="pinned"|"gpu"`` keeps the whole store resident (pinned host memory / the GPU) and
gathers there by index, in the main process: those loaders run with ``num_workers=0``, and with
``"gpu"`` the ``features``/``spatials`` of a batch are already on the device (Lightning's transfer
leaves them there).
"""
from __future__ import annotations

import os

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, get_worker_info

from butd import schema
from butd.sampler import ShardedBatchSampler
from butd.store import FeatureStore

_MAKE_QUESTIONS = "make them with `python converters/questions_to_shards.py`"
_POOL_SIZE = 6


def _shared_empty(shape, dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory: sending it to another process copies nothing."""
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _storage_free(t: torch.Tensor) -> bool:
    # the tensor itself and the temporary storage object hold 2 references; more means someone
    # (a consumer's batch dict, a view, a numpy array) still uses it
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2


class _BatchBuffers:
    """Allocates each batch's output tensors in the right kind of memory for this process."""

    def __init__(self, pin_memory: bool):
        self.pin = pin_memory
        self.pool: list[dict] = []

    def get(self, specs: dict) -> dict:
        if get_worker_info() is not None:
            return {k: _shared_empty(s, d) for k, (s, d) in specs.items()}
        if self.pin and torch.cuda.is_available():
            return {k: torch.empty(s, dtype=d, pin_memory=True) for k, (s, d) in specs.items()}
        # hand out aliases (new tensors on the pooled storage): while the consumer holds one, the
        # storage's use count stays up and the buffer is not reused
        for bufs in self.pool:
            if bufs.keys() == specs.keys() and all(bufs[k].shape == s for k, (s, _) in specs.items()) \
                    and all(map(_storage_free, bufs.values())):
                return {k: v.detach() for k, v in bufs.items()}
        bufs = {k: torch.empty(s, dtype=d) for k, (s, d) in specs.items()}
        if len(self.pool) < _POOL_SIZE:
            self.pool.append(bufs)
        return {k: v.detach() for k, v in bufs.items()}


class BatchDataset(torch.utils.data.Dataset):
    """``dataset[list_of_question_positions]`` -> one batch dict (see the module docstring).

    ``questions`` is a ``butd.questions.QuestionArrays`` (or anything with its ``question_ids``,
    ``image_ids``, ``image_rows``, ``tokens`` and ``labels`` arrays) resolved against ``store``."""

    def __init__(self, questions, store: FeatureStore, pin_memory: bool = True):
        self.questions, self.store = questions, store
        self.image_rows = np.asarray(questions.image_rows, dtype=np.int64)
        self.tokens = np.ascontiguousarray(questions.tokens, dtype=np.int64)
        self.labels = np.asarray(questions.labels, dtype=np.int64)
        bad = np.flatnonzero((self.image_rows < 0) | (self.image_rows >= store.num_images))
        if len(bad):
            i = bad[0]
            raise IndexError(
                f"question {questions.question_ids[i]} (image {questions.image_ids[i]}) points at feature "
                f"row {self.image_rows[i]}, but {store.path} holds {store.num_images} images "
                f"({len(bad)} questions are affected): the question shards were built against another "
                f"store; rebuild them with `python converters/questions_to_shards.py`")
        self._buffers = _BatchBuffers(pin_memory)

    def __len__(self) -> int:
        return len(self.image_rows)

    def __getitem__(self, indices) -> dict:
        if np.ndim(indices) == 0:
            raise TypeError("BatchDataset is indexed by whole batches (a list of question positions), got "
                            f"{indices!r}: use ShardedBatchSampler with DataLoader(batch_size=None), and "
                            "Trainer(use_distributed_sampler=False) so Lightning does not replace it")
        idx = np.asarray(indices, dtype=np.int64)
        idx = idx[np.argsort(self.image_rows[idx], kind="stable")]
        B = len(idx)
        specs = self.store.batch_shapes(B)
        specs.update(tokens=((B, self.tokens.shape[1]), torch.int64), labels=((B,), torch.int64),
                     index=((B,), torch.int64))
        if self.store.cache == "gpu":  # gathered on the device; only the small arrays need buffers
            specs.pop("features"), specs.pop("spatials")
        out = self._buffers.get(specs)
        rows = self.image_rows[idx]
        out["features"], out["spatials"] = self.store.gather(rows, out.get("features"), out.get("spatials"))
        np.take(self.tokens, idx, axis=0, out=out["tokens"].numpy())
        np.take(self.labels, idx, out=out["labels"].numpy())
        out["index"].numpy()[:] = idx
        return out


def _batch_collate(batch):
    return batch  # the dataset already returns the finished batch


class GQADataModule(pl.LightningDataModule):
    """Train on ``train_split`` questions (shuffled), validate on ``val_split`` (in order), as the
    specification does (train / testdev). ``cache_dir`` holds ``trainval.zarr``, ``testdev.zarr``
    and ``questions/`` (override with ``questions_dir``)."""

    def __init__(self, cache_dir, batch_size: int = 256, num_workers: int = 2, feature_cache: str = "none",
                 seed: int = 7, train_split: str = "train", val_split: str = "testdev",
                 pin_memory: bool = True, questions_dir=None, prefetch_factor: int = 2):
        super().__init__()
        self.cache_dir = os.fspath(cache_dir)
        self.questions_dir = os.fspath(questions_dir or os.path.join(self.cache_dir, "questions"))
        self.batch_size, self.num_workers, self.feature_cache = batch_size, num_workers, feature_cache
        self.seed, self.train_split, self.val_split = seed, train_split, val_split
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self._questions: dict = {}
        self._stores: dict = {}
        self._datasets: dict = {}
        self._ready = False

    def setup(self, stage=None):
        if self._ready:
            return
        from butd import questions as q  # the question-shard reader (its own issue)
        if not os.path.isdir(self.questions_dir):
            raise FileNotFoundError(f"{self.questions_dir}: no question shards here; {_MAKE_QUESTIONS}")
        self.vocab = q.load_vocab(self.questions_dir)
        self.ans2label, self.label2ans = q.load_answers(self.questions_dir)
        self.glove = q.load_glove(self.questions_dir)
        self.ntoken = self.vocab.ntoken
        self.num_answers = len(self.label2ans)
        self.v_dim = self.store(self.train_split).feature_dim
        self._ready = True

    def questions(self, split: str):
        if split not in self._questions:
            from butd import questions as q
            self._questions[split] = q.load_split(self.questions_dir, split)
        return self._questions[split]

    def store(self, split: str) -> FeatureStore:
        """The feature store serving ``split`` (opened once per store; reading starts lazily)."""
        path = schema.store_path(self.cache_dir, split)
        if path not in self._stores:
            self._stores[path] = FeatureStore(path, cache=self.feature_cache)
        return self._stores[path]

    def dataset(self, split: str) -> BatchDataset:
        if split not in self._datasets:
            self._datasets[split] = BatchDataset(self.questions(split), self.store(split), self.pin_memory)
        return self._datasets[split]

    def _rank_world(self):
        trainer = getattr(self, "_trainer", None) or getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return None, None

    def dataloader_for(self, split: str, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        rank, world = self._rank_world()
        sampler = ShardedBatchSampler(len(dataset), self.batch_size, shuffle=shuffle, seed=self.seed,
                                      drop_last=drop_last, rank=rank, world_size=world)
        # resident caches gather in the main process (a GPU or pinned copy cannot be shared with workers)
        workers = self.num_workers if self.feature_cache == "none" else 0
        return DataLoader(
            dataset, sampler=sampler, batch_size=None, collate_fn=_batch_collate, num_workers=workers,
            persistent_workers=workers > 0, prefetch_factor=self.prefetch_factor if workers else None,
            # main-process batches are already pinned; worker batches get pinned by the loader's thread
            pin_memory=self.pin_memory and workers > 0 and torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self.dataloader_for(self.train_split, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader_for(self.val_split)

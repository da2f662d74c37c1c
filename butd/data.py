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

- ``num_workers=0`` (the fastest here): a ``ThreadedLoader`` runs the DataLoader in a background
  thread of the main process, ``prefetch_factor`` batches ahead; the gather releases the GIL, so it
  overlaps the training step. With CUDA the buffers are page-locked tensors from PyTorch's caching
  host allocator, ready for ``non_blocking`` transfer (it reuses a block only after the copies that
  read it have finished); without CUDA, a small pool of buffers, each reused once nothing else
  holds its storage. Nothing is copied after the gather.
- ``num_workers>0``: worker processes (persistent; each opens the store lazily and shares its
  pages through the page cache) gather into fresh shared-memory tensors (as PyTorch's default
  collate does), so handing a batch over copies nothing; the DataLoader's pin-memory thread then
  makes the one copy into page-locked memory (``pin_memory=True`` with CUDA). Fresh 38 MB buffers
  per batch cost page faults, which is why this path is slower than the threaded one on few cores.

``feature_cache="pinned"|"gpu"`` keeps the whole store resident (pinned host memory / the GPU) and
gathers there by index, in the main process: those loaders always run with ``num_workers=0``, and
with ``"gpu"`` the ``features``/``spatials`` of a batch are already on the device (Lightning's
transfer leaves them there).

Lightning: train with ``Trainer(use_distributed_sampler=False)``; Lightning calls the sampler's
``set_epoch`` each epoch (it finds ``loader.sampler``), which reshuffles.
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, get_worker_info

from butd import schema
from butd.sampler import ShardedBatchSampler
from butd.store import FeatureStore

_QUESTIONS_COMMAND = "python converters/questions_to_shards.py"
_MAKE_QUESTIONS = f"make them with `{_QUESTIONS_COMMAND}`"
_POOL_SIZE = 8  # > batches queued ahead + held by the consumer


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
                f"store; rebuild them with `{_QUESTIONS_COMMAND}`")
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


class _End:
    """Marks the end of a background thread's batches (or carries its exception)."""

    def __init__(self, error=None):
        self.error = error


class ThreadedLoader:
    """Runs a ``num_workers=0`` DataLoader ``depth`` batches ahead in a background thread of this
    process. The gather is ``np.take`` (and ``index_select``), which release the GIL, so it
    overlaps the training step without the inter-process hand-over of worker batches, and the
    pooled / pinned buffers are reused safely (a queued batch still holds its buffers). Exposes
    ``sampler``, ``batch_sampler``, ``dataset`` and ``len`` so that Lightning inspects it, sets the
    epoch and counts batches as for a DataLoader."""

    def __init__(self, loader: DataLoader, depth: int = 2):
        self.loader, self.depth = loader, depth
        self.sampler, self.batch_sampler, self.dataset = loader.sampler, loader.batch_sampler, loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        out: queue.Queue = queue.Queue(self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for batch in self.loader:
                    if not put(batch):
                        return
                put(_End())
            except BaseException as e:  # re-raised in the consumer's thread
                put(_End(e))

        thread = threading.Thread(target=produce, name="butd-batches", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            stop.set()
            thread.join()


def make_loader(dataset: BatchDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0, pin_memory: bool = True,
                prefetch_factor: int = 2, rank=None, world_size=None):
    """The loader over ``dataset``: whole batches from a ``ShardedBatchSampler``. With workers, a
    DataLoader with persistent workers, pinning by the loader's thread (worker batches arrive in
    shared memory); with ``num_workers=0``, a ``ThreadedLoader`` gathering ``prefetch_factor``
    batches ahead in this process, straight into pinned buffers."""
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                  rank=rank, world_size=world_size)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=_batch_collate,
                        num_workers=num_workers, persistent_workers=num_workers > 0,
                        prefetch_factor=prefetch_factor if num_workers else None,
                        pin_memory=pin_memory and num_workers > 0 and torch.cuda.is_available())
    return loader if num_workers else ThreadedLoader(loader, depth=prefetch_factor)


class GQADataModule(pl.LightningDataModule):
    """Train on ``train_split`` questions (shuffled), validate on ``val_split`` (in order), as the
    specification does (train / testdev). ``cache_dir`` holds ``trainval.zarr``, ``testdev.zarr``
    and ``questions/`` (override with ``questions_dir``). ``num_workers=0`` (the default) gathers
    batches in a background thread of this process, which measured faster than worker processes
    (benchmarks/loader_speed.py): the gather releases the GIL and needs no inter-process hand-over."""

    def __init__(self, cache_dir, batch_size: int = 256, num_workers: int = 0, feature_cache: str = "none",
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
        # read from the metadata: opening the store here would fix a GPU cache's device before
        # Lightning has set this rank's (setup runs before fit in train.py)
        self.v_dim = schema.read_attrs(schema.store_path(self.cache_dir, self.train_split)).feature_dim
        q.check_stores(self.questions_dir, self.cache_dir)
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
            # resolved here, in the main thread, where Lightning has set this rank's device
            device = torch.cuda.current_device() if self.feature_cache == "gpu" and torch.cuda.is_available() else None
            self._stores[path] = FeatureStore(path, cache=self.feature_cache, device=device)
        return self._stores[path]

    def dataset(self, split: str) -> BatchDataset:
        if split not in self._datasets:
            self._datasets[split] = BatchDataset(self.questions(split), self.store(split), self.pin_memory)
        return self._datasets[split]

    def _rank_world(self):
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return None, None  # no trainer: torch.distributed (or a single process) decides

    def dataloader_for(self, split: str, shuffle: bool = False, drop_last: bool = False):
        rank, world = self._rank_world()
        # resident caches gather in the main process (a GPU or pinned copy cannot be shared with workers)
        workers = self.num_workers if self.feature_cache == "none" else 0
        return make_loader(self.dataset(split), self.batch_size, shuffle=shuffle, seed=self.seed,
                           drop_last=drop_last, num_workers=workers, pin_memory=self.pin_memory,
                           prefetch_factor=self.prefetch_factor, rank=rank, world_size=world)

    def train_dataloader(self):
        return self.dataloader_for(self.train_split, shuffle=True)

    def val_dataloader(self):
        return self.dataloader_for(self.val_split)

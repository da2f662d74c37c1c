"""The loaders over a ``BatchDataset``: a background thread filling a ring of reusable buffers (the
default, fastest measured), or DataLoader worker processes.

    loader = make_loader(dataset, batch_size=256, shuffle=True, seed=7)
    for batch in loader:            # a batch is valid until the next one is requested:
        train_step(batch)           # keep one longer only as batch["features"].clone()

- ``num_workers=0``: a ``ThreadedLoader`` gathers ``prefetch_factor`` batches ahead in a background
  thread of this process, each into a slot of a ``SlotRing`` allocated once (page-locked with CUDA,
  ready for ``non_blocking`` transfer). The gather releases the GIL, so it overlaps the training
  step. A slot is rewritten only after the consumer has asked for the next batch (and, with CUDA,
  after the copies it queued from the slot have run): nothing is allocated or copied per batch.
- ``num_workers>0``: a ``WorkerLoader``: persistent worker processes (each opens the store lazily
  and shares its pages through the page cache) gather each batch into a slot of a ring of
  shared-memory buffers allocated once, page-locked in place with CUDA; only the slot's number
  travels to the main process, which reads the same memory: nothing is allocated or copied per
  batch either.

Lightning: train with ``Trainer(use_distributed_sampler=False)``; Lightning calls the sampler's
``set_epoch`` each epoch (it finds ``loader.sampler``), which reshuffles. Both loaders count the
batches their consumer has taken (not those gathered ahead) and give Lightning ``state_dict`` /
``load_state_dict``, which it saves in checkpoints and restores on resume: a run resumed mid-epoch
goes on with the rest of that epoch's batches.
"""
from __future__ import annotations

import multiprocessing
import queue
import signal
import threading

import torch
from torch.utils.data import DataLoader

from butd.loading.batches import BatchDataset
from butd.loading.sampler import ShardedBatchSampler
from butd.loading.slots import MAX_PENDING, SlotRing, StalePass


def _whole_batch(batch):
    return batch  # the dataset already returns the finished batch


def _ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C in a terminal reaches the workers too: the main process alone stops (and ends them, or
    # goes on with them in a notebook); interrupted workers would fail the next pass instead
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Position:
    """What both loaders share: iterating their ``_batches()`` while keeping the sampler's position
    as the consumer sees it, for Lightning's checkpoints: batches of the epoch handed out, counted
    as they are handed (a batch gathered ahead is not yet taken)."""
    sampler: ShardedBatchSampler
    _taken = _taken_epoch = 0

    def _counted(self, batches):
        # read before the pass begins: it resets the sampler's
        self._taken, self._taken_epoch = self.sampler.start, self.sampler.epoch
        try:
            for batch in batches:
                self._taken += 1
                yield batch
        finally:
            batches.close()                  # stops the producer at once when the consumer stops early

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return self._counted(self._batches())

    def state_dict(self) -> dict:
        # set_epoch since the last pass: that epoch's position is where its pass will start
        same = self.sampler.epoch == self._taken_epoch
        return self.sampler.state_dict(self._taken if same else self.sampler.start)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._taken, self._taken_epoch = self.sampler.start, self.sampler.epoch


class _End:
    """Marks the end of a background thread's batches (or carries its exception)."""

    def __init__(self, error=None):
        self.error = error


def _fill(dataset: BatchDataset, ring: SlotRing, gen: int, j: int, indices) -> tuple[int, dict]:
    """Batch ``j`` of pass ``gen`` written into its slot; returns the slot and the batch."""
    slot, buffers = ring.acquire(j, n=len(indices), gen=gen)
    ok = False
    try:
        batch = dataset.fill(indices, buffers)
        ok = True
    finally:
        ring.filled(slot, gen, ok)
    return slot, batch


class ThreadedLoader(_Position):
    """Gathers the sampler's batches ``depth`` ahead in a background thread into a ring of slots (see
    the module docstring). Exposes ``sampler``, ``batch_sampler``, ``dataset`` and ``len`` so that
    Lightning inspects it, sets the epoch and counts batches as for a DataLoader."""

    def __init__(self, dataset: BatchDataset, sampler: ShardedBatchSampler, depth: int = 2, pin_memory: bool = True):
        self.dataset, self.sampler, self.batch_sampler, self.depth = dataset, sampler, sampler, max(1, depth)
        self.pin = pin_memory and torch.cuda.is_available()
        self._ring = None

    def ring(self) -> SlotRing:
        # depth batches queued, one being filled, one held by the consumer
        if self._ring is None:
            self._ring = SlotRing(self.dataset.specs(self.sampler.batch_size), self.depth + 2, pin=self.pin)
        return self._ring

    def _batches(self):
        ring = self.ring()
        gen = ring.start_pass()
        out: queue.Queue = queue.Queue()

        def produce():
            try:
                for j, indices in enumerate(self.sampler):
                    out.put(_fill(self.dataset, ring, gen, j, indices))
                out.put(_End())
            except StalePass:       # the consumer has left the pass
                out.put(_End())
            except BaseException as e:  # re-raised in the consumer's thread
                out.put(_End(e))

        def batches():
            while True:
                item = out.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item

        thread = threading.Thread(target=produce, name="butd-batches", daemon=True)
        thread.start()
        try:
            yield from ring.handing_back(batches(), record_event=self.pin, gen=gen)
        finally:
            ring.end_pass(gen)      # a producer waiting for a slot gives up
            thread.join()


class _SlotFiller(torch.utils.data.Dataset):
    """In a worker process: batch ``j`` of pass ``gen`` goes into its slot of the shared ring; only the
    slot's number and the batch size travel back to the main process, which reads the same memory."""

    def __init__(self, dataset: BatchDataset, ring: SlotRing):
        self.dataset, self.ring = dataset, ring

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request) -> tuple:
        gen, j, indices = request
        return _fill(self.dataset, self.ring, gen, j, indices)[0], len(indices)


class _Numbered:
    """The sampler's batches numbered within the pass and tagged with it: ``(gen, j, indices)``; batch
    ``j`` uses slot ``j % size``."""

    def __init__(self, sampler: ShardedBatchSampler):
        self.sampler, self.gen = sampler, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        gen = self.gen
        return ((gen, j, indices) for j, indices in enumerate(self.sampler))


class WorkerLoader(_Position):
    """Gathers batches in ``num_workers`` worker processes, each straight into a slot of a ring of
    shared-memory buffers allocated once (page-locked in place with CUDA, so a batch goes from the
    gather to a ``non_blocking`` copy with no copy between). The workers start with the first pass
    and serve every later one (each keeps its store open and its pages mapped, which a new process
    would touch again at a fraction of the speed); they end when the loader is garbage-collected.
    A pass left early ends its generation of the ring, so a worker waiting for a slot for it gives
    up at once and the next pass starts clean; after a pass that failed (a worker raised, or was
    killed), the next one starts fresh workers. Exposes ``sampler``, ``batch_sampler``, ``dataset``
    and ``len`` as ``ThreadedLoader`` does."""

    def __init__(self, dataset: BatchDataset, sampler: ShardedBatchSampler, num_workers: int,
                 prefetch_factor: int = 2, pin_memory: bool = True):
        self.dataset, self.sampler, self.batch_sampler = dataset, sampler, sampler
        self.num_workers, self.prefetch_factor = num_workers, max(1, prefetch_factor)
        self.pin = pin_memory and torch.cuda.is_available()
        self.context = multiprocessing.get_context()
        self._ring = self._workers = None

    def ring(self) -> SlotRing:
        # the batches the workers may have ahead, one being filled per worker, one held by the consumer,
        # and with CUDA the released ones whose copies the GPU may not have run yet (MAX_PENDING)
        if self._ring is None:
            size = self.num_workers * (self.prefetch_factor + 1) + 1 + (MAX_PENDING if self.pin else 0)
            self._ring = SlotRing(self.dataset.specs(self.sampler.batch_size), size, shared=True,
                                  mp_context=self.context)
            if self.pin:
                for slot in self._ring.slots:
                    for t in slot.values():
                        error = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
                        if int(error) != 0:
                            raise RuntimeError(f"cannot page-lock the loader's {t.numel() * t.element_size()} "
                                               f"byte batch buffers (cudaHostRegister error {int(error)}); "
                                               "use --num_workers 0 or a smaller --bsz")
        return self._ring

    def workers(self) -> DataLoader:
        """The DataLoader whose persistent workers fill the ring (made once, its workers started by
        the first pass)."""
        if self._workers is None:
            self._workers = DataLoader(
                _SlotFiller(self.dataset, self.ring()), sampler=_Numbered(self.sampler), batch_size=None,
                collate_fn=_whole_batch, num_workers=self.num_workers, prefetch_factor=self.prefetch_factor,
                persistent_workers=True, multiprocessing_context=self.context,
                worker_init_fn=_ignore_interrupts,
                # the workers' base seed is drawn from this, not from the global RNG: the training's
                # own draws (dropout) stay those of a run with num_workers=0
                generator=torch.Generator())
        return self._workers

    def _batches(self):
        ring, loader = self.ring(), self.workers()
        # before iter(): iter() waits for the workers to finish what an earlier pass left them, and
        # those of its batches still waiting for a slot must give up instead of waiting on
        gen = loader.sampler.gen = ring.start_pass()
        try:
            views = ((slot, SlotRing.view(ring.slots[slot], n)) for slot, n in iter(loader))
            yield from ring.handing_back(views, record_event=self.pin, gen=gen)
        except BaseException as e:
            if not isinstance(e, GeneratorExit):   # a worker failed or died, or an interrupt:
                self._workers = None   # the next pass starts fresh workers
            raise
        finally:
            ring.end_pass(gen)


def make_loader(dataset: BatchDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0, pin_memory: bool = True,
                prefetch_factor: int = 2, rank=None, world_size=None, even: bool = True):
    """The loader over ``dataset``: whole batches from a ``ShardedBatchSampler``, gathered by a
    ``ThreadedLoader`` (``num_workers=0``) or by ``num_workers`` worker processes (``WorkerLoader``).
    ``even=False``: every sample exactly once across ranks, for validation (see the sampler)."""
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                  rank=rank, world_size=world_size, even=even)
    if not num_workers:
        return ThreadedLoader(dataset, sampler, depth=prefetch_factor, pin_memory=pin_memory)
    return WorkerLoader(dataset, sampler, num_workers, prefetch_factor, pin_memory)

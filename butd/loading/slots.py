"""A fixed ring of reusable batch buffers ("slots") that a producer fills and a consumer hands back.

Why: the loader must not write a new batch into memory that the consumer still reads. Deciding that
from torch-internal storage reference counts is fragile (private APIs, and a count says nothing about
an in-flight ``non_blocking`` copy). Instead, as in ffcv's ``loader/epoch_iterator.py``, ``size``
buffers are allocated once and each is reused only after the consumer has said it is done.

Life of a slot: batch number ``j`` always uses slot ``j % size``. ``acquire(j)`` blocks until the
slot's previous batch (``j - size``) has been released, marks it held, and returns its tensors; the
producer writes the batch there and says so (``filled``); the consumer reads it and calls
``release(slot)`` (or iterates with ``handing_back``, which releases a batch when the next one is
requested). Because the turn is tied to ``j``, producers running out of order (several DataLoader
workers) cannot overtake each other.

Passes: a pass (an epoch) numbers its batches from 0 under a generation that ``start_pass`` begins
and returns; producers name it in ``acquire(j, gen=...)`` and ``filled(slot, gen)``, the consumer in
``handing_back(..., gen=...)``. A pass ends when the next starts or when its consumer leaves it
(``end_pass``), early or not; producers may outlive it (persistent DataLoader workers, a thread still
writing). Then its waiting acquires raise ``StalePass`` at once instead of waiting for a slot nobody
will release; a slot it wrote is freed by the next ``start_pass``, and one still being written when
its producer says ``filled`` (or dies), so the next pass's batch ``j`` never shares a slot with a
batch still being written; and its consumer, if it comes back, takes nothing more and releases
nothing.

Threads and processes: with ``shared=False`` the slots are ordinary (optionally page-locked) tensors
and waiting uses ``threading``; use it for a producer thread in the consumer's process. With
``shared=True`` the tensors live in shared memory (allocated there: ``_shared_empty``) and the bookkeeping in
``multiprocessing`` shared arrays under one Lock from ``mp_context`` (waiters poll): hand the ring to the worker
processes when they start (e.g. as an attribute of the Dataset, pickled by ``fork`` or ``spawn``), never
through a queue afterwards. Workers then write into the very memory the main process reads; a worker
whose consumer process has died stops waiting.

CUDA: a consumer that queued a ``non_blocking`` host-to-device copy from a slot passes a
``torch.cuda.Event`` recorded after it to ``release``. In one process the next ``acquire`` of that
slot synchronizes the event before the slot may be overwritten; across processes events cannot
travel, so the consumer keeps it and frees the slot at a later ``release`` that finds it complete
(waiting for the oldest once more than ``MAX_PENDING`` are pending, and for all at pass boundaries).
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time

import torch

_POLL_S = 0.1  # waits are cut into short polls so KeyboardInterrupt gets through
_FIRST_POLL_S = 2e-4  # a shared ring's first poll; each next one waits twice as long, up to _POLL_S
LOCK_TIMEOUT_S = 60.0  # a shared ring's lock held this long means its holder died holding it
MAX_PENDING = 2        # shared ring: released slots whose copies may still run (the ring has room for them)
FREE, STALE = -1, -2   # held[s]: a batch number, FREE, or STALE (written by a producer of an ended pass)


def _shared_empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory from the start. (``torch.empty(...).share_memory_()``
    allocates private memory, then shared memory, and copies one into the other: for a worker
    loader's ring of 7 slots of 256 x 36 x 2048 float16 features, 0.2 s of page faults and copying in
    the main process before the first batch. Here the pages are faulted in where a worker first
    writes them.)"""
    # (the allocator share_memory_ itself uses; a private name of torch's, covered by tests/test_slots.py)
    storage = torch.UntypedStorage._new_shared(max(1, math.prod(shape) * dtype.itemsize))
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class StalePass(RuntimeError):
    """A producer asked for a slot for a batch of a pass that has ended."""


class SlotRing:
    """``size`` slots, each ``{name: tensor of specs[name] = (shape, dtype)}``, allocated once.

    ``pin=True`` allocates page-locked memory when CUDA is available (ignored otherwise);
    ``shared=True`` allocates shared memory for producers in other processes, with its waiting
    primitives from ``mp_context`` (default: ``multiprocessing``'s default context). Raises
    ``ValueError`` for ``size < 1`` or for ``pin`` with ``shared`` (page-locked memory is not
    shareable: let the consumer copy shared slots into pinned memory)."""

    def __init__(self, specs: dict, size: int, *, pin: bool = False, shared: bool = False,
                 mp_context=None):
        if size < 1:
            raise ValueError(f"a SlotRing needs at least one slot, got size={size}")
        pin = pin and torch.cuda.is_available()
        if pin and shared:
            raise ValueError("pin=True and shared=True cannot be combined: page-locked memory cannot be "
                             "shared between processes; pin in the consumer instead")
        self.size, self.shared = size, shared
        self.slots = [{k: _shared_empty(tuple(s), d) if shared else torch.empty(tuple(s), dtype=d, pin_memory=pin)
                       for k, (s, d) in specs.items()} for _ in range(size)]
        # turn[s]: uses of slot s finished (released); held[s]: see FREE/STALE; done[s]: written
        if shared:
            ctx = mp_context or multiprocessing.get_context()
            # a lock and polling, not a Condition: notifying a multiprocessing Condition waits for
            # each sleeper's acknowledgement, forever if one was killed while it waited
            self._cond = ctx.Lock()
            self._turn, self._held = ctx.RawArray("q", size), ctx.RawArray("q", [FREE] * size)
            self._done, self._gen = ctx.RawArray("b", size), ctx.RawValue("q", 0)
            self._writer = ctx.RawArray("q", size)      # writer[s]: the process that acquired slot s
        else:
            self._cond = threading.Condition()
            self._turn, self._held, self._done = [0] * size, [FREE] * size, [0] * size
            self._gen, self._writer = _Value(), None
        self._owner = os.getpid() if shared else None   # the consumer, whose death ends every wait
        self._events: list = [None] * size  # single process only: event to await before reuse
        self._pending: list = []            # shared: (slot, event) released once the event completes

    def slot_of(self, j: int) -> int:
        """The slot that batch number ``j`` uses."""
        return j % self.size

    @staticmethod
    def view(tensors: dict, n: int) -> dict:
        """``{name: t[:n]}``: the first ``n`` rows of each tensor (a batch smaller than the slot)."""
        return {k: t[:n] for k, t in tensors.items()}

    def acquire(self, j: int, n: int | None = None, timeout: float | None = None,
                gen: int | None = None) -> tuple[int, dict]:
        """Wait for slot ``j % size`` to be free for batch ``j`` and hold it; returns ``(slot, tensors)``,
        the tensors cut to their first ``n`` rows if ``n`` is given. The caller writes the batch into
        them. ``gen``: the pass the batch belongs to (default: whichever is under way). Raises
        ``StalePass`` if pass ``gen`` has ended, and ``RuntimeError`` (naming slot and batch) if
        ``timeout`` seconds (default: no limit) pass first, if ``j`` is behind the slot's turn (batch
        numbers restarted without ``start_pass()``), or if the consumer's process has ended."""
        s, turn = j % self.size, j // self.size
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = _FIRST_POLL_S
        with self._locked() as held:
            while True:
                if gen is not None and gen != self._gen.value:
                    raise StalePass(f"batch {j} belongs to pass {gen}, which has ended (now {self._gen.value})")
                if self._turn[s] > turn or self._held[s] == j:
                    raise RuntimeError(f"batch {j} already used slot {s} (slot turn {self._turn[s]}): batch "
                                       "numbers must keep increasing; call start_pass() before restarting them")
                if self._held[s] == STALE and self._writer_died(s):
                    self._held[s] = FREE
                if self._turn[s] == turn and self._held[s] == FREE:
                    break
                if self._owner is not None and self._owner != os.getpid() and not _alive(self._owner):
                    raise RuntimeError(f"the process that reads this SlotRing (pid {self._owner}) has ended: "
                                       f"batch {j} will never get slot {s}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    holder = self._held[s]
                    state = {FREE: "not yet acquired", STALE: "a batch of an ended pass is being written there"
                             }.get(holder, f"slot held by batch {holder}")
                    raise RuntimeError(f"timed out after {timeout}s waiting for slot {s} for batch {j}: "
                                       f"batch {j - self.size} has not been released, or its copy has not run ({state})")
                pause = _POLL_S if left is None else min(_POLL_S, left)
                if self.shared:
                    held[0] = False     # first: an interrupt here must not release the lock twice
                    self._cond.release()
                    time.sleep(min(pause, backoff))
                    self._take_lock()
                    held[0] = True
                    backoff *= 2
                else:
                    self._cond.wait(pause)
            self._held[s], self._done[s] = j, 0
            if self._writer is not None:
                self._writer[s] = os.getpid()
            event, self._events[s] = self._events[s], None
        if event is not None:  # a queued copy may still read the slot
            event.synchronize()
        return s, (self.slots[s] if n is None else self.view(self.slots[s], n))

    def filled(self, slot: int, gen: int, ok: bool = True) -> None:
        """The producer has written ``slot`` for pass ``gen`` (``ok=False``: it failed to). The slot
        stays held for the consumer, unless the pass has ended or the write failed: then it is free."""
        with self._locked():
            if ok and gen == self._gen.value:
                self._done[slot] = 1
            else:
                self._held[slot] = FREE
                self._notify()

    def release(self, slot: int, event=None, gen: int | None = None) -> None:
        """The consumer is done with ``slot``; ``event`` (a ``torch.cuda.Event`` recorded after the last
        queued copy from it) must complete before the slot is overwritten: a shared ring frees the
        slot at a later ``release`` (or pass boundary) that finds the event complete, so the consumer
        never waits for the GPU here. A release for an ended pass ``gen`` frees nothing
        (``start_pass`` freed the slot). Raises ``RuntimeError`` if the slot is not held."""
        with self._locked():
            stale = gen is not None and gen != self._gen.value
            if not stale:
                if self._held[slot] in (FREE, STALE) or any(p == slot for p, _ in self._pending):
                    raise RuntimeError(f"slot {slot} is not held: released twice, or never acquired")
                if event is not None and self.shared:
                    self._pending.append((slot, event))
                    while len(self._pending) > MAX_PENDING:   # the GPU is far behind: wait for the oldest
                        old, oldest = self._pending.pop(0)
                        oldest.synchronize()
                        self._free(old)
                else:
                    self._free(slot, event)
            self._free_copied(wait=False)
        if stale and event is not None:   # the slot may already be another pass's: let the copy finish
            event.synchronize()

    def _free(self, slot: int, event=None) -> None:
        """Under the lock: ``slot``'s batch is done with; its next batch may take it."""
        self._held[slot] = FREE
        self._turn[slot] += 1
        self._events[slot] = event
        self._notify()

    def _free_copied(self, wait: bool) -> None:
        """Under the lock: free the pending slots whose copies have finished (all, waiting, if ``wait``)."""
        left = []
        for slot, event in self._pending:
            if wait:
                event.synchronize()
            if wait or event.query():
                self._free(slot)
            else:
                left.append((slot, event))
        self._pending = left

    @contextlib.contextmanager
    def _locked(self):
        """The ring's lock, held for the block (see ``_take_lock``); yields ``[True]``, which a block
        that lets go of the lock meanwhile sets to False until it holds it again."""
        held = [False]
        try:
            self._take_lock()
            held[0] = True
            yield held
        finally:
            if held[0]:
                self._cond.release()

    def _take_lock(self) -> None:
        """Take the ring's lock. A shared ring's lock is held for microseconds at a time (or for one
        CUDA copy's completion); a process killed while holding it (a worker terminated at shutdown)
        would leave it held forever, so the wait raises instead of hanging: ``RuntimeError`` once the
        consumer's process has ended, or after ``LOCK_TIMEOUT_S``."""
        if not self.shared:
            self._cond.acquire()
            return
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while not self._cond.acquire(timeout=_POLL_S):
            if self._owner != os.getpid() and not _alive(self._owner):
                raise RuntimeError(f"the process that reads this SlotRing (pid {self._owner}) has ended")
            if time.monotonic() > deadline:
                raise RuntimeError(f"this SlotRing's lock has been held for {LOCK_TIMEOUT_S:g} s: a process "
                                   "sharing it (a loader worker) was killed, or interrupted, while holding it")

    def _notify(self) -> None:
        if not self.shared:   # a shared ring's waiters poll
            self._cond.notify_all()

    def start_pass(self) -> int:
        """Begin a pass: batch numbers start at 0 under a new generation, returned for ``acquire``,
        ``filled`` and ``handing_back``. The pass before it ends (see the module docstring): slots
        it wrote are freed, those still being written when their producer calls ``filled``. Call it
        when no batch of an earlier pass is read any more. A batch the old pass's consumer never
        released (it left the iterator unclosed) may still be the source of a queued copy: with
        CUDA in use, the GPU's queued work is awaited before its slot is freed."""
        with self._locked():
            unreleased = any(self._held[s] >= 0 and self._done[s] for s in range(self.size))
        if unreleased and _cuda_in_use():
            torch.cuda.synchronize()
        with self._locked():
            self._free_copied(wait=True)
            self._gen.value += 1
            for s in range(self.size):
                self._turn[s] = 0
                if self._held[s] != FREE:
                    self._held[s] = FREE if self._done[s] or self._writer_died(s) else STALE
            self._notify()
            return self._gen.value

    def _writer_died(self, s: int) -> bool:
        """Whether the process writing slot ``s`` has died (killed mid-write: it will never say ``filled``)."""
        return self._writer is not None and not _alive(self._writer[s])

    def end_pass(self, gen: int) -> None:
        """End pass ``gen`` if it is still the one under way (its consumer leaves it, early or at its
        end): producers waiting for a slot for it raise ``StalePass`` instead of waiting on."""
        with self._locked():
            self._free_copied(wait=True)
            if self._gen.value == gen:
                self._gen.value += 1
                self._notify()

    def handing_back(self, batches, record_event: bool = False, gen: int | None = None):
        """Yield the batches of an iterable of ``(slot, batch)``, releasing each one's slot when the next
        is requested, and the last when the iteration ends or the generator is closed. A consumer
        that keeps a batch (or a view of it) beyond the next request must ``clone()`` it. With
        ``record_event`` (and CUDA) each release records an event on the current stream, so copies
        the consumer queued from the batch finish before its slot is rewritten. With ``gen``, once
        that pass has ended (a later one started) nothing more is taken from ``batches``."""
        held, batches = None, iter(batches)
        try:
            while gen is None or gen == self._gen.value:
                if held is not None:  # before fetching: the producer may be waiting for this slot
                    self._hand_back(held, record_event, gen)
                    held = None
                try:
                    held, batch = next(batches)
                except StopIteration:
                    return
                yield batch
        finally:
            if held is not None:
                self._hand_back(held, record_event, gen)

    def _hand_back(self, slot: int, record_event: bool, gen: int | None) -> None:
        event = None
        if record_event and torch.cuda.is_available():
            event = torch.cuda.Event()
            event.record()
        self.release(slot, event, gen)


class _Value:
    value = 0


def _cuda_in_use() -> bool:
    """Whether this process has started CUDA (only then can it have queued copies)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by another user
        pass
    return True

"""SlotRing: slots allocated once, reuse only after release, across threads and processes."""
import itertools
import multiprocessing
import os
import queue
import threading

import pytest
import torch

from butd.loading import slots
from butd.loading.slots import SlotRing, StalePass

SPECS = {"features": ((4, 3), torch.float32), "index": ((4,), torch.int64)}


def test_slots_are_allocated_once_and_reused_by_batch_number():
    ring = SlotRing(SPECS, 2)
    ptrs = {}
    for j in range(6):
        s, t = ring.acquire(j, timeout=1)
        assert s == j % 2 == ring.slot_of(j)
        assert t["features"].shape == (4, 3) and t["index"].dtype == torch.int64
        ptrs.setdefault(s, set()).add((t["features"].data_ptr(), t["index"].data_ptr()))
        ring.release(s)
    assert all(len(p) == 1 for p in ptrs.values()) and len(set.union(*ptrs.values())) == 2


def test_acquire_blocks_until_the_previous_use_is_released():
    ring = SlotRing(SPECS, 2)
    ring.acquire(0), ring.acquire(1)
    got = threading.Event()
    worker = threading.Thread(target=lambda: (ring.acquire(2, timeout=5), got.set()))
    worker.start()
    assert not got.wait(0.2), "batch 2 got slot 0 while batch 0 still held it"
    ring.release(1)  # the other slot does not free slot 0
    assert not got.wait(0.1)
    ring.release(0)
    assert got.wait(2)
    worker.join(2)


def test_timeout_names_slot_and_batch():
    ring = SlotRing(SPECS, 3)
    ring.acquire(1)
    with pytest.raises(RuntimeError, match=r"slot 1 for batch 4\b.*batch 1 has not been released"):
        ring.acquire(4, timeout=0.05)


def test_batches_out_of_order_wait_for_their_turn_and_misuse_raises():
    ring = SlotRing(SPECS, 2)
    with pytest.raises(RuntimeError, match="slot 0 for batch 2"):  # batch 0 has not even started
        ring.acquire(2, timeout=0.05)
    ring.acquire(0)
    ring.release(0)
    with pytest.raises(RuntimeError, match="not held"):
        ring.release(0)
    with pytest.raises(RuntimeError, match="batch 0 already used slot 0"):
        ring.acquire(0, timeout=0.05)
    gen = ring.start_pass()
    assert ring.acquire(0, timeout=0.05, gen=gen)[0] == 0
    ring.end_pass(gen)
    with pytest.raises(StalePass, match=f"batch 1 belongs to pass {gen}"):
        ring.acquire(1, timeout=1, gen=gen)


def test_smaller_last_batch_is_a_view_of_the_first_rows():
    ring = SlotRing(SPECS, 2)
    _, full = ring.acquire(0)
    ring.release(0)
    s, t = ring.acquire(2, n=3)
    assert t["features"].shape == (3, 3) and t["index"].shape == (3,)
    assert t["features"].data_ptr() == full["features"].data_ptr()
    t["index"][:] = 7
    assert ring.slots[s]["index"].tolist() == [7, 7, 7, full["index"][3].item()]
    assert SlotRing.view(full, 1)["features"].shape == (1, 3)


def test_handing_back_releases_the_previous_batch_on_next_and_the_last_on_close():
    ring = SlotRing(SPECS, 2)

    def produce(count):
        for j in range(count):
            s, t = ring.acquire(j, timeout=1)  # raises if the consumer did not hand back in time
            t["index"][:] = j
            yield s, t

    def held():
        return [ring._held[s] for s in range(2)]

    batches = ring.handing_back(produce(5))
    assert next(batches)["index"][0] == 0 and held() == [0, -1]
    assert next(batches)["index"][0] == 1 and held() == [-1, 1]
    assert next(batches)["index"][0] == 2 and held() == [2, -1]
    batches.close()
    assert held() == [-1, -1]
    ring.start_pass()
    assert [b["index"][0].item() for b in ring.handing_back(produce(5))] == list(range(5))
    assert held() == [-1, -1]


def _child_produce(ring, q, count):
    for j in range(count):
        try:
            _, t = ring.acquire(j, n=3 if j == count - 1 else None, timeout=5)
        except RuntimeError as e:
            q.put(("error", str(e)))
            return
        t["features"].fill_(j + 0.5)
        t["index"].copy_(torch.arange(len(t["index"])) + 100 * j)
        q.put(("wrote", j))


def _expect(ring, j, n=4):
    t = ring.slots[ring.slot_of(j)]
    assert torch.equal(t["features"][:n], torch.full((n, 3), j + 0.5))
    assert t["index"][:n].tolist() == [100 * j + i for i in range(n)]


def _run_across_processes(method, timeout=5):
    ctx = multiprocessing.get_context(method)
    ring = SlotRing(SPECS, 2, shared=True, mp_context=ctx)
    q = ctx.Queue()
    child = ctx.Process(target=_child_produce, args=(ring, q, 4), daemon=True)
    child.start()
    try:
        assert q.get(timeout=timeout) == ("wrote", 0) and q.get(timeout=1) == ("wrote", 1)
        _expect(ring, 0), _expect(ring, 1)
        with pytest.raises(queue.Empty):  # the child waits for slot 0: nothing was released
            q.get(timeout=0.3)
        _expect(ring, 0)  # and did not overwrite it
        ring.release(0)
        assert q.get(timeout=1) == ("wrote", 2)
        _expect(ring, 2)
        ring.release(1)
        assert q.get(timeout=1) == ("wrote", 3)
        _expect(ring, 3, n=3)
        ring.release(0), ring.release(1)
        child.join(timeout)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_producer_writes_into_the_memory_the_parent_reads():
    _run_across_processes("fork")


@pytest.mark.slow  # the spawned child imports torch (~1.5 s)
def test_a_spawned_producer_writes_into_the_memory_the_parent_reads():
    _run_across_processes("spawn", timeout=30)


def test_pin_and_shared_together_is_refused_where_pinning_is_possible():
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin"):
            SlotRing(SPECS, 1, pin=True, shared=True)
    else:  # pinning is not honoured without CUDA, so nothing conflicts
        assert not SlotRing(SPECS, 1, pin=True, shared=True).slots[0]["index"].is_pinned()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_released_pinned_slot_is_rewritten_only_after_its_copy_event():
    ring = SlotRing({"x": ((1 << 22,), torch.float32)}, 1, pin=True)
    s, t = ring.acquire(0)
    assert t["x"].is_pinned()
    t["x"].fill_(1.0)
    dev = t["x"].to("cuda", non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    ring.release(s, event)
    _, t = ring.acquire(1)
    assert event.query()  # acquire synchronized it
    t["x"].fill_(2.0)
    assert dev.eq(1.0).all().item()


def test_a_new_pass_ends_the_old_one_without_sharing_a_slot_with_its_writers():
    """Persistent producers: a waiting acquire of an ended pass raises, a written slot of it is freed
    by start_pass, and a slot still being written is freed only when its producer says it is done."""
    ring = SlotRing(SPECS, 3, shared=True)
    old = ring.start_pass()
    ring.acquire(0, gen=old), ring.acquire(1, gen=old)
    ring.filled(0, old)                     # written, its slot number on its way to the consumer
    waiting = []                            # batch 3 waits for slot 0, which the consumer never releases
    t = threading.Thread(target=lambda: waiting.append(pytest.raises(StalePass, ring.acquire, 3, gen=old)))
    t.start()
    new = ring.start_pass()                 # the consumer left the old pass early
    t.join(2)
    assert waiting and not t.is_alive()
    with pytest.raises(StalePass, match=f"pass {old}"):
        ring.acquire(2, gen=old)
    assert ring.acquire(0, gen=new, timeout=0.1)[0] == 0      # written: freed by start_pass
    with pytest.raises(RuntimeError, match="slot 1 for batch 1.*ended pass is being written"):
        ring.acquire(1, gen=new, timeout=0.1)                 # the old batch 1 is still being written there
    ring.filled(1, old)
    assert ring.acquire(1, gen=new, timeout=0.1)[0] == 1
    ring.filled(1, new, ok=False)                             # a failed write frees its slot too
    ring.end_pass(old)                                        # a late end of an old pass changes nothing
    ring.filled(0, new)
    ring.release(0)
    assert ring.acquire(2, gen=new, timeout=0.1)[0] == 2
    ring.end_pass(new)
    with pytest.raises(StalePass):
        ring.acquire(3, gen=new, timeout=1)


def test_a_producer_whose_consumer_has_ended_stops_waiting():
    """A worker orphaned by a killed main process must not wait for a slot forever."""
    ring = SlotRing(SPECS, 1, shared=True)
    ring.acquire(0)
    ring._owner = 2 ** 22 + 1     # as seen from a process whose parent is another than the ring's reader
    with pytest.raises(RuntimeError, match=r"pid \d+\) has ended: batch 1 will never get slot 0"):
        ring.acquire(1, timeout=5)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_lock_left_held_by_a_killed_worker_raises_instead_of_hanging(monkeypatch):
    """A worker terminated inside the ring's lock leaves it held: the consumer's next call raises
    after LOCK_TIMEOUT_S, and a worker whose consumer has ended stops waiting for the lock."""
    monkeypatch.setattr(slots, "LOCK_TIMEOUT_S", 0.5)
    ring = SlotRing(SPECS, 2, shared=True, mp_context=multiprocessing.get_context("fork"))
    gen = ring.start_pass()
    dies_holding = multiprocessing.get_context("fork").Process(target=lambda: (ring._cond.acquire(), os._exit(0)))
    dies_holding.start()
    dies_holding.join(5)
    with pytest.raises(RuntimeError, match="held for 0.5 s: a process sharing it"):
        ring.end_pass(gen)
    ring._owner = 2 ** 22 + 1      # as seen from a worker whose consumer has ended
    with pytest.raises(RuntimeError, match=r"pid \d+\) has ended"):
        ring.acquire(0, gen=gen)


def test_a_pass_closed_after_the_next_has_started_takes_and_releases_nothing():
    """Lightning may drop an epoch's iterator only after the next epoch's has started: the old
    consumer must neither free the new pass's slots nor take its batches."""
    ring = SlotRing(SPECS, 2)

    def produce(gen):
        for j in itertools.count():
            s, t = ring.acquire(j, timeout=1, gen=gen)
            t["index"][:] = j
            ring.filled(s, gen)
            yield s, t

    old = ring.start_pass()
    a = ring.handing_back(produce(old), gen=old)
    next(a)
    new = ring.start_pass()
    b = ring.handing_back(produce(new), gen=new)
    assert next(b)["index"][0] == 0 and ring._held[0] == 0
    with pytest.raises(StopIteration):
        next(a)                  # the old pass ended: nothing more from it, and its slot is not released
    a.close()
    assert ring._held[0] == 0 and next(b)["index"][0] == 1 and next(b)["index"][0] == 2


@pytest.mark.parametrize("shared", [False, True])
def test_a_batch_never_released_has_its_queued_copies_awaited_before_a_new_pass_frees_its_slot(
        shared, monkeypatch):
    """The old pass's iterator left unclosed: no event was recorded for its held batch, so the new
    pass must wait for the GPU's queued work before the slot can be rewritten."""
    synced = []
    monkeypatch.setattr(slots, "_cuda_in_use", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synced.append(list(ring._held)))
    ring = SlotRing(SPECS, 2, shared=shared)
    old = ring.start_pass()
    ring.filled(ring.acquire(0, gen=old)[0], old)
    ring.release(0, gen=old)
    ring.start_pass()                       # every batch released: nothing to wait for
    assert synced == []
    old = ring.start_pass()
    ring.filled(ring.acquire(0, gen=old)[0], old)    # handed to the consumer, never released
    ring.acquire(1, gen=old)                         # still being written: no copy can read it yet
    ring.start_pass()
    assert synced == [[0, 1]]                   # awaited while slot 0 was still held
    assert ring._held[0] == slots.FREE


class _Copy:
    """Stands in for a torch.cuda.Event recorded after a copy from a slot: done once the GPU ran it."""

    def __init__(self):
        self.done = self.waited = False

    def query(self):
        return self.done

    def synchronize(self):
        self.waited = self.done = True


def test_a_shared_slot_is_freed_once_its_copy_has_run_and_the_consumer_never_waits_for_it():
    ring = SlotRing(SPECS, 2, shared=True)
    gen = ring.start_pass()
    for j in (0, 1):
        ring.filled(ring.acquire(j, gen=gen)[0], gen)
    copy = _Copy()
    ring.release(0, copy, gen)
    assert not copy.waited
    with pytest.raises(RuntimeError, match="slot 0 for batch 2"):
        ring.acquire(2, gen=gen, timeout=0.05)          # the copy from slot 0 may still read it
    copy.done = True
    ring.release(1, None, gen)                          # a later release finds the copy finished
    assert ring.acquire(2, gen=gen, timeout=0.05)[0] == 0 and not copy.waited
    ring.filled(0, gen)
    last = _Copy()
    ring.release(0, last, gen)
    ring.start_pass()                                   # a pass boundary waits for every copy
    assert last.waited and ring._held[0] == -1
    late = _Copy()
    ring.release(0, late, gen)                          # a release of an ended pass: its copy is awaited
    assert late.waited


def test_a_gpu_far_behind_makes_the_consumer_wait_for_the_oldest_copy_not_the_workers_forever():
    ring = SlotRing(SPECS, 4, shared=True)
    gen = ring.start_pass()
    copies = [_Copy() for _ in range(4)]
    for j in range(4):
        ring.filled(ring.acquire(j, gen=gen)[0], gen)
    for j in range(3):
        ring.release(j, copies[j], gen)
    assert copies[0].waited and not copies[1].waited          # at most MAX_PENDING (2) pending
    assert ring.acquire(4, gen=gen, timeout=0.05)[0] == 0

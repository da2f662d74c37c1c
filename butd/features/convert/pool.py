"""Running conversion tasks: in this process for one worker, else in a pool of worker processes;
and the progress bar."""
from __future__ import annotations

import multiprocessing
import signal
import threading

_STOP = None    # in a worker: the pool's stop event (tasks taken after it is set are skipped)


def _start_worker(stop) -> None:
    global _STOP
    _STOP = stop
    # Ctrl-C is handled by the parent, which stops the pool; workers just finish the task under way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Runner:
    """``runner(fn, tasks, ordered)`` yields ``(index, result)`` for each task: in this process for
    one worker, else in a pool of worker processes. ``close`` stops the pool without killing a
    worker: the tasks not started are skipped and those running (each a chunk: a fraction of a
    second) finish. (``Pool.terminate`` kills workers, and one killed while sending a result keeps
    the result queue's lock, on which the pool's own shutdown then waits forever: a conversion that
    failed on one worker while the other sent a result hung.)"""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 1:
            # fork when this process has no other thread (zarr's event loop thread does not survive
            # a fork; workers never use zarr's for uncompressed stores and import it afresh
            # otherwise): workers are ready at once instead of each importing everything again.
            # A process with threads (a caller that used zarr, say) spawns workers instead.
            method = "fork" if threading.active_count() == 1 else "spawn"
            ctx = multiprocessing.get_context(method)
            self.stop = ctx.Event()
            self.pool = ctx.Pool(workers, initializer=_start_worker, initargs=(self.stop,))

    def __call__(self, fn, tasks, ordered=False):
        if self.pool is None:
            yield from enumerate(map(fn, tasks))
            return
        indexed = [(fn, i, t) for i, t in enumerate(tasks)]
        yield from (self.pool.imap if ordered else self.pool.imap_unordered)(_indexed, indexed)

    def close(self) -> None:
        if self.pool is not None:
            self.stop.set()
            self.pool.close()
            self.pool.join()


def _indexed(item: tuple) -> tuple:
    fn, i, task = item
    return i, (None if _STOP is not None and _STOP.is_set() else fn(task))


def progress_bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress,
                dynamic_ncols=True, smoothing=0.1)

"""Running conversion tasks: in this process for one worker, else in a pool of worker processes;
and the progress bar."""
from __future__ import annotations

import multiprocessing
import signal
import threading


def _ignore_sigint() -> None:
    # Ctrl-C is handled by the parent, which stops the pool; workers just die quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Runner:
    """``runner(fn, tasks, ordered)`` yields ``(index, result)`` for each task."""

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
            self.pool = ctx.Pool(workers, initializer=_ignore_sigint)

    def __call__(self, fn, tasks, ordered=False):
        if self.pool is None:
            yield from enumerate(map(fn, tasks))
        elif ordered:
            yield from enumerate(self.pool.imap(fn, tasks))
        else:
            yield from self.pool.imap_unordered(_indexed, [(fn, i, t) for i, t in enumerate(tasks)])

    def close(self) -> None:
        # Every result is in (or no longer wanted) when this is called: stop the workers rather
        # than wait for them to wind down.
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _indexed(item: tuple) -> tuple:
    fn, i, task = item
    return i, fn(task)


def progress_bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress,
                dynamic_ncols=True, smoothing=0.1)

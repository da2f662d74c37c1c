"""Running conversion tasks: in this process for one worker, else in a pool of worker processes;
and the progress bar."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading

_STOP = None    # in a worker: the pool's stop event (tasks taken after it is set are skipped)
_POLL_S = 0.5   # how often a wait for results looks for a dead worker
_PR_SET_PDEATHSIG = 1   # Linux prctl option


class WorkerDied(RuntimeError):
    """A worker process ended while the pool ran (kill -9, the out-of-memory killer): its task is lost."""


def _start_worker(stop, parent: int) -> None:
    global _STOP
    _STOP = stop
    # Ctrl-C is handled by the parent, which stops the pool; workers just finish the task under way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (kill -9) cannot stop its workers: the kernel ends them when the
    # thread that started them (the pool's creator, alive while the pool is used) ends, instead of leaving them
    # to convert on and fail, each with a traceback, on the pipe to the dead parent.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (AttributeError, OSError):   # not Linux: orphans finish their task and fail quietly at worst
        pass
    if os.getppid() != parent:    # the parent died before the request above
        os._exit(1)


class Runner:
    """``runner(fn, tasks, ordered)`` yields ``(index, result)`` for each task: in this process for
    one worker, else in a pool of worker processes. A worker that dies (killed) raises
    ``WorkerDied`` at the next result or within ``_POLL_S``: ``multiprocessing.Pool`` replaces it and
    waits for its task forever. ``close`` stops the pool without killing a live worker: the tasks not started are skipped
    and those running (each a chunk: a fraction of a second) finish. (``Pool.terminate`` kills
    workers, and one killed while sending a result keeps the result queue's lock, on which the
    pool's own shutdown then waits forever; after a worker's death see ``_end_broken``.)"""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = self._results = self._dead = None
        if workers > 1:
            # fork when this process has no other thread (zarr's event loop thread does not survive
            # a fork; workers never use zarr's for uncompressed stores and import it afresh
            # otherwise): workers are ready at once instead of each importing everything again.
            # A process with threads (a caller that used zarr, say) spawns workers instead.
            method = "fork" if threading.active_count() == 1 else "spawn"
            ctx = multiprocessing.get_context(method)
            self.stop = ctx.Event()
            self.pool = ctx.Pool(workers, initializer=_start_worker, initargs=(self.stop, os.getpid()))
            # the workers the pool started with: one of them ending means a lost task (Pool's own
            # list drops a dead worker for its replacement)
            self._workers = list(self.pool._pool)

    def __call__(self, fn, tasks, ordered=False):
        if self.pool is None:
            yield from enumerate(map(fn, tasks))
            return
        indexed = [(fn, i, t) for i, t in enumerate(tasks)]
        self._results = (self.pool.imap if ordered else self.pool.imap_unordered)(_indexed, indexed)
        while True:
            try:
                item = self._next()
            except StopIteration:
                return
            yield item

    def _next(self):
        """The next result (StopIteration after the last), waiting in steps; a dead worker is looked
        for at each step and at each result (its replacement keeps results coming)."""
        while True:
            try:
                item = self._results.next(timeout=_POLL_S)
            except multiprocessing.TimeoutError:
                item = None
            dead = next((p for p in self._workers if p.exitcode is not None), None)
            if dead is not None:
                self._dead = dead
                raise WorkerDied(_death(dead))
            if item is not None:
                return item

    def close(self) -> None:
        if self.pool is None:
            return
        self.stop.set()
        if self._results is not None and self._dead is None:
            # let every task be skipped or finish: joining a pool with a task in flight waits for it
            # forever if its worker died meanwhile
            try:
                while True:
                    try:
                        self._next()
                    except (StopIteration, WorkerDied):
                        break
                    except Exception:   # a later task's own error: the run already fails on the first
                        pass
            finally:
                self._results = None
        if self._dead is not None:
            self._end_broken()   # may leave a daemon thread waiting on a lock the dead worker held
            return
        self.pool.close()
        self.pool.join()

    def _end_broken(self) -> None:
        """After a worker's death: its task is lost, so ``close`` and ``join`` would wait forever, and
        a worker killed while taking a task holds the task queue's lock, which ``Pool.terminate``
        takes before it ends the workers. It runs on a daemon thread (left waiting in that case),
        and the workers still alive are ended here."""
        ender = threading.Thread(target=self.pool.terminate, name="butd-pool-end", daemon=True)
        ender.start()
        ender.join(_POLL_S)
        workers = {p.pid: p for p in self._workers + list(self.pool._pool)}
        for p in workers.values():
            if p.exitcode is None:
                p.kill()
        for p in workers.values():
            p.join(_POLL_S)


def _death(process) -> str:
    code = process.exitcode
    if code < 0:
        name = signal.Signals(-code).name
        how = f"was killed by {name}" + (" (the kernel's out-of-memory killer sends it: try fewer --workers)"
                                         if -code == signal.SIGKILL else "")
    else:
        how = f"exited with status {code}"
    return (f"a conversion worker (pid {process.pid}) {how}; the chunks already written are kept: "
            "run the same command again to resume")


def _indexed(item: tuple) -> tuple:
    fn, i, task = item
    return i, (None if _STOP is not None and _STOP.is_set() else fn(task))


def progress_bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress,
                dynamic_ncols=True, smoothing=0.1)

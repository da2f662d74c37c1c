"""Writing chunk files: O_DIRECT from page-aligned buffers where the file system takes it, and a
thread that writes one file while the caller goes on."""
from __future__ import annotations

import errno
import os
import threading

import numpy as np


class Background(threading.Thread):
    """``fn(*args)`` in a thread of its own; ``result()`` waits and re-raises its exception. (A
    thread per call, not a pool: no thread outlives the call, so a later conversion in this
    process may still fork.)"""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error = fn, args, None
        self.start()

    def run(self) -> None:
        try:
            self.fn(*self.args)
        except BaseException as e:   # handed to result()
            self.error = e

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


DIRECT_ALIGN = 4096
# Least bytes per O_DIRECT write of a streamed chunk: 144 KB writes ran at 0.5 GB/s and 0.35 s of CPU
# per GB on our VMs, 576 KB and more at 1.2 GB/s and 0.1 s.
BATCH_BYTES = 1 << 20
DIRECT = {"ok": hasattr(os, "O_DIRECT")}


def write_file(path: str, data: np.ndarray) -> None:
    """Write ``data`` as the file ``path``: with O_DIRECT where the file system takes it and
    ``data`` is block-aligned (the features chunks). A buffered write puts every byte in fresh
    page-cache pages, and first-touching fresh memory is what buffered writes of a big store cost
    on our VMs (~2 ms per MB, several times the rest of the conversion); O_DIRECT hands the
    (re-used) chunk buffer to the disk instead and leaves the page cache to the TSV."""
    if DIRECT["ok"] and data.nbytes % DIRECT_ALIGN == 0 and data.ctypes.data % DIRECT_ALIGN == 0:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            DIRECT["ok"] = False   # not on this file system (tmpfs, say)
        else:
            try:
                view, done = memoryview(data).cast("B"), 0
                while done < len(view):
                    done += os.write(fd, view[done:])
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                DIRECT["ok"] = False
            finally:
                os.close(fd)
    with open(path, "wb") as out:
        out.write(data)



class RowStream:
    """One chunk file written row by row as its rows are filled: ``put(row, used)`` hands a
    finished row to a writer thread, which writes its first ``used`` bytes (O_DIRECT ``pwrite``
    at the row's offset) while the caller decodes the next rows, instead of the whole chunk after
    them; ``finish()`` sets the file's full size and waits. What is not written (the boxes a row
    pads to the store's largest count, the rows past the last image) is a hole in the file, read as
    zeros: an adaptive store's padding costs no writes. Only for page-aligned buffers whose rows and
    boxes are whole 4 KB blocks (2048 float16 or float32 values per box); ``open`` returns None
    where that or O_DIRECT is not available, and the caller writes the whole file at the end.
    (A thread per chunk: none outlives the chunk, so a later conversion in this process may fork.)"""

    def __init__(self, fd: int, buf: np.ndarray):
        import queue
        self.fd, self.buf, self.error, self.pending = fd, buf, None, None
        self.row_bytes = buf[0].nbytes
        self.queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @classmethod
    def open(cls, path: str, buf: np.ndarray, box_bytes: int):
        row_bytes = buf[0].nbytes if len(buf) else 0
        if not (DIRECT["ok"] and row_bytes and row_bytes % DIRECT_ALIGN == 0 and box_bytes % DIRECT_ALIGN == 0
                and buf.ctypes.data % DIRECT_ALIGN == 0):
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            DIRECT["ok"] = False
            return None
        return cls(fd, buf)

    def put(self, row: int, used: int) -> None:
        """Row ``row`` is final: its first ``used`` bytes hold its boxes, the rest are zeros. Rows
        that touch are written together, at least ``BATCH_BYTES`` at a time (small O_DIRECT writes
        are several times slower per byte on our VMs)."""
        if not used:
            return
        start = row * self.row_bytes
        end = start + min(used, self.row_bytes)
        if self.pending is not None and self.pending[1] == start:
            self.pending[1] = end
        else:
            self._flush()
            self.pending = [start, end]
        if self.pending[1] - self.pending[0] >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.pending is not None:
            self.queue.put(tuple(self.pending))
            self.pending = None

    def _run(self) -> None:
        data = memoryview(self.buf.reshape(-1).view(np.uint8))
        while (item := self.queue.get()) is not None:
            start, end = item
            view = data[start:end]
            try:
                while len(view) and self.error is None:
                    n = os.pwrite(self.fd, view, start)
                    view, start = view[n:], start + n
            except OSError as e:
                self.error = e

    def finish(self) -> None:
        """Wait for every write, give the file its full size (the rest reads as zeros), close;
        re-raise a write's error."""
        self._flush()
        self.queue.put(None)
        self.thread.join()
        try:
            if self.error is None:
                os.ftruncate(self.fd, self.buf.nbytes)
        finally:
            self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait for the writes queued and close the file (also after an error elsewhere)."""
        if self.fd is not None:
            self.queue.put(None)
            self.thread.join()
            os.close(self.fd)
            self.fd = None

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


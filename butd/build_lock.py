"""One builder per cache: an exclusive OS file lock on ``<cache path>.lock``, held while a process
makes or brings up to date a feature store or a question cache.

    with build_lock("data/GQA-Cache/trainval.zarr"):
        ...   # check again what is there, then build, resume or use it

A second process (another run of a sweep, a converter started by hand, another DDP node's rank on a
shared disk) that needs the same cache waits here, says once what it waits for, and goes on when the
first is done: it then finds the cache complete and uses it, never removing, overwriting or
half-reading what the first is writing. The lock is ``flock``: the kernel releases it when its
holder exits, however it exits (kill -9 included), so no crashed process leaves it held. In a
directory this process cannot write (a cluster's read-only copy of the caches) no lock file can be
made: an up-to-date cache is used without it, and one that would have to be built is an error at once. Within one
process the lock is re-entrant (a run that prepares its caches calls the converters, which lock the
same store). The lock file stays beside the cache after use; it holds nothing.

Some network file systems take no locks: there ``build_lock`` raises, saying so, and the caches are
to be prepared once, by one process, before many start (the README's "Many runs at once").
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading

_HELD = threading.local()    # .paths: the lock files this thread holds (re-entrant within a thread)
# What a file system without lock support answers (NFS without lockd, some FUSE mounts).
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# What creating the lock file answers in a directory this process cannot write (a shared read-only dataset).
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def lock_path(path: str) -> str:
    """The lock file of the cache at ``path``: beside it, so that it outlives the cache's removal."""
    return os.path.normpath(os.path.abspath(path)) + ".lock"


def _unsupported(path: str, error: OSError) -> OSError:
    return OSError(error.errno, f"{path}: cannot take a file lock here ({error.strerror}): this file system "
                   "(a network one?) does not support locks; prepare the caches once, in one process, before "
                   "starting several (README: 'Many runs at once')")


@contextlib.contextmanager
def build_lock(path: str, say=print, usable=None):
    """Hold the build lock of the cache at ``path`` for the ``with`` block, waiting for another
    holder first (saying so once with ``say``). In a directory this process cannot write, the block
    runs without it where ``usable()`` says the cache is ready to use as it is (nothing will be
    written). Raises OSError where the lock cannot be taken (no lock support; an unwritable
    directory where the cache is not ready), naming the lock file or the directory."""
    where = lock_path(path)
    held = _HELD.__dict__.setdefault("paths", set())
    if where in held:          # this thread holds it already
        yield
        return
    try:
        os.makedirs(os.path.dirname(where), exist_ok=True)
        fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno not in _READ_ONLY:
            raise
        if usable is None or not usable():   # it would be built where nothing can be written: say so now
            raise OSError(e.errno, f"{e.filename or os.path.dirname(where)}: cannot write here ({e.strerror}), "
                                   f"where {path} is to be made or brought up to date") from None
        try:     # a lock file already there: flock takes a read-only descriptor too
            fd = os.open(where, os.O_RDONLY)
        except FileNotFoundError:   # no writer to wait for: nobody here can write there
            yield
            return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"[*] waiting for another process building {path} (it holds {where})")
            fcntl.flock(fd, fcntl.LOCK_EX)      # Ctrl-C still interrupts the wait
        except OSError as e:
            raise (_unsupported(where, e) if e.errno in _UNSUPPORTED else e) from None
        held.add(where)
        try:
            yield
        finally:
            held.discard(where)
    finally:
        os.close(fd)     # releases the lock

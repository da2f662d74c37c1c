"""Copy the rows of a batch out of a store's chunk files at the machine's copy or disk bandwidth.

    fields = {f.name: field_reader(path, f, attrs, metas[f.name], error) for f in batch_fields}
    reader = BatchReader(fields)                                 # one per store and process
    reader.gather(rows, {"features": out_f, "spatials": out_s})  # C-contiguous numpy outputs, rows in any order

``FeatureStore`` (``butd.features.reader``) makes one and calls it; this module is how rows are read,
in one of three modes (``mode``):

- ``map``, for pages in the page cache: each uncompressed field's chunk files are memory-mapped side
  by side into one reserved address range, so the field reads as one array and a batch is one
  ``np.take(..., mode="clip")`` per copying thread: a memmove per row with the GIL released, as fast
  as a plain ``memcpy`` of the same bytes once the process has touched the pages (the first touch of
  a page costs a minor fault; filling the page tables ahead with ``MADV_POPULATE_READ`` costs as
  much). Not ``np.take`` with ``out=`` and the default ``mode="raise"``, which copies through a
  temporary (0.15x the speed), nor ``preadv`` from the page cache, which goes page by page (0.6x).
  The copies use every core this process may use (``default_threads``).
- ``read``, for pages not in the page cache: there a page fault blocks its thread on one page (with
  ``MADV_RANDOM``) or on the device's whole read-ahead window per miss. Instead each run of rows is
  read with ``preadv`` straight into the batch buffer by ``IO_THREADS`` threads at once, from files
  opened with ``POSIX_FADV_RANDOM`` so that exactly the requested bytes are read: a store larger
  than RAM does not evict pages for read-ahead it never uses.
- ``auto`` (the default) moves between the two: a batch starts in the mode the last one ended in.
  In ``map`` mode the copying threads look at their major page faults after ``CHECK_ROWS`` rows,
  then at doubling intervals, and hand the rest of the batch to ``read`` mode as soon as one
  happens. In ``read`` mode the copying threads first read each run with ``RWF_NOWAIT`` (served only
  from the page cache) and leave the misses to the I/O threads; a batch without misses returns to
  ``map`` mode.

Compressed stores (``butd.features.schema``: one image per inner chunk of a shard) read each image's
compressed bytes the same two-phase way and decode them straight into the image's batch row, on
every core (numcodecs releases the GIL). They read at the codec's speed on those cores (zstd decodes
these features at 0.5-1 GB/s per core), far below a warm uncompressed store, which is a memcpy; from
disk they read fewer bytes. Reading and decoding share the cores: a pool of decoding threads fed by
the I/O threads is no faster. Stores of the first compressed layout (one compressed block per chunk)
are decoded a whole chunk at a time. ``benchmarks/loader_speed.py`` measures every mode against its
bound (a copy of the same bytes, ``preadv`` from many threads, decoding from memory).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import google_crc32c  # zarr's own dependency, for its shard index checksum
import numpy as np

from butd.features import schema

MODES = ("auto", "map", "read")
NOWAIT = getattr(os, "RWF_NOWAIT", None)           # Linux >= 4.14; elsewhere every miss blocks
_USAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
_MAP_FIXED = 0x10            # the same on Linux, the BSDs and macOS; Python's mmap does not export it
CHECK_ROWS = 16              # map mode: rows copied before the first look at the thread's major faults
EMPTY = 2 ** 64 - 1          # a shard index entry of an inner chunk never written (read as fill value)
IO_THREADS = 32              # blocking reads in flight: a VM's disk reads alike from 8 to 32; SSDs want many


def major_faults() -> int:
    """Major page faults of the calling thread so far (of the process where threads cannot be told apart)."""
    return resource.getrusage(_USAGE).ru_majflt


def default_threads() -> int:
    """Copying threads for one gather: the cores this process may use (shared among DataLoader
    workers when called in one), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    from torch.utils.data import get_worker_info
    info = get_worker_info()
    return max(1, min(8, cores // (info.num_workers if info is not None else 1)))


_MMAP = ctypes.CDLL(None, use_errno=True).mmap
_MMAP.restype = ctypes.c_void_p
_MMAP.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


def read_into(fd: int, view: memoryview, offset: int, nowait: bool = False) -> int:
    """``preadv`` into ``view`` (bytes read; 0 at end of file). With ``nowait``, reads only what is in the
    page cache and raises BlockingIOError when nothing is."""
    if nowait:
        return os.preadv(fd, [view], offset, NOWAIT)
    return os.preadv(fd, [view], offset)


class _Field:
    """One field of the store in this process: its chunk files, their open descriptors, its rows."""

    def __init__(self, path: str, field: schema.Field, attrs: schema.StoreAttrs, error):
        self.field, self.error, self.C = field, error, attrs.chunk_images
        self.files = [schema.chunk_file(path, field, c) for c in range(attrs.num_chunks)]
        self.row_shape = field.shape(attrs)[1:]
        self.dtype = field.numpy_dtype(attrs)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.fds: dict = {}
        self._fd_lock = threading.Lock()

    def fd(self, c: int) -> int:
        fd = self.fds.get(c)
        if fd is None:
            with self._fd_lock:
                fd = self.fds.get(c)
                if fd is None:
                    fd = self.fds[c] = self._open(c)
        return fd

    def _open(self, c: int) -> int:
        try:
            fd = os.open(self.files[c], os.O_RDONLY)
        except OSError as e:
            raise self.error(self.files[c], c, f"missing or unreadable ({e.strerror})") from None
        if hasattr(os, "posix_fadvise"):   # read exactly the bytes asked for: no read-ahead to evict others
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return fd

    def prepare(self, chunks: np.ndarray, mapping: bool) -> None:
        """Before a batch reads ``chunks``: open their files (a missing one fails here, before any
        thread starts)."""
        for c in chunks.tolist():
            self.fd(c)

    def trim_fds(self, keep: set, limit: int) -> None:
        """Close the oldest descriptors of chunks not in ``keep`` until those of ``keep`` fit within
        ``limit`` (called between batches, when no thread reads)."""
        excess = len(self.fds) + len(keep.difference(self.fds)) - limit
        for c in [c for c in self.fds if c not in keep][:max(0, excess)]:
            os.close(self.fds.pop(c))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def read_exact(self, c: int, view: memoryview, offset: int, nowait: bool) -> int:
        """Read ``len(view)`` bytes at ``offset`` of chunk ``c``; returns how many were read (fewer only with
        ``nowait``, where the rest is not in the page cache)."""
        fd, done = self.fd(c), 0
        while done < len(view):
            try:
                got = read_into(fd, view[done:], offset + done, nowait)
            except BlockingIOError:
                return done
            except OSError as e:
                if nowait and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # file system without RWF_NOWAIT
                    return done
                raise self.error(self.files[c], c, f"unreadable ({e.strerror})") from None
            if got == 0:
                if nowait:
                    return done
                raise self.error(self.files[c], c, f"shorter than expected (nothing at byte {offset + done})")
            done += got
            if nowait:   # a short NOWAIT read stops where the cached pages stop
                return done
        return done


class RawField(_Field):
    """Uncompressed chunks (the raw little-endian C-order block of ``chunk_images`` rows): all chunk
    files mapped side by side (see the module docstring), and read with ``preadv`` when cold."""
    kind = "raw"

    def __init__(self, path, field, attrs, error):
        super().__init__(path, field, attrs, error)
        self.chunk_bytes = self.C * self.row_bytes
        self.stride = -(-self.chunk_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        n = len(self.files)
        # Reserved address space: private, read-only and untouched, so it costs no memory; each
        # chunk file is mapped over its slot with MAP_FIXED the first time a batch needs it.
        self.region = mmap.mmap(-1, max(1, n) * self.stride, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        self.base = np.frombuffer(self.region, np.uint8).ctypes.data
        self.mapped = np.zeros(n, bool)
        self.flat = self.stride == self.chunk_bytes
        if self.flat:   # [num_chunks * C, *row]: one np.take per batch
            self.rows = np.frombuffer(self.region, self.dtype, count=n * self.C * self.row_bytes // self.dtype.itemsize
                                      ).reshape((n * self.C,) + self.row_shape)
        else:           # chunks a page multiple apart: [num_chunks, C, *row]
            inner = np.empty((self.C,) + self.row_shape, self.dtype).strides
            self.rows = np.ndarray((n, self.C) + self.row_shape, self.dtype, buffer=self.region,
                                   strides=(self.stride,) + inner)

    def prepare(self, chunks: np.ndarray, mapping: bool) -> None:
        if not mapping:
            return super().prepare(chunks, mapping)
        for c in chunks[~self.mapped[chunks]].tolist():
            self._map(c)

    def _map(self, c: int) -> None:
        fd = self._open(c)
        try:
            size = os.fstat(fd).st_size
            if size != self.chunk_bytes:
                raise self.error(self.files[c], c, f"{size} bytes, expected {self.chunk_bytes} ({self.C} x "
                                 f"{self.row_shape} {self.dtype}); the file is truncated or corrupt")
            want = self.base + c * self.stride
            got = _MMAP(want, self.chunk_bytes, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
            if got != want:
                raise self.error(self.files[c], c, f"cannot be memory-mapped ({os.strerror(ctypes.get_errno())})")
        finally:
            os.close(fd)
        # a fault on a page not in the cache reads that page, not the read-ahead window around it
        self.region.madvise(mmap.MADV_RANDOM, c * self.stride, self.stride)
        self.mapped[c] = True

    def take(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy ``rows`` (all mapped) into ``out`` from the maps."""
        if self.flat:
            np.take(self.rows, rows, axis=0, out=out, mode="clip")  # "raise" would copy through a temporary
        else:
            out[...] = self.rows[rows // self.C, rows % self.C]

    def units(self, rows: np.ndarray, out: np.ndarray) -> list:
        """Reads of ``rows`` into ``out``: one ``(self, chunk, file offset, destination bytes)`` per run of
        consecutive rows in one chunk."""
        if not len(rows):
            return []
        chunks, local = np.divmod(rows, self.C)
        breaks = np.flatnonzero((chunks[1:] != chunks[:-1]) | (local[1:] != local[:-1] + 1)) + 1
        starts, ends = np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist()
        dest, rb = memoryview(out.reshape(-1).view(np.uint8)), self.row_bytes
        return [(self, c, l * rb, dest[s * rb:e * rb])
                for s, e, c, l in zip(starts, ends, chunks[starts].tolist(), local[starts].tolist())]

    def run(self, unit: tuple, nowait: bool, scratch) -> tuple | None:
        _, c, offset, dest = unit
        done = self.read_exact(c, dest, offset, nowait)
        return None if done == len(dest) else (self, c, offset + done, dest[done:])


class _Codec:
    """Decoding of one compressed block: the compressor of a ``[bytes, zstd|blosc]`` codec chain."""

    def __init__(self, codecs: list, where: str):
        names = [c.get("name") for c in codecs]
        endian = codecs[0].get("configuration", {}).get("endian", "little") if codecs else None
        if not names or names[0] != "bytes" or endian != "little" or len(names) > 2 or \
                (len(names) == 2 and names[1] not in ("zstd", "blosc")):
            raise ValueError(f"{where}: codecs {names} (endian {endian}); this reader reads little-endian "
                             "bytes, optionally zstd or blosc compressed")
        self.name = names[1] if len(names) == 2 else None
        self.codec = None
        if self.name is not None:
            import numcodecs.blosc
            import numcodecs.zstd
            # the modules' own functions: the Codec classes' checks cost ~10 us a call, GIL held, per image
            self.codec = {"zstd": numcodecs.zstd.decompress, "blosc": numcodecs.blosc.decompress}[self.name]

    def decode(self, data: memoryview, out: np.ndarray) -> None:
        """Decode one block into ``out`` (C-contiguous). Raises ValueError for a block whose header
        declares other than ``out``'s bytes (the codecs themselves accept a shorter one and leave the
        rest of ``out`` as it was) or, for blosc, other than the block's own length."""
        if self.codec is None:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            return
        head = bytes(data[:18])
        if self.name == "blosc":   # blosc1 header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes
            size, cbytes = int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")
            if len(head) < 16 or cbytes != len(data):
                raise ValueError(f"the block is {len(data)} bytes, its header says {cbytes if len(head) >= 16 else '?'}")
        else:
            size = zstd_content_size(head)
        if size is not None and size != out.nbytes:
            raise ValueError(f"the block decodes to {size} bytes, the output holds {out.nbytes}")
        self.codec(data, out)   # a zstd frame that declares no size: numcodecs checks the length it decodes


def zstd_content_size(head: bytes) -> int | None:
    """The decoded size a zstd frame header (its first 18 bytes) declares (RFC 8878, 3.1.1.1: magic,
    descriptor, window, dictionary id, content size); None if it declares none or is no frame."""
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = head[4]
    single, fcs_flag = descriptor >> 5 & 1, descriptor >> 6
    start = 5 + (not single) + (0, 1, 2, 4)[descriptor & 3]
    width = (single, 2, 4, 8)[fcs_flag]
    if width == 0 or len(head) < start + width:
        return None
    return int.from_bytes(head[start:start + width], "little") + (256 if width == 2 else 0)


def _scratch(scratch, nbytes: int) -> memoryview:
    """A per-thread byte buffer of at least ``nbytes`` (``scratch`` is a threading.local)."""
    buf = getattr(scratch, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = scratch.buf = bytearray(max(nbytes, 2 * len(buf) if buf is not None else nbytes))
    return memoryview(buf)[:nbytes]


class ShardedField(_Field):
    """A compressed field in shards of ``chunk_images`` images, one image per inner chunk (zarr v3
    ``sharding_indexed``, index of ``(offset, nbytes)`` uint64 pairs and its crc32c at the end): each
    image of a batch is read and decoded on its own."""
    kind = "sharded"

    def __init__(self, path, field, attrs, error, codecs: list, where: str):
        super().__init__(path, field, attrs, error)
        self.codec = _Codec(codecs, where)
        self.index_bytes = 16 * self.C + 4
        self.indexes: dict = {}

    def units(self, rows: np.ndarray, out: np.ndarray) -> list:
        chunks, local = np.divmod(rows, self.C)
        return [(self, c, l, out[i]) for i, (c, l) in enumerate(zip(chunks.tolist(), local.tolist()))]

    def shard_index(self, c: int, nowait: bool = False, scratch=None):
        """Shard ``c``'s index: a flat list of ``chunk_images`` pairs (byte offset, byte count) of each
        image's compressed block (offset ``EMPTY``: never written), checked against its crc32c;
        ``None`` if ``nowait`` and it is not in the page cache. Raises the store's error for a
        damaged shard."""
        scratch = scratch if scratch is not None else threading.local()
        index = self.indexes.get(c)
        if index is None:
            size = os.fstat(self.fd(c)).st_size
            if size < self.index_bytes:
                raise self.error(self.files[c], c, f"{size} bytes, too short for a shard index")
            buf = _scratch(scratch, self.index_bytes)
            if self.read_exact(c, buf, size - self.index_bytes, nowait) < self.index_bytes:
                return None
            body = bytes(buf[:-4])
            if google_crc32c.value(body) != int.from_bytes(buf[-4:], "little"):
                raise self.error(self.files[c], c, "a shard with a corrupt index (crc32c mismatch)")
            index = np.frombuffer(body, "<u8").reshape(self.C, 2)
            bad = (index[:, 0] != EMPTY) & (index[:, 0] + index[:, 1] > size - self.index_bytes)
            if bad.any():
                raise self.error(self.files[c], c, f"a shard whose index points past its data (image {int(np.argmax(bad))})")
            index = self.indexes[c] = index.reshape(-1).tolist()   # Python ints, read per image of every batch
        return index

    def run(self, unit: tuple, nowait: bool, scratch) -> tuple | None:
        _, c, local, dest = unit
        index = self.shard_index(c, nowait, scratch)
        if index is None:
            return unit
        offset, nbytes = index[2 * local], index[2 * local + 1]
        if offset == EMPTY:
            dest[...] = 0   # the fill value: the converter creates every array with fill_value=0
            return None
        buf = _scratch(scratch, nbytes)
        if self.read_exact(c, buf, offset, nowait) < nbytes:
            return unit
        try:
            self.codec.decode(buf, dest)
        except Exception as e:   # numcodecs raises assorted errors for damaged blocks
            raise self.error(self.files[c], c, f"cannot be decoded (image {local}: {type(e).__name__}: {e})") from None
        return None


class ChunkedField(_Field):
    """A compressed field of the first layout: one compressed block per chunk of ``chunk_images``
    images, decoded whole."""
    kind = "chunked"

    def __init__(self, path, field, attrs, error, codecs: list, where: str):
        super().__init__(path, field, attrs, error)
        self.codec = _Codec(codecs, where)

    def units(self, rows: np.ndarray, out: np.ndarray) -> list:
        """One ``(self, chunk, local rows, output, output positions)`` per chunk the rows touch."""
        if not len(rows):
            return []
        chunks, local = np.divmod(rows, self.C)
        order = np.argsort(chunks, kind="stable")
        breaks = np.flatnonzero(np.diff(chunks[order])) + 1
        return [(self, int(chunks[g[0]]), local[g], out, g) for g in np.split(order, breaks)]

    def run(self, unit: tuple, nowait: bool, scratch) -> tuple | None:
        _, c, local, out, positions = unit
        size = os.fstat(self.fd(c)).st_size
        buf = _scratch(scratch, size)
        if self.read_exact(c, buf, 0, nowait) < size:
            return unit
        block = getattr(scratch, "block", None)
        if block is None or block.shape != (self.C,) + self.row_shape or block.dtype != self.dtype:
            block = scratch.block = np.empty((self.C,) + self.row_shape, self.dtype)
        try:
            self.codec.decode(buf, block)
        except Exception as e:
            raise self.error(self.files[c], c, f"cannot be decoded ({type(e).__name__}: {e})") from None
        out[positions] = block[local]
        return None


def layout(meta: dict, row_shape: tuple, where: str) -> tuple:
    """``(kind, codecs)`` of a field from its zarr metadata: ``"raw"`` (uncompressed chunks),
    ``"sharded"`` (one compressed image per inner chunk) or ``"chunked"`` (a compressed block per
    chunk, the first layout), and the codec chain of one block. Raises ValueError, naming ``where``,
    for a layout this reader does not read."""
    codecs = meta.get("codecs", [])
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        config = codecs[0].get("configuration", {})
        inner, loc = config.get("chunk_shape"), config.get("index_location", "end")
        index = [c.get("name") for c in config.get("index_codecs", [])]
        if inner != [1, *row_shape] or index != ["bytes", "crc32c"] or loc != "end":
            raise ValueError(f"{where}: shards of inner chunks {inner} with index codecs {index} at the {loc}; "
                             f"this reader reads inner chunks of one image ({[1, *row_shape]}) and a "
                             "[bytes, crc32c] index at the end")
        _Codec(config.get("codecs", []), where)
        return "sharded", config.get("codecs", [])
    return ("raw" if _Codec(codecs, where).codec is None else "chunked"), codecs


def field_reader(path: str, field: schema.Field, attrs: schema.StoreAttrs, meta: dict, error) -> _Field:
    """The reader of one field in this process; ``error(file, chunk, what)`` makes its exceptions."""
    where = os.path.join(path, field.name, "zarr.json")
    kind, codecs = layout(meta, field.shape(attrs)[1:], where)
    if kind == "raw":
        return RawField(path, field, attrs, error)
    return (ShardedField if kind == "sharded" else ChunkedField)(path, field, attrs, error, codecs, where)


class BatchReader:
    """Gathers batches of rows from the given fields of one store (see the module docstring).
    ``threads`` copying threads (default ``default_threads``), ``io_threads`` blocking readers,
    ``mode`` one of ``MODES``. Made in the process that reads; not picklable, not fork-safe."""

    def __init__(self, fields: dict, threads: int | None = None, io_threads: int = IO_THREADS,
                 mode: str = "auto", max_open: int = 1 << 30):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.fields, self.max_open = fields, max_open
        self.threads = max(1, threads or default_threads())
        self.io_threads = max(1, io_threads)
        self.setting = mode
        self.mode = "map" if mode == "map" or (mode == "auto" and NOWAIT is None) else "read"
        self.lock = threading.Lock()     # one batch at a time: descriptors are closed only between batches
        self.scratch = threading.local()
        self._cpu = self._io = None

    def close(self) -> None:
        for f in self.fields.values():
            f.close()

    def __del__(self):
        if hasattr(self, "fields"):
            self.close()

    # -- threads ----------------------------------------------------------------------------------
    def _run(self, fns: list, io: bool = False) -> list:
        """Call each of ``fns`` (no arguments) on a thread; the last on the calling thread unless ``io``.
        Waits for all before raising the first error, so that no thread still writes into an output."""
        if len(fns) == 1 and not io:
            return [fns[0]()]
        if io:
            if self._io is None:
                self._io = ThreadPoolExecutor(self.io_threads, thread_name_prefix="butd-read")
            pool, mine = self._io, None
        else:
            if self._cpu is None:
                self._cpu = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="butd-gather")
            pool, mine = self._cpu, fns[-1]
            fns = fns[:-1]
        futures = [pool.submit(fn) for fn in fns]
        try:
            last = [mine()] if mine is not None else []
        finally:
            wait(futures)
        return [f.result() for f in futures] + last

    @staticmethod
    def _split(n: int, parts: int) -> list:
        parts = max(1, min(parts, n))
        return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]

    def take(self, sources: dict, rows: np.ndarray, outs: dict) -> None:
        """``np.take(sources[name], rows, axis=0, out=outs[name])`` of every field over the copying
        threads (a resident cache)."""
        def part(lo, hi):
            for name, source in sources.items():
                np.take(source, rows[lo:hi], axis=0, out=outs[name][lo:hi], mode="clip")

        self._run([lambda lo=lo, hi=hi: part(lo, hi) for lo, hi in self._split(len(rows), self.threads)])

    # -- a batch ----------------------------------------------------------------------------------
    def gather(self, rows: np.ndarray, outs: dict) -> None:
        """Write ``fields[name]``'s ``rows`` (int64, valid, any order) into ``outs[name]`` (C-contiguous)."""
        if not len(rows):
            return
        with self.lock:
            chunks = np.unique(rows // next(iter(self.fields.values())).C)
            keep = set(chunks.tolist())
            mapped = [n for n, f in self.fields.items() if f.kind == "raw" and self.mode == "map"]
            for n, f in self.fields.items():
                f.trim_fds(keep, self.max_open // len(self.fields))
                f.prepare(chunks, mapping=n in mapped)
            units = [u for n, f in self.fields.items() if n not in mapped for u in f.units(rows, outs[n])]
            parts = self._split(len(rows), self.threads)
            tasks = [lambda lo=lo, hi=hi, i=i: self._part(rows, outs, mapped, lo, hi, units[i::len(parts)])
                     for i, (lo, hi) in enumerate(parts)]
            results = self._run(tasks)
            left = [u for r, _ in results for u in r]
            cold = any(c for _, c in results)
            if left:
                self._run([lambda g=g: [u[0].run(u, False, self.scratch) for u in g]
                           for g in (left[i::self.io_threads] for i in range(min(self.io_threads, len(left))))],
                          io=True)
            if self.setting == "auto" and NOWAIT is not None:
                raw_left = any(u[0].kind == "raw" for u in left)
                self.mode = "read" if cold or raw_left else "map"

    def _part(self, rows, outs, mapped, lo, hi, units) -> tuple:
        """One copying thread's share: rows ``lo:hi`` of the mapped fields, then ``units`` from the page
        cache only. Returns what is left for the I/O threads and whether a map copy faulted."""
        left, cold, watch = [], False, self.setting == "auto"
        s, step = lo, CHECK_ROWS if watch else hi - lo
        while mapped and s < hi:   # in steps doubling from CHECK_ROWS while no page fault reads
            e = min(s + step, hi)
            before = major_faults() if watch else 0
            for n in mapped:
                self.fields[n].take(rows[s:e], outs[n][s:e])
            if watch and major_faults() > before:   # not in the page cache: read the rest, don't fault it in
                cold = True
                left = [u for n in mapped for u in self.fields[n].units(rows[e:hi], outs[n][e:hi])]
                break
            s, step = e, 2 * step
        nowait = NOWAIT is not None
        for u in units:
            rest = u[0].run(u, nowait, self.scratch) if nowait else u
            if rest is not None:
                left.append(rest)
        return left, cold

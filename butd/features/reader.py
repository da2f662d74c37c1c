"""Read batches of image features out of a converted feature store (see ``butd.features.schema``).

    store = FeatureStore("data/GQA-Cache/trainval.zarr")            # memory-mapped, the default
    features, spatials = store.gather([17, 3, 17, 900])              # torch tensors [4, K, D], [4, K, 6]

How a batch is read depends on the store and on ``cache``:

- ``cache="none"``, uncompressed store (the converter's default): every chunk file of ``features``
  and ``spatials`` is memory-mapped (``np.memmap``) the first time a batch needs it, and a batch is
  one ``np.take`` per touched chunk straight into the output buffer. The pages live in the OS page
  cache, so every DataLoader worker shares one copy of the store; nothing is read into private
  memory except the batch itself.
- ``cache="none"``, compressed store: chunks are decoded through zarr and kept in a small LRU cache
  (``chunk_cache`` chunks per process). Random batches touch almost every chunk, so this path is a
  fallback for stores that must stay small on disk, not the fast one.
- ``cache="pinned"``: the whole of ``features`` and ``spatials`` is copied, chunk by chunk, into one
  page-locked host tensor (plain memory without CUDA) the first time a batch is gathered (PyTorch's
  pinned allocator rounds the size up to a power of two: budget up to 2x the store); batches
  are then ``index_select`` from RAM. ``cache="gpu"``: the same, resident on ``device`` (default: the
  current CUDA device), and batches are gathered there. Both are built in the process that gathers;
  use them from the main process (``num_workers=0``), which ``butd.loading`` does.

Nothing is opened in ``__init__`` beyond reading the store's JSON metadata: memory maps, zarr arrays
and resident caches are created lazily in the process that gathers (zarr's event loop is not
fork-safe) and are dropped when the store is pickled to a worker.
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import numpy as np
import torch

from butd.features import schema

CACHES = ("none", "pinned", "gpu")
# The two fields a training batch needs; the rest of the store (boxes, ids, ...) is for analysis.
BATCH_FIELDS = tuple(f for f in schema.FIELDS if f.name in ("features", "spatials"))
_REMAKE = "re-run `python converters/tsv_to_zarr.py` to rebuild it"


class StoreError(RuntimeError):
    """A feature store that cannot be read: what is wrong, which file, which images."""


def _array_meta(path: str, field: schema.Field) -> dict:
    meta_path = os.path.join(path, field.name, "zarr.json")
    try:
        with open(meta_path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise StoreError(f"{meta_path}: cannot read the metadata of array '{field.name}' ({e}); {_REMAKE}") from None


def _is_raw(meta: dict) -> bool:
    """True when chunk files are plain little-endian C-order bytes that np.memmap can read."""
    codecs = meta.get("codecs", [])
    return (len(codecs) == 1 and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little")


def open_attrs(path: str) -> tuple[schema.StoreAttrs, dict]:
    """Validate a store for reading batches: it exists, is marked complete, and ``features`` /
    ``spatials`` have the shape, dtype and chunking the schema promises. Returns the attributes and
    each field's zarr metadata."""
    # FileNotFoundError or StoreError, naming the store and the command that makes or resumes it
    attrs = schema.read_complete_attrs(path, error=StoreError)
    if attrs.schema_version != schema.SCHEMA_VERSION:
        raise StoreError(f"{path}: store schema version {attrs.schema_version}, this code reads "
                         f"version {schema.SCHEMA_VERSION}; {_REMAKE}")
    metas = {}
    for field in BATCH_FIELDS:
        meta = _array_meta(path, field)
        want_shape = list(field.shape(attrs))
        want_chunks = [attrs.chunk_images] + want_shape[1:]
        got_chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        want_dtype = str(field.numpy_dtype(attrs))
        if meta.get("shape") != want_shape or got_chunks != want_chunks or meta.get("data_type") != want_dtype:
            raise StoreError(
                f"{os.path.join(path, field.name, 'zarr.json')}: array '{field.name}' is "
                f"{meta.get('data_type')} {meta.get('shape')} in chunks {got_chunks}, the store's "
                f"attributes promise {want_dtype} {want_shape} in chunks {want_chunks}; {_REMAKE}")
        metas[field.name] = meta
    return attrs, metas


class _ChunkReader:
    """Whole chunks of one store, by (field, chunk): memory maps for raw chunks, zarr plus an LRU
    of decoded chunks otherwise. One per process."""

    def __init__(self, store: "FeatureStore", chunk_cache: int):
        self.store = store
        self.maps: OrderedDict = OrderedDict()
        self.max_maps = _allow_open_files(len(BATCH_FIELDS) * store.attrs.num_chunks)
        self.arrays: dict = {}
        self.lru: OrderedDict = OrderedDict()
        self.lru_size = chunk_cache
        # the train and val loaders' threads may share one store (e.g. train/val both in trainval)
        self.lock = threading.Lock()

    def chunk(self, field: schema.Field, c: int) -> np.ndarray:
        with self.lock:
            return self._chunk(field, c)

    def _chunk(self, field: schema.Field, c: int) -> np.ndarray:
        key = (field.name, c)
        if self.store.raw[field.name]:
            m = self.maps.get(key)
            if m is None:
                m = self.maps[key] = self._map(field, c)
                if len(self.maps) > self.max_maps:
                    self.maps.popitem(last=False)
            return m
        if key in self.lru:
            self.lru.move_to_end(key)
            return self.lru[key]
        block = self._decode(field, c)
        self.lru[key] = block
        if len(self.lru) > self.lru_size:
            self.lru.popitem(last=False)
        return block

    def _map(self, field: schema.Field, c: int) -> np.memmap:
        attrs, fname = self.store.attrs, schema.chunk_file(self.store.path, field, c)
        shape = (attrs.chunk_images,) + field.shape(attrs)[1:]
        dtype = field.numpy_dtype(attrs)
        want = int(np.prod(shape)) * dtype.itemsize
        try:
            size = os.path.getsize(fname)
        except OSError as e:
            raise self.store.chunk_error(fname, c, f"missing or unreadable ({e.strerror})") from None
        if size != want:
            raise self.store.chunk_error(fname, c, f"{size} bytes, expected {want} "
                                         f"({shape} {dtype}); the file is truncated or corrupt")
        try:
            return np.memmap(fname, dtype=dtype, mode="r", shape=shape)
        except (OSError, ValueError) as e:
            raise self.store.chunk_error(fname, c, f"cannot be memory-mapped ({e})") from None

    def _decode(self, field: schema.Field, c: int) -> np.ndarray:
        import zarr  # only the compressed path needs zarr in the reading process
        fname = schema.chunk_file(self.store.path, field, c)
        # zarr reads a missing chunk as the fill value; for a complete store that is corruption
        if not os.path.exists(fname):
            raise self.store.chunk_error(fname, c, "missing")
        arr = self.arrays.get(field.name)
        if arr is None:
            arr = self.arrays[field.name] = zarr.open_array(os.path.join(self.store.path, field.name), mode="r")
        lo = c * self.store.attrs.chunk_images
        try:
            return np.ascontiguousarray(arr[lo:lo + self.store.attrs.chunk_images])
        except Exception as e:  # zarr/numcodecs raise assorted decode errors
            raise self.store.chunk_error(fname, c, f"cannot be decoded ({type(e).__name__}: {e})") from None


def _allow_open_files(wanted: int, spare: int = 256) -> int:
    """How many chunk maps this process may keep open. Each np.memmap holds a file descriptor
    (Python's mmap dups it), and a full GQA store has thousands of chunks, so raise the soft limit
    towards the hard one; past that, the oldest maps are closed and reopened when needed."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted + spare:
        target = wanted + spare if hard == resource.RLIM_INFINITY else min(hard, wanted + spare)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(16, min(wanted, soft - spare))


def _segments(chunks: np.ndarray):
    """(start, end) of each run of equal values in ``chunks``."""
    bounds = np.flatnonzero(chunks[1:] != chunks[:-1]) + 1
    return zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(chunks)].tolist())


class FeatureStore:
    """Batched reads of ``features`` and ``spatials`` from one store; see the module docstring."""

    def __init__(self, path, cache: str = "none", device=None, chunk_cache: int = 16):
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
        self.path = os.fspath(path)
        self.cache = cache
        self.device = device
        self.chunk_cache = chunk_cache
        self.attrs, metas = open_attrs(self.path)
        self.raw = {name: _is_raw(meta) for name, meta in metas.items()}
        self._fields = {f.name: f for f in BATCH_FIELDS}
        self._num_boxes = None
        self._reset()

    def _reset(self):
        self._pid = None
        self._reader = None
        self._resident = None
        self._lock = threading.Lock()   # lazy opening, from several loader threads at once

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock")
        state.update(_pid=None, _reader=None, _resident=None)  # reopened lazily in the new process
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- what the store holds --------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return self.attrs.num_images

    @property
    def feature_dim(self) -> int:
        return self.attrs.feature_dim

    @property
    def max_boxes(self) -> int:
        return self.attrs.max_boxes

    def batch_shapes(self, n: int) -> dict:
        """Shape and torch dtype of ``gather``'s outputs for ``n`` rows, by field name."""
        return {name: ((n,) + f.shape(self.attrs)[1:], getattr(torch, str(f.numpy_dtype(self.attrs))))
                for name, f in self._fields.items()}

    def image_ids(self) -> np.ndarray:
        return schema.read_image_ids(self.path)

    def num_boxes(self) -> np.ndarray:
        """The box count of every image, int32 [num_images]: rows past it are zero padding (the
        adaptive 10-100-box features)."""
        if self._num_boxes is None:
            field = next(f for f in schema.FIELDS if f.name == "num_boxes")
            if self.attrs.compressor == "none":   # raw little-endian chunks: no zarr in this process
                counts = np.concatenate([np.fromfile(schema.chunk_file(self.path, field, c), dtype="<i4")
                                         for c in range(self.attrs.num_chunks)])
            else:
                import zarr
                counts = zarr.open_array(os.path.join(self.path, field.name), mode="r")[:]
            self._num_boxes = np.ascontiguousarray(counts[:self.num_images], dtype=np.int32)
        return self._num_boxes

    @property
    def variable_boxes(self) -> bool:
        """True when some image has fewer boxes than ``max_boxes`` (its batch rows are padded)."""
        return bool(self.num_boxes().min() < self.max_boxes)

    def chunk_error(self, fname: str, c: int, what: str) -> StoreError:
        lo = c * self.attrs.chunk_images
        hi = min(lo + self.attrs.chunk_images, self.num_images)
        try:
            ids = self.image_ids()[lo:hi]
            named = ", ".join(ids[:3]) + (f", ... {ids[-1]}" if len(ids) > 3 else "")
        except Exception:  # the ids may be what is broken; the rows still locate the damage
            named = "ids unreadable"
        return StoreError(f"{fname}: chunk {c} of {self.path} is {what}; it holds rows {lo}..{hi - 1} "
                          f"(images {named}); {_REMAKE}")

    # -- reading -------------------------------------------------------------------------------
    def _process_state(self):
        with self._lock:
            self._open_in_this_process()

    def _open_in_this_process(self):
        if self._pid != os.getpid():
            if self._resident is not None:
                raise RuntimeError(f"{self.path}: FeatureStore(cache={self.cache!r}) was filled in another "
                                   "process; resident caches are gathered in the process that built "
                                   "them (use num_workers=0)")
            self._reader = _ChunkReader(self, self.chunk_cache)
            self._pid = os.getpid()
        if self.cache != "none" and self._resident is None:
            self._resident = self._load_resident()

    def _load_resident(self) -> dict:
        """Copy the whole store, chunk by chunk, into one tensor per field (pinned host or GPU)."""
        C, N = self.attrs.chunk_images, self.num_images
        device = self._device()
        resident = {}
        for name, (shape, dtype) in self.batch_shapes(N).items():
            if device is None:
                t = torch.empty(shape, dtype=dtype, pin_memory=torch.cuda.is_available())
            else:
                t = torch.empty(shape, dtype=dtype, device=device)
            for c in range(self.attrs.num_chunks):
                block = self._reader.chunk(self._fields[name], c)[: min(C, N - c * C)]
                dst = t[c * C: c * C + len(block)]
                if dst.is_cuda:  # np.array: a writable copy of the read-only map for torch
                    dst.copy_(torch.from_numpy(np.array(block)))
                else:
                    dst.numpy()[:] = block
            resident[name] = t
        self._reader = _ChunkReader(self, self.chunk_cache)  # drop the maps: the copy is all we need
        return resident

    def _device(self):
        if self.cache != "gpu":
            return None
        if self.device is not None:
            return torch.device(self.device)
        if not torch.cuda.is_available():
            raise RuntimeError(f"{self.path}: cache='gpu' needs a CUDA device (none is available)")
        return torch.device("cuda", torch.cuda.current_device())

    def _check_rows(self, rows: np.ndarray):
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_images):
            bad = rows[(rows < 0) | (rows >= self.num_images)][0]
            raise IndexError(f"{self.path}: row {bad} requested, the store holds {self.num_images} images")

    def gather(self, rows, features_out=None, spatials_out=None):
        """Features [n, K, D] (store dtype) and spatials [n, K, 6] float32 of ``rows``, in the order
        given, as torch tensors (written into ``*_out`` when given: torch tensors or numpy arrays
        of the right shape and dtype). Rows sorted ascending read fastest (one ``np.take`` per
        chunk straight into the output); unsorted rows are grouped by chunk and scattered."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check_rows(rows)
        self._process_state()
        outs = {"features": features_out, "spatials": spatials_out}
        if self._resident is not None:
            return self._gather_resident(rows, outs)
        shapes = self.batch_shapes(len(rows))
        for name, out in outs.items():
            if out is None:
                shape, dtype = shapes[name]
                outs[name] = torch.empty(shape, dtype=dtype)
        arrays = {n: (o.numpy() if isinstance(o, torch.Tensor) else o) for n, o in outs.items()}
        self._gather_chunks(rows, arrays)
        return tuple(torch.from_numpy(o) if isinstance(o, np.ndarray) else o for o in outs.values())

    def _gather_chunks(self, rows: np.ndarray, arrays: dict):
        C = self.attrs.chunk_images
        in_order = bool(np.all(rows[1:] >= rows[:-1]))
        order = None if in_order else np.argsort(rows, kind="stable")
        srows = rows if in_order else rows[order]
        chunks, local = np.divmod(srows, C)
        for s, e in _segments(chunks):
            for name, out in arrays.items():
                block = self._reader.chunk(self._fields[name], int(chunks[s]))
                if in_order:
                    np.take(block, local[s:e], axis=0, out=out[s:e])
                else:
                    out[order[s:e]] = block[local[s:e]]

    def _gather_resident(self, rows: np.ndarray, outs: dict):
        index = torch.from_numpy(rows)
        results = []
        for name, out in outs.items():
            src = self._resident[name]
            idx = index.to(src.device, non_blocking=True)
            if out is None:
                results.append(torch.index_select(src, 0, idx))
            else:
                target = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
                results.append(torch.index_select(src, 0, idx, out=target))
        return tuple(results)

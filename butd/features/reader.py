"""Read batches of image features out of a converted feature store (see ``butd.features.schema``).

    store = FeatureStore("data/GQA-Cache/trainval.zarr")            # memory-mapped, the default
    features, spatials = store.gather([17, 3, 17, 900])              # torch tensors [4, K, D], [4, K, 6]

How a batch is read depends on the store and on its residency (``cache``, a
``butd.features.residency.Residency`` or its ``--feature_cache`` name, chosen once per store):

- ``Streamed`` (``"none"``, the default): rows are copied from the chunk files straight into the
  output buffer by ``butd.features.batch_io``: from memory maps of the page cache when the store's
  pages are cached (one ``np.take`` per copying thread, about a plain ``memcpy``), with ``preadv``
  from many I/O threads when they are not (the first epoch, a store larger than RAM), chosen batch by
  batch (``read_mode="auto"``; ``"map"`` or ``"read"`` force one). The pages live in the OS page
  cache, so every DataLoader worker shares one copy of the store; nothing is read into private memory
  except the batch itself. Compressed stores decode only the images a batch asks for (one image per
  inner chunk of a shard, see ``butd.features.schema``), in parallel; stores of the first compressed
  layout (a compressed block per chunk) decode whole chunks, also in parallel.
- ``Pinned`` (``"pinned"``) and ``OnDevice`` (``"gpu"``): the whole of ``features`` and ``spatials``
  is read into a resident copy the first time a batch is gathered, and batches are copied from RAM
  on the copying threads, or ``index_select``-ed on the device. The copy is built in the process that
  gathers; use it from the main process (``num_workers=0``), which ``butd.loading`` does.

Nothing is opened in ``__init__`` beyond reading the store's JSON metadata: memory maps, file
descriptors, threads and resident caches are created lazily in the process that gathers and are
dropped when the store is pickled to a worker (or found in a forked one).
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import torch

from butd.features import batch_io, schema
from butd.features.residency import Residency, residency

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
        try:
            batch_io.layout(meta, tuple(want_shape[1:]), os.path.join(path, field.name, "zarr.json"))
        except ValueError as e:
            raise StoreError(f"{e}; {_REMAKE}") from None
        metas[field.name] = meta
    return attrs, metas


def _allow_open_files(wanted: int, spare: int = 256) -> int:
    """How many chunk files this process may keep open. Reads from cold stores keep a descriptor per
    chunk file, and a full GQA store has thousands of chunks, so raise the soft limit towards the
    hard one; past that, the oldest are closed and reopened when needed."""
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


class FeatureStore:
    """Batched reads of ``features`` and ``spatials`` from one store; see the module docstring.

    ``threads``: copying threads per gather (default: the cores this process may use, divided among
    DataLoader workers); ``io_threads``: blocking reads in flight for pages not in the page cache;
    ``read_mode``: ``"auto"``, ``"map"`` or ``"read"`` (``butd.features.batch_io``). ``layouts`` says
    how each field is stored: ``"raw"``, ``"sharded"`` or ``"chunked"``. ``cache``: the store's
    ``Residency`` or its name (``"none"``, ``"pinned"``, ``"gpu"``), kept as ``residency``."""

    def __init__(self, path, cache: Residency | str = "none", threads: int | None = None,
                 io_threads: int = batch_io.IO_THREADS, read_mode: str = "auto"):
        if read_mode not in batch_io.MODES:
            raise ValueError(f"read_mode must be one of {batch_io.MODES}, got {read_mode!r}")
        self.path = os.fspath(path)
        self.residency = residency(cache)
        self.threads, self.io_threads, self.read_mode = threads, io_threads, read_mode
        self.attrs, self._metas = open_attrs(self.path)
        self._fields = {f.name: f for f in BATCH_FIELDS}
        self.layouts = {f.name: batch_io.layout(self._metas[f.name], f.shape(self.attrs)[1:], "")[0]
                        for f in BATCH_FIELDS}
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

    def image_sizes(self, rows) -> np.ndarray:
        """int64 [n, 2]: the (width, height) in pixels of the images at ``rows`` (the TSV's
        ``img_w``/``img_h``, over which the boxes' spatials are normalised). Raises IndexError for a
        row outside the store."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check_rows(rows)
        import zarr
        width, height = (zarr.open_array(os.path.join(self.path, name), mode="r")[:self.num_images]
                         for name in ("img_w", "img_h"))
        return np.stack([width[rows], height[rows]], axis=1).astype(np.int64)

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
                raise RuntimeError(f"{self.path}: FeatureStore(cache={self.residency.name!r}) was filled in another "
                                   "process; resident caches are gathered in the process that built "
                                   "them (use num_workers=0)")
            self._reader = self._new_reader()
            self._pid = os.getpid()
        if self.residency.resident and self._resident is None:
            self._resident = self._load_resident()

    def _new_reader(self) -> batch_io.BatchReader:
        fields = {name: batch_io.field_reader(self.path, f, self.attrs, self._metas[name], self.chunk_error)
                  for name, f in self._fields.items()}
        return batch_io.BatchReader(fields, threads=self.threads, io_threads=self.io_threads,
                                    mode=self.read_mode, max_open=_allow_open_files(len(fields) * self.attrs.num_chunks))

    def _load_resident(self, step_chunks: int = 16) -> dict:
        """Read the whole store, ``step_chunks`` chunks at a time, into one tensor per field (the
        residency's: pinned host or GPU; the GPU's through a host buffer of one step)."""
        device, N = self.residency.device, self.num_images
        resident, staging = {}, {}
        step = max(1, min(N, step_chunks * self.attrs.chunk_images))   # a store of no images: no step
        for name, (shape, dtype) in self.batch_shapes(N).items():
            resident[name] = self.residency.empty(shape, dtype)
            if device is not None:
                staging[name] = torch.empty((step,) + shape[1:], dtype=dtype, pin_memory=True)
        from tqdm import tqdm
        # seconds to minutes for a large compressed store: say what the first batch waits for
        nbytes = sum(t.numel() * t.element_size() for t in resident.values())
        local_rank = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        quiet = nbytes < 2**30 or local_rank != "0"   # one bar per machine
        with tqdm(total=nbytes, unit="B", unit_scale=True, leave=False, disable=quiet or None,
                  desc=f"[*] reading {os.path.basename(self.path)} into {'GPU' if device is not None else 'host'} memory") as bar:
            for lo in range(0, N, step):
                rows = np.arange(lo, min(N, lo + step))
                outs = {n: (staging[n] if device is not None else resident[n][lo:])[:len(rows)].numpy()
                        for n in resident}
                self._reader.gather(rows, outs)
                for n in staging:
                    resident[n][lo:lo + len(rows)].copy_(staging[n][:len(rows)])
                bar.update(nbytes * len(rows) // N)
        self._reader = self._new_reader()  # drop the maps and descriptors: the copy is all we need
        return resident

    def _check_rows(self, rows: np.ndarray):
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_images):
            bad = rows[(rows < 0) | (rows >= self.num_images)][0]
            raise IndexError(f"{self.path}: row {bad} requested, the store holds {self.num_images} images")

    def gather(self, rows, features_out=None, spatials_out=None):
        """Features [n, K, D] (store dtype) and spatials [n, K, 6] float32 of ``rows``, in the order
        given, as torch tensors (written into ``*_out`` when given: torch tensors or numpy arrays
        of the right shape and dtype). Raises IndexError for a row outside the store and StoreError,
        naming the chunk file and its images, for a damaged store."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check_rows(rows)
        self._process_state()
        outs = {"features": features_out, "spatials": spatials_out}
        if self.residency.on_device:
            return self._gather_on_device(rows, outs)
        shapes = self.batch_shapes(len(rows))
        for name, out in outs.items():
            if out is None:
                shape, dtype = shapes[name]
                outs[name] = torch.empty(shape, dtype=dtype)
        arrays = {n: (o.numpy() if isinstance(o, torch.Tensor) else o) for n, o in outs.items()}
        # the reads write through the buffer's bytes: a strided output is filled through a copy
        direct = {n: a if a.flags.c_contiguous else np.empty(a.shape, a.dtype) for n, a in arrays.items()}
        if self._resident is not None:
            self._reader.take({n: self._resident[n].numpy() for n in direct}, rows, direct)
        else:
            self._reader.gather(rows, direct)
        for n, a in arrays.items():
            if direct[n] is not a:
                a[...] = direct[n]
        return tuple(torch.from_numpy(o) if isinstance(o, np.ndarray) else o for o in outs.values())

    def _gather_on_device(self, rows: np.ndarray, outs: dict):
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

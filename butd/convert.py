"""Parallel, resumable conversion of a features TSV into a chunked Zarr v3 feature store.

    from butd.convert import convert_tsv
    convert_tsv("data/GQA-Features/vg_gqa_obj36.tsv", "data/GQA-Cache/trainval.zarr", workers=2)

(``converters/tsv_to_zarr.py`` is the command line.) Two passes over the file:

1. *scan*, over the workers: newline-aligned byte ranges are walked row by row, each row's
   structure checked from its head (the fields before the features) and the two bytes where its
   line must end given its box count: the features, ~99% of the file, are not read (the convert
   pass decodes them strictly). A line that this does not settle is read whole and checked from
   its field lengths. With ``on_bad_row="skip"`` rows are fully decoded instead, so that every
   bad row is known before row numbers are fixed. The result is the plan: each row's byte offset,
   length, line number, image id and box count. Duplicate ids are found here. The plan is saved
   inside the store, so a resumed run does not scan again.
2. *convert*, over ``workers`` processes: each task is one store chunk (``chunk_images``
   consecutive rows): its rows are read, decoded, padded to the largest box count, cast, and
   written as whole chunks (features with O_DIRECT where possible). A small JSON marker per chunk
   is written atomically after the chunk's data, so an interrupted run (Ctrl-C, kill -9) resumes
   with the same command, converting only the chunks without a marker.

Workers are forked (ready at once) when this process has no other threads, else spawned.

Row order is file order and every chunk is written by exactly one task, so the store is
byte-identical whatever the number of workers. The store is marked ``complete`` only after every
marker is present and the row count and ids check out. Memory stays flat: a worker holds one
chunk's rows at a time.
"""
from __future__ import annotations

import errno
import hashlib
import importlib
import json
import math
import mmap
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from butd import schema
from butd.schema import IMAGE_IDS, TSV_COLUMNS, StoreAttrs, fields_for
from butd.tsv import COLUMN_INDEX, TSVFormatError, UnreadField, b64_length, check_layout, decode_row, \
    detect_layout, parse_head, spatial_features, split_fields, split_head

DEFAULT_CHUNK_IMAGES = 32
BAD_ROW_MODES = ("error", "skip")
PROGRESS_DIR = "_progress"
PLAN_FILE = "plan.npz"
# Scan ranges of at most this many bytes (more ranges than workers keeps the scan bar moving).
SCAN_RANGE_BYTES = 256 << 20


@dataclass
class ConvertSummary:
    """What a conversion did. ``rows`` is the store's row count, ``bytes_in`` the TSV's size."""
    tsv_path: str
    out_path: str
    rows: int
    skipped: int
    bytes_in: int
    bytes_out: int
    seconds: float
    chunks_converted: int
    chunks_resumed: int
    already_complete: bool = False
    bad_rows_report: Optional[str] = None

    def __str__(self) -> str:
        if self.already_complete:
            return f"[*] {self.out_path}: already complete ({self.rows} rows); nothing to do"
        rate = self.bytes_in / 1e6 / max(self.seconds, 1e-9)
        lines = [f"[*] {self.tsv_path} -> {self.out_path}: {self.rows} rows, "
                 f"{self.bytes_in / 1e6:.1f} MB in, {self.bytes_out / 1e6:.1f} MB out, "
                 f"{self.seconds:.1f} s ({rate:.0f} MB/s of TSV)"]
        if self.chunks_resumed:
            lines.append(f"    resumed: {self.chunks_resumed} chunks were already done, "
                         f"{self.chunks_converted} converted now")
        if self.bad_rows_report:
            lines.append(f"    skipped {self.skipped} bad rows, listed in {self.bad_rows_report}")
        return "\n".join(lines)


@dataclass
class Plan:
    """The rows of the store, in order: where each is in the TSV and what it is."""
    offsets: np.ndarray      # int64 byte offset of the row's line
    lengths: np.ndarray      # int64 byte length of the line (with its ending)
    lines: np.ndarray        # int64 1-based line number
    num_boxes: np.ndarray    # int32
    image_ids: np.ndarray    # str
    bad_rows: list = field(default_factory=list)

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, offsets=self.offsets, lengths=self.lengths, lines=self.lines,
                 num_boxes=self.num_boxes, image_ids=self.image_ids.astype(np.str_))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Plan":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["offsets"], z["lengths"], z["lines"], z["num_boxes"], z["image_ids"])


# ---------------------------------------------------------------------------------------------
# Pass 1: scan


def _probe(path: str, layout: Optional[str], skip: bool) -> tuple:
    """(layout, feature_dim) from the first good row; in error mode the first row must be good."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if line.isspace():
                continue
            try:
                found = layout or detect_layout(line, path, line_no)
                return found, parse_head(split_fields(line), found, path, line_no).feature_dim
            except TSVFormatError:
                if not skip:
                    raise
    raise ValueError(f"{path}: no valid rows (the file is empty or every row is bad)")


def _scan_range(task: tuple) -> dict:
    """Rows of the lines that start in byte range [start, end). Line numbers are local (1 = the
    first line starting in the range); the caller makes them global.

    In error mode a row is checked from its head (the fields before the features, a few KB) and
    the two bytes where its line must end given ``num_boxes`` and ``feature_dim``: the features
    (~99% of the bytes) are not read here, the conversion's strict decoding checks them. A line
    this cannot settle (a bad or blank one) is read whole and checked as before."""
    path, start, end, layout, feature_dim, skip = task
    offsets, lengths, lines, num_boxes, ids, bad = [], [], [], [], [], []
    local = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = start if start == 0 else _line_end(fd, start - 1)
        while pos < end:
            local += 1
            fast = None if skip else _row_from_head(fd, pos, size, layout, feature_dim, path, local)
            if fast is not None:
                length, image_id, boxes = fast
            else:
                line = _read_line(fd, pos)
                if not line:
                    break
                length = len(line)
                if line.isspace():
                    pos += length
                    continue
                try:
                    if skip:   # decode fully: every bad row must be known before rows are numbered
                        row = decode_row(line, layout, path, local, feature_dim)
                        image_id, boxes = row.image_id, row.num_boxes
                    else:
                        head = parse_head(split_fields(line), layout, path, local, feature_dim)
                        image_id, boxes = head.image_id, head.num_boxes
                except TSVFormatError as e:
                    bad.append((e.line, e.image_id, e.reason))
                    if not skip:
                        break
                    pos += length
                    continue
            offsets.append(pos)
            lengths.append(length)
            lines.append(local)
            num_boxes.append(boxes)
            ids.append(image_id)
            pos += length
    finally:
        os.close(fd)
    return {"offsets": offsets, "lengths": lengths, "lines": lines, "num_boxes": num_boxes,
            "ids": ids, "bad": bad, "line_count": local, "bytes": min(pos, size) - start}


HEAD_BYTES = 16 << 10   # holds every field before the features (~2 KB at 36 boxes, ~6 KB at 100)
READ_BYTES = 1 << 20


def _row_from_head(fd: int, pos: int, size: int, layout: str, feature_dim: int, path: str,
                   line_no: int) -> Optional[tuple]:
    """(line length, image id, num_boxes) of a good row at ``pos``, read from its head and its
    predicted end; None where that does not show a good row."""
    head = os.pread(fd, HEAD_BYTES, pos)
    split = split_head(head, len(TSV_COLUMNS[layout]) - 1)
    if split is None:
        return None
    fields, features_at = split
    try:
        boxes = int(bytes(fields[COLUMN_INDEX[layout]["num_boxes"]]))
    except ValueError:
        return None
    if boxes <= 0:
        return None
    chars = b64_length(boxes * feature_dim * 4)
    features_end = pos + features_at + chars
    tail = os.pread(fd, 4, features_end - 2)
    if tail[2:3] == b"\n":
        ending = 1
    elif tail[2:4] == b"\r\n":
        ending = 2
    elif len(tail) == 2 and features_end == size:   # the last line, without a line ending
        ending = 0
    else:
        return None
    try:
        row = parse_head(fields + [UnreadField(chars, tail[:2])], layout, path, line_no, feature_dim)
    except TSVFormatError:
        return None
    return features_end + ending - pos, row.image_id, row.num_boxes


def _read_line(fd: int, pos: int) -> bytes:
    """The line at ``pos`` with its ending (b"" at the end of the file)."""
    parts = []
    while True:
        block = os.pread(fd, READ_BYTES, pos)
        newline = block.find(b"\n")
        if newline >= 0:
            parts.append(block[:newline + 1])
            break
        parts.append(block)
        if len(block) < READ_BYTES:
            break
        pos += len(block)
    return b"".join(parts)


def _line_end(fd: int, pos: int) -> int:
    """The offset just after the line ending at or after ``pos`` (the file's size if none)."""
    return pos + len(_read_line(fd, pos))


def _merge_scans(path: str, scans: list, skip: bool) -> Plan:
    """Join the ranges' rows in file order with global line numbers; find duplicate ids."""
    offsets, lengths, lines, num_boxes, ids, bad = [], [], [], [], [], []
    first_line = 0
    for scan in scans:
        for line, image_id, reason in scan["bad"]:
            if not skip:
                raise TSVFormatError(path, first_line + line, image_id, reason)
            bad.append({"file": path, "line": first_line + line, "image_id": image_id, "reason": reason})
        offsets += scan["offsets"]
        lengths += scan["lengths"]
        lines += [first_line + n for n in scan["lines"]]
        num_boxes += scan["num_boxes"]
        ids += scan["ids"]
        first_line += scan["line_count"]
    seen, keep = {}, []
    for i, (image_id, line) in enumerate(zip(ids, lines)):
        if image_id in seen:
            reason = f"duplicate image id: first seen on line {seen[image_id]}"
            if not skip:
                raise TSVFormatError(path, line, image_id, reason)
            bad.append({"file": path, "line": line, "image_id": image_id, "reason": reason})
        else:
            seen[image_id] = line
            keep.append(i)
    if not keep:
        raise ValueError(f"{path}: no valid rows (the file is empty or every row is bad)")
    keep = np.asarray(keep)
    bad.sort(key=lambda b: b["line"])
    return Plan(np.asarray(offsets, np.int64)[keep], np.asarray(lengths, np.int64)[keep],
                np.asarray(lines, np.int64)[keep], np.asarray(num_boxes, np.int32)[keep],
                np.asarray(ids, dtype=np.str_)[keep], bad)


def _scan(path: str, size: int, layout: str, feature_dim: int, skip: bool, runner, progress) -> Plan:
    # Over the workers when there are some: checking rows from their heads is cheap but skip
    # mode's full decoding is not.
    n_ranges = max(1, min(math.ceil(size / 4096),
                          max(runner.workers, math.ceil(size / SCAN_RANGE_BYTES))))
    bounds = [size * i // n_ranges for i in range(n_ranges + 1)]
    tasks = [(path, bounds[i], bounds[i + 1], layout, feature_dim, skip) for i in range(n_ranges)]
    scans = [None] * n_ranges
    with _bar(progress, size, f"scan {os.path.basename(path)}") as bar:
        for i, scan in runner(_scan_range, tasks, ordered=True):
            scans[i] = scan
            bar.update(scan["bytes"])
    return _merge_scans(path, scans, skip)


# ---------------------------------------------------------------------------------------------
# Pass 2: convert chunks (runs in worker processes; each opens the store's arrays itself, because
# zarr's event loop does not survive a fork)

_ARRAYS: dict = {}
_BUFFERS: dict = {}


def _arrays(out_path: str, fingerprint: str, names) -> dict:
    # Keyed by the fingerprint too: a store re-made at the same path with other settings (another
    # dtype, say) must not be written through the old store's array objects.
    key = (out_path, fingerprint)
    if key not in _ARRAYS:
        import zarr
        _ARRAYS.clear()
        # write_empty_chunks: every chunk file must exist, since the loader memory-maps them.
        _ARRAYS[key] = {n: zarr.open_array(os.path.join(out_path, n), mode="r+")
                        .with_config({"write_empty_chunks": True}) for n in names}
    return _ARRAYS[key]


def float32_to_float16(src: np.ndarray, out: np.ndarray, scratch: Optional[dict] = None) -> np.ndarray:
    """``out[...] = src`` for float32 -> float16, bit-identical to NumPy's cast for every non-NaN
    value (round to nearest even, subnormals, overflow to inf; NaN becomes the quiet NaN 0x7e00)
    and 3x faster on real features: NumPy's cast is a branchy scalar loop that runs at 0.3-0.7 ms
    per 36x2048 row of ReLU features (zeros, tiny values), more than all other work on a row. This
    is the branch-free float arithmetic of Maratyszcza's FP16 library, vectorised, working on the
    magnitude's bits (no shifted copy) and testing for NaN with one reduction; ``scratch`` (from a
    previous call) saves re-allocating its temporaries."""
    f = np.ascontiguousarray(src, dtype=np.float32).reshape(-1)
    n = f.size
    if scratch is None:
        scratch = {}
    if scratch.get("a") is None or scratch["a"].size < n:
        scratch.update(a=np.empty(n, np.uint32), t=np.empty(n, np.uint32), base=np.empty(n, np.float32))
    a, t, base = (scratch[k][:n] for k in ("a", "t", "base"))
    u = f.view(np.uint32)
    np.bitwise_and(u, np.uint32(0x7FFFFFFF), out=a)        # the magnitude's bits
    with np.errstate(over="ignore", invalid="ignore"):     # huge values overflow to inf on purpose
        np.multiply(a.view(np.float32), np.float32(2.0 ** 112), out=base)
        base *= np.float32(2.0 ** -110)
    np.bitwise_and(a, np.uint32(0x7F800000), out=t)        # exponent ...
    np.maximum(t, np.uint32(0x38800000), out=t)            # ... at least float16's smallest
    t += np.uint32(0x07800000)
    base += t.view(np.float32)                             # rounds the mantissa in float32 (RNE)
    bits = base.view(np.uint32)
    np.right_shift(bits, np.uint32(13), out=t)
    t &= np.uint32(0x7C00)                                 # exponent bits ...
    bits &= np.uint32(0x0FFF)
    t += bits                                              # ... plus mantissa bits
    if a.max() > 0x7F800000:                               # a NaN somewhere
        np.putmask(t, a > np.uint32(0x7F800000), np.uint32(0x7E00))
    np.right_shift(u, np.uint32(16), out=a)
    a &= np.uint32(0x8000)
    t |= a                                                 # the sign
    np.copyto(out.reshape(-1).view(np.uint16), t, casting="unsafe")
    return out


def _buffers(attrs: StoreAttrs) -> dict:
    """One chunk's worth of every field (little-endian), re-used from chunk to chunk."""
    key = (attrs.fingerprint, attrs.max_boxes, attrs.feature_dim)
    if key not in _BUFFERS:
        _BUFFERS.clear()
        _BUFFERS[key] = {f.name: _aligned_zeros((attrs.chunk_images,) + f.shape(attrs)[1:],
                                                f.numpy_dtype(attrs).newbyteorder("<"))
                         for f in fields_for(attrs.layout)}
    return _BUFFERS[key]


def _aligned_zeros(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Zeros in page-aligned memory (anonymous mmap), so that chunks can be written with O_DIRECT."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


_SCRATCH: dict = {}


def _put_features(bufs: dict, i: int, features: np.ndarray) -> None:
    """Row ``i``'s features (float32 [num_boxes, dim]) in the store's dtype, padding zeroed."""
    n = len(features)
    if bufs["features"].dtype == np.float16:
        float32_to_float16(features, bufs["features"][i, :n], _SCRATCH)
    else:
        bufs["features"][i, :n] = features
    bufs["features"][i, n:] = 0


def _write_chunk(out_path: str, attrs: StoreAttrs, chunk: int, bufs: dict, rows: int) -> None:
    """Write chunk ``chunk`` of every field. Uncompressed chunks are written as the raw C-order
    bytes zarr itself would write (bytes codec, little-endian; the last chunk full-size with zero
    padding), which skips zarr's per-call overhead; compressed ones go through zarr."""
    if attrs.compressor == "none":
        # The big features chunk (a few ms waiting on the disk with O_DIRECT) is written by a
        # thread while this one creates the small fields' directories and files.
        background = None
        for f in sorted(fields_for(attrs.layout), key=lambda f: f.name != "features"):
            path = schema.chunk_file(out_path, f, chunk)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if f.name == "features":
                background = _Background(_write_file, path, bufs[f.name])
            else:
                _write_file(path, bufs[f.name])
        if background is not None:
            background.result()
        return
    arrays = _arrays(out_path, attrs.fingerprint, [f.name for f in fields_for(attrs.layout)])
    start = chunk * attrs.chunk_images
    for f in fields_for(attrs.layout):
        arrays[f.name][start:start + rows] = bufs[f.name][:rows]


class _Background(threading.Thread):
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
_DIRECT = {"ok": hasattr(os, "O_DIRECT")}


def _write_file(path: str, data: np.ndarray) -> None:
    """Write ``data`` as the file ``path``: with O_DIRECT where the file system takes it and
    ``data`` is block-aligned (the features chunks). A buffered write puts every byte in fresh
    page-cache pages, and first-touching fresh memory is what buffered writes of a big store cost
    on our VMs (~2 ms per MB, several times the rest of the conversion); O_DIRECT hands the
    (re-used) chunk buffer to the disk instead and leaves the page cache to the TSV."""
    if _DIRECT["ok"] and data.nbytes % DIRECT_ALIGN == 0 and data.ctypes.data % DIRECT_ALIGN == 0:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            _DIRECT["ok"] = False   # not on this file system (tmpfs, say)
        else:
            try:
                view, done = memoryview(data).cast("B"), 0
                while done < len(view):
                    done += os.write(fd, view[done:])
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                _DIRECT["ok"] = False
            finally:
                os.close(fd)
    with open(path, "wb") as out:
        out.write(data)


def _marker_path(out_path: str, chunk: int) -> str:
    return os.path.join(out_path, PROGRESS_DIR, f"chunk-{chunk:08d}.json")


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _fill_chunk(tsv_path: str, attrs: StoreAttrs, offsets, lengths, lines, bufs: dict) -> list:
    """Decode the rows into ``bufs`` (padding zeroed); returns their image ids."""
    # spatials are computed from the boxes below
    fields = [f for f in fields_for(attrs.layout) if f.name not in ("spatials", "features")]
    ids = []
    fd = os.open(tsv_path, os.O_RDONLY)
    try:
        for i, (offset, length, line_no) in enumerate(zip(offsets, lengths, lines)):
            line = os.pread(fd, int(length), int(offset))
            row = decode_row(line, attrs.layout, tsv_path, int(line_no), attrs.feature_dim)
            ids.append(row.image_id)
            _put_features(bufs, i, row.features)
            for f in fields:
                if f.per_image:
                    bufs[f.name][i, :row.num_boxes] = getattr(row, f.name)
                    bufs[f.name][i, row.num_boxes:] = 0
                else:
                    bufs[f.name][i] = getattr(row, f.name)
    finally:
        os.close(fd)
    n = len(ids)
    # Padded boxes are zero, so their spatials are zero too (0 / w).
    bufs["spatials"][:n] = spatial_features(bufs["boxes"][:n], bufs["img_w"][:n], bufs["img_h"][:n])
    for f in fields_for(attrs.layout):
        bufs[f.name][n:] = 0
    return ids


def _convert_chunk(task: tuple) -> tuple:
    """Decode one chunk's rows, write every field's chunk, then the chunk's done marker."""
    tsv_path, out_path, attrs_json, chunk, offsets, lengths, lines = task
    attrs = StoreAttrs.from_json(attrs_json)
    bufs = _buffers(attrs)
    ids = _fill_chunk(tsv_path, attrs, offsets, lengths, lines, bufs)
    _write_chunk(out_path, attrs, chunk, bufs, len(ids))
    _write_json_atomic(_marker_path(out_path, chunk), {
        "chunk": chunk, "rows": len(ids), "lines": [int(lines[0]), int(lines[-1])], "image_ids": ids})
    return chunk, len(ids), int(np.sum(lengths))


# ---------------------------------------------------------------------------------------------
# Running tasks: in this process for one worker, else in a pool of worker processes


def _ignore_sigint() -> None:
    # Ctrl-C is handled by the parent, which stops the pool; workers just die quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Runner:
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


def _bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress,
                dynamic_ncols=True, smoothing=0.1)


# ---------------------------------------------------------------------------------------------
# The store: create, check, resume, verify


def _fingerprint(source: dict, settings: dict) -> str:
    blob = json.dumps({"source": source, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _compressors(name: str):
    from zarr.codecs import BloscCodec, ZstdCodec
    codecs = {"none": None, "zstd": ZstdCodec(level=3),
              "blosc": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")}
    return codecs[name]


def _create_store(out_path: str, attrs: StoreAttrs, plan: Plan) -> None:
    import zarr
    group = zarr.open_group(out_path, mode="w", attributes=attrs.to_json())
    for f in fields_for(attrs.layout):
        shape = f.shape(attrs)
        group.create_array(f.name, shape=shape, chunks=(attrs.chunk_images,) + shape[1:],
                           dtype=f.numpy_dtype(attrs), compressors=_compressors(attrs.compressor),
                           fill_value=0, config={"write_empty_chunks": True})
    ids = group.create_array(IMAGE_IDS, shape=(attrs.num_images,), chunks=(attrs.chunk_images,),
                             dtype=str, fill_value="")
    ids[:] = plan.image_ids
    os.makedirs(os.path.join(out_path, PROGRESS_DIR), exist_ok=True)
    plan.save(os.path.join(out_path, PROGRESS_DIR, PLAN_FILE))   # last: its presence means "created"


def _remove_store(out_path: str) -> None:
    """Delete an existing store, refusing anything that is not one (``--overwrite`` on a wrong path)."""
    if not os.path.lexists(out_path):
        return
    if os.path.isdir(out_path) and (os.path.exists(os.path.join(out_path, "zarr.json"))
                                    or not os.listdir(out_path)):
        shutil.rmtree(out_path)
    else:
        raise ValueError(f"{out_path}: exists and is not a zarr store; refusing to delete it "
                         "(choose another --out)")


def _done_chunks(out_path: str) -> set:
    names = os.listdir(os.path.join(out_path, PROGRESS_DIR))
    return {int(n[6:14]) for n in names if n.startswith("chunk-") and n.endswith(".json")}


def _verify(out_path: str, attrs: StoreAttrs, plan: Plan) -> None:
    """Every chunk's marker present, rows and ids as planned and unique, every chunk file there."""
    import zarr

    def fail(why):
        raise RuntimeError(f"{out_path}: verification failed: {why}; re-run with --overwrite")

    ids = []
    for chunk in range(attrs.num_chunks):
        try:
            with open(_marker_path(out_path, chunk)) as f:
                ids += json.load(f)["image_ids"]
        except FileNotFoundError:
            fail(f"chunk {chunk} was never written")
    if len(ids) != attrs.num_images:
        fail(f"{len(ids)} rows written, expected {attrs.num_images}")
    if len(set(ids)) != len(ids):
        fail("duplicate image ids")
    stored = np.asarray(zarr.open_array(os.path.join(out_path, IMAGE_IDS), mode="r")[:].tolist(), dtype=str)
    if not (np.array_equal(stored, np.asarray(ids)) and np.array_equal(stored, plan.image_ids)):
        fail("image ids differ from the rows written")
    for f in fields_for(attrs.layout):
        for chunk in range(attrs.num_chunks):
            path = schema.chunk_file(out_path, f, chunk)
            if not os.path.exists(path):
                fail(f"missing chunk file {path}")
            if attrs.compressor == "none":
                expected = math.prod(f.shape(attrs)[1:]) * attrs.chunk_images * f.numpy_dtype(attrs).itemsize
                if os.path.getsize(path) != expected:
                    fail(f"chunk file {path} has {os.path.getsize(path)} bytes, expected {expected}")


def _mark_complete(out_path: str) -> None:
    import zarr
    zarr.open_group(out_path, mode="r+").attrs.update({"complete": True})
    shutil.rmtree(os.path.join(out_path, PROGRESS_DIR))


def dir_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (a store), or of ``path`` itself if it is a file."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def bad_rows_report_path(out_path: str) -> str:
    return os.path.normpath(out_path) + ".bad_rows.json"


def _check_args(dtype, compressor, chunk_images, on_bad_row, layout):
    check_layout(layout)
    for name, value, allowed in (("dtype", dtype, schema.FEATURE_DTYPES),
                                 ("compressor", compressor, schema.COMPRESSORS),
                                 ("on_bad_row", on_bad_row, BAD_ROW_MODES)):
        if value not in allowed:
            raise ValueError(f"{name} {value!r}: expected one of {', '.join(allowed)}")
    if int(chunk_images) < 1:
        raise ValueError(f"chunk_images {chunk_images}: expected a positive number of images per chunk")


def _source(tsv_path: str) -> dict:
    try:
        st = os.stat(tsv_path)
        if os.path.isdir(tsv_path):
            raise IsADirectoryError(f"{tsv_path}: is a directory, expected a features TSV file")
        with open(tsv_path, "rb"):
            pass
    except FileNotFoundError:
        raise FileNotFoundError(f"{tsv_path}: features TSV not found") from None
    except PermissionError:
        raise PermissionError(f"{tsv_path}: features TSV is not readable (permission denied)") from None
    return {"path": os.path.abspath(tsv_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _existing(out_path: str, fingerprint: str, source: dict, settings: dict) -> Optional[StoreAttrs]:
    """The attributes of a store at ``out_path`` that this conversion may continue, None if there is
    no such store yet; raises if something else is there."""
    if not os.path.lexists(out_path):
        return None
    try:
        attrs = schema.read_attrs(out_path)
    except (OSError, ValueError):   # no zarr.json, not JSON, or not our attributes
        if os.path.isdir(out_path) and not os.listdir(out_path):
            return None
        raise ValueError(f"{out_path}: exists and is not a feature store; pass --overwrite to replace it "
                         "or choose another --out") from None
    if attrs.fingerprint != fingerprint:
        raise ValueError(f"{out_path}: exists but was made from another input or with other settings "
                         f"(it has {attrs.source} with layout={attrs.layout}, dtype={attrs.dtype}, "
                         f"compressor={attrs.compressor}, chunk_images={attrs.chunk_images}; now "
                         f"{source} with {settings}); pass --overwrite to start over")
    return attrs


def convert_tsv(tsv_path: str, out_path: str, *, layout: Optional[str] = None, dtype: str = "float16",
                compressor: str = "none", chunk_images: int = DEFAULT_CHUNK_IMAGES,
                workers: Optional[int] = None, on_bad_row: str = "error", overwrite: bool = False,
                progress: bool = True) -> ConvertSummary:
    """Convert ``tsv_path`` into the feature store ``out_path`` (see the module docstring); resumes
    an interrupted conversion of the same input with the same settings. Raises TSVFormatError for a
    bad row (with ``on_bad_row="error"``), FileNotFoundError/PermissionError for an unreadable input,
    ValueError for an existing store that does not match. Print the returned summary to report."""
    t0 = time.perf_counter()
    _check_args(dtype, compressor, chunk_images, on_bad_row, layout)
    source = _source(tsv_path)
    skip = on_bad_row == "skip"
    layout, feature_dim = _probe(tsv_path, layout, skip)
    settings = {"layout": layout, "dtype": dtype, "compressor": compressor,
                "chunk_images": int(chunk_images), "on_bad_row": on_bad_row,
                "schema_version": schema.SCHEMA_VERSION}
    fingerprint = _fingerprint(source, settings)
    if overwrite:
        _remove_store(out_path)
        if os.path.exists(bad_rows_report_path(out_path)):
            os.remove(bad_rows_report_path(out_path))
    attrs = _existing(out_path, fingerprint, source, settings)
    plan_path = os.path.join(out_path, PROGRESS_DIR, PLAN_FILE)
    report = bad_rows_report_path(out_path) if skip else None
    if attrs is not None and attrs.complete:
        summary = ConvertSummary(tsv_path, out_path, attrs.num_images, 0, source["size"],
                                 dir_bytes(out_path), time.perf_counter() - t0, 0, attrs.num_chunks,
                                 already_complete=True, bad_rows_report=report)
        return summary
    if attrs is not None and not os.path.exists(plan_path):
        _remove_store(out_path)   # ours, but killed before it was fully created
        attrs = None

    workers = max(1, int(workers or os.cpu_count() or 1))
    runner = _Runner(workers)
    if attrs is None and "zarr" not in sys.modules:
        # zarr takes ~0.1 s to import, needed once the scan is done: import it meanwhile (after
        # the fork above, so that no worker inherits a half-imported zarr).
        threading.Thread(target=importlib.import_module, args=("zarr",), daemon=True).start()
    try:
        if attrs is None:
            plan = _scan(tsv_path, source["size"], layout, feature_dim, skip, runner, progress)
            attrs = StoreAttrs(layout=layout, dtype=dtype, compressor=compressor, feature_dim=feature_dim,
                               max_boxes=int(plan.num_boxes.max()), num_images=len(plan.image_ids),
                               chunk_images=int(chunk_images), source=source, fingerprint=fingerprint)
            if skip:
                os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
                _write_json_atomic(report, {"source": tsv_path, "skipped": len(plan.bad_rows),
                                            "rows": plan.bad_rows})
            _create_store(out_path, attrs, plan)
        plan = Plan.load(plan_path)
        done = _done_chunks(out_path)
        todo = [c for c in range(attrs.num_chunks) if c not in done]
        chunk_rows = [slice(c * attrs.chunk_images, (c + 1) * attrs.chunk_images) for c in todo]
        tasks = [(tsv_path, out_path, attrs.to_json(), c, plan.offsets[s], plan.lengths[s], plan.lines[s])
                 for c, s in zip(todo, chunk_rows)]
        total = int(sum(plan.lengths[s].sum() for s in chunk_rows))
        _run_chunks(runner, tasks, total, progress, os.path.basename(out_path))
    finally:
        runner.close()
    _verify(out_path, attrs, plan)
    _mark_complete(out_path)
    skipped = 0
    if skip:
        with open(report) as f:
            skipped = json.load(f)["skipped"]
    summary = ConvertSummary(tsv_path, out_path, attrs.num_images, skipped, source["size"],
                             dir_bytes(out_path), time.perf_counter() - t0, len(todo), len(done),
                             bad_rows_report=report)
    return summary


def _run_chunks(runner: _Runner, tasks: list, total: int, progress: bool, name: str) -> None:
    t0, rows = time.perf_counter(), 0
    with _bar(progress, total, f"convert -> {name}") as bar:
        for _, (chunk, n, nbytes) in runner(_convert_chunk, tasks):
            rows += n
            bar.update(nbytes)
            bar.set_postfix_str(f"{rows / max(time.perf_counter() - t0, 1e-9):.0f} rows/s", refresh=False)


def convert_defaults(features_dir: str = "data/GQA-Features", cache_dir: str = "data/GQA-Cache",
                     **options) -> dict:
    """Convert the specification's two TSVs (``schema.TSV_FOR_STORE``) into ``<cache_dir>/<store>.zarr``;
    returns ``{store: ConvertSummary}``. ``options`` go to ``convert_tsv``."""
    return {store: convert_tsv(os.path.join(features_dir, name), schema.store_path(cache_dir, store), **options)
            for store, name in schema.TSV_FOR_STORE.items()}

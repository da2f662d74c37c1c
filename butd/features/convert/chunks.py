"""Pass 2 of a conversion: decode one store chunk's rows (by the input's ``read``) and write every
field's chunk, then the chunk's done marker. Runs in worker processes; each opens the store's zarr
arrays itself (zarr's event loop does not survive a fork)."""
from __future__ import annotations

import json
import math
import mmap
import os
from typing import Optional

import numpy as np

from butd.features import schema
from butd.features.convert.direct_io import Background, RowStream, write_file
from butd.features.convert.float16 import FLOAT16_INF_BITS, FLOAT32_INF_BITS, float32_to_float16
from butd.features.schema import StoreAttrs, fields_for
from butd.features.tsv import spatial_features

PROGRESS_DIR = "_progress"

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


def _put_features(bufs: dict, i: int, features: np.ndarray, pad: bool = True) -> Optional[str]:
    """Row ``i``'s features (float32 [num_boxes, dim]) in the store's dtype, padding zeroed (unless
    ``pad`` is false: a streamed row's padding is never written, see ``RowStream``). Returns why the
    store cannot hold them (NaN or infinite values; in float16, values it would hold as infinite),
    None when it can: a model reading either trains on NaN."""
    n = len(features)
    half = bufs["features"].dtype == np.float16
    if half:
        float32_to_float16(features, bufs["features"][i, :n], _SCRATCH)   # (its reduction gives "largest")
        largest = _SCRATCH["largest"]
    else:
        bufs["features"][i, :n] = features
        largest = 0 if np.isfinite(features).all() else FLOAT32_INF_BITS
    if pad:
        bufs["features"][i, n:] = 0
    if largest >= FLOAT32_INF_BITS:
        return "its features hold NaN or infinite values"
    if half and largest >= FLOAT16_INF_BITS:
        return ("its features hold values beyond float16's range (+-65504), which a float16 store would hold as "
                "infinite; convert with --dtype float32 (and --overwrite, this store being float16)")
    return None


def write_chunk(out_path: str, attrs: StoreAttrs, chunk: int, bufs: dict, rows: int,
                features: Optional[RowStream] = None) -> None:
    """Write chunk ``chunk`` of every field. Uncompressed chunks are written as the raw C-order
    bytes zarr itself would write (bytes codec, little-endian; the last chunk full-size with zero
    padding), which skips zarr's per-call overhead; compressed ones go through zarr. ``features``:
    the features file already being written row by row (``feature_stream``), finished here."""
    if attrs.compressor == "none":
        # The big features chunk (a few ms waiting on the disk with O_DIRECT) is written by a
        # thread while this one creates the small fields' directories and files.
        background = None
        for f in sorted(fields_for(attrs.layout), key=lambda f: f.name != "features"):
            path = schema.chunk_file(out_path, f, chunk)
            if f.name == "features" and features is not None:
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if f.name == "features":
                background = Background(write_file, path, bufs[f.name])
            else:
                write_file(path, bufs[f.name])
        if background is not None:
            background.result()
        if features is not None:
            features.finish()
        return
    arrays = _arrays(out_path, attrs.fingerprint, [f.name for f in fields_for(attrs.layout)])
    start = chunk * attrs.chunk_images
    for f in fields_for(attrs.layout):
        arrays[f.name][start:start + rows] = bufs[f.name][:rows]


def feature_stream(out_path: str, attrs: StoreAttrs, chunk: int, bufs: dict) -> Optional[RowStream]:
    """The features chunk file of an uncompressed store, written row by row as rows are decoded
    (``RowStream``); None where it is written whole by ``write_chunk``."""
    if attrs.compressor != "none":
        return None
    path = schema.chunk_file(out_path, next(f for f in schema.FIELDS if f.name == "features"), chunk)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return RowStream.open(path, bufs["features"], bufs["features"][0, 0].nbytes)


def marker_path(out_path: str, chunk: int) -> str:
    return os.path.join(out_path, PROGRESS_DIR, f"chunk-{chunk:08d}.json")


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _fill_chunk(images, attrs: StoreAttrs, bufs: dict, stream: Optional[RowStream] = None,
                source=lambda i: "input") -> list:
    """Put the decoded images (``ImageRow``s, from an input's ``read``) into ``bufs``, padding
    zeroed, handing each finished features row to ``stream`` (which writes only its boxes: the
    features' padding is then left as it is); returns their image ids. Features the store cannot
    hold are an ``InputError`` naming the image and its file (``source(i)``)."""
    # spatials are computed from the boxes below
    fields = [f for f in fields_for(attrs.layout) if f.name not in ("spatials", "features")]
    ids = []
    for i, row in enumerate(images):
        if not 0 < row.num_boxes <= attrs.max_boxes:
            raise ValueError(f"image {row.image_id!r} has {row.num_boxes} boxes, its plan at most {attrs.max_boxes}: "
                             "did the input change during the conversion? (re-run with --overwrite)")
        ids.append(row.image_id)
        unfit = _put_features(bufs, i, row.features, pad=stream is None)
        if unfit:
            # (imported here: butd.features.inputs imports the converter)
            from butd.features.inputs.base import InputError
            raise InputError(source(i), None, row.image_id, unfit)
        if stream is not None:
            stream.put(i, row.num_boxes * bufs["features"][0, 0].nbytes)
        for f in fields:
            if f.per_image:
                bufs[f.name][i, :row.num_boxes] = getattr(row, f.name)
                bufs[f.name][i, row.num_boxes:] = 0
            else:
                bufs[f.name][i] = getattr(row, f.name)
    n = len(ids)
    # Padded boxes are zero, so their spatials are zero too (0 / w).
    bufs["spatials"][:n] = spatial_features(bufs["boxes"][:n], bufs["img_w"][:n], bufs["img_h"][:n])
    for f in fields_for(attrs.layout):
        if not (f.name == "features" and stream is not None):
            bufs[f.name][n:] = 0
    return ids


def convert_chunk(task: tuple) -> tuple:
    """Decode one chunk's rows (``rows`` of the plan, in ``paths``, by the input class ``reader``),
    write every field's chunk, then the chunk's done marker."""
    reader, params, paths, rows, out_path, attrs_json, chunk = task
    attrs = StoreAttrs.from_json(attrs_json)
    bufs = _buffers(attrs)
    stream = feature_stream(out_path, attrs, chunk, bufs)
    try:
        ids = _fill_chunk(reader.read(params, paths, rows), attrs, bufs, stream,
                          source=lambda i: paths[int(rows["files"][i])])
        write_chunk(out_path, attrs, chunk, bufs, len(ids), stream)
    finally:
        if stream is not None:
            stream.close()     # after an error: no write left running on the re-used buffer
    lines = rows["lines"]
    write_json_atomic(marker_path(out_path, chunk), {
        "chunk": chunk, "rows": len(ids), "lines": [int(lines[0]), int(lines[-1])], "image_ids": ids})
    return chunk, len(ids), int(np.sum(rows["lengths"]))

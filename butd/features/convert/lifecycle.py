"""The store a conversion writes: create it, find one to resume, verify it, mark it complete."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from typing import Optional

import numpy as np

from butd.features import schema
from butd.features.convert.chunks import PROGRESS_DIR, marker_path
from butd.features.convert.scan import Plan
from butd.features.schema import IMAGE_IDS, StoreAttrs, fields_for

PLAN_FILE = "plan.npz"


def fingerprint(source: dict, settings: dict) -> str:
    blob = json.dumps({"source": source, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compressor_codec(name: str):
    from zarr.codecs import BloscCodec, ZstdCodec
    codecs = {"none": None, "zstd": ZstdCodec(level=3),
              "blosc": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")}
    return codecs[name]


def create_store(out_path: str, attrs: StoreAttrs, plan: Plan) -> None:
    import zarr
    group = zarr.open_group(out_path, mode="w", attributes=attrs.to_json())
    for f in fields_for(attrs.layout):
        shape = f.shape(attrs)
        group.create_array(f.name, shape=shape, chunks=(attrs.chunk_images,) + shape[1:],
                           dtype=f.numpy_dtype(attrs), compressors=compressor_codec(attrs.compressor),
                           fill_value=0, config={"write_empty_chunks": True})
    ids = group.create_array(IMAGE_IDS, shape=(attrs.num_images,), chunks=(attrs.chunk_images,),
                             dtype=str, fill_value="")
    ids[:] = plan.image_ids
    os.makedirs(os.path.join(out_path, PROGRESS_DIR), exist_ok=True)
    plan.save(os.path.join(out_path, PROGRESS_DIR, PLAN_FILE))   # last: its presence means "created"


def remove_store(out_path: str) -> None:
    """Delete an existing store, refusing anything that is not one (``--overwrite`` on a wrong path)."""
    if not os.path.lexists(out_path):
        return
    if os.path.isdir(out_path) and (os.path.exists(os.path.join(out_path, "zarr.json"))
                                    or not os.listdir(out_path)):
        shutil.rmtree(out_path)
    else:
        raise ValueError(f"{out_path}: exists and is not a zarr store; refusing to delete it "
                         "(choose another --out)")


def done_chunks(out_path: str) -> set:
    names = os.listdir(os.path.join(out_path, PROGRESS_DIR))
    return {int(n[6:14]) for n in names if n.startswith("chunk-") and n.endswith(".json")}


def verify(out_path: str, attrs: StoreAttrs, plan: Plan) -> None:
    """Every chunk's marker present, rows and ids as planned and unique, every chunk file there."""
    import zarr

    def fail(why):
        raise RuntimeError(f"{out_path}: verification failed: {why}; re-run with --overwrite")

    ids = []
    for chunk in range(attrs.num_chunks):
        try:
            with open(marker_path(out_path, chunk)) as f:
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


def mark_complete(out_path: str) -> None:
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


def source_of(tsv_path: str) -> dict:
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


def existing_store(out_path: str, fingerprint: str, source: dict, settings: dict) -> Optional[StoreAttrs]:
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


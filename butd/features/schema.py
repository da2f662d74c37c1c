"""The feature store's layout: one description that the converter writes and the loader reads.

A store is a Zarr v3 group (a directory ``<split>.zarr``) holding one array per field below, all
with the image as their first axis and chunked along it in blocks of ``chunk_images`` images.
Every other axis is a single chunk, so chunk ``i`` of an array holds images
``[i * chunk_images, (i + 1) * chunk_images)`` as one C-order block. With ``compressor='none'``
that block is the raw little-endian file ``<array>/c/<i>/0/...`` and can be memory-mapped; the
last chunk is stored full-size (zarr pads it with the fill value).

Compressed stores shard the fields a training batch reads (``SHARDED_FIELDS``): chunk ``i`` is the
same file, but a zarr v3 shard holding each of its images as its own compressed inner chunk, with
an index of ``(offset, nbytes)`` at the end (``array_chunking``). A batch touches nearly every chunk
of a store, yet decodes only the images it asks for. Stores written before sharding (one
compressed block per chunk) are still read, a whole chunk at a time.

The group's attributes (``StoreAttrs``) say what the store holds and whether it is complete: a
store whose ``complete`` flag is not true must never be read as training data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1
SPATIAL_DIM = 6
BOX_DIM = 4
# The two TSV layouts, then the layouts of the other inputs (``butd.features.inputs``): the HDF5
# caches (36-box; ban-vqa's adaptive one) and folders of per-image files (bottom-up-attention.pytorch
# .npz, MCAN's transposed .npz, MMF .npy). Only obj36 holds object and attribute ids.
TSV_LAYOUTS = ("obj36", "anderson")
LAYOUTS = TSV_LAYOUTS + ("hdf5", "hdf5_adaptive", "npz", "npz_transposed", "mmf")
FEATURE_DTYPES = ("float16", "float32")
COMPRESSORS = ("none", "zstd", "blosc")

# Column names of the two TSV layouts, in file order. obj36 is the layout of the GQA files
# (vg_gqa_obj36.tsv, gqa_testdev_obj36.tsv); anderson is the 6-column bottom-up-attention one
# (width before height, 10-100 boxes per image).
TSV_COLUMNS = {
    "obj36": ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features"),
    "anderson": ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features"),
}


@dataclass(frozen=True)
class Field:
    """One array of the store: ``per_image`` is the shape after the image axis, where the strings
    ``"boxes"`` and ``"feature_dim"`` stand for the store's ``max_boxes`` and ``feature_dim``;
    ``dtype="feature"`` means the store's chosen feature dtype."""
    name: str
    per_image: tuple
    dtype: str
    layouts: tuple = LAYOUTS

    def shape(self, attrs: "StoreAttrs") -> tuple:
        sizes = {"boxes": attrs.max_boxes, "feature_dim": attrs.feature_dim}
        return (attrs.num_images,) + tuple(sizes.get(d, d) for d in self.per_image)

    def numpy_dtype(self, attrs: "StoreAttrs") -> np.dtype:
        return np.dtype(attrs.dtype if self.dtype == "feature" else self.dtype)


FIELDS = (
    Field("features", ("boxes", "feature_dim"), "feature"),
    Field("boxes", ("boxes", BOX_DIM), "float32"),
    Field("spatials", ("boxes", SPATIAL_DIM), "float32"),
    Field("num_boxes", (), "int32"),
    Field("img_h", (), "int32"),
    Field("img_w", (), "int32"),
    Field("objects_id", ("boxes",), "int64", ("obj36",)),
    Field("objects_conf", ("boxes",), "float32", ("obj36",)),
    Field("attrs_id", ("boxes",), "int64", ("obj36",)),
    Field("attrs_conf", ("boxes",), "float32", ("obj36",)),
)
# Fields a batch reads image by image: compressed stores keep one image per inner chunk of a shard.
SHARDED_FIELDS = ("features", "spatials")
# Image ids are variable-length strings, stored as a zarr array of dtype str (chunked like the rest).
IMAGE_IDS = "image_ids"


def fields_for(layout: str) -> tuple:
    """The numeric fields a store of this layout holds."""
    return tuple(f for f in FIELDS if layout in f.layouts)


def array_chunking(field: Field, attrs: StoreAttrs) -> dict:
    """The chunking of ``field``'s zarr array, as ``create_array`` keywords: chunks of
    ``chunk_images`` images; in compressed stores, ``SHARDED_FIELDS`` are shards of ``chunk_images``
    images made of one-image inner chunks (the same chunk files, each image compressed on its own)."""
    block = (attrs.chunk_images,) + field.shape(attrs)[1:]
    if attrs.compressor != "none" and field.name in SHARDED_FIELDS:
        return {"chunks": (1,) + block[1:], "shards": block}
    return {"chunks": block}


@dataclass
class StoreAttrs:
    """The group attributes of a store. ``layout`` is the input's (``LAYOUTS``); ``source`` records
    the input (each file's path, size, mtime and content sample; a folder's path, file count, total
    size, newest mtime, a hash of its listing and a content sample; ``convert.lifecycle.source_of``)
    and ``fingerprint`` a hash of the source and the conversion settings, so that a resumed run can
    tell whether it is continuing the same conversion."""
    layout: str
    dtype: str
    compressor: str
    feature_dim: int
    max_boxes: int
    num_images: int
    chunk_images: int
    source: dict
    fingerprint: str
    complete: bool = False
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, attrs: dict, where: str = "store") -> "StoreAttrs":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in attrs and n not in ("complete", "schema_version"))
        if missing:
            raise ValueError(f"{where}: not a butd feature store (attributes missing: {', '.join(missing)})")
        return cls(**{k: v for k, v in attrs.items() if k in names})

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk_images)


def read_attrs(path: str) -> StoreAttrs:
    """Read a store's attributes straight from its ``zarr.json`` (cheap, no zarr event loop)."""
    meta_path = os.path.join(path, "zarr.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no feature store here (missing {meta_path}); "
                                "make one with `python converters/tsv_to_zarr.py`") from None
    return StoreAttrs.from_json(meta.get("attributes", {}), where=path)


def is_complete(path: str) -> bool:
    """True for a store marked complete; False for anything else there (nothing, an interrupted
    conversion, something that is not a store)."""
    try:
        return read_attrs(path).complete
    except (OSError, ValueError):
        return False


def chunk_file(path: str, field: Field, chunk: int) -> str:
    """Path of chunk ``chunk`` of ``field`` (zarr v3 default chunk keys, '/' separator)."""
    trailing = ["0"] * len(field.per_image)
    return os.path.join(path, field.name, "c", str(chunk), *trailing)


def read_complete_attrs(path: str, error=ValueError) -> StoreAttrs:
    """``read_attrs`` of a store that must be complete; raises ``error`` (naming the store and the
    command that resumes it) where the conversion was interrupted or failed."""
    attrs = read_attrs(path)
    if not attrs.complete:
        raise error(f"{path}: feature store is incomplete (conversion interrupted or failed); run the "
                    f"converter command that made it (python converters/tsv_to_zarr.py ... --out {path}) again "
                    "to resume it")
    return attrs


def read_image_ids(path: str) -> np.ndarray:
    """The image ids of a complete store, in row order (a str array). Raises if the store is missing
    or not marked complete."""
    read_complete_attrs(path)
    import zarr  # deferred: importing zarr starts nothing, but keeps schema import light
    # zarr returns numpy's variable-width StringDType, which cannot be cast to "U" directly.
    return np.asarray(zarr.open_array(os.path.join(path, IMAGE_IDS), mode="r")[:].tolist(), dtype=str)

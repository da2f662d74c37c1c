"""What ``convert_speed.py`` measures per input layout other than the TSV: a generated input in the
layout, written as its extractor writes it; the simplest conversion a user would write (one process,
the layout's own reader, the same zarr arrays); and the bound (the same input read, decoded and cast
to float16 on every core, in memory, nothing written).

    from layouts import LAYOUTS, make, baseline_convert, bound
    info = make("hdf5", "/var/tmp/x/hdf5", size_mb=2048, seed=0)    # {"input", "images", "bytes", "max_boxes"}
    baseline_convert("hdf5", info["input"], "/var/tmp/x/base.zarr", info["max_boxes"])
    seconds = bound("hdf5", info["input"], workers=2)

Inputs are made from a pool of ``POOL`` generated images (``butd.synthetic.scene``: ReLU-like
features, 40% zeros), repeated under new ids: writing them is quick, and each file is still read
and decoded on its own. Boxes per image: 36 in the 36-box HDF5, 10-100 in the adaptive layouts
(bottom-up-attention's range), 100 in MMF's (its default ``--num_features``).
"""
from __future__ import annotations

import math
import os
import pickle
import shutil
import time

import numpy as np

from harness import spanned

LAYOUTS = ("hdf5", "hdf5_adaptive", "npz", "npz_transposed", "mmf")
POOL = 48
FEATURE_DIM = 2048
CHUNK = 32    # images per block written by the baseline: the store's chunk


def _pool(seed: int, counts) -> list:
    from butd.synthetic.scene import SceneModel
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, FEATURE_DIM)
    return [model.image(rng, str(i), int(n)) for i, n in enumerate(counts)]


def _counts(layout: str, rng) -> np.ndarray:
    if layout == "hdf5":
        return np.full(POOL, 36)
    if layout == "mmf":
        return np.full(POOL, 100)
    return rng.integers(10, 101, POOL)


def _spatials(row) -> np.ndarray:
    from butd.features.tsv import spatial_features
    return spatial_features(row.boxes, row.img_w, row.img_h)


def image_name(i: int) -> str:
    return f"COCO_train2014_{i:012d}"


def make(layout: str, folder: str, size_mb: float, seed: int = 0) -> dict:
    """A generated input of about ``size_mb`` MB in ``layout`` under ``folder`` (re-used if one of
    that size is there): ``{"input": what to convert, "images", "bytes", "max_boxes"}``."""
    meta = os.path.join(folder, "made.json")
    want = {"layout": layout, "size_mb": size_mb, "seed": seed}
    if os.path.exists(meta):
        import json
        with open(meta) as f:
            made = json.load(f)
        if made.get("want") == want:
            return made["info"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    pool = _pool(seed, _counts(layout, rng))
    info = {"hdf5": _make_hdf5, "hdf5_adaptive": _make_adaptive, "npz": _make_npz, "npz_transposed": _make_npz,
            "mmf": _make_mmf}[layout](layout, folder, pool, size_mb * 1e6)
    info["max_boxes"] = int(max(r.num_boxes for r in pool))
    import json
    with open(meta, "w") as f:
        json.dump({"want": want, "info": info}, f)
    return info


def _make_hdf5(layout, folder, pool, size):
    """The specification's trainval36.hdf5 and its img2idx pickle (string ids, rows in order)."""
    import h5py
    per_row = 36 * (FEATURE_DIM + 10) * 4
    n = math.ceil(size / per_row)
    path = os.path.join(folder, "trainval36.hdf5")
    feats = np.stack([r.features for r in pool])
    bbs = np.stack([r.boxes for r in pool])
    sps = np.stack([_spatials(r) for r in pool])
    with h5py.File(path, "w") as h:
        f = h.create_dataset("image_features", (n, 36, FEATURE_DIM), "f")
        b = h.create_dataset("image_bb", (n, 36, 4), "f")
        s = h.create_dataset("spatial_features", (n, 36, 6), "f")
        for start in range(0, n, POOL):
            stop = min(n, start + POOL)
            f[start:stop], b[start:stop], s[start:stop] = feats[:stop - start], bbs[:stop - start], sps[:stop - start]
    with open(os.path.join(folder, "trainval36_img2idx.pkl"), "wb") as fh:
        pickle.dump({image_name(i): i for i in range(n)}, fh)
    return {"input": path, "images": n, "bytes": os.path.getsize(path)}


def _make_adaptive(layout, folder, pool, size):
    """ban-vqa's train.hdf5 (flat boxes, pos_boxes) and train_imgid2idx.pkl (integer ids)."""
    import h5py
    counts = [r.num_boxes for r in pool]
    per_box = (FEATURE_DIM + 10) * 4
    n = 0
    total = 0
    while total * per_box < size:
        total += counts[n % POOL]
        n += 1
    path = os.path.join(folder, "train.hdf5")
    feats = np.concatenate([r.features for r in pool])
    bbs = np.concatenate([r.boxes for r in pool])
    sps = np.concatenate([_spatials(r) for r in pool])
    block = len(feats)
    with h5py.File(path, "w") as h:
        f = h.create_dataset("image_features", (total, FEATURE_DIM), "f")
        b = h.create_dataset("image_bb", (total, 4), "f")
        s = h.create_dataset("spatial_features", (total, 6), "f")
        pos = h.create_dataset("pos_boxes", (n, 2), dtype="int32")
        starts = np.concatenate([[0], np.cumsum([counts[i % POOL] for i in range(n)])])
        pos[:] = np.stack([starts[:-1], starts[1:]], 1)
        for start in range(0, total, block):    # whole pools: image i is pool image i % POOL
            stop = min(total, start + block)
            f[start:stop], b[start:stop], s[start:stop] = feats[:stop - start], bbs[:stop - start], sps[:stop - start]
    with open(os.path.join(folder, "train_imgid2idx.pkl"), "wb") as fh:
        pickle.dump({i + 1: i for i in range(n)}, fh, protocol=3)
    return {"input": path, "images": n, "bytes": os.path.getsize(path)}


def _make_npz(layout, folder, pool, size):
    """bottom-up-attention.pytorch's <image>.npz (with info) or MCAN's <image>.jpg.npz (x transposed)."""
    images = os.path.join(folder, "features")
    os.makedirs(images)
    transposed = layout == "npz_transposed"
    blobs = []
    for i, r in enumerate(pool):
        path = os.path.join(folder, f"pool{i}.npz")
        if transposed:
            np.savez_compressed(path, x=r.features.T, bbox=r.boxes, num_bbox=r.num_boxes, image_h=r.img_h,
                                image_w=r.img_w)
        else:
            info = {"image_id": image_name(i), "image_h": r.img_h, "image_w": r.img_w, "num_boxes": r.num_boxes,
                    "objects_id": r.objects_id, "objects_conf": r.objects_conf, "attrs_id": r.attrs_id,
                    "attrs_conf": r.attrs_conf}
            np.savez_compressed(path, x=r.features, bbox=r.boxes, num_bbox=r.num_boxes, image_h=r.img_h,
                                image_w=r.img_w, info=info)
        with open(path, "rb") as f:
            blobs.append(f.read())
        os.remove(path)
    return _copies(images, size, [[b] for b in blobs], [".jpg.npz" if transposed else ".npz"])


def _make_mmf(layout, folder, pool, size):
    """MMF's <image>.npy [100, 2048] and <image>_info.npy (np.save of its info dict)."""
    import io
    images = os.path.join(folder, "features")
    os.makedirs(images)
    rng = np.random.default_rng(len(pool))
    blobs = []
    for r in pool:
        k = r.num_boxes
        cls_prob = rng.dirichlet(np.full(1600, 0.05), k).astype(np.float32)
        info = {"bbox": r.boxes, "num_boxes": int(rng.integers(k - 10, k + 1)), "objects": r.objects_id,
                "cls_prob": cls_prob, "image_width": r.img_w, "image_height": r.img_h}
        pair = []
        for value in (r.features, info):
            out = io.BytesIO()
            np.save(out, value)
            pair.append(out.getvalue())
        blobs.append(pair)
    return _copies(images, size, blobs, [".npy", "_info.npy"])


def _copies(folder, size, blobs, suffixes) -> dict:
    """Pool image ``i % POOL``'s files written as image ``i``'s until ``size`` bytes are written."""
    written, n = 0, 0
    while written < size:
        for blob, suffix in zip(blobs[n % len(blobs)], suffixes):
            with open(os.path.join(folder, image_name(n) + suffix), "wb") as f:
                f.write(blob)
            written += len(blob)
        n += 1
    return {"input": folder, "images": n, "bytes": written}


# ---- (a) the simplest conversion: one process, the layout's own reader, the same zarr arrays ----

def baseline_convert(layout: str, source: str, out: str, max_boxes: int) -> int:
    """Read image by image with the layout's own reader (h5py row by row, ``np.load`` per file) and
    write the store's arrays (float16 features, boxes, spatials, counts, sizes, ids; chunks of 32
    images, uncompressed) block by block with zarr, in this one process."""
    import zarr

    from butd.features.tsv import spatial_features
    images = list(_images(layout, source))
    n = len(images)
    group = zarr.open_group(out, mode="w")
    shapes = {"features": ((n, max_boxes, FEATURE_DIM), "float16"), "boxes": ((n, max_boxes, 4), "float32"),
              "spatials": ((n, max_boxes, 6), "float32"), "num_boxes": ((n,), "int32"), "img_h": ((n,), "int32"),
              "img_w": ((n,), "int32")}
    arrays = {k: group.create_array(k, shape=s, chunks=(CHUNK,) + s[1:], dtype=d, compressors=None, fill_value=0)
              for k, (s, d) in shapes.items()}
    group.create_array("image_ids", shape=(n,), chunks=(CHUNK,), dtype=str, fill_value="")[:] = \
        [image_id for image_id, _ in images]
    opened = _open(layout, source)
    for start in range(0, n, CHUNK):
        block = {k: np.zeros((min(CHUNK, n - start),) + s[1:], d) for k, (s, d) in shapes.items()}
        for j, (_, where) in enumerate(images[start:start + CHUNK]):
            features, boxes, h, w = _read_one(layout, opened, where)
            k = len(boxes)
            block["features"][j, :k] = features
            block["boxes"][j, :k] = boxes
            block["spatials"][j, :k] = spatial_features(boxes, w, h)
            block["num_boxes"][j], block["img_h"][j], block["img_w"][j] = k, h, w
        for k, values in block.items():
            arrays[k][start:start + len(values)] = values
    return n


def _images(layout: str, source: str) -> list:
    """(image id, where) of every image, in store order."""
    if layout.startswith("hdf5"):
        stem = source[:-len(".hdf5")]
        name = stem + ("_img2idx.pkl" if layout == "hdf5" else "_imgid2idx.pkl")
        with open(name, "rb") as f:
            ids = pickle.load(f)      # the benchmark's own file
        return sorted(((str(k), v) for k, v in ids.items()), key=lambda x: x[1])
    suffix = {"npz": ".npz", "npz_transposed": ".jpg.npz", "mmf": ".npy"}[layout]
    names = sorted(n for n in os.listdir(source) if n.endswith(suffix) and not n.endswith("_info.npy"))
    return [(n[:-len(suffix)], os.path.join(source, n)) for n in names]


def _open(layout: str, source: str):
    if not layout.startswith("hdf5"):
        return None
    import h5py
    h5 = h5py.File(source, "r")
    return h5, (h5["pos_boxes"][:] if layout == "hdf5_adaptive" else None)


def _size(boxes, spatials) -> tuple:
    """(h, w) from the first box: its width (height) over its scaled width (height)."""
    return (int(round(float(boxes[0, 3] - boxes[0, 1]) / float(spatials[0, 5]))),
            int(round(float(boxes[0, 2] - boxes[0, 0]) / float(spatials[0, 4]))))


def _read_one(layout: str, opened, where) -> tuple:
    """(features [n, D] float32, boxes [n, 4], h, w) of one image by the layout's own reader."""
    if layout == "hdf5":
        h5, _ = opened
        boxes, spatials = h5["image_bb"][where], h5["spatial_features"][where]
        return (h5["image_features"][where], boxes, *_size(boxes, spatials))
    if layout == "hdf5_adaptive":
        h5, pos = opened
        s, e = pos[where]
        boxes, spatials = h5["image_bb"][s:e], h5["spatial_features"][s:e]
        return (h5["image_features"][s:e], boxes, *_size(boxes, spatials))
    if layout == "mmf":
        info = np.load(where[:-len(".npy")] + "_info.npy", allow_pickle=True).item()   # the benchmark's own file
        n = info["num_boxes"]
        return np.load(where)[:n], info["bbox"][:n], info["image_height"], info["image_width"]
    with np.load(where, allow_pickle=False) as z:
        x = z["x"]
        return (x.T if layout == "npz_transposed" else x), z["bbox"], int(z["image_h"]), int(z["image_w"])


def _decode_npz(layout: str, path: str) -> np.ndarray:
    """The features of one .npz decoded the quickest way we know: each member inflated in one call
    (``ZipFile.read``, CRC-checked) and viewed as an array without a copy (``np.load`` reads members
    in 256 KB pieces and copies them)."""
    import io
    import zipfile

    from numpy.lib import format as npy
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        for name in ("x", "bbox", "num_bbox", "image_h", "image_w"):
            data = zf.read(name + ".npy")
            f = io.BytesIO(data)
            version = npy.read_magic(f)
            shape, fortran, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
            arrays[name] = np.frombuffer(data, dtype, int(np.prod(shape)), f.tell()).reshape(
                shape, order="F" if fortran else "C")
    return arrays["x"].T if layout == "npz_transposed" else arrays["x"]


# ---- (b) the bound: read, decode, cast on every core; nothing written ----

def bound(layout: str, source: str, workers: int) -> float:
    """Seconds to read and decode every image of ``source`` and cast its features to float16, on
    ``workers`` processes (each its share, after a barrier), in memory, nothing written. HDF5 caches
    are read in blocks of 32 rows (the converter's chunks) into re-used buffers, files one by one
    (``.npz`` members in one call each: ``_decode_npz``)."""
    images = _images(layout, source)
    shares = [images[i * len(images) // workers:(i + 1) * len(images) // workers] for i in range(workers)]
    return spanned(_bound_worker, [(layout, source, share) for share in shares])


def _bound_worker(layout, source, share, barrier, results) -> None:
    """Decode ``share`` into a chunk's buffer (float16 [32, K, D], re-used block after block: the
    decoded chunk in memory, as a conversion must hold it), reading HDF5 rows into re-used buffers."""
    from butd.features.convert.float16 import float32_to_float16
    opened = _open(layout, source)          # after the fork: an HDF5 handle of this process
    scratch, chunk = {}, np.zeros((CHUNK, 100, FEATURE_DIM), np.float16)
    barrier.wait()
    t0 = time.perf_counter()
    if layout.startswith("hdf5"):
        h5, pos = opened
        rows = [where for _, where in share]
        reads = {}
        for start in range(0, len(rows), CHUNK):
            block = rows[start:start + CHUNK]
            first, last = (block[0], block[-1] + 1) if pos is None else (pos[block[0], 0], pos[block[-1], 1])
            for name, width in (("image_features", FEATURE_DIM), ("image_bb", 4), ("spatial_features", 6)):
                shape = (last - first, 36, width) if pos is None else (last - first, width)
                if reads.get(name, np.empty(0)).size < np.prod(shape):
                    reads[name] = np.empty(int(np.prod(shape)), np.float32)
                h5[name].read_direct(reads[name][:int(np.prod(shape))].reshape(shape), np.s_[first:last])
            feats = reads["image_features"][:(last - first) * (36 if pos is None else 1) * FEATURE_DIM]
            feats = feats.reshape((last - first, 36, FEATURE_DIM) if pos is None else (last - first, FEATURE_DIM))
            for j, row in enumerate(block):
                image = feats[j] if pos is None else feats[pos[row, 0] - first:pos[row, 1] - first]
                float32_to_float16(image, chunk[j, :len(image)], scratch)
    else:
        for j, (_, where) in enumerate(share):
            features = _decode_npz(layout, where) if layout.startswith("npz") else _read_one(layout, opened, where)[0]
            float32_to_float16(features, chunk[j % CHUNK, :len(features)], scratch)
    results.put((t0, time.perf_counter()))

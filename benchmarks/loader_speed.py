"""Loader throughput: this loader against the specification's reads and against a read from RAM.

    python benchmarks/loader_speed.py                         # makes its own stores in a temp dir
    python benchmarks/loader_speed.py --store data/GQA-Cache/trainval.zarr --rows 8192

Compares, in one run, over the same question rows and worker counts 0..cores:
- ``loader``: ``butd.loading`` (ShardedBatchSampler -> BatchDataset over the memory-mapped store);
- ``spec``: the specification's GQAFeatureDataset reads: one h5py read of a float32 HDF5 per
  item, ``DataLoader(batch_size, shuffle=True)`` with default collate;
- ``bound``: ``np.take`` of the same batches (sorted rows) from an in-RAM array of the store's dtype
  into a preallocated buffer: the copy every loader has to make, without any loader around it.

Reported per run: samples/s, GB/s (of the bytes that method reads), time to first batch (worker
start included), and peak memory of the process tree (``harness.PeakMemory``, from ``/proc/<pid>/smaps_rollup``):
RSS counts every store page a process has touched through its memory maps, although those pages
are the kernel's page cache, shared by all workers and evictable. PSS here is anonymous plus
shared-memory PSS summed over the tree: the memory the processes really allocated (batches in
flight, buffers, interpreters), each shared page counted once, page cache left out; reported as the
peak and as what the run added to the main process's own before it (the benchmark holds arrays). Without ``--store`` the loader also runs on a second store a quarter
the size: its PSS is the same, i.e. memory does not grow with the store. The run prints a table,
writes ``loader_speed.png`` and ``loader_speed.json`` under ``--out``, and ends with one JSON line.
The store files are freshly written, so all methods read from a warm page cache.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from butd.features import schema
from butd.features.convert import DEFAULT_CHUNK_IMAGES
from butd.features.reader import FeatureStore
from butd.loading import BatchDataset, ShardedBatchSampler, make_loader
from butd.questions import QuestionArrays
from harness import MB, RESULTS, PeakMemory, report, rollup, series, time_loop

GB = 1e9
TARGETS = {"speedup_vs_spec": 5.0, "fraction_of_bound": 0.8, "first_batch_s": 2.0}


# -- data ------------------------------------------------------------------------------------------

def generate_store(path: str, num_images: int, boxes: int, dim: int, dtype: str, chunk_images: int) -> None:
    """A complete, schema-conformant uncompressed store of random features, written through zarr a
    block at a time (blocks repeat one random block: content does not change reading speed)."""
    attrs = schema.StoreAttrs(layout="obj36", dtype=dtype, compressor="none", feature_dim=dim, max_boxes=boxes,
                              num_images=num_images, chunk_images=chunk_images, source={"path": "generated"},
                              fingerprint="loader-benchmark", complete=True)
    group = zarr.open_group(path, mode="w")
    rng = np.random.default_rng(0)
    block = 16 * chunk_images
    for field in schema.fields_for("obj36"):
        shape = field.shape(attrs)
        array = group.create_array(field.name, shape=shape, chunks=(chunk_images,) + shape[1:],
                                   dtype=field.numpy_dtype(attrs), compressors=None,
                                   config={"write_empty_chunks": True})
        values = rng.standard_normal((block,) + shape[1:], dtype=np.float32).astype(field.numpy_dtype(attrs))
        for lo in range(0, num_images, block):
            array[lo:lo + block] = values[: min(block, num_images - lo)]
    ids = group.create_array(schema.IMAGE_IDS, shape=(num_images,), chunks=(chunk_images,), dtype=str)
    ids[:] = np.array([f"bench{i}" for i in range(num_images)])
    group.attrs.update(attrs.to_json())
    os.sync()  # finish writeback now, not while the runs read


def write_spec_hdf5(store: FeatureStore, rows: int, path: str) -> None:
    """The specification's cache file: float32 ``image_features`` and ``spatial_features``."""
    with h5py.File(path, "w") as h:
        feats = h.create_dataset("image_features", (rows, store.max_boxes, store.feature_dim), "f")
        spats = h.create_dataset("spatial_features", (rows, store.max_boxes, schema.SPATIAL_DIM), "f")
        step = 8 * store.attrs.chunk_images
        for lo in range(0, rows, step):
            f, s = store.gather(np.arange(lo, min(lo + step, rows)))
            feats[lo:lo + len(f)] = f.numpy().astype(np.float32)
            spats[lo:lo + len(s)] = s.numpy()


def random_questions(num_questions: int, rows: int, seed: int = 0) -> QuestionArrays:
    rng = np.random.default_rng(seed)
    image_rows = rng.integers(0, rows, (num_questions, 1))
    return QuestionArrays(
        question_ids=np.array([str(i) for i in range(num_questions)]), image_ids=image_rows.astype(str),
        image_rows=image_rows, tokens=rng.integers(0, 3000, (num_questions, 40)),
        targets={"labels": rng.integers(0, 1800, num_questions)})


class SpecStyleDataset(Dataset):
    """The specification's GQAFeatureDataset.__getitem__: one h5py read per item. The file is opened
    in the reading process (h5py handles are not fork-safe), otherwise as the specification does."""

    def __init__(self, h5_path: str, questions: QuestionArrays):
        self.h5_path, self.rows = h5_path, questions.image_rows[:, 0]
        self.tokens = torch.from_numpy(questions.tokens)
        self.labels = questions.targets["labels"].tolist()
        self.h5 = None

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        if self.h5 is None:
            self.h5 = h5py.File(self.h5_path, "r")
            self.features, self.spatials = self.h5["image_features"], self.h5["spatial_features"]
        row = self.rows[index]
        features = torch.from_numpy(np.array(self.features[row]))
        spatials = torch.from_numpy(np.array(self.spatials[row]))
        return features, spatials, self.tokens[index], self.labels[index]


# -- measuring ------------------------------------------------------------------------------------

def time_batches(batches, seconds: float, count) -> dict:
    """Pull batches for about ``seconds`` after the first; ``count(batch)`` gives its samples."""
    def counts():   # iter(batches), which starts the workers, runs at the first next(): timed as the first batch
        for batch in batches:
            yield count(batch)

    gc.collect()
    before = rollup(os.getpid())[1]
    with PeakMemory() as mem:
        pulled = counts()
        r = time_loop(lambda i: next(pulled), warmup=1, seconds=seconds)
        pulled.close()  # drops the loader's iterator: with the collection, ends its workers inside the measurement
        gc.collect()
    return {"samples_per_s": r["work"] / r["seconds"], "first_batch_s": r["warmup_s"], "peak_rss_mb": mem.rss / MB,
            "peak_pss_mb": mem.pss / MB, "added_pss_mb": (mem.pss - before) / MB}


def run_loader(store_path: str, questions: QuestionArrays, batch_size: int, workers: int, seconds: float) -> dict:
    dataset = BatchDataset(questions, FeatureStore(store_path))
    loader = make_loader(dataset, batch_size, shuffle=True, seed=1, num_workers=workers)
    return time_batches(loader, seconds, lambda b: len(b["index"]))


def run_spec(h5_path: str, questions: QuestionArrays, batch_size: int, workers: int, seconds: float) -> dict:
    loader = DataLoader(SpecStyleDataset(h5_path, questions), batch_size=batch_size, shuffle=True,
                        num_workers=workers)
    return time_batches(loader, seconds, lambda b: len(b[0]))


def run_bound(store: FeatureStore, rows: int, questions: QuestionArrays, batch_size: int, seconds: float) -> dict:
    """np.take of the same (sorted) batches from RAM into preallocated buffers."""
    ram = {k: np.empty(shape, torch.empty((), dtype=dt).numpy().dtype)
           for k, (shape, dt) in store.batch_shapes(rows).items()}
    step = 8 * store.attrs.chunk_images
    for lo in range(0, rows, step):
        store.gather(np.arange(lo, min(lo + step, rows)), ram["features"][lo:lo + step], ram["spatials"][lo:lo + step])
    outs = {k: np.empty((batch_size,) + a.shape[1:], a.dtype) for k, a in ram.items()}
    sampler = ShardedBatchSampler(len(questions), batch_size, shuffle=True, seed=1)

    def batches():
        for batch in sampler:
            r = np.sort(questions.image_rows[batch, 0])
            for k, a in ram.items():
                np.take(a, r, axis=0, out=outs[k][: len(r)])
            yield len(r)

    return time_batches(batches(), seconds, lambda n: n)


# -- report ------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="an existing store to read (default: generate one)")
    ap.add_argument("--gb", type=float, default=1.2, help="size of the generated store's features")
    ap.add_argument("--rows", type=int, help="use only the first ROWS images (default: all)")
    ap.add_argument("--boxes", type=int, default=36)
    ap.add_argument("--feature-dim", type=int, default=2048)
    ap.add_argument("--dtype", default="float16", choices=schema.FEATURE_DTYPES)
    ap.add_argument("--chunk-images", type=int, default=DEFAULT_CHUNK_IMAGES)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0, help="time each run for about this long")
    ap.add_argument("--workers", type=int, nargs="*", help="worker counts (default 0..cores)")
    ap.add_argument("--out", default=RESULTS, help="where the PNG and JSON go (default benchmarks/results)")
    ap.add_argument("--workdir", help="where generated files go (default: a temp dir, removed after)")
    args = ap.parse_args(argv)
    workers = args.workers if args.workers is not None else list(range((os.cpu_count() or 1) + 1))
    workdir = args.workdir or tempfile.mkdtemp(prefix="loader_speed_")
    os.makedirs(workdir, exist_ok=True)
    try:
        return _run(args, workers, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args, workers: list, workdir: str) -> dict:
    itemsize = np.dtype(args.dtype).itemsize
    stores = {}
    if args.store:
        stores["store"] = args.store
    else:
        n = int(args.gb * GB / (args.boxes * args.feature_dim * itemsize))
        for name, images in (("store", n), ("quarter", n // 4)):
            t = time.perf_counter()
            stores[name] = os.path.join(workdir, f"{name}.zarr")
            generate_store(stores[name], images, args.boxes, args.feature_dim, args.dtype, args.chunk_images)
            print(f"[*] generated {stores[name]}: {images} images in {time.perf_counter() - t:.1f} s", flush=True)
    store = FeatureStore(stores["store"])
    rows = min(args.rows or store.num_images, store.num_images)
    sample_bytes = {"loader": store.max_boxes * (store.feature_dim * itemsize + schema.SPATIAL_DIM * 4)}
    sample_bytes["bound"] = sample_bytes["loader"]
    sample_bytes["spec"] = store.max_boxes * (store.feature_dim + schema.SPATIAL_DIM) * 4
    questions = random_questions(rows * 4, rows)
    t = time.perf_counter()
    h5_path = os.path.join(workdir, "spec36.hdf5")
    write_spec_hdf5(store, rows, h5_path)
    os.sync()  # finish writeback now, not while the runs read
    print(f"[*] wrote the specification-style float32 HDF5 ({rows} images) in {time.perf_counter() - t:.1f} s",
          flush=True)

    results = []

    def record(method, store_name, w, r):
        r.update(method=method, store=store_name, workers=w, gb_per_s=r["samples_per_s"] * sample_bytes[method] / GB)
        results.append(r)
        print(f"  {method:7s} {store_name:8s} workers={w}: {r['samples_per_s']:9.0f} samples/s", flush=True)

    for store_name, path in stores.items():
        n_rows = rows if store_name == "store" else FeatureStore(path).num_images
        qs = questions if store_name == "store" else random_questions(n_rows * 4, n_rows)
        for w in workers:
            record("loader", store_name, w, run_loader(path, qs, args.batch_size, w, args.seconds))
    for w in workers:
        record("spec", "store", w, run_spec(h5_path, questions, args.batch_size, w, args.seconds))
    record("bound", "store", 0, run_bound(store, rows, questions, args.batch_size, args.seconds))
    return report_all(results, args, rows, store)


def report_all(results: list, args, rows: int, store: FeatureStore) -> dict:
    print(f"\nstore: {store.path} rows used: {rows}, {store.max_boxes}x{store.feature_dim} {store.attrs.dtype}, "
          f"batch {args.batch_size}")

    def best(method, store_name="store"):
        return max((r for r in results if r["method"] == method and r["store"] == store_name),
                   key=lambda r: r["samples_per_s"])

    loader, spec, bound = best("loader"), best("spec"), best("bound")
    mine = [r for r in results if r["method"] == "loader"]
    summary = {
        "benchmark": "loader_speed", "store_gb": round(store.num_images * store.max_boxes * store.feature_dim
                                                        * np.dtype(store.attrs.dtype).itemsize / GB, 2),
        "rows": rows, "batch_size": args.batch_size,
        "loader_samples_per_s": round(loader["samples_per_s"]), "loader_workers": loader["workers"],
        "loader_gb_per_s": round(loader["gb_per_s"], 2),
        "spec_samples_per_s": round(spec["samples_per_s"]), "spec_workers": spec["workers"],
        "bound_samples_per_s": round(bound["samples_per_s"]),
        "speedup_vs_spec": round(loader["samples_per_s"] / spec["samples_per_s"], 2),
        "fraction_of_bound": round(loader["samples_per_s"] / bound["samples_per_s"], 3),
        "first_batch_s_max": round(max(r["first_batch_s"] for r in mine), 3),
        "added_pss_mb_by_store": {s: round(max(r["added_pss_mb"] for r in mine if r["store"] == s))
                                 for s in sorted({r["store"] for r in mine})},
        "peak_rss_mb_by_store": {s: round(max(r["peak_rss_mb"] for r in mine if r["store"] == s))
                                 for s in sorted({r["store"] for r in mine})},
    }
    summary["targets_met"] = {
        "speedup_vs_spec>=5": summary["speedup_vs_spec"] >= TARGETS["speedup_vs_spec"],
        "fraction_of_bound>=0.8": summary["fraction_of_bound"] >= TARGETS["fraction_of_bound"],
        "first_batch<2s": summary["first_batch_s_max"] < TARGETS["first_batch_s"]}
    ws = sorted({r["workers"] for r in results})
    label = lambda r: None if r["method"] == "bound" else \
        r["method"] + ("" if r["store"] == "store" else f" ({r['store']} store)")
    speed = series(results, label, "workers", "samples_per_s")
    speed["bound (in-RAM np.take)"] = (ws, [bound["samples_per_s"]] * len(ws))
    return report("loader_speed", args.out, summary, results, columns=[
        ("method", "method", "<8"), ("store", "store", "<8"), ("workers", "workers", "7d"),
        ("samples/s", "samples_per_s", "10.0f"), ("GB/s", "gb_per_s", "6.2f"), ("1st batch s", "first_batch_s", "11.2f"),
        ("peak RSS MB", "peak_rss_mb", "11.0f"), ("peak PSS MB", "peak_pss_mb", "11.0f"),
        ("added PSS MB", "added_pss_mb", "12.0f")], panels=[
        ("throughput", "DataLoader workers", "samples/s", speed),
        ("anon+shm PSS the run added", "DataLoader workers", "MB", series(results, label, "workers", "added_pss_mb"))])


if __name__ == "__main__":
    main(sys.argv[1:])

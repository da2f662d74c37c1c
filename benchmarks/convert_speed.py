"""TSV -> store conversion speed: butd's converter against the specification's converter.

    python benchmarks/convert_speed.py                  # 2 GB generated TSV, workers 1..all cores
    python benchmarks/convert_speed.py --size_mb 400    # a quicker look

The default, 2 GB, is the size the memory target names, so one run checks speed, peak memory and
store size together; it is also large enough that the ~0.3 s of fixed start-up (interpreter, zarr
import, store creation) does not hide the throughput, as it would not on the 58 GB GQA file.

Both convert the same generated obj36 TSV (``butd.synthetic.scene``, 36 boxes x 2048-d features),
each in its own subprocess so that peak memory (RSS of the process and all its children, sampled by
``harness.PeakMemory``) is its own. The baseline does what the specification's step 3 does: ``readlines`` to count rows, one
process, csv.DictReader, base64, float32 HDF5 via h5py. The converter runs with float16 features
for every worker count from 1 to all cores. Prints a table, writes ``convert_speed.json`` and
``convert_speed.png`` to ``--results``/``--out`` (default benchmarks/results/), and ends with one JSON
line.
"""
import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from harness import MB, RESULTS, PeakMemory, report

SETTLE_S = 3.0


def baseline_convert(tsv_path: str, h5_path: str) -> int:
    """The specification's ``gqa_create_image_features`` for one file (its per-split loop body)."""
    import base64
    import csv

    import h5py
    csv.field_size_limit(sys.maxsize)
    fieldnames = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                  "num_boxes", "boxes", "features"]
    num_fixed_boxes, feature_length = 36, 2048
    indices = {}
    with h5py.File(h5_path, "w") as h:
        with open(tsv_path, "r") as f:
            n = len(f.readlines())
        img_features = h.create_dataset("image_features", (n, num_fixed_boxes, feature_length), "f")
        img_bb = h.create_dataset("image_bb", (n, num_fixed_boxes, 4), "f")
        spatial = h.create_dataset("spatial_features", (n, num_fixed_boxes, 6), "f")
        counter = 0
        with open(tsv_path, "r") as tsv:
            reader = csv.DictReader(tsv, delimiter="\t", fieldnames=fieldnames)
            for item in reader:
                item["num_boxes"] = int(item["num_boxes"])
                image_w = float(item["img_w"])
                image_h = float(item["img_h"])
                bb = np.frombuffer(base64.b64decode(item["boxes"]), dtype=np.float32).reshape((item["num_boxes"], -1))
                box_width = bb[:, 2] - bb[:, 0]
                box_height = bb[:, 3] - bb[:, 1]
                scaled_width = (box_width / image_w)[..., np.newaxis]
                scaled_height = (box_height / image_h)[..., np.newaxis]
                scaled_x = (bb[:, 0] / image_w)[..., np.newaxis]
                scaled_y = (bb[:, 1] / image_h)[..., np.newaxis]
                spatial_features = np.concatenate((scaled_x, scaled_y, scaled_x + scaled_width,
                                                   scaled_y + scaled_height, scaled_width, scaled_height), axis=1)
                indices[item["img_id"]] = counter
                img_bb[counter, :, :] = bb
                img_features[counter, :, :] = np.frombuffer(base64.b64decode(item["features"]),
                                                            dtype=np.float32).reshape((item["num_boxes"], -1))
                spatial[counter, :, :] = spatial_features
                counter += 1
    return counter


def make_tsv(path: str, size_mb: float, seed: int) -> int:
    """A generated obj36 TSV of about ``size_mb`` MB (re-used if one of that size is there)."""
    from butd.synthetic.scene import SceneModel, format_row, write_tsv
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, 2048)
    row_bytes = len(format_row(model.image(rng, "0")))
    rows = math.ceil(size_mb * 1e6 / row_bytes)
    meta = path + ".json"
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta) as f:
            if json.load(f) == {"rows": rows, "seed": seed}:
                return rows
    write_tsv(path, (model.image(rng, str(2300000 + i)) for i in range(rows)))
    with open(meta, "w") as f:
        json.dump({"rows": rows, "seed": seed}, f)
    return rows


def measure(cmd: list) -> dict:
    """Run ``cmd``; its wall time, CPU time (all its processes), and peak RSS summed over the
    process tree (sampled every 20 ms, from statm: cheap enough not to slow the run)."""
    os.sync()   # start each run with nothing of the previous one's output still being written back
    # ... and with the memory the previous run freed already handed back: these VMs report freed
    # pages to the host a couple of seconds later, which would otherwise land in this run's time.
    time.sleep(SETTLE_S)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    with PeakMemory(proc.pid, interval=0.02, pss=False) as mem:
        out = proc.stdout.read()   # until the child closes it (exits); wait() reaps it
        proc.wait()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{out}")
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": mem.rss / MB}


def run_one(args) -> None:
    """Subprocess entry: one conversion."""
    if args.run == "baseline":
        baseline_convert(args.tsv, args.out)
    else:
        from butd.features.convert import convert_tsv
        convert_tsv(args.tsv, args.out, workers=args.workers, dtype=args.dtype, overwrite=True, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 2 GB rather than the minimum of 400 MB: see the module docstring.
    p.add_argument("--size_mb", type=float, default=2048, help="size of the generated TSV")
    p.add_argument("--max_workers", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    # Not /tmp: on our VMs its directory has seen so much creating and deleting that creating a
    # file or directory there costs ~1.5 ms of kernel time instead of ~0.05 ms elsewhere on the
    # same file system, which bills the converter (~2000 chunk files and directories per GB) and
    # barely the baseline (one file).
    p.add_argument("--work", default="/var/tmp/butd_convert_bench", help="where the TSV and outputs go")
    p.add_argument("--results", default=RESULTS, help="where the PNG and JSON go (default benchmarks/results)")
    p.add_argument("--run", choices=("baseline", "convert"), help=argparse.SUPPRESS)
    p.add_argument("--tsv", help=argparse.SUPPRESS)
    p.add_argument("--out", help="the same as --results")   # in a --run child: where it converts to
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float16", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        return run_one(args)
    args.results = args.out or args.results

    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    tsv = os.path.join(args.work, f"bench_{args.size_mb:g}mb.tsv")
    print(f"[*] generating {args.size_mb:g} MB TSV at {tsv} ...", flush=True)
    rows = make_tsv(tsv, args.size_mb, args.seed)
    size = os.path.getsize(tsv)
    with open(tsv, "rb") as f:   # same start for everyone: the file in the page cache
        while f.read(64 << 20):
            pass
    me = [sys.executable, os.path.abspath(__file__), "--tsv", tsv]
    from butd.features.convert import dir_bytes  # the parent only counts bytes; conversions run in children

    h5 = os.path.join(args.work, "baseline.hdf5")
    baseline = measure(me + ["--run", "baseline", "--out", h5])
    baseline.update(mb_s=size / 1e6 / baseline["seconds"], out_bytes=dir_bytes(h5))
    results = []
    for w in range(1, args.max_workers + 1):
        store = os.path.join(args.work, f"store_w{w}.zarr")
        r = measure(me + ["--run", "convert", "--out", store, "--workers", str(w)])
        r.update(workers=w, mb_s=size / 1e6 / r["seconds"], out_bytes=dir_bytes(store))
        r["speedup"] = r["mb_s"] / baseline["mb_s"]
        results.append(r)
    # Outputs go only now: creating files right after deleting many is several times slower on
    # this file system (0.5 ms instead of 0.05 ms per file or directory), which would bill one
    # run for the previous one's clean-up.
    os.remove(h5)
    for w in range(1, args.max_workers + 1):
        shutil.rmtree(os.path.join(args.work, f"store_w{w}.zarr"))

    print(f"\nTSV: {rows} rows, {size / 1e6:.1f} MB; {os.cpu_count()} cores")
    best = results[-1]
    summary = {
        "tsv_mb": round(size / 1e6, 1), "rows": rows, "cores": os.cpu_count(),
        "baseline_mb_s": round(baseline["mb_s"], 1), "baseline_peak_rss_mb": round(baseline["peak_rss_mb"]),
        "converter_mb_s": {r["workers"]: round(r["mb_s"], 1) for r in results},
        "speedup": {r["workers"]: round(r["speedup"], 2) for r in results},
        "converter_peak_rss_mb": {r["workers"]: round(r["peak_rss_mb"]) for r in results},
        "store_vs_hdf5_bytes": round(best["out_bytes"] / baseline["out_bytes"], 4),
    }
    workers = [r["workers"] for r in results]
    report("convert_speed", args.results, summary, results, baseline=baseline, columns=[
        ("converter", "name", "<29"), ("workers", "workers", "7d"), ("seconds", "seconds", "8.2f"),
        ("cpu s", "cpu_seconds", "6.2f"), ("MB/s", "mb_s", "7.1f"), ("x base", "speedup", "7.2f"),
        ("peak MB", "peak_rss_mb", "8.0f"), ("out MB", lambda r: r["out_bytes"] / 1e6, "8.1f"),
    ], table_rows=[dict(baseline, name="spec (DictReader, f32 HDF5)", workers=1, speedup=1.0)]
        + [dict(r, name="butd (f16 zarr)") for r in results],
        panels=[("TSV -> store conversion speed", "worker processes", "MB/s of TSV", {
            "butd converter (float16 zarr)": (workers, [r["mb_s"] for r in results]),
            "specification (float32 HDF5, 1 process)": (workers, [baseline["mb_s"]] * len(workers)),
        })])


if __name__ == "__main__":
    main()

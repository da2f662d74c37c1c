"""Conversion speed of every input layout: the converter against the simplest conversion and against
its bound, all in one run on the same generated inputs.

    python benchmarks/convert_speed.py                           # the TSV and each layout, 2 GB each
    python benchmarks/convert_speed.py --size_mb 400             # a quicker look
    python benchmarks/convert_speed.py --layouts hdf5,npz        # some of: tsv hdf5 hdf5_adaptive npz npz_transposed mmf

The TSV (``butd.synthetic.scene``'s obj36 rows, 36 boxes x 2048-d): the specification's converter
(``readlines`` to count rows, one process, csv.DictReader, base64, float32 HDF5 via h5py) against
butd's (float16) for every worker count from 1 to all cores; and the TSV's compute bound: the same
rows, read into memory beforehand, base64-decoded and cast to float16 on every core (no I/O).

Every other layout (``benchmarks/layouts.py``: the specification's 36-box HDF5, ban-vqa's adaptive
HDF5, bottom-up-attention.pytorch and MCAN npz folders, MMF npy folders), on a generated input of
``--size_mb``, written as its extractor writes it:
- the converter on all cores;
- (a) the simplest conversion a user would write: one process, the layout's own reader (h5py row
  by row, ``np.load`` per file), the same zarr arrays written block by block;
- (b) the bound: the same input read, decoded and cast to float16 (into a chunk-sized buffer) on
  every core, nothing written: the part of the work no writer can skip;
- the converter on a quarter-size input, whose peak memory must equal the full one's.
The bound and the converter run ``--repeat`` times, alternately (a shared machine moves both; the
best of each is compared). Times are the work's own (inside each run's process: imports and
interpreter start excluded, the converter's plan, store creation and verification included);
peak memory is the RSS of the run's process and all its children (``harness.PeakMemory``). Each
input is in the page cache before its runs. 2 GB by default: large enough that the converter's
fixed costs (~0.3 s: zarr import, store creation, verification) do not hide its throughput.

MB/s in the table are of the work's own time; the TSV summary's ``converter_mb_s`` and ``speedup``
are of each process's wall time, start-up included, as this benchmark has always reported them.
Prints a table and one line per layout with its ratios, writes ``convert_speed.json`` and
``convert_speed.png`` to ``--results`` (default benchmarks/results/), ends with one JSON line.
Generated inputs and outputs go under ``--work`` and are removed at the end (each layout's before
the next is made).
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

from butd.cli import run

from harness import MB, RESULTS, PeakMemory, comma_list, parser, report, spanned

SETTLE_S = 3.0
TSV = "tsv"


def spec_convert(tsv_path: str, h5_path: str) -> int:
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


def tsv_bound(tsv_path: str, workers: int) -> float:
    """Seconds to decode every row of ``tsv_path`` (strict base64 of every array field, as the
    converter decodes it) and cast its features to float16, on ``workers`` processes, each its
    share of the rows read into memory beforehand (untimed), after a barrier."""
    size = os.path.getsize(tsv_path)
    bounds = [size * i // workers for i in range(workers + 1)]
    return spanned(_tsv_bound_worker, [(tsv_path, bounds[i], bounds[i + 1]) for i in range(workers)])


def _tsv_bound_worker(path, start, end, barrier, results) -> None:
    from butd.features.convert.float16 import float32_to_float16
    from butd.features.tsv import decode_row
    with open(path, "rb") as f:          # the lines that start in [start, end)
        if start:
            f.seek(start - 1)
            f.readline()
        lines = []
        while f.tell() < end:
            line = f.readline()
            if not line:
                break
            lines.append(line)
    chunk, scratch = np.zeros((32, 36, 2048), np.float16), {}
    barrier.wait()
    t0 = time.perf_counter()
    for i, line in enumerate(lines):
        row = decode_row(line, "obj36", path, i + 1, 2048)
        float32_to_float16(row.features, chunk[i % 32, :row.num_boxes], scratch)
    results.put((t0, time.perf_counter()))


def measure(cmd: list) -> dict:
    """Run ``cmd``; its wall time, CPU time (all its processes), peak RSS summed over the process
    tree (sampled every 20 ms, from statm: cheap enough not to slow the run) and the last line it
    printed as JSON (the work's own time, where the run reports one)."""
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
    lines = out.strip().splitlines()
    reported = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": mem.rss / MB, **reported}


def run_one(args) -> None:
    """Subprocess entry: one run; prints {"work_seconds": ...} last."""
    import layouts

    from butd.features.convert import convert  # imported before the clock starts, as the bounds' code is
    t0 = time.perf_counter()
    if args.run == "baseline":
        spec_convert(args.input, args.out)
    elif args.run == "convert":
        convert(args.input, args.out, workers=args.workers, dtype=args.dtype, overwrite=True, progress=False)
    elif args.run == "tsv_bound":
        print(json.dumps({"work_seconds": tsv_bound(args.input, args.workers)}))
        return
    elif args.run == "layout_baseline":
        layouts.baseline_convert(args.layout, args.input, args.out, args.max_boxes)
    elif args.run == "layout_bound":
        print(json.dumps({"work_seconds": layouts.bound(args.layout, args.input, args.workers)}))
        return
    print(json.dumps({"work_seconds": time.perf_counter() - t0}))


def warm(path: str) -> None:
    """Every file of ``path`` read once: the same start for every run, the input in the page cache."""
    files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names] if os.path.isdir(path) else [path]
    for name in files:
        with open(name, "rb") as f:
            while f.read(64 << 20):
                pass


def bench_tsv(args, me: list, work: str) -> tuple:
    """The TSV: the specification's converter, butd's for 1..all workers, the compute bound."""
    from butd.features.convert import dir_bytes
    tsv = os.path.join(work, f"bench_{args.size_mb:g}mb.tsv")
    print(f"[*] generating {args.size_mb:g} MB TSV at {tsv} ...", flush=True)
    rows = make_tsv(tsv, args.size_mb, args.seed)
    size = os.path.getsize(tsv)
    warm(tsv)
    h5 = os.path.join(work, "baseline.hdf5")
    baseline = measure(me + ["--run", "baseline", "--input", tsv, "--out", h5])
    baseline.update(mb_s=size / 1e6 / baseline["seconds"], out_bytes=dir_bytes(h5))
    results = []
    for w in range(1, args.max_workers + 1):
        store = os.path.join(work, f"store_w{w}.zarr")
        r = measure(me + ["--run", "convert", "--input", tsv, "--out", store, "--workers", str(w)])
        r.update(workers=w, mb_s=size / 1e6 / r["seconds"], out_bytes=dir_bytes(store))
        r["speedup"] = r["mb_s"] / baseline["mb_s"]
        results.append(r)
    bound = min((measure(me + ["--run", "tsv_bound", "--input", tsv, "--workers", str(args.max_workers)])
                 for _ in range(args.repeat)), key=lambda r: r["work_seconds"])
    best = results[-1]
    share = bound["work_seconds"] / best["work_seconds"]
    line = (f"tsv: converter {size / 1e6 / best['work_seconds']:.0f} MB/s of TSV on {best['workers']} workers = "
            f"{share:.2f} of its compute bound (base64 + float16 cast in memory, {size / 1e6 / bound['work_seconds']:.0f}"
            f" MB/s); {best['speedup']:.2f}x the specification's converter ({baseline['mb_s']:.1f} MB/s)")
    summary = {
        "tsv_mb": round(size / 1e6, 1), "rows": rows,
        "baseline_mb_s": round(baseline["mb_s"], 1), "baseline_peak_rss_mb": round(baseline["peak_rss_mb"]),
        "converter_mb_s": {r["workers"]: round(r["mb_s"], 1) for r in results},
        "speedup": {r["workers"]: round(r["speedup"], 2) for r in results},
        "converter_peak_rss_mb": {r["workers"]: round(r["peak_rss_mb"]) for r in results},
        "store_vs_hdf5_bytes": round(best["out_bytes"] / baseline["out_bytes"], 4),
        "compute_bound_mb_s": round(size / 1e6 / bound["work_seconds"], 1), "share_of_compute_bound": round(share, 2),
    }
    rows_out = [dict(baseline, layout=TSV, name="spec (DictReader, f32 HDF5)", workers=1)] + \
        [dict(r, layout=TSV, name="butd converter") for r in results] + \
        [dict(bound, layout=TSV, name="compute bound (in memory)", workers=args.max_workers)]
    for r in rows_out:
        r.update(input_bytes=size)
    cleanup = [h5] + [os.path.join(work, f"store_w{w}.zarr") for w in range(1, args.max_workers + 1)]
    return summary, rows_out, line, cleanup


def bench_layout(args, me: list, work: str, layout: str) -> tuple:
    """One layout: the converter (``--repeat`` times, alternating with the bound), the simplest
    conversion, and the converter on a quarter-size input."""
    import layouts

    from butd.features.convert import dir_bytes
    folder = os.path.join(work, layout)
    print(f"[*] generating {args.size_mb:g} MB of {layout} (and a quarter-size one) under {folder} ...", flush=True)
    full = layouts.make(layout, os.path.join(folder, "full"), args.size_mb, args.seed)
    quarter = layouts.make(layout, os.path.join(folder, "quarter"), args.size_mb / 4, args.seed + 1)
    warm(full["input"])
    warm(quarter["input"])
    size = full["bytes"]
    common = ["--layout", layout, "--workers", str(args.max_workers)]
    converts, bounds = [], []
    for k in range(args.repeat):
        bounds.append(measure(me + ["--run", "layout_bound", "--input", full["input"]] + common))
        converts.append(measure(me + ["--run", "convert", "--input", full["input"], "--workers", str(args.max_workers),
                                      "--out", os.path.join(folder, f"store{k}.zarr")]))
    baseline = measure(me + ["--run", "layout_baseline", "--input", full["input"], "--out",
                             os.path.join(folder, "baseline.zarr"), "--max_boxes", str(full["max_boxes"])] + common)
    small = measure(me + ["--run", "convert", "--input", quarter["input"], "--workers", str(args.max_workers),
                          "--out", os.path.join(folder, "quarter.zarr")])
    convert = min(converts, key=lambda r: r["work_seconds"])
    bound = min(bounds, key=lambda r: r["work_seconds"])
    mb = size / 1e6
    out = {
        "input_mb": round(mb, 1), "images": full["images"],
        "converter_mb_s": round(mb / convert["work_seconds"], 1), "bound_mb_s": round(mb / bound["work_seconds"], 1),
        "baseline_mb_s": round(mb / baseline["work_seconds"], 1),
        "of_bound": round(bound["work_seconds"] / convert["work_seconds"], 2),
        "x_baseline": round(baseline["work_seconds"] / convert["work_seconds"], 2),
        "converter_peak_rss_mb": round(convert["peak_rss_mb"]), "quarter_input_peak_rss_mb": round(small["peak_rss_mb"]),
        "baseline_peak_rss_mb": round(baseline["peak_rss_mb"]),
        "store_mb": round(dir_bytes(os.path.join(folder, "store0.zarr")) / 1e6, 1),
    }
    line = (f"{layout}: converter {out['converter_mb_s']:.0f} MB/s of input = {out['of_bound']:.2f} of its bound "
            f"({out['bound_mb_s']:.0f} MB/s), {out['x_baseline']:.2f}x its baseline ({out['baseline_mb_s']:.0f} MB/s); "
            f"peak {out['converter_peak_rss_mb']} MB at {mb / 1e3:.1f} GB, {out['quarter_input_peak_rss_mb']} MB at "
            f"{quarter['bytes'] / 1e9:.1f} GB")
    rows = [dict(r, layout=layout, name=name, workers=w, input_bytes=n)
            for r, name, w, n in ((bound, "bound (read+decode+cast)", args.max_workers, size),
                                  (convert, "butd converter", args.max_workers, size),
                                  (baseline, "baseline (1 process)", 1, size),
                                  (small, "converter, quarter input", args.max_workers, quarter["bytes"]))]
    return out, rows, line, [folder]


def main(argv=None) -> None:
    import layouts
    p = parser(__doc__)
    p.add_argument("--size_mb", type=float, default=2048, help="size of each generated input, in MB")
    p.add_argument("--layouts", type=comma_list(choices=[TSV, *layouts.LAYOUTS]), default=",".join([TSV, *layouts.LAYOUTS]),
                   help="input layouts to measure, comma-separated")
    p.add_argument("--max_workers", type=int, default=os.cpu_count(),
                   help="converter processes: the TSV is converted with 1 to this many, every other layout with this many")
    p.add_argument("--repeat", type=int, default=3, help="runs of each converter and bound (the best counts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    # Not /tmp: on our VMs its directory has seen so much creating and deleting that creating a
    # file or directory there costs ~1.5 ms of kernel time instead of ~0.05 ms elsewhere on the
    # same file system, which bills the converter (~2000 chunk files and directories per GB) and
    # barely the baseline (one file).
    p.add_argument("--work", default="/var/tmp/butd_convert_bench", help="where inputs and outputs go (removed after)")
    p.add_argument("--results", default=RESULTS, help="where the PNG and JSON go (default benchmarks/results)")
    p.add_argument("--run", choices=("baseline", "convert", "tsv_bound", "layout_baseline", "layout_bound"),
                   help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--max_boxes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help="the same as --results (default: --results)")   # in a --run child: where it converts to
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float16", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        return run_one(args)
    args.results = args.out or args.results

    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__)]
    summary, runs, lines, cleanup = {"cores": os.cpu_count()}, [], [], []
    try:
        for layout in args.layouts:
            # the previous layout's files go before this one's are made: creating files right after
            # deleting many is several times slower on this file system (0.5 ms instead of 0.05 ms
            # per file or directory), which the generation absorbs, not a measured run
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            bench = bench_tsv(args, me, args.work) if layout == TSV else bench_layout(args, me, args.work, layout)
            out, rows, line, cleanup = bench
            summary[layout] = out
            runs += rows
            lines.append(line)
            print(f"[*] {line}", flush=True)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)

    print()
    for line in lines:
        print(line)
    for r in runs:
        r["work_mb_s"] = r["input_bytes"] / 1e6 / r["work_seconds"]
    report("convert_speed", args.results, summary, runs, columns=[
        ("layout", "layout", "<15"), ("run", "name", "<26"), ("workers", "workers", "7d"),
        ("input MB", lambda r: r["input_bytes"] / 1e6, "8.0f"), ("wall s", "seconds", "7.2f"),
        ("work s", "work_seconds", "7.2f"), ("cpu s", "cpu_seconds", "6.2f"), ("MB/s", "work_mb_s", "7.1f"),
        ("peak MB", "peak_rss_mb", "8.0f"),
    ], picture=picture)


def picture(summary: dict, runs: list, out: str) -> str:
    """How near is each layout's converter to its bound, and how far ahead of the simplest
    conversion (the TSV: of the specification's converter)?"""
    from butd.evaluation.plots import bar_chart
    bars = []
    tsv = summary.get(TSV)
    if tsv:
        bars.append({"label": "tsv: the specification's converter (wall time)", "value": tsv["baseline_mb_s"],
                     "group": "baseline"})
        top = max(tsv["converter_mb_s"], key=int)
        for w, mb_s in tsv["converter_mb_s"].items():
            best = w == top
            bars.append({"label": f"tsv: butd, {w} worker(s) (wall time)", "value": mb_s, "group": "butd",
                         "bound": tsv["compute_bound_mb_s"] if best else None,
                         "note": f"{tsv['speedup'][w]:.1f}x the specification" + (
                             f"\nin work time (start-up left out): {tsv['share_of_compute_bound']:.2f} of its "
                             "compute bound" if best else "")})
    for layout, figures in summary.items():
        if layout in (TSV, "cores") or not isinstance(figures, dict):
            continue
        bars.append({"label": f"{layout}: simplest conversion", "value": figures["baseline_mb_s"], "group": "baseline"})
        bars.append({"label": f"{layout}: butd converter", "value": figures["converter_mb_s"], "group": "butd",
                     "bound": figures["bound_mb_s"],
                     "note": f"{figures['of_bound']:.2f} of its bound, {figures['x_baseline']:.1f}x the simplest"})
    return bar_chart([("MB/s of input, on all cores; grey: the layout's bound (read + decode + cast, nothing written)",
                       "MB/s of input", bars)], out,
                     title=f"convert_speed on {summary.get('cores')} cores, inputs of "
                           f"{max([f.get('input_mb', f.get('tsv_mb', 0)) for f in summary.values() if isinstance(f, dict)] or [0]):.0f} MB")


if __name__ == "__main__":
    sys.exit(run(main))

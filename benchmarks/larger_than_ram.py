"""A store larger than the memory its reader may use: the loader's gather against the pread bound and
against memory maps alone, inside a memory cgroup (Linux, as root).

    python benchmarks/larger_than_ram.py                      # generates a 1.2 GB store in a temp dir
    python benchmarks/larger_than_ram.py --store data/GQA-Cache/trainval.zarr --rows 40000 --cache_fraction 0.5

Each method runs in its own process, in a fresh memory cgroup whose limit is that process's own
memory (measured first by a run without a limit) plus ``--cache_fraction`` of the bytes of the rows
it reads: the page cache can hold only that share of them, as on a machine whose RAM is smaller
than the store. For the same random batches of ``--bsz`` questions (four per image), epoch
after epoch for ``--seconds``, starting from a dropped page cache:

- ``pread``: the bound, plain ``preadv`` of each row from ``--io_threads`` threads (``loader_speed``'s);
- ``auto``: ``FeatureStore.gather`` as the loader runs it (memory maps while the pages are cached,
  ``preadv`` into the batch as soon as page faults read from disk);
- ``map``: memory maps alone (``read_mode="map"``): what thrashing costs;
- ``zstd``: the same images in a zstd store (generated beside the generated store; with
  ``--store``, give one as ``--zstd_store``, e.g. converted with ``--compressor zstd``, or the
  method is skipped), read by ``FeatureStore.gather`` in the same memory: a compressed store on a
  machine whose RAM holds neither store decoded. train.py's ``--feature_cache auto`` streams it
  there (``butd.loading.cache_choice``, which sees the cgroup's limit); the child reports the cache
  it picks.

Prints each method's samples/s and the cgroup's peak memory, writes ``larger_than_ram.json`` and
``.png`` under ``--out``, and ends with one JSON line: ``auto_vs_pread`` (target >= 0.8),
``map_vs_auto`` and ``zstd_vs_auto`` (the zstd target, >= 0.5: the compressed store against the
uncompressed one, both read as training reads them in that memory).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from butd.cli import run

from harness import MB, RESULTS, parser, report

GB = 1e9
METHODS = ("pread", "auto", "map", "zstd")
TARGET = 0.8
ZSTD_TARGET = 0.5


# -- one method, in a child process -----------------------------------------------------------------

def child(args) -> dict:
    import numpy as np
    from loader_speed import drop_cache, random_questions, run_gather, run_pread

    from butd.features import schema
    from butd.features.reader import FeatureStore
    from butd.loading.cache_choice import auto_cache

    meta = FeatureStore(args.store)
    rows = min(args.rows or meta.num_images, meta.num_images)
    row_bytes = meta.max_boxes * (meta.feature_dim * np.dtype(meta.attrs.dtype).itemsize + schema.SPATIAL_DIM * 4)
    questions = random_questions(rows * 4, rows)
    path = args.zstd_store if args.child == "zstd" else args.store
    cache = auto_cache(FeatureStore(path))[0]   # here, inside the cgroup
    drop_cache(path)
    if args.child == "pread":
        r = run_pread(path, questions, args.bsz, args.seconds, args.io_threads, True)
    else:
        r = run_gather(path, questions, args.bsz, args.seconds, True,
                       read_mode="auto" if args.child == "zstd" else args.child)
    with open("/proc/self/status") as f:
        anon = next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    return {"method": args.child, "samples_per_s": r["samples_per_s"], "anon_bytes": anon, "rows": rows,
            "row_bytes": int(row_bytes), "auto_cache": cache}


# -- the cgroup -------------------------------------------------------------------------------------

class MemoryCgroup:
    """A fresh memory cgroup (v2, else v1) limited to ``limit`` bytes; ``procs`` is the file a process
    writes its pid to in order to join it. Raises RuntimeError where none can be made."""

    def __init__(self, name: str, limit: int):
        v2 = "/sys/fs/cgroup/cgroup.controllers"
        if os.path.exists(v2) and "memory" in open(v2).read().split():
            self.path, limit_file, self.peak_file = f"/sys/fs/cgroup/{name}", "memory.max", "memory.peak"
        elif os.path.isdir("/sys/fs/cgroup/memory"):
            self.path = f"/sys/fs/cgroup/memory/{name}"
            limit_file, self.peak_file = "memory.limit_in_bytes", "memory.max_usage_in_bytes"
        else:
            raise RuntimeError("no memory cgroup controller (cgroup v2 memory or /sys/fs/cgroup/memory)")
        try:
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, limit_file), "w") as f:
                f.write(str(int(limit)))
        except OSError as e:
            raise RuntimeError(f"cannot make the memory cgroup {self.path} ({e.strerror}): run as root") from None
        self.procs = os.path.join(self.path, "cgroup.procs")

    def peak(self) -> int | None:
        try:
            with open(os.path.join(self.path, self.peak_file)) as f:
                return int(f.read())
        except OSError:
            return None

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def run_child(args, method: str, cgroup: MemoryCgroup | None) -> dict:
    def join():
        with open(cgroup.procs, "w") as f:
            f.write(str(os.getpid()))

    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--store", args.store,
           "--zstd_store", args.zstd_store or "",
           "--seconds", str(args.seconds), "--bsz", str(args.bsz), "--io_threads", str(args.io_threads)]
    if args.rows:
        cmd += ["--rows", str(args.rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=join if cgroup else None)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed (exit {done.returncode}; killed for memory if -9):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the runs ---------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--store", help="an existing store (default: generate one)")
    ap.add_argument("--zstd_store", help="the same images in a zstd store (generated when --store is not given)")
    ap.add_argument("--rows", type=int, help="read only the first ROWS images (default: all)")
    ap.add_argument("--gb", type=float, default=1.2, help="size of the generated store's features, in GB")
    ap.add_argument("--cache_fraction", type=float, default=0.5, help="share of the read rows' bytes the page cache may hold")
    ap.add_argument("--bsz", type=int, default=256, help="batch size")
    ap.add_argument("--seconds", type=float, default=8.0, help="time each method for about this long")
    ap.add_argument("--io_threads", type=int, default=32, help="threads of the pread bound")
    ap.add_argument("--out", default=RESULTS, help="where the PNG and JSON go")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    workdir = tempfile.mkdtemp(prefix="larger_than_ram_")
    try:
        if not args.store:
            from loader_speed import generate_store

            from butd.features.convert import DEFAULT_CHUNK_IMAGES
            args.store = os.path.join(workdir, "store.zarr")
            images = int(args.gb * GB / (36 * 2048 * 2))
            args.zstd_store = os.path.join(workdir, "zstd.zarr")
            for path, compressor in ((args.store, "none"), (args.zstd_store, "zstd")):   # the same images
                generate_store(path, images, 36, 2048, "float16", DEFAULT_CHUNK_IMAGES, compressor)
            print(f"[*] generated {args.store} and {args.zstd_store}: {images} images", flush=True)
        return _run(args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args) -> dict:
    try:
        MemoryCgroup(f"butd_larger_than_ram_{os.getpid()}_check", 1 << 40).remove()
    except RuntimeError as e:
        print(f"[!] skipped: {e}")
        return {"benchmark": "larger_than_ram", "skipped": str(e)}
    probe = run_child(args, "auto", None)   # the process's own memory, without a limit
    data = probe["rows"] * probe["row_bytes"]
    limit = probe["anon_bytes"] + 64 * MB + int(args.cache_fraction * data)
    print(f"[*] {probe['rows']} rows, {data / GB:.2f} GB read; each method limited to {limit / GB:.2f} GB "
          f"(its own {probe['anon_bytes'] / GB:.2f} GB + 64 MB + {args.cache_fraction:.0%} of the rows' bytes)",
          flush=True)
    runs = []
    for method in METHODS if args.zstd_store else METHODS[:-1]:
        cgroup = MemoryCgroup(f"butd_larger_than_ram_{os.getpid()}_{method}", limit)
        try:
            r = run_child(args, method, cgroup)
            r["peak_gb"] = None if cgroup.peak() is None else round(cgroup.peak() / GB, 2)
        finally:
            cgroup.remove()
        r["gb_per_s"] = r["samples_per_s"] * r["row_bytes"] / GB
        runs.append(r)
        print(f"  {method:6s} {r['samples_per_s']:9.0f} samples/s  {r['gb_per_s']:5.2f} GB/s  cgroup peak "
              f"{r['peak_gb']} GB", flush=True)
    speed = {r["method"]: r["samples_per_s"] for r in runs}
    summary = {"benchmark": "larger_than_ram", "rows": probe["rows"], "read_gb": round(data / GB, 2),
               "limit_gb": round(limit / GB, 2), "cache_fraction": args.cache_fraction,
               "samples_per_s": {m: round(v) for m, v in speed.items()},
               "auto_vs_pread": round(speed["auto"] / speed["pread"], 3),
               "map_vs_auto": round(speed["map"] / speed["auto"], 3)}
    met = {f"auto_vs_pread>={TARGET}": summary["auto_vs_pread"] >= TARGET}
    if "zstd" in speed:
        summary.update(zstd_vs_auto=round(speed["zstd"] / speed["auto"], 3),
                       zstd_auto_cache=next(r["auto_cache"] for r in runs if r["method"] == "zstd"))
        met[f"zstd_vs_auto>={ZSTD_TARGET}"] = summary["zstd_vs_auto"] >= ZSTD_TARGET
    summary["targets_met"] = met
    return report("larger_than_ram", args.out, summary, runs, picture=picture)


def picture(summary: dict, runs: list, out: str) -> str:
    """How near the pread bound is the gather when the page cache holds only part of the store, and
    how far memory maps alone fall behind?"""
    from butd.evaluation.plots import bar_chart
    speed = summary["samples_per_s"]
    pread = speed["pread"]
    names = {"pread": "preadv bound (many threads)", "auto": "FeatureStore.gather (auto mode)",
             "map": "memory maps alone", "zstd": "zstd store, as train.py reads it"}
    bars = [{"label": names["pread"], "value": pread, "group": "bound", "note": f"{pread:,} samples/s"}]
    bars += [{"label": names[m], "value": v, "bound": pread, "group": m, "note": f"{v / pread:.2f} of the bound"}
             for m, v in speed.items() if m in ("auto", "map")]
    if "zstd" in speed:
        bars.append({"label": names["zstd"] + f" (cache {summary.get('zstd_auto_cache')})", "value": speed["zstd"],
                     "bound": speed["auto"], "group": "zstd", "note": f"{summary['zstd_vs_auto']:.2f} of the gather"})
    met = summary.get("targets_met", {})
    return bar_chart([(f"Random batches from {summary['read_gb']} GB of rows, the page cache limited to "
                       f"{summary['cache_fraction']:.0%} of them ({summary['limit_gb']} GB cgroup); grey: the bound",
                       "samples/s", bars)], out,
                     title=f"larger_than_ram: {sum(met.values())} of {len(met)} targets met"
                     + "".join(f" (missed: {k})" for k, ok in met.items() if not ok))


if __name__ == "__main__":
    sys.exit(run(main))

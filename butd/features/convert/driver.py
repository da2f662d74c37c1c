"""Parallel, resumable conversion of features TSVs into a chunked Zarr v3 feature store.

    from butd.features.convert import convert_tsv
    convert_tsv("data/GQA-Features/vg_gqa_obj36.tsv", "data/GQA-Cache/trainval.zarr", workers=2)
    convert_tsv(["trainval_resnet101_faster_rcnn_genome_36.tsv.0", "....tsv.1"], "trainval.zarr")

Several TSVs make one store: their rows in file order, file after file (VQA v2's Anderson features
come split over several ``.tsv.N`` files); line numbers and errors name each row's own file, and
the fingerprint covers every file. The feature size is the one most of the first rows agree on
(or ``feature_dim``), never the first row's alone.

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

import importlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from butd.features import schema
from butd.features.convert.chunks import PROGRESS_DIR, convert_chunk, write_json_atomic
from butd.features.convert.lifecycle import (
    PLAN_FILE,
    bad_rows_report_path,
    create_store,
    dir_bytes,
    done_chunks,
    existing_store,
    fingerprint,
    mark_complete,
    record_settings,
    remove_store,
    sources_of,
    verify,
)
from butd.features.convert.pool import Runner, progress_bar
from butd.features.convert.scan import Plan, probe, scan
from butd.features.schema import StoreAttrs
from butd.features.tsv import check_layout

DEFAULT_CHUNK_IMAGES = 32
BAD_ROW_MODES = ("error", "skip")


@dataclass
class ConvertSummary:
    """What a conversion did. ``rows`` is the store's row count, ``bytes_in`` the TSVs' size;
    ``tsv_path`` names the TSV (the TSVs joined by " + ")."""
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


def check_args(dtype, compressor, chunk_images, on_bad_row, layout, feature_dim=None):
    check_layout(layout)
    if feature_dim is not None and int(feature_dim) < 1:
        raise ValueError(f"feature_dim {feature_dim}: expected a positive number of feature values per box")
    for name, value, allowed in (("dtype", dtype, schema.FEATURE_DTYPES),
                                 ("compressor", compressor, schema.COMPRESSORS),
                                 ("on_bad_row", on_bad_row, BAD_ROW_MODES)):
        if value not in allowed:
            raise ValueError(f"{name} {value!r}: expected one of {', '.join(allowed)}")
    if int(chunk_images) < 1:
        raise ValueError(f"chunk_images {chunk_images}: expected a positive number of images per chunk")


def convert_tsv(tsv_path: Union[str, Sequence[str]], out_path: str, *, layout: Optional[str] = None,
                dtype: str = "float16", compressor: str = "none", chunk_images: int = DEFAULT_CHUNK_IMAGES,
                workers: Optional[int] = None, on_bad_row: str = "error", overwrite: bool = False,
                progress: bool = True, feature_dim: Optional[int] = None) -> ConvertSummary:
    """Convert ``tsv_path`` (one TSV, or a list whose rows follow each other in order) into the
    feature store ``out_path`` (see the module docstring); resumes an interrupted conversion of the
    same input with the same settings. ``feature_dim``: the feature values per box every row must
    have (default: what most of the first rows have). Raises TSVFormatError for a bad row (with
    ``on_bad_row="error"``), FileNotFoundError/PermissionError for an unreadable input, ValueError
    for an existing store that does not match, a compressed input, or a skip that would drop more
    rows than it keeps. Print the returned summary to report."""
    t0 = time.perf_counter()
    paths = [os.fspath(tsv_path)] if isinstance(tsv_path, (str, os.PathLike)) else [os.fspath(p) for p in tsv_path]
    if not paths:
        raise ValueError("no features TSV given")
    check_args(dtype, compressor, chunk_images, on_bad_row, layout, feature_dim)
    sources = sources_of(paths)
    source = sources[0] if len(sources) == 1 else {"files": sources}
    size = sum(s["size"] for s in sources)
    name = " + ".join(paths)
    skip = on_bad_row == "skip"
    probed = probe(paths, layout, skip, feature_dim)
    layout, found_dim = probed.layout, probed.feature_dim
    settings = {"layout": layout, "dtype": dtype, "compressor": compressor,
                "chunk_images": int(chunk_images), "on_bad_row": on_bad_row,
                "schema_version": schema.SCHEMA_VERSION}
    if feature_dim is not None:   # only when given: stores made before the option keep their fingerprint
        settings["feature_dim"] = int(feature_dim)
    fp = fingerprint(source, settings)
    if overwrite:
        remove_store(out_path)
        if os.path.exists(bad_rows_report_path(out_path)):
            os.remove(bad_rows_report_path(out_path))
    attrs = existing_store(out_path, fp, source, settings)
    plan_path = os.path.join(out_path, PROGRESS_DIR, PLAN_FILE)
    report = bad_rows_report_path(out_path) if skip else None
    if attrs is not None and attrs.complete:
        summary = ConvertSummary(name, out_path, attrs.num_images, 0, size,
                                 dir_bytes(out_path), time.perf_counter() - t0, 0, attrs.num_chunks,
                                 already_complete=True, bad_rows_report=report)
        return summary
    if attrs is not None and not os.path.exists(plan_path):
        remove_store(out_path)   # ours, but killed before it was fully created
        attrs = None
    if attrs is None and not skip:
        probed.check()   # after the existing store's check: a store made otherwise is named first

    workers = max(1, int(workers or os.cpu_count() or 1))
    runner = Runner(workers)
    if attrs is None and "zarr" not in sys.modules:
        # zarr takes ~0.1 s to import, needed once the scan is done: import it meanwhile (after
        # the fork above, so that no worker inherits a half-imported zarr).
        threading.Thread(target=importlib.import_module, args=("zarr",), daemon=True).start()
    try:
        if attrs is None:
            plan = scan(paths, [s["size"] for s in sources], layout, found_dim, skip, runner, progress)
            attrs = StoreAttrs(layout=layout, dtype=dtype, compressor=compressor, feature_dim=found_dim,
                               max_boxes=int(plan.num_boxes.max()), num_images=len(plan.image_ids),
                               chunk_images=int(chunk_images), source=source, fingerprint=fp)
            if skip:
                os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
                write_json_atomic(report, {"source": paths[0] if len(paths) == 1 else paths,
                                            "skipped": len(plan.bad_rows), "rows": plan.bad_rows})
            create_store(out_path, attrs, plan)
            record_settings(out_path, settings)
        plan = Plan.load(plan_path)
        done = done_chunks(out_path)
        todo = [c for c in range(attrs.num_chunks) if c not in done]
        chunk_rows = [slice(c * attrs.chunk_images, (c + 1) * attrs.chunk_images) for c in todo]
        tasks = [(paths, out_path, attrs.to_json(), c, plan.offsets[s], plan.lengths[s], plan.lines[s],
                  plan.files[s]) for c, s in zip(todo, chunk_rows)]
        total = int(sum(plan.lengths[s].sum() for s in chunk_rows))
        _run_chunks(runner, tasks, total, progress, os.path.basename(out_path))
    finally:
        runner.close()
    verify(out_path, attrs, plan)
    mark_complete(out_path)
    skipped = 0
    if skip:
        with open(report) as f:
            skipped = json.load(f)["skipped"]
    summary = ConvertSummary(name, out_path, attrs.num_images, skipped, size,
                             dir_bytes(out_path), time.perf_counter() - t0, len(todo), len(done),
                             bad_rows_report=report)
    return summary


def _run_chunks(runner: Runner, tasks: list, total: int, progress: bool, name: str) -> None:
    t0, rows = time.perf_counter(), 0
    with progress_bar(progress, total, f"convert -> {name}") as bar:
        for _, (_chunk, n, nbytes) in runner(convert_chunk, tasks):
            rows += n
            bar.update(nbytes)
            bar.set_postfix_str(f"{rows / max(time.perf_counter() - t0, 1e-9):.0f} rows/s", refresh=False)


def convert_stores(task, features_dir: str, cache_dir: str, **options) -> dict:
    """Convert every feature store of ``task`` (a ``butd.tasks.Task``) from its TSV(s) under
    ``features_dir`` (all of a store's files, in order, into one store) into
    ``<cache_dir>/<store>.zarr``; returns ``{store: ConvertSummary}``. ``options`` go to ``convert_tsv``."""
    return {store: convert_tsv([os.path.join(features_dir, f) for f in files], task.store_path(cache_dir, store),
                               **options)
            for store, files in task.stores.items()}

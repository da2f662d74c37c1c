"""Parallel, resumable conversion of region features into a chunked Zarr v3 feature store.

    from butd.features.convert import convert
    convert("data/GQA-Features/vg_gqa_obj36.tsv", "data/GQA-Cache/trainval.zarr", workers=2)
    convert(["trainval_resnet101_faster_rcnn_genome_36.tsv.0", "....tsv.1"], "trainval.zarr")
    convert("data/trainval36.hdf5", "trainval.zarr")          # its id map beside it, or ids=...
    convert("features/train2014/", "train2014.zarr")          # a folder of .npz, or of MMF .npy

The input is any layout of ``butd.features.inputs`` (TSVs, the HDF5 caches of the specification,
hengyuan-hu and ban-vqa, folders of bottom-up-attention.pytorch or MCAN ``.npz`` and of MMF
``.npy``), recognised from the input itself. Several inputs make one store: their images in order,
input after input (VQA v2's Anderson features come split over several ``.tsv.N`` files); errors
name each image's own file, and the fingerprint covers every file. In a TSV the feature size is the
one most of the first rows agree on (or ``feature_dim``), never the first row's alone.

(``converters/tsv_to_zarr.py`` is the command line.) Two passes over the input:

1. *plan*: the input's rows, checked, in store order (``FeatureInput.plan``). A TSV is scanned over
   the workers: newline-aligned byte ranges are walked row by row, each row's structure checked
   from its head (the fields before the features) and the two bytes where its line must end given
   its box count: the features, ~99% of the file, are not read (the convert pass decodes them
   strictly). A line that this does not settle is read whole and checked from its field lengths.
   An HDF5 cache is planned from its id map and shapes, a folder from each file's small members.
   With ``on_bad_row="skip"`` every image is fully decoded instead, so that every bad one is known
   before row numbers are fixed. The result is the plan: each row's file, place in it, image id and
   box count. Repeated images are found here. The plan is saved inside the store, so a resumed run
   does not plan again.
2. *convert*, over ``workers`` processes: each task is one store chunk (``chunk_images``
   consecutive rows): its rows are read, decoded, padded to the largest box count, cast, and
   written as whole chunks (features with O_DIRECT where possible). A small JSON marker per chunk
   is written atomically after the chunk's data, so an interrupted run (Ctrl-C, kill -9) resumes
   with the same command, converting only the chunks without a marker.

Workers are forked (ready at once) when this process has no other threads, else spawned.

Row order is input order and every chunk is written by exactly one task, so the store is
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
from typing import Callable, Optional, Sequence, Union

import numpy as np

from butd.build_lock import build_lock
from butd.features import schema
from butd.features.convert.chunks import PROGRESS_DIR, convert_chunk, write_json_atomic
from butd.features.convert.lifecycle import (
    bad_rows_report_path,
    check_free_space,
    create_store,
    dir_bytes,
    done_chunks,
    existing_store,
    fingerprint,
    mark_complete,
    record_settings,
    remove_store,
    verify,
)
from butd.features.convert.plan import PLAN_FILE, Plan
from butd.features.convert.pool import Runner, progress_bar
from butd.features.schema import StoreAttrs
from butd.features.tsv import check_layout

DEFAULT_CHUNK_IMAGES = 32
BAD_ROW_MODES = ("error", "skip")


# Below this much input a conversion's time is mostly its fixed start-up (workers, zarr), and its
# rate in MB/s says nothing about the converter's speed (the README's figures are of GB-sized inputs).
SMALL_INPUT = 100e6


@dataclass
class ConvertSummary:
    """What a conversion did. ``rows`` is the store's row count, ``bytes_in`` the input's size;
    ``tsv_path`` names the input (the inputs joined by " + "), ``layout`` says which layout it is in
    and ``notes`` what the conversion derived or left out; ``chunk_images`` the images per chunk."""
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
    layout: str = ""
    notes: tuple = ()
    chunk_images: int = 0

    def __str__(self) -> str:
        if self.already_complete:
            return f"[*] {self.out_path}: already complete ({self.rows} rows); nothing to do"
        layout = f" ({self.layout})" if self.layout else ""
        speed = (f"{self.bytes_in / 1e6 / max(self.seconds, 1e-9):.0f} MB/s of input" if self.bytes_in >= SMALL_INPUT
                 else "a small input: the workers' and zarr's start-up weigh on its rate, which is not the converter's speed")
        lines = [f"[*] {self.tsv_path}{layout} -> {self.out_path}: {self.rows} rows, "
                 f"{self.bytes_in / 1e6:.1f} MB in, {self.bytes_out / 1e6:.1f} MB out, {self.seconds:.1f} s ({speed})"]
        empty = -self.rows % self.chunk_images if self.chunk_images else 0
        if empty and self.bytes_out > self.bytes_in:
            lines.append(f"    the store's last chunk is stored whole: {empty} of its {self.chunk_images} image slots "
                         "are padding, counted in the MB out")
        lines += [f"    {note}" for note in self.notes]
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


def convert(inputs: Union[str, Sequence[str]], out_path: str, *, format: Optional[str] = None,
            ids: Optional[str] = None, layout: Optional[str] = None, dtype: str = "float16",
            compressor: str = "none", chunk_images: int = DEFAULT_CHUNK_IMAGES, workers: Optional[int] = None,
            on_bad_row: str = "error", overwrite: bool = False, progress: bool = True,
            feature_dim: Optional[int] = None, image_key: Optional[Callable[[str], str]] = None) -> ConvertSummary:
    """Convert ``inputs`` (one input, or a list whose images follow each other in order: TSVs, HDF5
    caches, folders of ``.npz`` or MMF ``.npy`` files; ``butd.features.inputs``, ``format`` to say
    which) into the feature store ``out_path`` (see the module docstring); resumes an interrupted
    conversion of the same input with the same settings. ``ids``: an HDF5 cache's id map, where it
    is not beside it; ``layout``/``feature_dim``: the TSV layout and the feature values per box every
    row must have (default: what most of the first rows have); ``image_key``: a task's
    ``image_key``, under which two spellings of one image are refused like a repeated id. Raises
    TSVFormatError/InputError for a bad image (with ``on_bad_row="error"``),
    FileNotFoundError/PermissionError for an unreadable input, UnsafePickleError for a pickle that
    names code, ValueError for an existing store that does not match, a compressed input, or a skip
    that would drop more images than it keeps. Print the returned summary to report."""
    from butd.features.inputs import open_input
    t0 = time.perf_counter()
    check_args(dtype, compressor, chunk_images, on_bad_row, layout, feature_dim)
    require_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    source_input = open_input(inputs, format=format, ids=ids, layout=layout, feature_dim=feature_dim,
                              image_key=image_key)
    source = source_input.source()
    size = sum(s["size"] for s in source.get("files", [source]))
    skip = on_bad_row == "skip"
    source_input.probe(skip)
    if feature_dim is not None and source_input.feature_dim != int(feature_dim):
        raise ValueError(f"{source_input.name}: {source_input.feature_dim} feature values per box, but --feature_dim "
                         f"is {feature_dim}")
    settings = {"layout": source_input.layout, "dtype": dtype, "compressor": compressor,
                "chunk_images": int(chunk_images), "on_bad_row": on_bad_row,
                "schema_version": schema.SCHEMA_VERSION}
    if feature_dim is not None:   # only when given: stores made before the option keep their fingerprint
        settings["feature_dim"] = int(feature_dim)
    fp = fingerprint(source, settings)
    # one process converts a store at a time; another one waits here, then finds it complete (or
    # resumes what the first left, if that one was killed)
    with build_lock(out_path, usable=lambda: schema.is_complete(out_path) and not overwrite):
        return _convert_locked(source_input, out_path, fp, source, settings, size, t0, dtype=dtype,
                               compressor=compressor, chunk_images=chunk_images, workers=workers, skip=skip,
                               overwrite=overwrite, progress=progress)


def _convert_locked(source_input, out_path: str, fp: str, source: dict, settings: dict, size: int, t0: float, *,
                    dtype, compressor, chunk_images, workers, skip, overwrite, progress) -> ConvertSummary:
    """``convert``'s work on ``out_path``, under its build lock: create, resume or find complete."""
    if overwrite:
        remove_store(out_path)
        if os.path.exists(bad_rows_report_path(out_path)):
            os.remove(bad_rows_report_path(out_path))
    attrs = existing_store(out_path, fp, source, settings)
    plan_path = os.path.join(out_path, PROGRESS_DIR, PLAN_FILE)
    pending_report = os.path.join(out_path, PROGRESS_DIR, "bad_rows.json")
    report = bad_rows_report_path(out_path) if skip else None
    name, description = source_input.name, source_input.description
    if attrs is not None and attrs.complete:
        return ConvertSummary(name, out_path, attrs.num_images, 0, size, dir_bytes(out_path),
                              time.perf_counter() - t0, 0, attrs.num_chunks, already_complete=True,
                              bad_rows_report=report, layout=description)
    if attrs is not None and not os.path.exists(plan_path):
        remove_store(out_path)   # ours, but killed before it was fully created
        attrs = None
    if attrs is None and not skip:
        source_input.check()   # after the existing store's check: a store made otherwise is named first

    workers = max(1, int(workers or os.cpu_count() or 1))
    runner = Runner(workers)
    if attrs is None and "zarr" not in sys.modules:
        # zarr takes ~0.1 s to import, needed once the scan is done: import it meanwhile (after
        # the fork above, so that no worker inherits a half-imported zarr).
        threading.Thread(target=importlib.import_module, args=("zarr",), daemon=True).start()
    resumed = attrs is not None
    try:
        if not resumed:
            plan = source_input.plan(runner, progress, skip)
            attrs = StoreAttrs(layout=source_input.layout, dtype=dtype, compressor=compressor,
                               feature_dim=source_input.feature_dim, max_boxes=int(plan.num_boxes.max()),
                               num_images=len(plan.image_ids), chunk_images=int(chunk_images), source=source,
                               fingerprint=fp)
            check_free_space(out_path, attrs, attrs.num_chunks)
            create_store(out_path, attrs, plan)
            record_settings(out_path, settings)
            if skip:   # beside the store once it is complete: a report of a failed run would look final
                given = source_input.given
                write_json_atomic(pending_report, {"source": given[0] if len(given) == 1 else given,
                                                   "skipped": len(plan.bad_rows), "rows": plan.bad_rows})
        plan = Plan.load(plan_path)
        done = done_chunks(out_path)
        todo = [c for c in range(attrs.num_chunks) if c not in done]
        if resumed:   # (a new store's whole size was checked before it was created)
            check_free_space(out_path, attrs, len(todo))
        tasks = [_chunk_task(source_input, plan, attrs, c, out_path) for c in todo]
        total = int(sum(int(np.sum(t[3]["lengths"])) for t in tasks))
        _run_chunks(runner, tasks, total, progress, os.path.basename(out_path))
    finally:
        runner.close()
    verify(out_path, attrs, plan)
    if skip and os.path.exists(pending_report):   # (a store begun before reports waited here has its own)
        os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
        os.replace(pending_report, report)
    mark_complete(out_path)
    skipped = 0
    if skip:
        with open(report) as f:
            skipped = json.load(f)["skipped"]
    return ConvertSummary(name, out_path, attrs.num_images, skipped, size, dir_bytes(out_path),
                          time.perf_counter() - t0, len(todo), len(done), bad_rows_report=report,
                          layout=description, notes=tuple(source_input.notes), chunk_images=attrs.chunk_images)


# The TSV converter's name, kept for its callers: it converts every layout.
convert_tsv = convert


def _chunk_task(source_input, plan: Plan, attrs: StoreAttrs, chunk: int, out_path: str) -> tuple:
    """The task that converts ``chunk``: its rows of the plan, with only the files they are in."""
    rows = plan.rows(chunk * attrs.chunk_images, (chunk + 1) * attrs.chunk_images)
    used, local = np.unique(rows["files"], return_inverse=True)
    rows["files"] = local.astype(np.int32)
    return (type(source_input), source_input.params(), [source_input.paths[int(i)] for i in used], rows,
            out_path, attrs.to_json(), chunk)


def _run_chunks(runner: Runner, tasks: list, total: int, progress: bool, name: str) -> None:
    t0, rows = time.perf_counter(), 0
    with progress_bar(progress, total, f"convert -> {name}") as bar:
        for _, (_chunk, n, nbytes) in runner(convert_chunk, tasks):
            rows += n
            bar.update(nbytes)
            bar.set_postfix_str(f"{rows / max(time.perf_counter() - t0, 1e-9):.0f} rows/s", refresh=False)


def require_inputs(paths: Sequence[str]) -> None:
    """Raise FileNotFoundError naming every one of ``paths`` that is not there, before any work."""
    missing = [os.fspath(p) for p in paths if not os.path.exists(p)]
    if not missing:
        return

    def what(path):
        return "HDF5 cache" if path.endswith((".hdf5", ".h5")) else "feature folder" if path.endswith("/") \
            else "features TSV"
    named = "; ".join(f"{p}: {what(p)} not found" for p in missing)
    raise FileNotFoundError(named if len(missing) == 1 else
                            f"{len(missing)} inputs not found, nothing was converted: {named}")


def convert_stores(task, features_dir: str, cache_dir: str, **options) -> dict:
    """Convert every feature store of ``task`` (a ``butd.tasks.Task``) from its TSV(s) under
    ``features_dir`` (all of a store's files, in order, into one store) into
    ``<cache_dir>/<store>.zarr``; returns ``{store: ConvertSummary}``. Every input of every store is
    checked first: a missing one fails before any store is converted. ``options`` go to ``convert``;
    two spellings of one image are refused as the task's ``image_key`` sees them."""
    require_inputs([os.path.join(features_dir, f) for files in task.stores.values() for f in files])
    options.setdefault("image_key", getattr(task, "image_key", None))   # a Task has one; a stand-in may not
    return {store: convert([os.path.join(features_dir, f) for f in files], task.store_path(cache_dir, store),
                           **options)
            for store, files in task.stores.items()}

"""The question cache's WebDataset shards: every split's questions as tar files of JSON samples, for
streaming across nodes and workers (``stream_split``); the loader's fast path is the per-split index.

A sample is one tar member ``<question id>.json`` holding ``question_id``, ``image_ids`` and
``image_rows`` (one per image of the question), ``tokens``, the task's ``targets`` and ``types``.
"""
from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np

from butd.questions.arrays import QuestionArrays

# Questions per shard. A sample is one tar member of ~1 KB (512-byte header + padded JSON), so a
# shard is ~2 MB: big enough for sequential reads, while GQA's train (943k questions) still makes
# ~470 shards, more than the nodes x GPUs x loader workers of any run we plan, each of which needs
# shards of its own under split_by_node / split_by_worker.
SHARD_SAMPLES = 2000


def shard_path(out_dir: str, split: str, k: int) -> str:
    return os.path.join(out_dir, f"{split}-{k:06d}.tar")


def sample_dicts(arrays: QuestionArrays):
    """What the shards' ``.json`` members hold, question by question (each keyed by its id).

    Whole columns become Python lists at once (``tolist``): a tenth of the cost of converting
    numpy scalars one question at a time."""
    names = ["question_id", "image_ids", "image_rows", "tokens"]
    columns = [arrays.question_ids.tolist(), arrays.image_ids.tolist(), arrays.image_rows.tolist(),
               arrays.tokens.tolist()]
    targets, types = list(arrays.targets), list(arrays.types)
    columns += [arrays.targets[k].tolist() for k in targets] + [arrays.types[k].tolist() for k in types]
    for values in zip(*columns):
        sample = dict(zip(names, values))
        sample["targets"] = dict(zip(targets, values[len(names):len(names) + len(targets)]))
        sample["types"] = dict(zip(types, values[len(names) + len(targets):]))
        yield sample


# Set before the shard writers fork, so that they inherit the arrays instead of receiving copies.
_SHARD_SOURCE: dict = {}


def _write_shard(task) -> str:
    import webdataset as wds
    split, start, stop, path, mtime = task
    dumps = json.JSONEncoder().encode
    with wds.TarWriter(path, encoder=False, mtime=mtime) as writer:
        for sample in sample_dicts(_SHARD_SOURCE[split].take(slice(start, stop))):
            writer.write({"__key__": sample["question_id"], "json": dumps(sample).encode()})
    return path


def shard_tasks(out_dir: str, split: str, n: int, mtime: int) -> list:
    return [(split, start, min(start + SHARD_SAMPLES, n), shard_path(out_dir, split, start // SHARD_SAMPLES), mtime)
            for start in range(0, max(n, 1), SHARD_SAMPLES)]


def write_shards(out_dir: str, arrays: dict, mtime: int, workers: int, progress: bool) -> dict:
    """Write every split's shards (``arrays``: split -> QuestionArrays), in worker processes where
    fork is available (tar writing is CPU-bound). Returns the shard count per split."""
    from tqdm import tqdm
    import webdataset  # noqa: F401  imported (with torch, ~2 s) once here, not in every child
    tasks = [t for split, a in arrays.items() for t in shard_tasks(out_dir, split, len(a), mtime)]
    _SHARD_SOURCE.clear()
    _SHARD_SOURCE.update(arrays)
    bar = tqdm(total=len(tasks), desc="[*] writing shards", unit="shard", disable=not progress)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_shard, tasks):
                    bar.update()
        else:
            for task in tasks:
                _write_shard(task)
                bar.update()
    finally:
        bar.close()
        _SHARD_SOURCE.clear()
    return {split: sum(t[0] == split for t in tasks) for split in arrays}


def decode_sample(sample: dict) -> dict:
    """A streamed sample as arrays: tokens int64 [max_length], image rows int64 [images]."""
    fields = json.loads(sample["json"])
    fields["tokens"] = np.asarray(fields["tokens"], dtype=np.int64)
    fields["image_rows"] = np.asarray(fields["image_rows"], dtype=np.int64)
    return fields


def stream_shards(paths: list, shard_shuffle: int = 0, seed: int = 0):
    """A ``webdataset.WebDataset`` over ``paths``, split across nodes (``split_by_node``) and
    DataLoader workers (``split_by_worker``), yielding ``decode_sample`` dicts.

    ``shard_shuffle > 0`` shuffles each worker's shards (a buffer of that many, seeded by ``seed``,
    deterministic per epoch); samples are then in shard order, as written.
    """
    import webdataset as wds
    return wds.WebDataset(paths, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                          shardshuffle=shard_shuffle or False, detshuffle=True, seed=seed).map(decode_sample)

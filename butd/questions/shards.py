"""The question cache's WebDataset shards: every split's questions as tar files of JSON samples, for
streaming across DDP ranks and DataLoader workers (``butd.questions.stream``, ``cache.stream_split``);
the loader's fast path is the per-split index.

    counts = write_shards(out_dir, {"train": arrays}, mtime=int(time.time()), workers=2, progress=False)

A sample is one tar member ``<question id>.json`` holding ``question_id``, ``image_ids`` and
``image_rows`` (one per image of the question), ``tokens``, the task's ``targets`` and ``types``
(``sample_dicts`` defines it). Shard ``k`` of a split holds its questions ``k * SHARD_SAMPLES`` to
``(k + 1) * SHARD_SAMPLES - 1``, in the index's order.

Writing is a numpy and bytes job, not a tarfile one: the member texts of a whole shard come from
column-wise encoders (integer rows through a table of digit strings), and the tar headers from one
``tarfile`` header per split with the name, size and checksum fields spliced in, so that a shard is
byte for byte what ``webdataset.TarWriter`` writes, at a twentieth of the cost. Shards are written in
forked worker processes while the caller's ``meanwhile`` (saving the index) runs in this one.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import tarfile

import numpy as np

from butd.questions.arrays import QuestionArrays

# Questions per shard. A sample is one tar member of ~1 KB (512-byte header + padded JSON), so a
# shard is ~2 MB: big enough for sequential reads; consumers do not need shards of their own
# (``butd.questions.stream`` splits samples, not shards).
SHARD_SAMPLES = 2000
# A sample's fields, and the QuestionArrays columns they come from.
FIELDS = {"question_id": "question_ids", "image_ids": "image_ids", "image_rows": "image_rows", "tokens": "tokens"}
# What webdataset.TarWriter puts in every member header (owner names are its defaults).
MEMBER = {"mode": 0o444, "uname": "bigdata", "gname": "bigdata"}

_encode = json.JSONEncoder().encode   # json.dumps's text (", " and ": " separators), C encoder


def shard_path(out_dir: str, split: str, k: int) -> str:
    return os.path.join(out_dir, f"{split}-{k:06d}.tar")


def shard_counts(num_samples: int, shard_samples: int = SHARD_SAMPLES) -> list:
    """Samples in each shard of a split of ``num_samples`` (one empty shard for an empty split)."""
    return [min(shard_samples, num_samples - start) for start in range(0, max(num_samples, 1), shard_samples)]


def sample_dicts(arrays: QuestionArrays):
    """What the shards' ``.json`` members hold, question by question: each member is
    ``json.dumps`` of one of these dicts (``SplitWriter`` writes the same text, faster)."""
    names = list(FIELDS)
    columns = [getattr(arrays, column).tolist() for column in FIELDS.values()]
    targets, types = list(arrays.targets), list(arrays.types)
    columns += [arrays.targets[k].tolist() for k in targets] + [arrays.types[k].tolist() for k in types]
    for values in zip(*columns):
        sample = dict(zip(names, values))
        sample["targets"] = dict(zip(targets, values[len(names):len(names) + len(targets)]))
        sample["types"] = dict(zip(types, values[len(names) + len(targets):]))
        yield sample


# ----------------------------------------------------------------------------------------------
# Writing.

class _IntRows:
    """JSON text of an integer column's rows (a number, or a list for 2-D columns) from a table of
    the texts of every value in the column's range: numpy gathers a whole shard's digits at once,
    a tenth of the cost of formatting ints one by one (``json`` or ``str``) for 40-token rows."""
    MAX_RANGE = 1 << 20

    @classmethod
    def fits(cls, column: np.ndarray) -> bool:
        """Whether the table is worth making: no bigger than the column (or small) nor than MAX_RANGE."""
        if column.dtype.kind not in "iu":
            return False
        span = int(column.max()) - int(column.min()) + 1 if column.size else 1
        return span <= min(max(column.size, 1 << 12), cls.MAX_RANGE)

    def __init__(self, column: np.ndarray):
        self.low = int(column.min()) if column.size else 0
        texts = [b"%d, " % v for v in range(self.low, int(column.max()) + 1 if column.size else 1)]
        self.table, self.lengths = np.array(texts), np.array([len(t) for t in texts])
        self.brackets = column.ndim > 1

    def __call__(self, part: np.ndarray) -> list:
        index = part.reshape(len(part), int(np.prod(part.shape[1:]))) - self.low
        digits = self.table[index].tobytes().replace(b"\0", b"")   # the table pads with NUL
        ends = np.cumsum(self.lengths[index].sum(axis=1)).tolist()
        rows = [digits[start:end - 2] for start, end in zip([0] + ends[:-1], ends)]   # less the last ", "
        return [b"[%b]" % r for r in rows] if self.brackets else rows


def _json_texts(part: np.ndarray) -> list:
    """JSON text (bytes) of each row of a non-integer column, as ``json.dumps`` writes it."""
    if part.dtype.kind == "U" and part.ndim == 2:   # lists of strings: encoding the strings alone is faster
        width, flat = part.shape[1], [_encode(v).encode() for v in part.ravel().tolist()]
        return [b"[%b]" % b", ".join(flat[i:i + width]) for i in range(0, len(flat), width)] if width \
            else [b"[]"] * len(part)
    return [_encode(v).encode() for v in part.tolist()]


class SplitWriter:
    """Writes a split's shards: built once per split (tables, template, header) before the writers
    fork, then ``write(path, start, stop)`` per shard, in any process."""

    def __init__(self, arrays: QuestionArrays, mtime: int):
        self.arrays = arrays
        self.columns = [*(getattr(arrays, c) for c in FIELDS.values()), *arrays.targets.values(),
                        *arrays.types.values()]
        self.encoders = [_IntRows(c) if _IntRows.fits(c) else _json_texts for c in self.columns]

        def fields(names):
            return ", ".join(_encode(n).replace("%", "%%") + ": %b" for n in names)
        self.template = ("{" + fields(FIELDS) + f', "targets": {{{fields(arrays.targets)}}}, '
                         f'"types": {{{fields(arrays.types)}}}}}').encode()
        self.mtime = mtime
        # A member header is this one with its name, size and checksum fields replaced.
        block = self._tarinfo("", 0).tobuf(tarfile.USTAR_FORMAT, "ascii", "strict")
        self.parts = block[100:124], block[136:148], block[156:]
        # tarfile's checksum: the header's byte sum with the checksum field read as 8 spaces.
        self.checksum_base = 8 * 32 + sum(block[100:124]) + sum(block[136:148]) + sum(block[156:])

    def _tarinfo(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, self.mtime, *MEMBER.values()
        return info

    def texts(self, start: int, stop: int) -> list:
        """The ``.json`` members of questions ``start:stop``, bytes each."""
        columns = [encode(c[start:stop]) for encode, c in zip(self.encoders, self.columns)]
        return [self.template % values for values in zip(*columns)]

    def header(self, name: str, size: int) -> bytes:
        """The tar header block(s) tarfile writes for a member ``name`` of ``size`` bytes."""
        raw = name.encode("ascii", "replace")
        if len(raw) > 100 or not name.isascii():   # PAX headers for long or non-ASCII names
            return self._tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        size_field = b"%011o\0" % size
        checksum = self.checksum_base + sum(raw) + sum(size_field)
        after_name, after_size, tail = self.parts
        return b"".join((raw.ljust(100, b"\0"), after_name, size_field, after_size, b"%06o\0 " % checksum, tail))

    def write(self, path: str, start: int, stop: int) -> None:
        """Write questions ``start:stop`` as the tar file ``path``."""
        pieces, zeros = [], bytes(tarfile.BLOCKSIZE)
        for key, text in zip(self.arrays.question_ids[start:stop].tolist(), self.texts(start, stop)):
            pieces += (self.header(key + ".json", len(text)), text, zeros[:-len(text) % tarfile.BLOCKSIZE])
        body = b"".join(pieces)
        end = 2 * tarfile.BLOCKSIZE   # end of archive, then zeros up to a whole record, as tarfile writes
        with open(path, "wb") as f:
            f.write(body)
            f.write(bytes(end + -(len(body) + end) % tarfile.RECORDSIZE))


# Set before the shard writers fork, so that they inherit the arrays instead of receiving copies.
_WRITERS: dict = {}


def _write_shard(task) -> str:
    split, start, stop, path = task
    _WRITERS[split].write(path, start, stop)
    return path


def shard_tasks(out_dir: str, split: str, n: int, shard_samples: int = SHARD_SAMPLES) -> list:
    return [(split, k * shard_samples, k * shard_samples + count, shard_path(out_dir, split, k))
            for k, count in enumerate(shard_counts(n, shard_samples))]


def write_shards(out_dir: str, arrays: dict, mtime: int, workers: int, progress: bool, meanwhile=None) -> dict:
    """Write every split's shards (``arrays``: split -> QuestionArrays) with members dated ``mtime``
    (whole seconds: a float would add a PAX header to every member), in ``workers`` forked processes
    where fork is available, calling ``meanwhile()`` (if given) in this process as they write.
    Returns the shard count per split."""
    from tqdm import tqdm
    tasks = [t for split, a in arrays.items() for t in shard_tasks(out_dir, split, len(a), SHARD_SAMPLES)]
    _WRITERS.clear()
    _WRITERS.update({split: SplitWriter(a, mtime) for split, a in arrays.items()})
    bar = tqdm(total=len(tasks), desc="[*] writing shards", unit="shard", disable=not progress)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                written = pool.imap_unordered(_write_shard, tasks)
                if meanwhile is not None:
                    meanwhile()
                for _ in written:
                    bar.update()
        else:
            if meanwhile is not None:
                meanwhile()
            for task in tasks:
                _write_shard(task)
                bar.update()
    finally:
        bar.close()
        _WRITERS.clear()
    return {split: sum(t[0] == split for t in tasks) for split in arrays}

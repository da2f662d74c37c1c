"""What every input layout gives the converter: ``FeatureInput``, the one interface the driver uses,
and ``InputError``, a bad image named by file (and row) and id.

A conversion asks its input, in this order (``butd.features.convert.driver``):

1. ``source()``: the fingerprint of the input files (paths, sizes, modification times);
2. ``probe(skip)``, in the main process before any worker starts: the layout and feature size, and
   whatever is cheap to check (an HDF5 file's datasets, an id map). It leaves no file open: the
   workers are forked after it, and an HDF5 handle must not cross a fork;
3. ``plan(runner, progress, skip)``: the store's rows in order (``Plan``): where each image is in
   which file, its id and box count, every bad one found (all of them with ``skip``, whose rows are
   then left out and reported);
4. in the workers, one store chunk per task: ``read(params, paths, rows)`` yields the chunk's images,
   decoded (``ImageRow``), from ``rows`` (a slice of the plan) of ``paths``.

Layouts that hold no image size derive it, and say so in ``notes``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterator, Optional, Sequence

from butd.features.convert.lifecycle import content_sample
from butd.features.convert.plan import Plan, earlier_images, repeat_reason
from butd.features.tsv import ImageRow, named_image

ImageKey = Optional[Callable[[str], str]]


class InputError(ValueError):
    """A bad image: ``path[, where]: image id ID: reason``. Built from plain args so that it survives
    being sent back from a worker process."""

    def __init__(self, path: str, where: Optional[str], image_id: Optional[str], reason: str):
        super().__init__(path, where, image_id, reason)

    path = property(lambda self: self.args[0])
    where = property(lambda self: self.args[1])
    image_id = property(lambda self: self.args[2])
    reason = property(lambda self: self.args[3])

    def __str__(self) -> str:
        where = f", {self.where}" if self.where else ""
        return f"{self.path}{where}: {named_image(self.image_id)}: {self.reason}"

    def report(self) -> dict:
        """The entry of the bad-rows report."""
        return {"file": self.path, "where": self.where, "image_id": self.image_id, "reason": self.reason}


class FeatureInput:
    """One conversion's input, in one layout (see the module docstring). ``given`` is what the user
    gave (files, folders), ``name`` the same joined for messages; ``paths`` are the files the
    plan's ``files`` index; ``layout`` the store's
    layout (``butd.features.schema.LAYOUTS``) and ``description`` its name in the summary;
    ``image_key`` a task's ``image_key``: two ids it makes equal are
    one image, refused twice."""
    layout: str = ""
    description: str = ""
    feature_dim: int = 0

    def __init__(self, given: Sequence[str], image_key: ImageKey = None):
        self.given = list(given)
        self.paths = list(given)
        self.name = " + ".join(self.given)
        self.image_key = image_key
        self.notes: list = []

    # -- in the main process ---------------------------------------------------------------------
    def source(self) -> dict:
        raise NotImplementedError

    def settings(self) -> dict:
        """What besides the common settings fingerprints the conversion (none by default)."""
        return {}

    def probe(self, skip: bool) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Error mode: raise what the probe found wrong but left for after the existing store's check
        (a store made otherwise is named first)."""

    def plan(self, runner, progress: bool, skip: bool) -> Plan:
        raise NotImplementedError

    def params(self):
        """What ``read`` needs besides the rows (picklable, small: it goes with every task)."""
        return None

    # -- in the workers --------------------------------------------------------------------------
    @staticmethod
    def read(params, paths: list, rows: dict) -> Iterator[ImageRow]:
        raise NotImplementedError


def refuse_repeats(image_ids: Sequence[str], where: Sequence[str], paths: Sequence[str], image_key: ImageKey,
                   skip: bool) -> tuple[set, list]:
    """Rows whose image an earlier row holds (the same id, or another spelling of it under
    ``image_key``): raises InputError for the first, or with ``skip`` returns their indices and
    report entries. ``where[i]`` names row ``i`` in ``paths[i]`` (None for a file of its own)."""
    repeated, bad = set(), []
    for i, j in earlier_images(image_ids, image_key):
        first = f"{paths[j]}, {where[j]}" if where[j] else paths[j]
        error = InputError(paths[i], where[i], image_ids[i], repeat_reason(image_ids[i], image_ids[j], first))
        if not skip:
            raise error
        repeated.add(i)
        bad.append(error.report())
    return repeated, bad


def check_skipped(name: str, bad: list, kept: int) -> None:
    """A skip that would drop more images than it keeps is the wrong input, not a few bad images."""
    if not kept:
        raise ValueError(f"{name}: no valid images (every one is bad)")
    if len(bad) > kept:
        first = bad[0]
        raise ValueError(f"{name}: {len(bad)} bad images against {kept} good ones; that is not a few bad images "
                         f"but the wrong input; first: {InputError(*first.values())}")


def listing(folder: str, suffixes: tuple) -> list:
    """The files of ``folder`` whose names end in one of ``suffixes``, sorted by name."""
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and e.name.endswith(suffixes))


SAMPLED_FILES = 8


def folder_source(folder: str, files: Sequence[str]) -> dict:
    """The fingerprint of a folder of per-image files: its path, their number, total size, newest
    modification time, a hash of every name, size and time (a folder of 120k files is not listed
    in the store's attributes, but any change to it is noticed) and a content sample: a hash of
    every name and size and of ``SAMPLED_FILES`` files' ``content_sample``, evenly spaced, which a
    copy or a move of the folder keeps."""
    digest, content, sizes, newest = hashlib.sha256(), hashlib.sha256(), [], 0
    for path in files:
        st = os.stat(path)
        sizes.append(st.st_size)
        newest = max(newest, st.st_mtime_ns)
        digest.update(f"{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        content.update(f"{os.path.basename(path)}\0{st.st_size}\n".encode())
    sampled = {round(k * (len(files) - 1) / max(1, SAMPLED_FILES - 1)) for k in range(SAMPLED_FILES)} if files else ()
    for i in sorted(sampled):
        content.update(content_sample(files[i], sizes[i]).encode())
    return {"path": os.path.abspath(folder), "size": sum(sizes), "mtime_ns": newest, "count": len(files),
            "listing": digest.hexdigest()[:32], "sample": content.hexdigest()[:32]}

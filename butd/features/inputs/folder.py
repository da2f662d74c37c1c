"""Folders of per-image feature files (``npz``, ``npy``): what their layouts share. One file is one
image, named by its file name; the folder is listed in name order, which is the store's row order.

A layout says which files are its images (``suffixes``, ``is_image``), the image id of a file
(``image_id``), and what a file holds (``inspect``: box count, feature size and its *flavour*,
e.g. whether ``x`` is transposed): the plan inspects every file over the workers, reading only
the small members in error mode, everything with ``skip``. All files must share one flavour (the
one the first files have); a file whose feature size differs from most of the first files' is a
bad image.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from typing import Sequence

import numpy as np

from butd.features.convert.lifecycle import source_of
from butd.features.convert.plan import Plan
from butd.features.convert.pool import progress_bar
from butd.features.inputs.base import (
    FeatureInput,
    ImageKey,
    InputError,
    check_skipped,
    folder_source,
    listing,
    refuse_repeats,
)

# Files inspected per plan task; files the probe inspects.
INSPECT_FILES = 256
PROBE_FILES = 16


class FolderInput(FeatureInput):
    """Folders (or single files) of one per-image layout, their files in name order."""
    suffixes: tuple = ()
    what: str = "feature file"
    flavours: dict = {}       # flavour -> (store layout, description)
    flavour = None

    def __init__(self, given: Sequence[str], image_key: ImageKey = None):
        super().__init__(given, image_key)
        self.paths, self._files_of = [], {}
        for path in self.given:
            if not os.path.isdir(path) and not path.endswith(self.suffixes):
                raise ValueError(f"{path}: expected {self.what}s: a file ending in {' or '.join(self.suffixes)}, "
                                 "or a folder of them")
            files = [f for f in listing(path, self.suffixes) if self.is_image(f)] if os.path.isdir(path) else [path]
            self._files_of[path] = files
            self.paths += files

    def is_image(self, path: str) -> bool:
        return True

    @staticmethod
    def image_id(path: str) -> str:
        raise NotImplementedError

    @classmethod
    def inspect(cls, path: str, full: bool) -> tuple:
        """(box count, feature size, flavour) of one image file; InputError for a bad one. With
        ``full`` every member is read (and checked), else only what the plan needs."""
        raise NotImplementedError

    def companions(self, path: str) -> list:
        """The image's other files (MMF's info file): fingerprinted and counted with it."""
        return []

    def source(self) -> dict:
        sources = []
        for path, files in self._files_of.items():
            every = [p for f in files for p in [f, *self.companions(f)]]
            sources.append(folder_source(path, every) if os.path.isdir(path) else
                           {"files": [source_of(p, self.what) for p in every]})
        flat = [s for source in sources for s in source.get("files", [source])]
        return flat[0] if len(flat) == 1 else {"files": flat}

    def probe(self, skip: bool) -> None:
        """The flavour and feature size most of the first ``PROBE_FILES`` files have."""
        for path, files in self._files_of.items():
            if not files:
                raise ValueError(f"{path}: no {self.what}s in the folder (files ending in {' or '.join(self.suffixes)})")
        found = _inspect_files((type(self), 0, self.paths[:PROBE_FILES], skip))
        good = [(i, r) for i, r in found if not isinstance(r, InputError)]
        if not good:
            if not skip:
                raise found[0][1]
            raise ValueError(f"{self.name}: none of the first {len(found)} {self.what}s is readable")
        self._choose_flavour(good)
        self.feature_dim = int(Counter(r[1] for _, r in good).most_common(1)[0][0])

    def plan(self, runner, progress: bool, skip: bool) -> Plan:
        n = len(self.paths)
        size = max(1, min(INSPECT_FILES, math.ceil(n / max(1, runner.workers * 4))))
        tasks = [(type(self), i, self.paths[i:i + size], skip) for i in range(0, n, size)]
        found = [None] * n
        with progress_bar(progress, n, f"inspect {os.path.basename(os.path.normpath(self.given[0]))}") as bar:
            for _, results in runner(_inspect_files, tasks):
                for i, result in results:
                    found[i] = result
                bar.update(len(results))
        self._choose_flavour([(i, r) for i, r in enumerate(found) if not isinstance(r, InputError)])
        bad, rows = [], []
        for i, result in enumerate(found):
            if not isinstance(result, InputError) and result[1] != self.feature_dim:
                result = InputError(self.paths[i], None, self.image_id(self.paths[i]),
                                    f"{result[1]} feature values per box, but most of the first files have "
                                    f"{self.feature_dim}")
            if isinstance(result, InputError):
                if not skip:
                    raise result
                bad.append(result.report())
            else:
                rows.append((i, result[0]))
        ids = [self.image_id(self.paths[i]) for i, _ in rows]
        repeated, repeats = refuse_repeats(ids, [None] * len(ids), [self.paths[i] for i, _ in rows],
                                           self.image_key, skip)
        bad += repeats
        keep = [k for k in range(len(rows)) if k not in repeated]
        check_skipped(self.name, bad, len(keep))
        files = np.asarray([rows[k][0] for k in keep], np.int32)
        sizes = np.asarray([sum(os.path.getsize(p) for p in [self.paths[i], *self.companions(self.paths[i])])
                            for i in files], np.int64)
        return Plan(np.zeros(len(files), np.int64), sizes, np.zeros(len(files), np.int64),
                    np.asarray([rows[k][1] for k in keep], np.int32), np.asarray([ids[k] for k in keep], np.str_),
                    bad, files)

    def _choose_flavour(self, good: list) -> None:
        """The one flavour of every good file (the probe's, if it made one): an input mixing two is
        refused, naming a file of each."""
        first = {}
        if self.flavour is not None:
            first[self.flavour] = self.paths[0]
        for i, (_, _, flavour) in good:
            first.setdefault(flavour, self.paths[i])
        if len(first) > 1:
            raise ValueError(f"{self.name}: the input mixes layouts: " + ", ".join(
                f"{path} is {self.flavours[flavour][1]}" for flavour, path in first.items())
                + "; put each layout in a folder of its own and convert each into its own store")
        self.flavour = next(iter(first))
        self.layout, self.description = self.flavours[self.flavour]

    def params(self):
        return self.flavour


def _inspect_files(task: tuple) -> list:
    """``(index, inspect(...) or InputError)`` of the files ``paths``, the first being file ``start``
    of the input."""
    layout, start, paths, full = task
    out = []
    for i, path in enumerate(paths, start):
        try:
            out.append((i, layout.inspect(path, full)))
        except InputError as e:
            out.append((i, e))
    return out

"""Folders of MMF / pythia ``.npy`` features as a conversion input
(``tools/scripts/features/extract_features_vmb.py``).

Each image is two files, both written by ``np.save``: ``<image>.npy``, the features of the
``--num_features`` (default 100) most confident boxes, [K, D] float32, and ``<image>_info.npy``, a
dict pickled into a 0-d object array: ``bbox`` [K, 4] float32 pixels (x1 y1 x2 y2), ``num_boxes``
(how many of the K boxes scored above zero: the real ones), ``objects`` [K], ``cls_prob`` [K, C],
``image_width``, ``image_height``. The info file is read by ``safe_pickle``, which runs nothing;
the features file without pickle.

The store keeps each image's first ``num_boxes`` boxes (features and ``bbox``) and masks the rest;
the image size is the info's ``image_width`` and ``image_height`` (mmf#699 swapped them: they are
read by name here, never by position). The image id is the file name without ``.npy``. Not kept:
``objects`` and ``cls_prob``.

The plan reads the features' headers only (K, D: the store is padded to the largest K), the
conversion reads both files; with ``skip`` the plan reads both files in full.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from butd.features.inputs import safe_pickle
from butd.features.inputs.base import InputError, listing
from butd.features.inputs.folder import FolderInput
from butd.features.tsv import ImageRow

INFO_SUFFIX = "_info.npy"
INFO_KEYS = ("bbox", "num_boxes", "image_width", "image_height")


def info_path(path: str) -> str:
    return path[:-len(".npy")] + INFO_SUFFIX


class MMFInput(FolderInput):
    suffixes = (".npy",)
    what = "MMF .npy feature file"
    flavours = {"mmf": ("mmf", "MMF / pythia .npy with _info.npy")}

    def is_image(self, path: str) -> bool:
        return not path.endswith(INFO_SUFFIX)

    def companions(self, path: str) -> list:
        return [info_path(path)] if os.path.exists(info_path(path)) else []

    def plan(self, runner, progress: bool, skip: bool):
        # an image whose features file is missing has only its info file, which is not an image's file:
        # name it, as a features file without its info file is named (when a store is planned: an info
        # file added beside a complete store's inputs changes nothing it holds)
        for folder, files in self._files_of.items():
            if not os.path.isdir(folder):
                continue
            have = set(files)
            alone = [f for f in listing(folder, (INFO_SUFFIX,)) if f[:-len(INFO_SUFFIX)] + ".npy" not in have]
            if not alone:
                continue
            missing = os.path.basename(alone[0])[:-len(INFO_SUFFIX)] + ".npy"
            if not skip:
                raise ValueError(f"{alone[0]}: an MMF info file without its features file {missing} "
                                 f"({len(alone)} such in {folder}); add the features, or leave those images "
                                 "out with --on-bad-row skip")
            self.notes.append(f"{folder}: {len(alone)} info file(s) without their features file left out "
                              f"(e.g. {os.path.basename(alone[0])})")
        return super().plan(runner, progress, skip)

    @staticmethod
    def image_id(path: str) -> str:
        return os.path.basename(path)[:-len(".npy")]

    @classmethod
    def inspect(cls, path: str, full: bool) -> tuple:
        shape = _features_header(path)
        if not os.path.exists(info_path(path)):
            raise _error(path, f"no {os.path.basename(info_path(path))} beside it (the boxes, box count and image "
                               "size of the image)")
        if full:
            _image(path, _features(path))
        return int(shape[0]), int(shape[1]), "mmf"

    @staticmethod
    def read(params, paths: list, rows: dict) -> Iterator[ImageRow]:
        for f in rows["files"]:
            path = paths[int(f)]
            yield _image(path, _features(path))


def _error(path: str, reason: str) -> InputError:
    return InputError(path, None, MMFInput.image_id(path), reason)


def _features_header(path: str) -> tuple:
    from numpy.lib import format as npy
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
    except (ValueError, OSError, EOFError) as e:
        raise _error(path, f"not a readable .npy ({e})") from None
    if len(shape) != 2 or dtype.kind != "f" or shape[0] < 1:
        raise _error(path, f"features are {dtype} {list(shape)}, expected a 2-d float array [boxes, features]")
    return shape


def _features(path: str) -> np.ndarray:
    _features_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _error(path, f"not a readable .npy ({e}): cut short?") from None


def _image(path: str, features: np.ndarray) -> ImageRow:
    """The image of ``path`` (its features given) with its info's boxes, box count and size."""
    where = info_path(path)
    try:
        with open(where, "rb") as f:
            info = safe_pickle.read_npy_object(f, where, "MMF info file")
    except safe_pickle.UnsafePickleError:
        raise    # never a bad image to skip: a file that names code stops the conversion
    except (ValueError, OSError) as e:
        raise _error(path, f"its info file cannot be read ({e})") from None
    if not isinstance(info, dict) or any(k not in info for k in INFO_KEYS):
        have = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise _error(path, f"{where} holds {have}, expected a dict with {', '.join(INFO_KEYS)}")
    n, width, height = (info[k] for k in ("num_boxes", "image_width", "image_height"))
    for name, value in (("num_boxes", n), ("image_width", width), ("image_height", height)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise _error(path, f"{where}: {name} is {value!r}, expected a positive integer")
    boxes = np.asarray(info["bbox"])
    if n > len(features):
        raise _error(path, f"{where}: num_boxes is {n}, larger than the {len(features)} rows of the features")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) < n or boxes.dtype.kind != "f":
        raise _error(path, f"{where}: bbox is {boxes.dtype} {list(boxes.shape)}, expected float [at least num_boxes "
                           f"({n}), 4]")
    return ImageRow(MMFInput.image_id(path), int(height), int(width), boxes[:n], features[:n])

"""The plan of a conversion: the store's rows in order, where each is in its input and what it is.
Every input layout makes one (``butd.features.inputs``); it is saved inside the store, so that a
resumed run neither scans again nor renumbers rows."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

PLAN_FILE = "plan.npz"


@dataclass
class Plan:
    """The rows of the store, in order. ``files`` indexes the input's files; ``offsets``,
    ``lengths`` and ``lines`` say where the row is in its file, in its layout's terms (a TSV: byte
    offset, line length with its ending, 1-based line number; an HDF5 cache: first box, bytes, row;
    a folder of per-image files: 0, file size, 0). ``lengths`` are bytes of input: the progress bar
    and the summary's MB/s count them."""
    offsets: np.ndarray      # int64
    lengths: np.ndarray      # int64
    lines: np.ndarray        # int64
    num_boxes: np.ndarray    # int32
    image_ids: np.ndarray    # str
    bad_rows: list = field(default_factory=list)
    files: Optional[np.ndarray] = None    # int32 index of the row's file in the input's list

    def __post_init__(self):
        if self.files is None:
            self.files = np.zeros(len(self.offsets), np.int32)

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, offsets=self.offsets, lengths=self.lengths, lines=self.lines,
                 num_boxes=self.num_boxes, image_ids=self.image_ids.astype(np.str_), files=self.files)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Plan":
        with np.load(path, allow_pickle=False) as z:
            files = z["files"] if "files" in z.files else None    # a plan of one TSV written before
            return cls(z["offsets"], z["lengths"], z["lines"], z["num_boxes"], z["image_ids"], files=files)

    def rows(self, start: int, stop: int) -> dict:
        """Rows ``[start, stop)`` as the arrays a chunk task carries."""
        s = slice(start, stop)
        return {"offsets": self.offsets[s], "lengths": self.lengths[s], "lines": self.lines[s],
                "num_boxes": self.num_boxes[s], "image_ids": self.image_ids[s], "files": self.files[s]}


def earlier_images(image_ids: Sequence[str], image_key: Optional[Callable[[str], str]] = None) -> list:
    """``(i, j)`` for each row ``i`` whose image is that of an earlier row ``j``: the same id, or,
    with ``image_key`` (a task's ``image_key``), another spelling of the same image (VQA v2's
    ``COCO_train2014_000000458752`` and ``458752``)."""
    key = image_key or (lambda image_id: image_id)
    seen, repeats = {}, []
    for i, image_id in enumerate(image_ids):
        k = key(image_id)
        if k in seen:
            repeats.append((i, seen[k]))
        else:
            seen[k] = i
    return repeats


def repeat_reason(image_id: str, first_id: str, first_where: str) -> str:
    """Why a row whose image an earlier row (``first_id`` at ``first_where``) holds is refused."""
    if image_id == first_id:
        return f"duplicate image id: first seen on {first_where}"
    return (f"the same image as {first_id!r} on {first_where}: one image under two spellings of its id "
            "(the dataset treats both as one image, so questions could bind to either)")

"""The hidden scenes behind every generated data set, and their rows in the real TSV formats.

Each image shows a few objects, each in one colour; a box showing object ``o`` in colour ``c`` has
the features ``object_code[o] + colour_code[c]`` plus noise (non-negative, like real ReLU features).
Questions about those objects (``butd.synthetic.gqa`` and the other tasks' generators) can then be
answered only by reading the right image's features: a training run that learns proves that
questions and feature rows are aligned end to end.
"""
from __future__ import annotations

import base64
import os

import numpy as np

from butd.features.schema import TSV_COLUMNS
from butd.features.tsv import ImageRow

OBJECTS = ("cat", "dog", "car", "tree", "table", "chair", "cup", "boat", "horse", "bus", "lamp", "shirt")
# Words left out of the generated GloVe files, so that coverage reporting and zero rows get exercised.
GLOVE_MISSING = ("lamp", "orange", "picture")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def format_row(row: ImageRow, layout: str = "obj36") -> str:
    """The TSV line (with its newline) for ``row`` in ``layout``."""
    values = {
        "img_id": row.image_id, "image_id": row.image_id,
        "img_h": str(row.img_h), "image_h": str(row.img_h),
        "img_w": str(row.img_w), "image_w": str(row.img_w),
        "num_boxes": str(row.num_boxes),
        "boxes": _b64(row.boxes.astype(np.float32)),
        "features": _b64(row.features.astype(np.float32)),
    }
    if layout == "obj36":
        values.update(objects_id=_b64(row.objects_id.astype(np.int64)),
                      objects_conf=_b64(row.objects_conf.astype(np.float32)),
                      attrs_id=_b64(row.attrs_id.astype(np.int64)),
                      attrs_conf=_b64(row.attrs_conf.astype(np.float32)))
    return "\t".join(values[c] for c in TSV_COLUMNS[layout]) + "\n"


def write_tsv(path: str, rows, layout: str = "obj36") -> int:
    """Write ``rows`` (any iterable of ImageRow) as a TSV; returns the number of bytes written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    size = 0
    with open(path, "w", newline="") as f:
        for row in rows:
            line = format_row(row, layout)
            f.write(line)
            size += len(line)
    return size


class SceneModel:
    """The hidden generative model that ties answers to features."""

    def __init__(self, rng: np.random.Generator, feature_dim: int):
        # Sparse non-negative codes, far apart, so that presence and colour are linearly readable.
        def codes(n, scale):
            mask = rng.random((n, feature_dim)) < 0.25
            return (mask * rng.uniform(0.5, 1.0, (n, feature_dim)) * scale).astype(np.float32)
        self.object_code = codes(len(OBJECTS), 4.0)
        self.colour_code = codes(len(COLOURS), 3.0)
        self.feature_dim = feature_dim

    def image(self, rng, image_id: str, num_boxes=36, objects_per_image=(2, 5)) -> ImageRow:
        h, w = int(rng.integers(240, 640)), int(rng.integers(240, 640))
        k = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
        shown = rng.choice(len(OBJECTS), size=k, replace=False)
        scene = {OBJECTS[o]: COLOURS[int(rng.integers(len(COLOURS)))] for o in shown}
        if rng.random() < 0.5:   # half the images repeat a colour, so colour comparisons are balanced
            scene[OBJECTS[shown[1]]] = scene[OBJECTS[shown[0]]]
        # Background boxes carry only noise; each object fills 1-3 boxes.
        feats = np.abs(rng.normal(0.0, 0.3, (num_boxes, self.feature_dim))).astype(np.float32)
        feats[rng.random(feats.shape) < 0.4] = 0.0
        objects_id = rng.integers(0, 1600, num_boxes)
        slots = rng.permutation(num_boxes)
        used = 0
        for o in shown:
            n = int(rng.integers(1, 4))
            for b in slots[used:used + n]:
                feats[b] += self.object_code[o] + self.colour_code[COLOURS.index(scene[OBJECTS[o]])]
                objects_id[b] = o
            used += n
        x1 = rng.uniform(0, w * 0.7, num_boxes)
        y1 = rng.uniform(0, h * 0.7, num_boxes)
        boxes = np.stack([x1, y1, np.minimum(w - 1, x1 + rng.uniform(8, w * 0.5, num_boxes)),
                          np.minimum(h - 1, y1 + rng.uniform(8, h * 0.5, num_boxes))], 1).astype(np.float32)
        return ImageRow(image_id, h, w, boxes, feats, objects_id.astype(np.int64),
                        rng.uniform(0.2, 1.0, num_boxes).astype(np.float32),
                        rng.integers(0, 400, num_boxes).astype(np.int64),
                        rng.uniform(0.1, 1.0, num_boxes).astype(np.float32), scene)


def write_glove(path: str, rng, words, dim: int, merge: bool = False) -> None:
    """A GloVe-format text file of random vectors for ``words`` (the generators' stand-in for GloVe).
    ``merge``: a file already there (another task's sample in the same directory) keeps its lines
    and gains vectors for the words it lacks, so that each sample keeps its words' vectors."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if merge and os.path.exists(path):
        with open(path) as f:
            known = {line.split(" ", 1)[0] for line in f}
        words = [w for w in words if w not in known]
    with open(path, "a" if merge else "w") as f:
        for w in words:
            f.write(w + " " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.4, dim)) + "\n")

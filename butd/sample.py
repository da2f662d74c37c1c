"""A seeded, GQA-shaped sample data set in the real file formats, for the demo, tests and benchmarks.

    python -m butd.sample --out data            # the demo's sample under data/
    python -m butd.sample --out /tmp/s --train_images 50 --feature_dim 64

It writes what the real pipeline reads, where the specification expects it:

    <out>/GQA-Questions/{train,val,testdev,test}_balanced_questions.json   (test without answers)
    <out>/GQA-Features/vg_gqa_obj36.tsv        train, val and test images (as the real file)
    <out>/GQA-Features/gqa_testdev_obj36.tsv   testdev images
    <out>/GloVe/glove.6B.300d.txt              vectors for most question words (some left out)

Answers depend on the image features: each image shows a few objects, each in one colour, and a
box showing object ``o`` in colour ``c`` has the features ``object_code[o] + colour_code[c]`` plus
noise (non-negative, like real ReLU features). The questions ask about presence, colour, choice,
conjunction and comparison of those objects, so a model can beat the majority answer only by
reading the right image's features: a training run that learns proves questions and rows aligned.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
from dataclasses import dataclass, field

import numpy as np

from butd.schema import TSV_COLUMNS

OBJECTS = ("cat", "dog", "car", "tree", "table", "chair", "cup", "boat", "horse", "bus", "lamp", "shirt")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange")
# Words left out of the sample GloVe file, so that coverage reporting and zero rows get exercised.
GLOVE_MISSING = ("lamp", "orange", "picture")


@dataclass
class ImageRow:
    """One row of a features TSV, decoded."""
    image_id: str
    img_h: int
    img_w: int
    boxes: np.ndarray                      # [num_boxes, 4] float32, x1 y1 x2 y2 in pixels
    features: np.ndarray                   # [num_boxes, feature_dim] float32
    objects_id: np.ndarray = None          # [num_boxes] int64 (obj36 layout only)
    objects_conf: np.ndarray = None        # [num_boxes] float32
    attrs_id: np.ndarray = None
    attrs_conf: np.ndarray = None
    scene: dict = field(default_factory=dict)   # object -> colour shown (sample data only)

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)


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


def _question(rng, scene: dict) -> tuple:
    """(question, answer, full answer, structural, semantic, detailed) about one scene."""
    present = sorted(scene)
    absent = [o for o in OBJECTS if o not in scene]
    kind = int(rng.integers(5))
    if kind == 0:   # verify / obj: presence, balanced yes/no
        yes = rng.random() < 0.5 or not absent
        obj = present[rng.integers(len(present))] if yes else absent[rng.integers(len(absent))]
        q = f"Is there a {obj} in the picture?"
        return q, "yes" if yes else "no", f"{'Yes' if yes else 'No'}, there is {'a' if yes else 'no'} {obj}.", \
            "verify", "obj", "exist"
    obj = present[rng.integers(len(present))]
    colour = scene[obj]
    if kind == 1:   # query / attr: colour
        q = f"What's the color of the {obj}?" if rng.random() < 0.5 else f"What color is the {obj}?"
        return q, colour, f"The {obj} is {colour}.", "query", "attr", "color"
    if kind == 2:   # choose / attr: one of two colours
        other = [c for c in COLOURS if c != colour][rng.integers(len(COLOURS) - 1)]
        pair = (colour, other) if rng.random() < 0.5 else (other, colour)
        return f"Is the {obj}, {pair[0]} or {pair[1]}?", colour, f"The {obj} is {colour}.", \
            "choose", "attr", "chooseAttr"
    if kind == 3:   # logical / obj: both present, balanced yes/no
        others = [o for o in present if o != obj]
        yes = bool(others) and (rng.random() < 0.5 or not absent)
        second = others[rng.integers(len(others))] if yes else absent[rng.integers(len(absent))]
        return f"Are there both a {obj} and a {second} in this picture?", "yes" if yes else "no", \
            "Yes." if yes else "No.", "logical", "obj", "and"
    # compare / attr: ask about a same-coloured pair half the time when the scene has one
    others = [o for o in present if o != obj] or [obj]
    alike = [o for o in others if scene[o] == colour]
    pool = alike if alike and rng.random() < 0.5 else others
    second = pool[rng.integers(len(pool))]
    same = scene[second] == colour
    return f"Do the {obj} and the {second} have the same color?", "yes" if same else "no", \
        "Yes." if same else "No.", "compare", "attr", "sameColor"


def _questions_for(rng, images, first_qid: int, per_image: int, with_answers: bool) -> dict:
    out, qid = {}, first_qid
    for img in images:
        for _ in range(per_image):
            q, a, full, structural, semantic, detailed = _question(rng, img.scene)
            entry = {"question": q, "imageId": img.image_id, "isBalanced": True}
            if with_answers:
                entry.update(answer=a, fullAnswer=full,
                             types={"structural": structural, "semantic": semantic, "detailed": detailed},
                             groups={"global": None, "local": f"{detailed}-{a}"}, semantic=[], semanticStr="",
                             annotations={"answer": {}, "question": {}, "fullAnswer": {}},
                             entailed=[], equivalent=[str(qid)])
            out[str(qid)] = entry
            qid += 1
    return out


def _write_glove(path: str, rng, words, dim: int) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for w in words:
            f.write(w + " " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.4, dim)) + "\n")


def generate(out: str = "data", seed: int = 0, train_images: int = 300, val_images: int = 40,
             test_images: int = 40, testdev_images: int = 60, questions_per_image: int = 10,
             feature_dim: int = 2048, num_boxes: int = 36, emb_dim: int = 300) -> dict:
    """Write the sample under ``out``; returns the paths written."""
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, feature_dim)
    counts = {"train": train_images, "val": val_images, "test": test_images, "testdev": testdev_images}
    images, next_id = {}, 2300000
    for split, n in counts.items():
        prefix = "n" if split == "testdev" else ""
        images[split] = [model.image(rng, f"{prefix}{next_id + i}", num_boxes) for i in range(n)]
        next_id += n
    paths = {
        "questions": os.path.join(out, "GQA-Questions"),
        "features": os.path.join(out, "GQA-Features"),
        "glove": os.path.join(out, "GloVe", f"glove.6B.{emb_dim}d.txt"),
    }
    os.makedirs(paths["questions"], exist_ok=True)
    # The real trainval file interleaves splits; shuffle so that no test can rely on file order.
    trainval = images["train"] + images["val"] + images["test"]
    trainval = [trainval[i] for i in rng.permutation(len(trainval))]
    write_tsv(os.path.join(paths["features"], "vg_gqa_obj36.tsv"), trainval)
    write_tsv(os.path.join(paths["features"], "gqa_testdev_obj36.tsv"), images["testdev"])
    words, qid = set(), 10000000
    for split in counts:
        qs = _questions_for(rng, images[split], qid, questions_per_image, with_answers=split != "test")
        qid += len(qs) + 1000
        with open(os.path.join(paths["questions"], f"{split}_balanced_questions.json"), "w") as f:
            json.dump(qs, f)
        for entry in qs.values():
            text = entry["question"].lower().replace(",", "").replace(".", "").replace("?", "")
            words.update(text.replace("'s", " 's").split())
    # GloVe files list frequent words first and hold many words no question uses.
    vocab = ["the", ",", ".", "of", "to", "and", "in", "a", "'s"] + sorted(words) + \
        [f"extra{i}" for i in range(50)]
    seen, ordered = set(), []
    for w in vocab:
        if w not in seen and w not in GLOVE_MISSING:
            seen.add(w)
            ordered.append(w)
    _write_glove(paths["glove"], rng, ordered, emb_dim)
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data", help="directory to write under (default: data/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_images", type=int, default=300)
    p.add_argument("--val_images", type=int, default=40)
    p.add_argument("--test_images", type=int, default=40)
    p.add_argument("--testdev_images", type=int, default=60)
    p.add_argument("--questions_per_image", type=int, default=10)
    p.add_argument("--feature_dim", type=int, default=2048)
    p.add_argument("--num_boxes", type=int, default=36)
    p.add_argument("--emb_dim", type=int, default=300)
    args = p.parse_args(argv)
    paths = generate(**vars(args))
    for name, path in paths.items():
        print(f"[*] sample {name}: {path}")


if __name__ == "__main__":
    main()

"""A seeded, GQA-shaped sample data set in the real file formats, for the demo, tests and benchmarks.

    python -m butd.synthetic.gqa                       # the demo's sample, in data/demo/gqa/
    python -m butd.synthetic.gqa --out /tmp/s --train_images 50 --feature_dim 64

It writes what the real pipeline reads, where the specification expects it under ``--out``:

    <out>/GQA-Questions/{train,val,testdev,test}_balanced_questions.json   (test without answers)
    <out>/GQA-Features/vg_gqa_obj36.tsv        train, val and test images (as the real file)
    <out>/GQA-Features/gqa_testdev_obj36.tsv   testdev images
    <out>/GloVe/glove.6B.300d.txt              vectors for most question words (some left out)

Answers depend on the image features (``butd.synthetic.scene``): the questions ask about presence,
colour, choice, conjunction and comparison of the objects an image shows, so a model can beat the
majority answer only by reading the right image's features.

It never writes over a file it did not write (real data put in ``--out``): it names them and stops
(``--force`` replaces them), and does nothing when the same sample is already there
(``butd.synthetic.guard``).
"""
from __future__ import annotations

import json
import os

import numpy as np

from butd.cli import ArgumentParser, description
from butd.synthetic.command import add_sample_flags, report, run_generator, sample_options
from butd.synthetic.guard import write_once
from butd.synthetic.scene import COLOURS, GLOVE_MISSING, OBJECTS, SceneModel, write_glove, write_tsv


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


SPLITS = ("train", "val", "test", "testdev")
# A sample small enough for a smoke test (the demo's --quick, the tests of the demo).
QUICK = {"train_images": 60, "val_images": 6, "test_images": 6, "testdev_images": 16, "feature_dim": 64}


def generate(out: str = "data/demo/gqa", seed: int = 0, train_images: int = 300, val_images: int = 40,
             test_images: int = 40, testdev_images: int = 60, questions_per_image: int = 10,
             feature_dim: int = 2048, num_boxes: int = 36, emb_dim: int = 300, force: bool = False) -> dict:
    """Write the sample under ``out``; returns the paths written (``written``: False when the same
    sample was already there). Raises ``FileExistsError``, before writing anything, naming the files
    under ``out`` that this generator did not write (``force``: replace them); see ``guard``."""
    settings = dict(seed=seed, train_images=train_images, val_images=val_images, test_images=test_images,
                    testdev_images=testdev_images, questions_per_image=questions_per_image,
                    feature_dim=feature_dim, num_boxes=num_boxes, emb_dim=emb_dim)
    paths = {
        "questions": os.path.join(out, "GQA-Questions"),
        "features": os.path.join(out, "GQA-Features"),
        "glove": os.path.join(out, "GloVe", f"glove.6B.{emb_dim}d.txt"),
    }
    files = [os.path.join(paths["questions"], f"{split}_balanced_questions.json") for split in SPLITS] + \
        [os.path.join(paths["features"], name) for name in ("vg_gqa_obj36.tsv", "gqa_testdev_obj36.tsv")] + \
        [paths["glove"]]
    written = write_once(out, "gqa", settings, files, lambda guard: _write(paths, guard, **settings), force)
    return {**paths, "written": written}


def _write(paths: dict, guard, seed, train_images, val_images, test_images, testdev_images, questions_per_image,
           feature_dim, num_boxes, emb_dim) -> None:
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, feature_dim)
    counts = {"train": train_images, "val": val_images, "test": test_images, "testdev": testdev_images}
    images, next_id = {}, 2300000
    for split, n in counts.items():
        prefix = "n" if split == "testdev" else ""
        images[split] = [model.image(rng, f"{prefix}{next_id + i}", num_boxes) for i in range(n)]
        next_id += n
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
    write_glove(paths["glove"], rng, ordered, emb_dim, merge=guard.ours(paths["glove"]))


def main(argv=None) -> None:
    p = ArgumentParser(description=description(__doc__))
    p.add_argument("--out", default="data/demo/gqa", help="directory to write under")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample")
    p.add_argument("--train_images", type=int, default=300, help="train images")
    p.add_argument("--val_images", type=int, default=40, help="val images")
    p.add_argument("--test_images", type=int, default=40, help="test images")
    p.add_argument("--testdev_images", type=int, default=60, help="testdev images")
    p.add_argument("--questions_per_image", type=int, default=10, help="questions asked about each image")
    p.add_argument("--feature_dim", type=int, default=2048, help="feature values per box")
    p.add_argument("--num_boxes", type=int, default=36, help="boxes per image")
    p.add_argument("--emb_dim", type=int, default=300, help="GloVe vector size")
    add_sample_flags(p, QUICK)
    report(generate(**sample_options(p.parse_args(argv), QUICK)), "GQA")


if __name__ == "__main__":
    run_generator(main)


"""A seeded, VQA v2-shaped sample data set in the official file formats, for the demo, tests and benchmarks.

    python -m butd.synthetic.vqa2                       # the demo's sample, in data/demo/vqa2/
    python -m butd.synthetic.vqa2 --out /tmp/s --train_images 60 --feature_dim 64 --layout anderson

It writes what the real pipeline reads, where the modular branch's flags expect it under ``--out``:

    <out>/VQA2-Questions/v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json
    <out>/VQA2-Questions/v2_mscoco_{train2014,val2014}_annotations.json   (10 human answers each)
    <out>/VQA2-Features/{train2014,val2014,test2015}_obj36.tsv   ids COCO_<split>_%012d (LXMERT's);
                        --layout anderson: the 6-column layout with integer ids (Anderson's)
    <out>/GloVe/glove.6B.300d.txt              vectors for most question words (some left out)

Answers depend on the image features (``butd.synthetic.scene``): questions ask whether an object is
shown (yes/no), its colour (other), how many of it there are (number: each object fills 1-3 boxes)
and whether two objects share a colour (yes/no). Each question has ten human answers: mostly the
true answer, some spelt otherwise ("Yes", "two", "the red", "red."), some wrong, so that
normalisation, soft scores and the official accuracy all matter. test-dev2015 is a part of
test2015, as in the real data, and the feature rows are shuffled.

It never writes over a file it did not write (real data put in ``--out``): it names them and stops
(``--force`` replaces them), and does nothing when the same sample is already there
(``butd.synthetic.guard``).
"""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from butd.cli import ArgumentParser, description
from butd.synthetic.command import add_sample_flags, report, run_generator, sample_options
from butd.synthetic.guard import write_once
from butd.synthetic.scene import COLOURS, GLOVE_MISSING, OBJECTS, SceneModel, write_glove, write_tsv
from butd.tasks.vqa_answers import NUM_HUMAN_ANSWERS, majority_answer
from butd.text import split_batch

QUESTION_FILE = "v2_OpenEnded_mscoco_{split}_questions.json"
ANNOTATION_FILE = "v2_mscoco_{split}_annotations.json"
# question split -> the image set (and feature file) it asks about
IMAGE_SET = {"train2014": "train2014", "val2014": "val2014", "test2015": "test2015", "test-dev2015": "test2015"}
HEADER = {"info": {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org",
                   "version": "2.0", "year": 2017, "contributor": "VQA Team"},
          "license": {"url": "http://creativecommons.org/licenses/by/4.0/",
                      "name": "Creative Commons Attribution 4.0 International License"},
          "data_type": "mscoco"}
# Spellings that the official normalisation maps back to the answer ("two" -> "2" for training
# targets; the official accuracy gives human answers the punctuation rule only).
VARIANTS = {"yes": ("Yes", "yes.", "yes!"), "no": ("No", "no.", "no!"),
            **{str(n): (w, w.capitalize()) for n, w in enumerate(("zero", "one", "two", "three", "four"))}}


def plural(obj: str) -> str:
    return obj + ("es" if obj.endswith("s") else "s")


def instances(model: SceneModel, row) -> Counter:
    """How many boxes show each object of the row's scene (each object fills 1-3 boxes): those
    labelled with it that carry its whole code (background boxes have random labels and noise)."""
    counts = Counter()
    for obj in row.scene:
        o = OBJECTS.index(obj)
        code = model.object_code[o]
        support = code > 0
        counts[obj] = int(sum((row.objects_id == o) & (row.features[:, support] >= code[support] - 1e-6).all(axis=1)))
    return counts


def _question(rng, scene: dict, counts: Counter) -> tuple:
    """(question, answer, question_type, answer_type) about one scene."""
    present = sorted(scene)
    absent = [o for o in OBJECTS if o not in scene]
    kind = int(rng.integers(4))
    if kind == 0:   # presence, balanced yes/no
        yes = rng.random() < 0.5 or not absent
        obj = present[rng.integers(len(present))] if yes else absent[rng.integers(len(absent))]
        return f"Is there a {obj} in the picture?", "yes" if yes else "no", "is there a", "yes/no"
    if kind == 1:   # colour
        obj = present[rng.integers(len(present))]
        return f"What color is the {obj}?", scene[obj], "what color is the", "other"
    if kind == 2:   # count; absent objects a quarter of the time
        obj = absent[rng.integers(len(absent))] if absent and rng.random() < 0.25 else \
            present[rng.integers(len(present))]
        return f"How many {plural(obj)} are there?", str(counts[obj]), "how many", "number"
    # same colour: a same-coloured pair half the time when the scene has one
    obj = present[rng.integers(len(present))]
    others = [o for o in present if o != obj] or [obj]
    alike = [o for o in others if scene[o] == scene[obj]]
    pool = alike if alike and rng.random() < 0.5 else others
    second = pool[rng.integers(len(pool))]
    return f"Are the {obj} and the {second} the same color?", "yes" if scene[second] == scene[obj] else "no", \
        "are the", "yes/no"


def _wrong(rng, answer: str, answer_type: str) -> str:
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        return str(max(0, int(answer) + (1 if rng.random() < 0.5 else -1)))
    return COLOURS[rng.integers(len(COLOURS))]


def human_answers(rng, answer: str, answer_type: str, p_variant=0.12, p_wrong=0.12) -> list:
    """Ten human answers: mostly ``answer``, some spelt otherwise, some wrong."""
    variants = VARIANTS.get(answer, (answer.capitalize(), f"the {answer}", f"{answer}."))
    out = []
    for _ in range(NUM_HUMAN_ANSWERS):
        r = rng.random()
        if r < p_wrong:
            out.append(_wrong(rng, answer, answer_type))
        elif r < p_wrong + p_variant:
            out.append(variants[rng.integers(len(variants))])
        else:
            out.append(answer)
    return out


def _image_name(image_set: str, image_id: int, layout: str) -> str:
    return f"COCO_{image_set}_{image_id:012d}" if layout == "obj36" else str(image_id)


def _questions_for(rng, model, images: list, per_image: int) -> list:
    """One entry per question: (question dict, annotation dict)."""
    out = []
    for image_id, row in images:
        counts = instances(model, row)
        for k in range(per_image):
            text, answer, qtype, atype = _question(rng, row.scene, counts)
            qid = image_id * 1000 + k
            answers = human_answers(rng, answer, atype)
            out.append(({"image_id": image_id, "question": text, "question_id": qid},
                        {"question_type": qtype, "multiple_choice_answer": majority_answer(answers),
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                     for j, a in enumerate(answers)],
                         "image_id": image_id, "answer_type": atype, "question_id": qid}))
    return out


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


# A sample small enough for a smoke test (the demo's --quick, the tests of the demo).
QUICK = {"train_images": 80, "val_images": 16, "test_images": 6, "feature_dim": 64}


def generate(out: str = "data/demo/vqa2", seed: int = 0, train_images: int = 300, val_images: int = 60,
             test_images: int = 40, questions_per_image: int = 5, feature_dim: int = 2048, num_boxes: int = 36,
             emb_dim: int = 300, layout: str = "obj36", force: bool = False) -> dict:
    """Write the sample under ``out``; returns the paths written (``written``: False when the same
    sample was already there). Raises ``FileExistsError``, before writing anything, naming the files
    under ``out`` that this generator did not write (``force``: replace them); see ``guard``."""
    settings = dict(seed=seed, train_images=train_images, val_images=val_images, test_images=test_images,
                    questions_per_image=questions_per_image, feature_dim=feature_dim, num_boxes=num_boxes,
                    emb_dim=emb_dim, layout=layout)
    paths = {"questions": os.path.join(out, "VQA2-Questions"), "features": os.path.join(out, "VQA2-Features"),
             "glove": os.path.join(out, "GloVe", f"glove.6B.{emb_dim}d.txt")}
    files = [os.path.join(paths["questions"], QUESTION_FILE.format(split=s)) for s in IMAGE_SET] + \
        [os.path.join(paths["questions"], ANNOTATION_FILE.format(split=s)) for s in ("train2014", "val2014")] + \
        [os.path.join(paths["features"], f"{s}_obj36.tsv") for s in ("train2014", "val2014", "test2015")] + \
        [paths["glove"]]
    written = write_once(out, "vqa2", settings, files, lambda guard: _write(paths, guard, **settings), force)
    return {**paths, "written": written}


def _write(paths: dict, guard, seed, train_images, val_images, test_images, questions_per_image, feature_dim,
           num_boxes, emb_dim, layout) -> None:
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, feature_dim)
    counts = {"train2014": train_images, "val2014": val_images, "test2015": test_images}
    coco_ids = rng.choice(600000, size=sum(counts.values()), replace=False) + 1
    os.makedirs(paths["questions"], exist_ok=True)
    images, start = {}, 0
    for image_set, n in counts.items():
        images[image_set] = []
        for image_id in coco_ids[start:start + n].tolist():
            images[image_set].append((image_id, model.image(rng, _image_name(image_set, image_id, layout), num_boxes)))
        start += n
        rows = [row for _, row in images[image_set]]
        write_tsv(os.path.join(paths["features"], f"{image_set}_obj36.tsv"),
                  [rows[i] for i in rng.permutation(len(rows))], layout)

    texts = []
    for image_set in counts:
        entries = _questions_for(rng, model, images[image_set], questions_per_image)
        texts += [q["question"] for q, _ in entries]
        # test-dev2015 asks about part of the test2015 images, with test2015's question ids
        splits = [image_set] if image_set != "test2015" else ["test2015", "test-dev2015"]
        for split in splits:
            chosen = entries if split != "test-dev2015" else entries[:len(entries) // 2]
            _write_json(os.path.join(paths["questions"], QUESTION_FILE.format(split=split)),
                        {**HEADER, "task_type": "Open-Ended", "data_subtype": split,
                         "questions": [q for q, _ in chosen]})
            if split in ("train2014", "val2014"):
                _write_json(os.path.join(paths["questions"], ANNOTATION_FILE.format(split=split)),
                            {**HEADER, "data_subtype": split, "annotations": [a for _, a in chosen]})
    words, _ = split_batch(texts)
    # GloVe files list frequent words first and hold many words no question uses
    vocab = ["the", ",", ".", "of", "to", "and", "in", "a", "'s"] + sorted(set(words)) + \
        [f"extra{i}" for i in range(50)]
    write_glove(paths["glove"], rng, [w for w in dict.fromkeys(vocab) if w not in GLOVE_MISSING], emb_dim,
                merge=guard.ours(paths["glove"]))


def main(argv=None) -> None:
    p = ArgumentParser(description=description(__doc__))
    p.add_argument("--out", default="data/demo/vqa2", help="directory to write under")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample")
    p.add_argument("--train_images", type=int, default=300, help="train images")
    p.add_argument("--val_images", type=int, default=60, help="val images")
    p.add_argument("--test_images", type=int, default=40, help="test images")
    p.add_argument("--questions_per_image", type=int, default=5, help="questions asked about each image")
    p.add_argument("--feature_dim", type=int, default=2048, help="feature values per box")
    p.add_argument("--num_boxes", type=int, default=36, help="boxes per image")
    p.add_argument("--emb_dim", type=int, default=300, help="GloVe vector size")
    p.add_argument("--layout", choices=("obj36", "anderson"), default="obj36",
                   help="obj36: LXMERT's 10 columns, ids COCO_<split>_%%012d; anderson: 6 columns, integer ids")
    add_sample_flags(p, QUICK)
    report(generate(**sample_options(p.parse_args(argv), QUICK)), "VQA v2")


if __name__ == "__main__":
    run_generator(main)

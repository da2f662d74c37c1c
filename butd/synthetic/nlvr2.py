"""A seeded, NLVR2-shaped sample data set in the real file formats, for the demo, tests and benchmarks.

    python -m butd.synthetic.nlvr2                      # the demo's sample, in data/demo/nlvr2/
    python -m butd.synthetic.nlvr2 --out /tmp/n --train_sets 40 --feature_dim 2048 --num_boxes 36
    python -m butd.synthetic.nlvr2 --out /tmp/n --kinds colour,both,neither,only,more,same_colour

It writes what the real pipeline reads, where the modular branch expects it under ``--out``:

    <out>/NLVR2-Questions/{train,dev,test1}.json            statements, JSON lines, with labels
    <out>/NLVR2-Features/{train,valid,test}_obj36.tsv       both images of every pair (10-column obj36)
    <out>/GloVe/glove.6B.300d.txt                           vectors for most statement words

As in NLVR2, a set holds ``pairs_per_set`` image pairs (``<split>-<set>-<pair>-img0`` left,
``-img1`` right) and ``sentences_per_set`` sentences, and every sentence is stated about every
pair of its set (identifier ``<split>-<set>-<pair>-<sentence>``): true for some pairs, false for
others, so that consistency (all pairs of a sentence right) means something. The images are
``butd.synthetic.scene`` scenes, and a statement's truth is read from both of them (``KINDS``):
whether both, neither or only one image shows an object, which shows more of it, in which colour.
Labels are balanced: the pairs of a set are drawn from a pool of generated images so that each
sentence is true for about half of them.

The defaults are sized for a CPU: statements about four objects, of the kinds ``both``,
``neither`` and ``only``, images of 12 boxes of 256 features (33 MB of TSVs). On them
``python train.py --dataset nlvr2 --hidden 128 --bsz 32 --epochs 12 --accelerator cpu`` took about a
minute on 2 cores and reached 90% dev accuracy with BUTD, 87% with FiLM (chance: 51%). The other
kinds (``colour``, ``more``, ``same_colour``) and the real shapes (``--num_boxes 36 --feature_dim
2048``) make a sample that needs far more training: with the boxes of two images averaged, the
object a statement names fills a few of 72 rows.

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
from butd.text import split_batch

SPLITS = (("train", "train"), ("dev", "valid"), ("test1", "test"))   # statement file, feature file stem
SIDES = ("left", "right")
DEFAULT_KINDS = ("both", "neither", "only")
DEFAULT_OBJECTS = ("cat", "dog", "car", "tree")
CANDIDATES = 8        # sentences of one kind tried for each sentence of a set (the most balanced one is kept)
KIND_DRAWS = 4        # kinds tried for a set's second, third, ... sentence, until one is true for half the pairs
POOL_PER_PAIR = 5     # images generated per image pair of a set, to choose balanced pairs from


def plural(obj: str) -> str:
    return obj + ("es" if obj.endswith("s") else "s")


def _boxes(content: dict, obj: str) -> int:
    return content[obj][1] if obj in content else 0


# Each kind makes (sentence, truth) from an object, a colour and a side (0 left, 1 right); the truth
# is a function of a pair's (left, right) contents, a content being {object: (colour, boxes)}.
KINDS = {
    "colour": lambda obj, colour, side: (
        f"There is a {colour} {obj} in the {SIDES[side]} image.",
        lambda pair: obj in pair[side] and pair[side][obj][0] == colour),
    "both": lambda obj, colour, side: (
        f"Both images contain a {obj}.",
        lambda pair: obj in pair[0] and obj in pair[1]),
    "neither": lambda obj, colour, side: (
        f"Neither image contains a {obj}.",
        lambda pair: obj not in pair[0] and obj not in pair[1]),
    "only": lambda obj, colour, side: (
        f"Only the {SIDES[side]} image contains a {obj}.",
        lambda pair: obj in pair[side] and obj not in pair[1 - side]),
    "more": lambda obj, colour, side: (
        f"The {SIDES[side]} image has more {plural(obj)} than the {SIDES[1 - side]} image.",
        lambda pair: _boxes(pair[side], obj) > _boxes(pair[1 - side], obj)),
    "same_colour": lambda obj, colour, side: (
        f"The {obj} in the left image and the {obj} in the right image have the same color.",
        lambda pair: obj in pair[0] and obj in pair[1] and pair[0][obj][0] == pair[1][obj][0]),
}


def contents(model: SceneModel, row) -> dict:
    """{object: (colour, boxes showing it)} of a generated image. A box shows object ``o`` when
    its object id is ``o`` and its features hold ``o``'s code (the background boxes' random object
    ids may name ``o`` too, but their features do not)."""
    out = {}
    for obj, colour in row.scene.items():
        o = OBJECTS.index(obj)
        shows = (row.objects_id == o) & (row.features >= model.object_code[o]).all(axis=1)
        out[obj] = (colour, int(shows.sum()))
    return out


def _sentence(rng, pairs: list, kinds, objects) -> tuple:
    """((sentence, truth, object), gap): a sentence of a random one of ``kinds`` about one of
    ``objects`` that the images of ``pairs`` show, the most balanced of a few candidates; the gap
    is how far the share of ``pairs`` (a list of (left, right) contents) it is true for is from half."""
    make = KINDS[kinds[int(rng.integers(len(kinds)))]]
    shown = sorted({obj for pair in pairs for content in pair for obj in content} & set(objects)) or sorted(objects)
    best, best_gap = None, 2.0
    for _ in range(CANDIDATES):
        obj = shown[int(rng.integers(len(shown)))]
        colours = [content[obj][0] for pair in pairs for content in pair if obj in content] or COLOURS
        sentence, truth = make(obj, colours[int(rng.integers(len(colours)))], int(rng.integers(2)))
        gap = abs(np.mean([truth(pair) for pair in pairs]) - 0.5)
        if gap < best_gap:
            best, best_gap = (sentence, truth, obj), gap
    return best, best_gap


def _balanced_sentence(rng, pairs: list, kinds, objects) -> tuple:
    """The sentence of a few kinds drawn that is true for the nearest to half of ``pairs``."""
    best, best_gap = None, 2.0
    for _ in range(KIND_DRAWS):
        sentence, gap = _sentence(rng, pairs, kinds, objects)
        if gap < best_gap:
            best, best_gap = sentence, gap
        if gap == 0:
            break
    return best


def _choose_pair(rng, pool: list, used: set, truth, wanted: bool) -> tuple:
    """(i, j) of two unused pool images on which ``truth`` is ``wanted``, else any two unused ones."""
    free = [i for i in rng.permutation(len(pool)).tolist() if i not in used]
    for i in free:
        for j in free:
            if i != j and truth((pool[i][1], pool[j][1])) == wanted:
                return i, j
    return free[0], free[1]


def _set(rng, model: SceneModel, split: str, set_id: int, pairs: int, sentences: int, num_boxes: int,
         kinds, objects) -> tuple:
    """One set: its 2 x ``pairs`` images (ImageRow) and its statements (dicts, in the official schema).

    The first sentence is chosen over a pool of images and the pairs are drawn from the pool to make
    it true for half of them; the other sentences are chosen to be true for half of those pairs."""
    pool = [(row, contents(model, row)) for row in
            (model.image(rng, "", num_boxes) for _ in range(POOL_PER_PAIR * pairs))]
    first, _ = _sentence(rng, [(a[1], b[1]) for a in pool for b in pool if a is not b], kinds, objects)
    wanted = rng.permutation(np.arange(pairs) < (pairs + int(rng.integers(2))) // 2)
    chosen, used = [], set()
    for p in range(pairs):
        i, j = _choose_pair(rng, pool, used, first[1], bool(wanted[p]))
        used.update((i, j))
        chosen.append((pool[i], pool[j]))
    on_pairs = [(left[1], right[1]) for left, right in chosen]
    said = [first] + [_balanced_sentence(rng, on_pairs, kinds, objects) for _ in range(sentences - 1)]
    images, statements = [], []
    for p, pair in enumerate(chosen):
        pair_id = f"{split}-{set_id}-{p}"
        for side, (row, _) in enumerate(pair):
            row.image_id = f"{pair_id}-img{side}"
            images.append(row)
        for s, (sentence, truth, obj) in enumerate(said):
            statements.append({
                "identifier": f"{pair_id}-{s}", "sentence": sentence, "label": str(bool(truth(on_pairs[p]))),
                "left_url": f"https://example.org/{pair_id}-img0.jpg",
                "right_url": f"https://example.org/{pair_id}-img1.jpg",
                "writer": str(int(rng.integers(1, 200))), "synset": obj, "query": f"synthetic {set_id}",
                "validation": {}, "extra_validations": {}})
    return images, statements


# A sample small enough for a smoke test (the demo's --quick, the tests of the demo), big enough
# that 12 epochs learn its pairs (60 sets stayed at the majority label).
QUICK = {"train_sets": 150, "dev_sets": 10, "test_sets": 4}


def generate(out: str = "data/demo/nlvr2", seed: int = 0, train_sets: int = 200, dev_sets: int = 25,
             test_sets: int = 25, pairs_per_set: int = 4, sentences_per_set: int = 4, feature_dim: int = 256,
             num_boxes: int = 12, emb_dim: int = 300, kinds=DEFAULT_KINDS, objects=DEFAULT_OBJECTS,
             force: bool = False) -> dict:
    """Write the sample under ``out``; returns the paths written (``written``: False when the same
    sample was already there). ``kinds``: names in ``KINDS``; ``objects``: the objects statements
    name (the images show all of ``scene.OBJECTS``). Raises ``FileExistsError``, before writing
    anything, naming the files under ``out`` that this generator did not write (``force``: replace
    them); see ``guard``."""
    unknown = [k for k in kinds if k not in KINDS] + [o for o in objects if o not in OBJECTS]
    if unknown or not kinds or not objects:
        raise ValueError(f"unknown or no statement kinds/objects {unknown}: kinds are {', '.join(KINDS)}; "
                         f"objects are {', '.join(OBJECTS)}")
    settings = dict(seed=seed, train_sets=train_sets, dev_sets=dev_sets, test_sets=test_sets,
                    pairs_per_set=pairs_per_set, sentences_per_set=sentences_per_set, feature_dim=feature_dim,
                    num_boxes=num_boxes, emb_dim=emb_dim, kinds=list(kinds), objects=list(objects))
    paths = {
        "questions": os.path.join(out, "NLVR2-Questions"),
        "features": os.path.join(out, "NLVR2-Features"),
        "glove": os.path.join(out, "GloVe", f"glove.6B.{emb_dim}d.txt"),
    }
    files = [os.path.join(paths["questions"], f"{split}.json") for split, _ in SPLITS] + \
        [os.path.join(paths["features"], f"{stem}_obj36.tsv") for _, stem in SPLITS] + [paths["glove"]]
    written = write_once(out, "nlvr2", settings, files, lambda guard: _write(paths, guard, **settings), force)
    return {**paths, "written": written}


def _write(paths: dict, guard, seed, train_sets, dev_sets, test_sets, pairs_per_set, sentences_per_set,
           feature_dim, num_boxes, emb_dim, kinds, objects) -> None:
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, feature_dim)
    os.makedirs(paths["questions"], exist_ok=True)
    sentences = []
    for (split, stem), n in zip(SPLITS, (train_sets, dev_sets, test_sets)):
        images, statements = [], []
        for set_id in range(n):
            rows, lines = _set(rng, model, split, set_id, pairs_per_set, sentences_per_set, num_boxes,
                               tuple(kinds), tuple(objects))
            images += rows
            statements += lines
        # no test may rely on the order of either file
        write_tsv(os.path.join(paths["features"], f"{stem}_obj36.tsv"),
                  [images[k] for k in rng.permutation(len(images))])
        with open(os.path.join(paths["questions"], f"{split}.json"), "w") as f:
            f.writelines(json.dumps(statements[k]) + "\n" for k in rng.permutation(len(statements)))
        sentences += [s["sentence"] for s in statements]
    # GloVe files list frequent words first and hold many words no statement uses.
    words = ["the", ",", ".", "of", "to", "and", "in", "a"] + sorted(set(split_batch(sentences)[0])) + \
        [f"extra{i}" for i in range(50)]
    write_glove(paths["glove"], rng, [w for w in dict.fromkeys(words) if w not in GLOVE_MISSING], emb_dim,
                merge=guard.ours(paths["glove"]))


def main(argv=None) -> None:
    p = ArgumentParser(description=description(__doc__))
    p.add_argument("--out", default="data/demo/nlvr2", help="directory to write under")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample")
    p.add_argument("--train_sets", type=int, default=200, help="sets in train.json (each 2 x pairs images)")
    p.add_argument("--dev_sets", type=int, default=25, help="sets in dev.json")
    p.add_argument("--test_sets", type=int, default=25, help="sets in test1.json")
    p.add_argument("--pairs_per_set", type=int, default=4, help="image pairs per set")
    p.add_argument("--sentences_per_set", type=int, default=4, help="sentences per set")
    p.add_argument("--feature_dim", type=int, default=256, help="feature values per box")
    p.add_argument("--num_boxes", type=int, default=12, help="boxes per image")
    p.add_argument("--emb_dim", type=int, default=300, help="GloVe vector size")
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"statement kinds, of {', '.join(KINDS)}")
    p.add_argument("--objects", default=",".join(DEFAULT_OBJECTS), help="objects the statements name")
    add_sample_flags(p, QUICK)
    options = sample_options(p.parse_args(argv), QUICK)
    options["kinds"], options["objects"] = options["kinds"].split(","), options["objects"].split(",")
    report(generate(**options), "NLVR2")


if __name__ == "__main__":
    run_generator(main)

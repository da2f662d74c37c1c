"""Question pipeline speed: building the question cache, and loading a split at training start.

    python benchmarks/questions_speed.py                      # 1,000,000 train questions
    python benchmarks/questions_speed.py --num_questions 200000 --keep /tmp/qbench --out /tmp/results

It writes GQA-shaped question files (the real schema: semantic program, entailed/equivalent ids,
groups, annotations, types, full answer; ~850 bytes a question like the real files) over a few
thousand images, converts a matching small features TSV with the real converter, then times:

- ``butd.questions.build`` on all four splits (train holds ``--questions`` questions), and its
  second, no-op run;
- ``butd.questions.load_split(train)`` against the specification's path on the same file in the
  same run: ``json.load``, ``sorted`` entries, ``Dictionary.tokenize`` and the front-padding loop.

Prints a table, writes ``questions_speed.png`` (the build's phases; load_split against the
specification) and ``questions_speed.json`` under ``--out``, and ends with one JSON line of the figures.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np

from butd import questions as Q
from butd.cli import run
from butd.features import schema
from butd.features.convert import convert_tsv
from butd.features.tsv import ImageRow
from butd.reference.spec import Dictionary, pad_tokens
from butd.synthetic.scene import write_tsv
from butd.tasks import get_task

from harness import RESULTS, parser, report, timed

TASK = get_task("gqa")

NOUNS = ("man woman shirt table chair car tree building sky window door person girl boy dog cat horse "
         "plate bowl cup glass bottle pizza sandwich fence grass street sidewalk pole sign bus truck "
         "bike motorcycle train wall floor ground water ocean boat bench umbrella bag backpack hat "
         "helmet jacket pants shoe wheel leaf leaves bush flower plant vase lamp picture frame shelf "
         "couch pillow bed blanket laptop keyboard screen phone clock tower roof cloud mountain hill "
         "rock sand snow skateboard surfboard kite racket ball bat glove elephant giraffe zebra cow "
         "sheep bird fruit banana apple orange carrot broccoli donut cake knife fork spoon napkin").split()
ATTRS = ("white black blue red green yellow brown gray orange pink purple silver wooden metal "
         "plastic glass large small tall short young old dark bright clean dirty open closed "
         "standing sitting walking striped").split()
RELATIONS = ("to the left of|to the right of|on|in|in front of|behind|next to|under|on top of|"
             "near|holding|wearing|sitting on|standing on|hanging on|beside|above|below").split("|")
# (question template, structural, semantic, detailed, answer kind)
TEMPLATES = (
    ("Is the {a} {n} to the left or to the right of the {n2}?", "choose", "rel", "chooseRel", "side"),
    ("What color is the {n} that is {r} the {n2}?", "query", "attr", "relS", "attr"),
    ("Are there both {n}s and {n2}s in the picture?", "logical", "obj", "existAndC", "yesno"),
    ("Who is wearing the {n}?", "query", "rel", "relS", "noun"),
    ("Does the {n} look {a}?", "verify", "attr", "verifyAttr", "yesno"),
    ("Which kind of {n} is {r} the {a} {n2}?", "query", "rel", "categoryRelS", "noun"),
    ("Is the {n}'s color {a} or {a2}?", "choose", "attr", "chooseAttr", "attr"),
    ("Do you see any {n}s, {n2}s, or {n3}s there?", "logical", "obj", "existOrC", "yesno"),
    ("What is the {a} object {r} the {n}, a {n2} or a {n3}?", "choose", "cat", "categoryThatChoose", "noun"),
    ("Do the {n} and the {n2} have the same color?", "compare", "attr", "sameColor", "yesno"),
    ("On which side is the {n}?", "query", "rel", "positionQuery", "side"),
    ("Are the {n} and the {n2} made of the same material?", "compare", "attr", "sameMaterial", "yesno"),
)
SPLIT_SIZES = {"val": 2000, "testdev": 1000, "test": 2000}   # train: --questions


def _answer(rng, kind):
    if kind == "yesno":
        return ("yes", "no")[rng.integers(2)]
    if kind == "side":
        return ("left", "right")[rng.integers(2)]
    return (ATTRS if kind == "attr" else NOUNS)[rng.integers(len(ATTRS if kind == "attr" else NOUNS))]


def _bodies(rng, count: int) -> list:
    """``count`` distinct question bodies: JSON text fragments of all fields but the ids."""
    out = []
    for _ in range(count):
        template, structural, semantic, detailed, kind = TEMPLATES[rng.integers(len(TEMPLATES))]
        n, n2, n3 = (NOUNS[i] for i in rng.integers(len(NOUNS), size=3))
        a, a2 = (ATTRS[i] for i in rng.integers(len(ATTRS), size=2))
        r = RELATIONS[rng.integers(len(RELATIONS))]
        question = template.format(n=n, n2=n2, n3=n3, a=a, a2=a2, r=r)
        answer = _answer(rng, kind)
        program = [{"operation": "select", "dependencies": [], "argument": f"{n} ({rng.integers(10**6)})"},
                   {"operation": "relate", "dependencies": [0], "argument": f"{n2},{r},s ({rng.integers(10**6)})"},
                   {"operation": f"verify {kind}", "dependencies": [1], "argument": a}]
        fields = {"semantic": program,
                  "question": question, "isBalanced": True,
                  "groups": {"global": None if kind == "yesno" else kind, "local": f"10-{n}_{a}"},
                  "answer": answer,
                  "semanticStr": " ->".join(f"{p['operation']}: {p['argument']} {p['dependencies']}" for p in program),
                  "annotations": {"answer": {}, "question": {"2": f"{rng.integers(10**6)}"},
                                  "fullAnswer": {"1": f"{rng.integers(10**6)}"}},
                  "types": {"detailed": detailed, "semantic": semantic, "structural": structural},
                  "fullAnswer": f"The {n} is {answer}."}
        out.append((json.dumps(fields)[1:-1], json.dumps({k: v for k, v in fields.items()
                                                           if k not in ("answer", "fullAnswer", "types",
                                                                        "annotations", "groups")})[1:-1]))
    return out


def write_questions(path: str, n: int, image_ids: list, first_qid: int, with_answers: bool, rng,
                    bodies: list) -> None:
    """A GQA question file of ``n`` questions about ``image_ids``, written as text (fast)."""
    pick = rng.integers(len(bodies), size=n)
    images = rng.integers(len(image_ids), size=n)
    entailed = rng.integers(0, 40, size=n)
    with open(path, "w") as f:
        f.write("{")
        for i in range(n):
            qid = first_qid + i
            ids = ", ".join(f'"{qid + d}"' for d in range(1, int(entailed[i]) + 1))
            body = bodies[pick[i]][0 if with_answers else 1]
            f.write(f'{", " if i else ""}"{qid}": {{"entailed": [{ids}], "equivalent": ["{qid}"], '
                    f'"imageId": "{image_ids[images[i]]}", {body}}}')
        f.write("}")


def make_data(root: str, train_questions: int, images: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    qdir, fdir, cache = (os.path.join(root, d) for d in ("GQA-Questions", "GQA-Features", "GQA-Cache"))
    os.makedirs(qdir, exist_ok=True)
    image_ids = {"trainval": [str(2300000 + i) for i in range(images)],
                 "testdev": [f"n{100000 + i}" for i in range(max(images // 20, 10))]}
    for store, ids in image_ids.items():
        rows = (ImageRow(i, 480, 640, np.array([[0, 0, 9, 9]], np.float32), np.ones((1, 4), np.float32),
                         np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, np.int64),
                         np.ones(1, np.float32)) for i in ids)
        tsv = os.path.join(fdir, TASK.stores[store][0])
        write_tsv(tsv, rows)
        convert_tsv(tsv, TASK.store_path(cache, store), progress=False)
    bodies = _bodies(rng, 50_000)
    sizes = {"train": train_questions, **SPLIT_SIZES}
    qid = 10_000_000
    for split in (s for s in TASK.split_names if not TASK.split(s).optional):
        ids = image_ids[TASK.split(split).store]
        path, = TASK.question_files(qdir, split)
        write_questions(path, sizes[split], ids, qid, TASK.split(split).answers, rng, bodies)
        qid += 100 * sizes[split]
    glove = os.path.join(root, "GloVe", "glove.6B.300d.txt")
    os.makedirs(os.path.dirname(glove), exist_ok=True)
    with open(glove, "w") as f:   # real GloVe lists many words no question uses
        for w in ["the", "is", "of", "color", "what"] + NOUNS[::2] + ATTRS[::2] + [f"w{i}" for i in range(20000)]:
            f.write(w + " " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.4, 300)) + "\n")
    return {"questions": qdir, "glove": glove, "cache": cache}


def spec_load(path: str, dictionary: Dictionary, ans2label: dict, img2idx: dict, max_length: int = 40):
    """The specification's load_dataset + create_entry + GQAFeatureDataset.tokenize."""
    with open(path, 'r') as f:
        examples = json.load(f)
    entries = []
    for ex_key in sorted(examples):
        example = examples[ex_key]
        entries.append({'question_id': ex_key, 'image_id': example['imageId'],
                        'image': img2idx[example['imageId']], 'question': example['question'],
                        'answer': ans2label[example['answer'].lower()]})
    for entry in entries:
        entry['q_token'] = pad_tokens(dictionary, entry['question'], max_length)
    return entries


def picture(summary: dict, runs: list, out: str) -> str:
    """How long does building the question cache take (once), and how much faster is loading a split
    at training start than the specification's re-tokenizing?"""
    from butd.evaluation.plots import bar_chart
    build = summary["build_s"]
    phases = [{"label": f"build: {phase}", "value": seconds, "group": "build",
               "note": f"{seconds:.2f} s, {seconds / build:.0%} of the build"} for phase, seconds in summary["phase_s"].items()]
    phases.append({"label": "build: all of it", "value": build, "group": "all", "note": f"{build:.2f} s (once)"})
    load = [{"label": "specification: json.load + tokenize + pad", "value": summary["spec_load_s"], "group": "spec",
             "note": f"{summary['spec_load_s']:.2f} s"},
            {"label": "butd: load_split (np.load of the shards)", "value": summary["load_s"], "group": "butd",
             "note": f"{summary['load_s']:.2f} s: {summary['load_speedup']:.0f}x faster"}]
    return bar_chart([(f"Building the question cache of {summary['questions']:,} questions ({summary['json_mb']:.0f} MB "
                       "of JSON), by phase", "seconds", phases),
                      (f"Loading the {summary['train_questions']:,} train questions at training start", "seconds", load)],
                     out, title="questions_speed")


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--num_questions", type=int, default=1_000_000, help="train questions")
    p.add_argument("--num_images", type=int, default=3000, help="trainval images the questions are about")
    p.add_argument("--keep", default=None, help="work in this directory and keep it (default: a temp dir)")
    p.add_argument("--out", default=RESULTS, help="where the PNG and JSON go")
    args = p.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="questions_speed_")
    try:
        paths, t_make = timed(make_data, root, args.num_questions, args.num_images)
        out = os.path.join(paths["cache"], "questions")
        shutil.rmtree(out, ignore_errors=True)
        inputs = Q.Inputs(task=TASK.name, questions=paths["questions"], glove=paths["glove"], cache=paths["cache"])
        summary, t_build = timed(Q.build, inputs, out, progress=False)
        again, t_noop = timed(Q.build, inputs, out, progress=False)
        arrays, t_load = timed(Q.load_split, out, "train")
        vocab, (ans2label, _) = Q.load_vocab(out), Q.load_answers(out)
        img2idx = {i: r for r, i in enumerate(schema.read_image_ids(TASK.store_path(paths["cache"], "train")).tolist())}
        train_file, = TASK.question_files(paths["questions"], "train")
        entries, t_spec = timed(spec_load, train_file, Dictionary(vocab.word2idx, vocab.idx2word), ans2label, img2idx)
        if not np.array_equal(arrays.tokens, np.array([e["q_token"] for e in entries])):
            raise SystemExit("loaded tokens differ from the specification's tokenization")
        del entries
        total = sum(summary["questions"].values())
        size_mb = sum(os.path.getsize(os.path.join(paths["questions"], f)) for f in os.listdir(paths["questions"])) / 1e6
        phases = summary["phase_seconds"]
        rows = [("write synthetic data (not timed against)", t_make, ""),
                (f"build cache: {total:,} questions, {size_mb:,.0f} MB JSON", t_build,
                 f"{total / t_build:,.0f} q/s (target < 60 s)")]
        rows += [(f"  of which {name}", sec, "") for name, sec in phases.items()]
        rows += [
                ("second build, same inputs (no-op)", t_noop, f"skipped={again['skipped']}"),
                (f"load_split(train): {len(arrays):,} questions", t_load, "target < 2 s"),
                ("spec: json.load + sorted entries + tokenize + pad", t_spec, f"{t_spec / t_load:,.1f}x slower than load_split")]
        runs = [{"step": name, "seconds": sec, "note": note} for name, sec, note in rows]
        load = os.getloadavg()[0]
        print(f"\nmachine: {os.cpu_count()} cores, load average {load:.1f} during the run (shared: noisy)")
        figures = {"questions": total, "train_questions": len(arrays), "json_mb": round(size_mb, 1),
                   "build_s": round(t_build, 2), "noop_s": round(t_noop, 3), "load_s": round(t_load, 3),
                   "spec_load_s": round(t_spec, 2), "load_speedup": round(t_spec / t_load, 1),
                   "phase_s": phases, "load_average": round(load, 1), "shards": summary["shards"], "ntoken": summary["ntoken"],
                   "num_answers": summary["num_answers"], "glove_coverage": summary["glove_coverage"],
                   "build_under_60s": t_build < 60, "load_under_2s": t_load < 2}
        return report("questions_speed", args.out, figures, runs, columns=[
            ("step", "step", "<57"), ("seconds", "seconds", "10.2f"), ("note", "note", "<1")], picture=picture)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run(main))

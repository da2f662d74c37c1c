"""Write tests/data/real/: one small set per dataset, laid out as README's "Running on real data"
expects under ``--data``, whose feature rows carry the image ids its questions name.

    python tests/data/make_real_sets.py      # from the repository root; rewrites tests/data/real/

Everything comes from the real samples next to this script (provenance and licences:
tests/data/README.md). The questions are real and keep their fields; the feature rows are real
rows of coco_train2014_obj36_10rows.tsv, byte for byte, under the questions' image ids in place
of their own: real features, but not those images' features (row k of the set is real row
k mod 10, so a set needing more ids than there are rows repeats rows). Each image gets one row,
in the feature file of the store that serves its split (butd/tasks/<dataset>.py), and every split
the task reads gets a file. Which questions go to which split is chosen below (``GQA_SPLITS``,
``VQA2_SPLITS``, ``NLVR2_SPLITS``) and listed in tests/data/README.md. Uses only the standard
library, so the samples do not depend on the code they test.
"""
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "real")
TSV = os.path.join(HERE, "coco_train2014_obj36_10rows.tsv")
GLOVE = os.path.join(HERE, "glove.6B.300d.sample.txt.gz")
GQA_QUESTIONS = os.path.join(HERE, "xgqa_en_train_5.json")
VQA2_QUESTIONS = os.path.join(HERE, "vqa2_train2014_3q_questions.json")
VQA2_ANNOTATIONS = os.path.join(HERE, "vqa2_train2014_3q_annotations.json")
NLVR2_STATEMENTS = os.path.join(HERE, "nlvr2_dev_sample.jsonl")

# GQA: each of the 5 images' questions make one split (images of different splits are disjoint, as
# in the release); split -> (images, whether the answers are kept). Test questions come without answers.
GQA_SPLITS = {"train": (("n411121", "n380113"), True), "val": (("n100552",), True),
              "test": (("n406334",), False), "testdev": (("n25275",), True)}
GQA_STORES = {"train": "vg_gqa_obj36.tsv", "val": "vg_gqa_obj36.tsv", "test": "vg_gqa_obj36.tsv",
              "testdev": "gqa_testdev_obj36.tsv"}
GQA_TEST_DROPPED = ("answer", "fullAnswer")

# VQA v2: the 3 questions are all about COCO image 458752, so that image stands in every store, under
# the store's own id prefix. split -> (question indices, annotations kept, store). test-dev2015 is a
# subset of test2015, as in the release.
VQA2_SPLITS = {"train2014": ((0, 1), True, "train2014"), "val2014": ((2,), True, "val2014"),
               "test-dev2015": ((0, 1), False, "test2015"), "test2015": ((0, 1, 2), False, "test2015")}
VQA2_ID = "COCO_{store}_{image:012d}"   # LXMERT's obj36 TSV ids, e.g. COCO_train2014_000000458752

# NLVR2: split -> the image pairs (identifier without the sentence part) whose statements it holds.
NLVR2_SPLITS = {"train": ("dev-850-0",), "dev": ("dev-896-0",), "test1": ("dev-481-0",)}
NLVR2_STORES = {"train": "train_obj36.tsv", "dev": "valid_obj36.tsv", "test1": "test_obj36.tsv"}
NLVR2_IMAGES = ("-img0", "-img1")


class Rows:
    """The real TSV rows handed out in turn, each under a new image id (the rest of the line as is)."""

    def __init__(self):
        with open(TSV) as f:
            self.lines = [line.split("\t", 1)[1] for line in f]
        self.used = 0

    def relabelled(self, image_id: str) -> str:
        line = self.lines[self.used % len(self.lines)]
        self.used += 1
        return f"{image_id}\t{line}"


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_json(path: str, doc) -> None:
    write(path, json.dumps(doc))


def write_rows(path: str, rows: Rows, image_ids) -> None:
    """Append one relabelled row per image id to the TSV ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.writelines(rows.relabelled(image) for image in image_ids)


def copy_glove(root: str) -> None:
    os.makedirs(os.path.join(root, "GloVe"))
    shutil.copy(GLOVE, os.path.join(root, "GloVe", "glove.6B.300d.txt.gz"))


def make_gqa(root: str, rows: Rows) -> None:
    with open(GQA_QUESTIONS) as f:
        questions = json.load(f)
    for split, (images, answers) in GQA_SPLITS.items():
        chosen = {qid: q for qid, q in questions.items() if q["imageId"] in images}
        if not answers:
            chosen = {qid: {k: v for k, v in q.items() if k not in GQA_TEST_DROPPED} for qid, q in chosen.items()}
        write_json(os.path.join(root, "GQA-Questions", f"{split}_balanced_questions.json"), chosen)
        write_rows(os.path.join(root, "GQA-Features", GQA_STORES[split]), rows, images)
    copy_glove(root)


def make_vqa2(root: str, rows: Rows) -> None:
    with open(VQA2_QUESTIONS) as f:
        question_doc = json.load(f)
    with open(VQA2_ANNOTATIONS) as f:
        annotation_doc = json.load(f)
    images = set()
    for split, (picked, answers, store) in VQA2_SPLITS.items():
        questions = [question_doc["questions"][i] for i in picked]
        write_json(os.path.join(root, "VQA2-Questions", f"v2_OpenEnded_mscoco_{split}_questions.json"),
                   dict(question_doc, data_subtype=split, questions=questions))
        if answers:
            annotations = [annotation_doc["annotations"][i] for i in picked]
            write_json(os.path.join(root, "VQA2-Questions", f"v2_mscoco_{split}_annotations.json"),
                       dict(annotation_doc, data_subtype=split, annotations=annotations))
        images |= {(store, q["image_id"]) for q in questions}
    for store, image in sorted(images):
        write_rows(os.path.join(root, "VQA2-Features", f"{store}_obj36.tsv"), rows,
                   [VQA2_ID.format(store=store, image=image)])
    copy_glove(root)


def make_nlvr2(root: str, rows: Rows) -> None:
    with open(NLVR2_STATEMENTS) as f:
        lines = [line for line in f if line.strip()]
    for split, pairs in NLVR2_SPLITS.items():
        chosen = [line for line in lines if json.loads(line)["identifier"].rsplit("-", 1)[0] in pairs]
        write(os.path.join(root, "NLVR2-Questions", f"{split}.json"), "".join(chosen))
        write_rows(os.path.join(root, "NLVR2-Features", NLVR2_STORES[split]), rows,
                   [pair + side for pair in pairs for side in NLVR2_IMAGES])
    copy_glove(root)


def main(out: str = OUT) -> None:
    """Write the three sets under ``out`` (replacing it)."""
    if os.path.exists(out):
        shutil.rmtree(out)
    rows = Rows()   # one sequence over the three sets, so that they use different real rows first
    for name, make in (("gqa", make_gqa), ("vqa2", make_vqa2), ("nlvr2", make_nlvr2)):
        make(os.path.join(out, name), rows)
    print(f"wrote {out} ({rows.used} feature rows)")


if __name__ == "__main__":
    main()

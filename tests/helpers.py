"""What several test files share: the real samples in tests/data, independent statements of the
specification's reading code, and builders of small seeded stores, TSVs and question arrays."""
import base64
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import zarr

from butd.features import schema
from butd.questions import QuestionArrays
from butd.synthetic.scene import SceneModel, write_tsv

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
REAL_TSV = os.path.join(DATA, "coco_train2014_obj36_10rows.tsv")
REAL_QUESTIONS = os.path.join(DATA, "xgqa_en_train_5.json")
REAL_GLOVE = os.path.join(DATA, "glove.6B.300d.sample.txt.gz")
REAL_VQA2_QUESTIONS = os.path.join(DATA, "vqa2_train2014_3q_questions.json")
REAL_VQA2_ANNOTATIONS = os.path.join(DATA, "vqa2_train2014_3q_annotations.json")
REAL_NLVR2 = os.path.join(DATA, "nlvr2_dev_sample.jsonl")
FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features"]


# ---- the specification's reading code, stated independently ----

def spec_spatials(bb: np.ndarray, img_w: str, img_h: str) -> np.ndarray:
    """The specification's step-3 spatial features, verbatim (sizes arrive as TSV strings)."""
    image_w = float(img_w)
    image_h = float(img_h)
    box_width = bb[:, 2] - bb[:, 0]
    box_height = bb[:, 3] - bb[:, 1]
    scaled_width = box_width / image_w
    scaled_height = box_height / image_h
    scaled_x = bb[:, 0] / image_w
    scaled_y = bb[:, 1] / image_h
    scaled_width = scaled_width[..., np.newaxis]
    scaled_height = scaled_height[..., np.newaxis]
    scaled_x = scaled_x[..., np.newaxis]
    scaled_y = scaled_y[..., np.newaxis]
    return np.concatenate((scaled_x, scaled_y, scaled_x + scaled_width, scaled_y + scaled_height,
                           scaled_width, scaled_height), axis=1)


def spec_rows(path: str) -> list:
    """Rows decoded independently, as the specification reads them (csv + base64 + frombuffer)."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", fieldnames=FIELDNAMES))
    for item in rows:
        n = int(item["num_boxes"])
        item["boxes"] = np.frombuffer(base64.b64decode(item["boxes"]), np.float32).reshape(n, -1)
        item["features"] = np.frombuffer(base64.b64decode(item["features"]), np.float32).reshape(n, -1)
        for k, dtype in (("objects_id", np.int64), ("objects_conf", np.float32),
                         ("attrs_id", np.int64), ("attrs_conf", np.float32)):
            item[k] = np.frombuffer(base64.b64decode(item[k]), dtype)
    return rows


def spec_glove(glove_lines, dictionary, dim=300):
    """gqa_create_dictionary_glove's embedding loop, verbatim on the file's lines."""
    weights = np.zeros((len(dictionary.idx2word), dim), dtype=np.float32)
    for entry in glove_lines:
        word_vec = entry.split()
        word, vec = word_vec[0], list(map(float, word_vec[1:]))
        if word in dictionary.word2idx:
            weights[dictionary.word2idx[word]] = vec
    return weights
# ---- end of the specification's code ----




# ---- builders ----

def make_rows(n=40, boxes=(36, 36), feature_dim=32, seed=0):
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, feature_dim)
    return [model.image(rng, f"{2300000 + i}", int(rng.integers(boxes[0], boxes[1] + 1))) for i in range(n)]


def make_tsv(path, layout="obj36", **kw):
    rows = make_rows(**kw)
    write_tsv(str(path), rows, layout)
    return rows


def read_store(path):
    group = zarr.open_group(str(path), mode="r")
    out = {name: np.asarray(arr[:]) for name, arr in group.arrays()}
    out[schema.IMAGE_IDS] = np.asarray(out[schema.IMAGE_IDS].tolist(), dtype=str)
    return out, dict(group.attrs)


def store_files(path):
    """Every file of a store, relative path -> bytes."""
    files = {}
    for d, _, names in os.walk(path):
        for name in names:
            full = os.path.join(d, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


ZSTD = [{"name": "zstd", "configuration": {"level": 1, "checksum": False}}]


def write_store(path, num_images=37, num_boxes=5, feature_dim=8, chunk_images=8, dtype="float16",
                compressor="none", complete=True, seed=0):
    """A small schema-conformant store of seeded random values; returns the image ids."""
    rng = np.random.default_rng(seed)
    attrs = schema.StoreAttrs(layout="obj36", dtype=dtype, compressor=compressor, feature_dim=feature_dim,
                              max_boxes=num_boxes, num_images=num_images, chunk_images=chunk_images,
                              source={"path": "generated"}, fingerprint=f"test-{seed}", complete=complete)
    group = zarr.open_group(str(path), mode="w")
    codecs = None if compressor == "none" else ZSTD
    for field in schema.fields_for("obj36"):
        shape = field.shape(attrs)
        values = rng.standard_normal(shape) * 10 if field.name != "features" else rng.standard_normal(shape)
        array = group.create_array(field.name, shape=shape, chunks=(chunk_images,) + shape[1:],
                                   dtype=field.numpy_dtype(attrs), compressors=codecs,
                                   config={"write_empty_chunks": True})
        array[:] = values.astype(field.numpy_dtype(attrs))
    ids = np.array([f"img{seed}_{i}" for i in range(num_images)])
    group.create_array(schema.IMAGE_IDS, shape=(num_images,), chunks=(chunk_images,), dtype=str)[:] = ids
    group.attrs.update(attrs.to_json())
    return ids


def direct(path, rows):
    """Reference read of the batch fields straight through zarr."""
    group = zarr.open_group(str(path), mode="r")
    return group["features"][:][rows], group["spatials"][:][rows]



NUM_Q = 150


def questions_for(image_ids, num_q=NUM_Q, seed=0, rows=None):
    """Seeded random single-image questions over a store's ``image_ids``, with GQA-style labels."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(image_ids), num_q) if rows is None else np.asarray(rows)
    return QuestionArrays(
        question_ids=np.array([f"q{i}" for i in range(len(rows))]),
        image_ids=np.array([f"img{seed}_{r}" for r in rows]), image_rows=rows.astype(np.int64),
        tokens=rng.integers(0, 50, (len(rows), 40)), targets={"labels": rng.integers(-1, 9, len(rows))})


def as_tensors(batches):
    """Each batch cloned as it arrives (a loader's batch is valid until the next is requested)."""
    return [{k: v.clone() for k, v in b.items()} for b in batches]


def build_gqa_caches(sample_dir, cache, chunk_images=8, compressor="none", **question_options):
    """The sample's feature stores (real converter, ``compressor``) and question cache under
    ``cache``; returns the question cache's directory."""
    from butd import questions
    from butd.features.convert import convert_stores
    from butd.tasks import get_task
    convert_stores(get_task("gqa"), os.path.join(sample_dir, "GQA-Features"), str(cache),
                   chunk_images=chunk_images, compressor=compressor, workers=1, progress=False)
    inputs = questions.Inputs("gqa", os.path.join(sample_dir, "GQA-Questions"),
                              os.path.join(sample_dir, "GloVe", "glove.6B.300d.txt"), str(cache), **question_options)
    out = os.path.join(str(cache), "questions")
    questions.build(inputs, out, workers=1, progress=False)
    return out


@contextlib.contextmanager
def interrupted_after(monkeypatch, chunks_written: int):
    """Inside: a conversion stops with KeyboardInterrupt (a Ctrl-C) once ``chunks_written`` chunks
    are written; after it, chunks are written as usual again."""
    from butd.features.convert import chunks
    write_chunk, calls = chunks.write_chunk, []

    def interrupted(*args):
        if len(calls) == chunks_written:
            raise KeyboardInterrupt
        calls.append(args[2])
        write_chunk(*args)
    monkeypatch.setattr(chunks, "write_chunk", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(chunks, "write_chunk", write_chunk)


# ---- a small GQA-shaped run through the commands themselves, shared by the stages' tests ----

BOM = b"\xef\xbb\xbf"
SMALL_EMB = 32
# 19 train images x 5 questions = 95 train questions: 6 steps of 16 per epoch; 35 testdev questions.
SMALL_SAMPLE = dict(train_images=19, val_images=2, test_images=3, testdev_images=7, questions_per_image=5,
                    feature_dim=32, emb_dim=SMALL_EMB)
SMALL_FLAGS = ["--hidden", "32", "--bsz", "16", "--emb_dim", str(SMALL_EMB), "--accelerator", "cpu", "--log_every", "1",
               "--answer_dropout", "0", "--attention_dropout", "0"]


def make_small_sample(root, seed=3) -> list:
    """``SMALL_SAMPLE`` generated under ``root``; returns train.py's ``--data``/``--glove`` flags."""
    from butd.synthetic.gqa import generate
    paths = generate(str(root), seed=seed, **SMALL_SAMPLE)
    return ["--data", str(root), "--glove", paths["glove"]]


def cli_run(main, argv, capsys):
    """(exit status, stderr) of a command line's ``main`` run as its script runs it."""
    from butd import cli
    capsys.readouterr()
    try:
        status = cli.run(main, argv)
    except SystemExit as e:           # a usage error, as argparse ends it
        status = e.code
    return status, capsys.readouterr().err


def one_line_error(err: str) -> str:
    """The one error line a command ended with (progress bars may come before it), never a traceback."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


def copy_stores(root, dst):
    """The feature stores of the sample under ``root``, copied to ``dst`` (a cache directory without
    a question cache)."""
    import shutil
    for store in ("trainval", "testdev"):
        shutil.copytree(os.path.join(root, "GQA-Cache", f"{store}.zarr"), os.path.join(dst, f"{store}.zarr"))
    return str(dst)


def build_questions(qdir, glove, cache, *flags):
    """The question cache of ``qdir`` under ``cache``, by ``questions_to_shards.py``."""
    import questions_to_shards
    return questions_to_shards.main(["--questions", str(qdir), "--glove", glove, "--cache", str(cache),
                                     "--emb_dim", str(SMALL_EMB), "--workers", "1", *flags])


# Runs a command line as ``python SCRIPT ARGS`` would, then says whether torch was imported.
_IMPORTS_TORCH = """
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("torch" in sys.modules)
"""


def imports_torch(script, args) -> bool:
    """Whether ``python script *args`` (which must succeed) imports torch, whose import alone takes
    a second or more."""
    import subprocess
    done = subprocess.run([sys.executable, "-c", _IMPORTS_TORCH, script, *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(DATA)))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1] == "True"


# ---- an evaluation report (evaluate.py --report), read back and checked against the model ----

REPORT_SECTIONS = ("evaluated", "scores", "curves", "confusions", "gallery")
REPORT_BOXES = 5   # the most attended boxes drawn per question (issue 23)

class Page(HTMLParser):
    """What the tests read from a report: sections, cards with their pictures and boxes, top answers,
    confusion rows, chart images, every src/href value and the tags that could load something."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections, self.cards, self.confusions, self.images, self.links = [], [], [], [], []
        self.loading_tags, self.filters = [], []
        self._card = self._svg = self._box = self._li = None
        self._text_of = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href", "xlink:href", "action", "poster", "srcset"):
            if name in a:
                self.links.append(a[name])
        if tag in ("link", "iframe", "object", "embed", "base", "audio", "video", "source") or \
                (tag == "script" and "src" in a):
            self.loading_tags.append(tag)
        if tag == "section":
            self.sections.append(a.get("data-section"))
        elif tag == "img":
            self.images.append(a)
        elif tag == "select":
            self.filters.append(a["data-filter"])
        elif tag == "tr" and "confusion" in a.get("class", ""):
            self.confusions.append((a["data-gold"], a["data-predicted"], int(a["data-count"])))
        elif tag == "article" and "card" in a.get("class", ""):
            self._card = {"attrs": a, "svgs": [], "top": [], "gold": [], "question": ""}
            self.cards.append(self._card)
        elif tag == "svg" and self._card is not None:
            self._svg = {"attrs": a, "boxes": [], "href": None}
            self._card["svgs"].append(self._svg)
        elif tag == "image" and self._svg is not None:
            self._svg["href"] = a["href"]
        elif tag == "g" and "box" in a.get("class", "") and self._svg is not None:
            self._box = {"attrs": a, "rect": None, "label": None}
            self._svg["boxes"].append(self._box)
        elif tag == "rect" and self._box is not None:
            self._box["rect"] = {k: float(a[k]) for k in ("x", "y", "width", "height")}
        elif tag == "text" and self._box is not None:
            self._text_of = ("label", self._box)
        elif tag == "li" and "predicted" in a.get("class", "") and self._card is not None:
            self._card["top"].append((a["data-answer"], float(a["data-probability"])))
        elif tag == "b" and self._card is not None and self._card.get("in_gold"):
            self._text_of = ("gold", self._card)
        elif tag == "p" and self._card is not None:
            if "gold" in a.get("class", ""):
                self._card["in_gold"] = True
            elif "question" in a.get("class", ""):
                self._text_of = ("question", self._card)

    def handle_endtag(self, tag):
        ends = {"text": "label", "b": "gold", "p": "question"}
        if self._text_of is not None and ends.get(tag) == self._text_of[0]:
            self._text_of = None
        if tag == "article":
            self._card = None
        elif tag == "svg":
            self._svg = None
        elif tag == "g":
            self._box = None
        elif tag == "p" and self._card is not None:
            self._card["in_gold"] = False

    def handle_data(self, data):
        if self._text_of is None:
            return
        kind, target = self._text_of
        if kind == "label":
            target["label"] = data.strip()
        elif kind == "gold":
            target["gold"].append(data.strip())
        elif kind == "question":
            target["question"] += data


def read_page(path) -> tuple:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text, Page(text)


def assert_self_contained(text: str, page: Page) -> None:
    """No address outside the file: no http(s) URL anywhere, every src/href inline data or an
    anchor, no tag that loads a resource, no CSS that could fetch one."""
    lowered = text.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert not page.loading_tags, page.loading_tags
    for link in page.links:
        assert link.startswith("data:image/") or (link.startswith("#") and "//" not in link), link[:80]
    assert "url(" not in lowered and "@import" not in lowered


# ---- the model's own outputs, for comparison ---------------------------------------------------------

def model_outputs(checkpoint: str, split: str) -> tuple:
    """``({question id: (top labels, top probabilities, attention or None, boxes, box mask)}, arrays,
    written answers, store image sizes by question id)``: a pass of ``predict_batches`` over the split."""
    import torch

    from butd import questions
    from butd.evaluation.inference import predict_batches
    from butd.loading import VQADataModule
    from butd.training.config import load_config
    from butd.training.lit import LitVQA
    config = load_config(checkpoint)
    lit = LitVQA.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dm = VQADataModule(config.data.dataset, config.data.paths()["cache"], batch_size=7, pin_memory=False)
    dm.setup("predict")
    arrays = dm.questions(split)
    written = lit.task.written_answers(arrays, questions.load_spellings(dm.questions_dir))
    outputs = {}
    for out in predict_batches(lit, dm.dataloader_for(split), torch.device("cpu")):
        labels, probabilities = out.top(3)
        for b, p in enumerate(out.index.tolist()):
            outputs[str(arrays.question_ids[p])] = (labels[b], probabilities[b],
                                                    None if out.attention is None else out.attention[b],
                                                    out.boxes[b], out.box_mask[b])
    sizes = dm.store(split).image_sizes(arrays.image_rows.reshape(-1)).reshape(len(arrays), -1, 2)
    by_id = {str(q): sizes[p] for p, q in enumerate(arrays.question_ids.tolist())}
    return outputs, arrays, written, by_id


def check_page(path, checkpoint, split, examples, images_found=None) -> Page:
    """Every check of a report against the model's own outputs (``images_found(page)``: how many
    pictures must show an image file); returns the parsed page."""
    import pytest
    from PIL import Image

    from butd.evaluation.report import gather
    from butd.evaluation.report.images import PAIR_HEIGHT, Picture, shown_size
    from butd.tasks import get_task
    from butd.training.config import load_config
    text, page = read_page(path)
    assert_self_contained(text, page)
    assert page.sections == list(REPORT_SECTIONS)
    assert any(i.get("alt", "").startswith("training and validation") for i in page.images), "no training curves"
    outputs, arrays, written, sizes = model_outputs(checkpoint, split)
    task = get_task(load_config(checkpoint).data.dataset)
    assert len(page.cards) == min(examples, len(arrays))
    assert len({c["attrs"]["data-question-id"] for c in page.cards}) == len(page.cards)
    attention_model = next(iter(outputs.values()))[2] is not None
    for card in page.cards:
        qid = card["attrs"]["data-question-id"]
        labels, probabilities, attention, boxes, mask = outputs[qid]
        # the top answers and their probabilities are the model's
        assert [a for a, _ in card["top"]] == [written[int(label)] for label in labels]
        np.testing.assert_allclose([p for _, p in card["top"]], probabilities, atol=1e-6)
        assert card["attrs"]["data-result"] in gather.RESULTS
        assert len(card["svgs"]) == task.images_per_question
        per_image = len(boxes) // task.images_per_question
        drawn = []
        for side, svg in enumerate(card["svgs"]):
            width, height = int(svg["attrs"]["data-width"]), int(svg["attrs"]["data-height"])
            assert svg["attrs"]["viewbox"] == f"0 0 {width} {height}"
            store_size = tuple(int(v) for v in sizes[qid][side])
            if svg["href"] is None:
                pair = PAIR_HEIGHT if task.images_per_question > 1 else None
                assert svg["attrs"]["data-blank"] == "true" and (width, height) == shown_size(*store_size, max_height=pair)
            else:
                assert svg["href"].startswith("data:image/jpeg;base64,")
                with Image.open(io.BytesIO(base64.b64decode(svg["href"].split(",", 1)[1]))) as picture:
                    assert picture.size == (width, height)
            for box in svg["boxes"]:
                r = box["rect"]
                # inside its picture
                assert 0 <= r["x"] and 0 <= r["y"] and r["x"] + r["width"] <= width and r["y"] + r["height"] <= height, \
                    (qid, r, width, height)
                row = int(box["attrs"]["data-row"])
                assert mask[row] and row // per_image == side        # a real box of this image
                # where the store puts the box, in this picture's pixels (floored to a tenth)
                expected, = Picture(width, height, None).rectangles(boxes[row][None])
                np.testing.assert_allclose([r["x"], r["y"], r["width"], r["height"]], expected, atol=1e-9)
                drawn.append((row, box))
        if attention_model:
            real = np.flatnonzero(mask)
            top = real[np.argsort(-attention[real], kind="stable")[:REPORT_BOXES]]
            assert sorted(row for row, _ in drawn) == sorted(top.tolist())
            for row, box in drawn:
                weight = float(box["attrs"]["data-weight"])
                assert weight == pytest.approx(float(attention[row]), abs=1e-7)
                assert box["label"] == f"{attention[row]:.3f}"
                assert int(box["attrs"]["data-rank"]) == top.tolist().index(row) + 1
        else:   # FiLM: every real box, without weights
            assert sorted(row for row, _ in drawn) == np.flatnonzero(mask).tolist()
            assert all("data-weight" not in box["attrs"] and box["label"] is None for _, box in drawn)
    if images_found is not None:
        shown = [svg["href"] is not None for card in page.cards for svg in card["svgs"]]
        assert sum(shown) == images_found(page), shown
    return page


def check_confusions(page: Page, checkpoint: str, split: str, predictions_file: str) -> None:
    """The confusion rows equal a count made from the predictions file and the cache's gold answers."""
    from butd.tasks import get_task
    from butd.training.config import load_config
    outputs, arrays, written, _ = model_outputs(checkpoint, split)
    task = get_task(load_config(checkpoint).data.dataset)
    predicted = read_predictions(task, predictions_file)
    labels = np.array([written.index(predicted[str(q)]) for q in arrays.question_ids.tolist()])
    scores = task.question_scores(arrays, labels, written)
    reference = task.reference_answers(arrays, written)
    counts = Counter((g, predicted[str(q)]) for q, g, s in zip(arrays.question_ids.tolist(), reference.tolist(), scores)
                     if g and s < 1 and g != predicted[str(q)])
    expected = sorted(((g, p, c) for (g, p), c in counts.items()), key=lambda r: (-r[2], r[0], r[1]))[:20]
    assert page.confusions == expected


def read_predictions(task, path) -> dict:
    """{question id: answer} of a predictions file in the task's submission format."""
    if task.name == "nlvr2":
        with open(path) as f:
            return dict(line.rstrip("\n").split(",") for line in f)
    with open(path) as f:
        entries = json.load(f)
    if task.name == "gqa":
        return {e["questionId"]: e["prediction"] for e in entries}
    return {str(e["question_id"]): e["answer"] for e in entries}


_SLOWED = """
import sys, time
from butd.features.convert import chunks
write = chunks.write_chunk
def slow(*a):
    write(*a)
    time.sleep({delay})
chunks.write_chunk = slow
"""


def start_slowed_conversion(code: str, args: list, delay: float, **popen) -> subprocess.Popen:
    """``python -c code args`` in a session of its own (to signal its whole process group), every chunk
    write of its conversion followed by ``delay`` seconds: time to interrupt it part-way."""
    return subprocess.Popen([sys.executable, "-c", _SLOWED.format(delay=delay) + code, *args],
                            start_new_session=True, **popen)


def wait_for_chunks(proc: subprocess.Popen, out: str, count: int = 1, timeout: float = 60) -> None:
    """Until ``count`` chunks of the store ``out`` are done (a marker is whole once renamed from its
    temporary name), ``proc`` has ended, or ``timeout`` seconds have passed."""
    from butd.features.convert import chunks, lifecycle
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(os.path.join(out, chunks.PROGRESS_DIR)) and len(lifecycle.done_chunks(out)) >= count:
            return
        time.sleep(0.005)

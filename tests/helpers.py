"""What several test files share: the real samples in tests/data, independent statements of the
specification's reading code, and builders of small seeded stores, TSVs and question arrays."""
import base64
import contextlib
import csv
import os
import sys

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
    status = cli.run(main, argv)
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

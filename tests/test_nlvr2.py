"""NLVR2: statement files read and checked (errors name file, line and identifier), accuracy and
consistency as lil-lab's metrics script computes them (butd/reference/nlvr2_metrics.py), two-image
batches equal to direct store reads with the left/right indicator, the 41 real dev statements
through cache, training and evaluation, and train.py + evaluate.py on a generated sample, from the
command line alone, learning well beyond chance with BUTD and with FiLM."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # evaluate.py and train.py live at the repository root
from butd import questions
from butd.features.convert import convert_stores
from butd.loading import VQADataModule
from butd.reference.nlvr2_metrics import nlvr2_metrics
from butd.reference.spec import Dictionary, pad_tokens
from butd.synthetic.nlvr2 import generate
from butd.synthetic.scene import SceneModel, write_tsv
from butd.tasks import get_task
from butd.tasks.json_stream import QuestionFileError
from butd.tasks.nlvr2 import read_statements, score

import evaluate
import train
from helpers import REAL_GLOVE, REAL_NLVR2, read_store

TASK = get_task("nlvr2")
EMB = 32


def statements_of(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def modular_images(identifier):
    """annotated-butd's create_entry: the identifier without its last part, + -img0 / -img1."""
    img_id = "-".join(identifier.split('-')[:-1])
    return img_id + '-img0', img_id + '-img1'


def printed_metrics(text: str) -> list:
    """The accuracy= and consistency= lines of evaluate.py's output."""
    return re.findall(r"^(?:accuracy|consistency)=.*$", text, flags=re.MULTILINE)


# ---- reading ----

def test_the_real_statements_are_read_with_both_images_and_their_labels():
    raw = read_statements(REAL_NLVR2, labels_required=True)
    real = statements_of(REAL_NLVR2)
    assert raw.question_ids == [s["identifier"] for s in real] and len(raw) == 41
    assert list(zip(*raw.image_ids)) == [modular_images(s["identifier"]) for s in real]
    assert raw.image_ids[0][0] == "dev-850-0-img0" and raw.image_ids[1][0] == "dev-850-0-img1"
    assert raw.questions == [s["sentence"] for s in real]
    labels = TASK.targets(raw, TASK.answer_vocabulary({})[0])["labels"]
    # the modular branch's answer: 1 if label == 'True' else 0
    assert labels.tolist() == [1 if s["label"] == "True" else 0 for s in real]


def write_lines(path, lines):
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)
    return str(path)


GOOD = '{"identifier": "dev-1-0-0", "sentence": "Both images contain a dog.", "label": "True"}'


@pytest.mark.parametrize("line, message", [
    ('{"identifier": "dev-1-1-0", "sentence": "A dog.", "label": "true"}',
     r"line 3: statement dev-1-1-0: 'label' is 'true'; expected \"True\" or \"False\""),
    ('{"identifier": "dev-1-1-0", "sentence": "A dog.", "label": 1}', r"line 3: statement dev-1-1-0: 'label' is 1"),
    (GOOD, r"line 3: statement dev-1-0-0 is listed twice \(first on line 1\)"),
    ('{"identifier": "dev-1-1-0", "sentence": "A dog."}', r"line 3: statement dev-1-1-0: missing 'label'"),
    ('{"identifier": "dev-1-1", "sentence": "A dog.", "label": "True"}', r"line 3: identifier 'dev-1-1' is not"),
    ('{"identifier": "dev-1-1-0.png", "sentence": "A dog.", "label": "True"}', r"line 3: identifier"),
    ('{"identifier": "dev-1-1-0", "label": "True"}', r"line 3: statement dev-1-1-0: missing 'sentence'"),
    ('["dev-1-1-0"]', r"line 3: expected a JSON object per line"),
    ('{"identifier": "dev-1-1-0", ', r"line 3 column \d+: malformed JSON"),
])
def test_a_bad_statement_names_the_file_the_line_and_the_identifier(tmp_path, line, message):
    path = write_lines(tmp_path / "dev.json", [GOOD, "", line])      # a blank line still counts
    with pytest.raises(QuestionFileError, match=re.escape(path) + r".*" + message):
        read_statements(path, labels_required=True)


def test_a_statement_without_a_label_is_allowed_where_labels_are_optional(tmp_path):
    path = write_lines(tmp_path / "test1.json", [GOOD, '{"identifier": "test1-4-2-1", "sentence": "No dog."}'])
    raw = read_statements(path, labels_required=False)
    assert raw.answers == ["True", None]
    assert TASK.targets(raw, TASK.answer_vocabulary({})[0])["labels"].tolist() == [1, -1]
    assert not TASK.split("test1").answers and TASK.split("dev").answers


# ---- scores ----

def test_consistency_counts_a_sentence_only_when_all_its_pairs_are_right(tmp_path):
    """Three sentences (dev-1 sentence 0 and 1, dev-2 sentence 0) over their pairs, and one
    statement without a label, which counts in neither figure."""
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-1-2-0", "dev-1-0-1", "dev-1-1-1", "dev-2-0-0", "dev-2-3-0", "dev-3-0-0"]
    gold = np.array([1, 0, 1, 1, 0, 0, 0, -1])
    pred = np.array([1, 0, 1, 1, 1, 0, 0, 1])    # one miss, in sentence dev-1 #1
    scores = score(pred, gold, ids)
    assert scores["overall"] == {"accuracy": 6 / 7, "count": 7}
    assert scores["consistency"] == {"sentences": {"accuracy": 2 / 3, "count": 3}}
    assert score(np.ones(7), gold[:7], ids[:7])["consistency"]["sentences"]["accuracy"] == 0.0
    assert score(gold[:7], gold[:7], ids[:7])["consistency"]["sentences"]["accuracy"] == 1.0

    # the same figures from lil-lab's script on the predictions file and a labels file
    csv = str(tmp_path / "pred.csv")
    TASK.write_predictions(csv, ids[:7], [["False", "True"][p] for p in pred[:7]])
    with open(csv) as f:
        assert f.readline() == "dev-1-0-0,True\n"
    labels = write_lines(tmp_path / "dev.json", [json.dumps({"identifier": i, "label": ["False", "True"][g]})
                                                 for i, g in zip(ids[:7], gold[:7])])
    printed = printed_metrics(TASK.format_scores(score(pred[:7], gold[:7], ids[:7])))
    assert printed == nlvr2_metrics(csv, labels) == ["accuracy=0.8571428571428571",
                                                     "consistency=0.6666666666666666"]


# ---- batches ----

def build_caches(root, glove, emb_dim=EMB, **options) -> str:
    """Feature stores and question cache of an NLVR2 sample under <root>/NLVR2-Cache."""
    cache = os.path.join(root, "NLVR2-Cache")
    convert_stores(TASK, os.path.join(root, "NLVR2-Features"), cache, chunk_images=8, workers=1, progress=False)
    inputs = questions.Inputs("nlvr2", os.path.join(root, "NLVR2-Questions"), glove, cache, emb_dim=emb_dim, **options)
    questions.build(inputs, os.path.join(cache, "questions"), workers=1, progress=False)
    return cache


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nlvr2_small"))
    paths = generate(root, seed=2, train_sets=4, dev_sets=3, test_sets=2, feature_dim=24, num_boxes=7,
                     emb_dim=EMB, kinds=("colour", "both", "neither", "only", "more", "same_colour"))
    return root, build_caches(root, paths["glove"])


def test_a_batch_joins_the_left_and_right_rows_of_each_statement_with_the_indicator(small_sample):
    root, cache = small_sample
    dm = VQADataModule("nlvr2", cache, batch_size=8, pin_memory=False)
    dm.setup("predict")
    assert (dm.spatial_dim, dm.num_answers, dm.label2ans) == (7, 2, ["False", "True"])
    dev = dm.questions("dev")
    store, _ = read_store(os.path.join(cache, "valid.zarr"))
    row_of = {image: r for r, image in enumerate(store["image_ids"].tolist())}
    K = store["features"].shape[1]
    statements = {s["identifier"]: s for s in statements_of(os.path.join(root, "NLVR2-Questions", "dev.json"))}
    picked = [5, 0, 17, len(dev) - 1, 9, 3]
    batch = dm.dataset("dev")[picked]
    assert batch["features"].shape == (6, 2 * K, 24) and batch["spatials"].shape == (6, 2 * K, 7)
    assert sorted(batch["index"].tolist()) == sorted(picked)
    for b, position in enumerate(batch["index"].tolist()):
        identifier = dev.question_ids[position]
        left, right = (row_of[image] for image in modular_images(identifier))
        for half, row in ((slice(0, K), left), (slice(K, 2 * K), right)):
            np.testing.assert_array_equal(batch["features"][b, half].numpy(), store["features"][row])
            np.testing.assert_array_equal(batch["spatials"][b, half, :6].numpy(), store["spatials"][row])
        assert (batch["spatials"][b, :K, 6] == 0).all() and (batch["spatials"][b, K:, 6] == 1).all()
        assert batch["labels"][b] == (statements[identifier]["label"] == "True")
    # the tokens are the modular branch's: one dictionary over train, dev and test1, 40 tokens, front-padded
    dictionary = Dictionary()
    for split in ("train", "dev", "test1"):
        for s in statements_of(os.path.join(root, "NLVR2-Questions", f"{split}.json")):
            dictionary.tokenize(s["sentence"], True)
    expected = [pad_tokens(dictionary, statements[dev.question_ids[p]]["sentence"], 40) for p in batch["index"]]
    assert batch["tokens"].tolist() == expected


def test_a_missing_image_names_the_statement_file_and_identifier(small_sample, tmp_path):
    root, _ = small_sample
    shutil.copytree(os.path.join(root, "NLVR2-Questions"), tmp_path / "NLVR2-Questions")
    shutil.copytree(os.path.join(root, "GloVe"), tmp_path / "GloVe")
    os.makedirs(tmp_path / "NLVR2-Features")
    for name in os.listdir(os.path.join(root, "NLVR2-Features")):
        with open(os.path.join(root, "NLVR2-Features", name)) as f, open(tmp_path / "NLVR2-Features" / name, "w") as out:
            out.writelines(line for line in f if not line.startswith("dev-1-2-img1\t"))
    glove = str(tmp_path / "GloVe" / f"glove.6B.{EMB}d.txt")
    dev = re.escape(str(tmp_path / "NLVR2-Questions" / "dev.json"))
    with pytest.raises(QuestionFileError, match=dev + r".*no row in the feature store.*dev-1-2-\d \(image "
                                                      r"dev-1-2-img0 \+ dev-1-2-img1\)"):
        build_caches(str(tmp_path), glove)


# ---- the 41 real statements, end to end ----

def test_the_real_statements_go_through_the_cache_training_and_evaluation(tmp_path, capsys):
    """The real dev sample as train, dev and test1 (the task needs all three files), on generated
    features stored under the statements' real image ids."""
    real = statements_of(REAL_NLVR2)
    images = sorted({image for s in real for image in modular_images(s["identifier"])})
    rng = np.random.default_rng(0)
    model = SceneModel(rng, 16)
    rows = [model.image(rng, image, 6) for image in images]
    for name in ("train", "dev", "test1"):
        os.makedirs(tmp_path / "NLVR2-Questions", exist_ok=True)
        shutil.copy(REAL_NLVR2, tmp_path / "NLVR2-Questions" / f"{name}.json")
    for stem in ("train", "valid", "test"):
        write_tsv(str(tmp_path / "NLVR2-Features" / f"{stem}_obj36.tsv"), rows)
    _, checkpoints = train.main(["--run_name", "real", "--dataset", "nlvr2", "--data", str(tmp_path),
                                 "--glove", REAL_GLOVE, "--checkpoint", str(tmp_path / "ckpt"), "--epochs", "1",
                                 "--hidden", "16", "--bsz", "16", "--accelerator", "cpu", "--model", "film"])
    capsys.readouterr()
    assert os.path.basename(checkpoints.best_model_path).startswith("film-epoch=00-")
    csv = str(tmp_path / "dev.csv")
    scores = evaluate.main(["--checkpoint", checkpoints.best_model_path, "--out", csv])
    printed = capsys.readouterr().out
    with open(csv) as f:
        lines = [line.rstrip("\n").split(",") for line in f]
    assert sorted(i for i, _ in lines) == sorted(s["identifier"] for s in real)
    assert {p for _, p in lines} <= {"True", "False"}
    assert scores["overall"]["count"] == 41 and scores["consistency"]["sentences"]["count"] == 12
    assert printed_metrics(printed) == nlvr2_metrics(csv, REAL_NLVR2)


# ---- learning, from the command line alone ----

@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """A generated sample small enough to learn in seconds: 150 train sets (2400 statements over
    1200 images), statements of the kinds both and neither, 12 boxes of 64 features per image."""
    root = str(tmp_path_factory.mktemp("nlvr2_learn"))
    subprocess.run([sys.executable, "-m", "butd.synthetic.nlvr2", "--out", root, "--seed", "0", "--train_sets", "150",
                    "--dev_sets", "30", "--test_sets", "2", "--feature_dim", "64", "--emb_dim", str(EMB),
                    "--kinds", "both,neither"], cwd=ROOT, check=True, capture_output=True)
    return root


@pytest.mark.parametrize("model, floor", [("butd", 0.75), ("film", 0.62)])
def test_train_and_evaluate_from_the_command_line_learn_well_beyond_chance(learnable, model, floor, tmp_path):
    root = learnable
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "train.py", "--dataset", "nlvr2", "--data", root, "--glove",
         os.path.join(root, "GloVe", f"glove.6B.{EMB}d.txt"), "--emb_dim", str(EMB), "--run_name", "learn",
         "--model", model, "--accelerator", "cpu", "--hidden", "128", "--bsz", "32", "--epochs", "8", "--lr", "0.005",
         "--answer_dropout", "0.2", "--checkpoint", str(tmp_path)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    best = re.search(r"^ +best +epoch .* (\S+\.ckpt)$", run.stdout + run.stderr, re.M).group(1)   # train.py's summary
    csv = str(tmp_path / "dev.csv")
    done = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", best, "--split", "dev", "--out", csv],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = printed_metrics(done.stdout)
    assert printed == nlvr2_metrics(csv, os.path.join(root, "NLVR2-Questions", "dev.json"))
    accuracy = float(printed[0].split("=")[1])
    baseline = float(re.search(r"answer-prior baseline .*: ([\d.]+)%", done.stdout).group(1)) / 100
    assert accuracy >= floor and accuracy > baseline + 0.1, (accuracy, baseline)

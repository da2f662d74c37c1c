"""VQA v2: answer normalisation, soft targets and the official accuracy against their sources (the
transcriptions in butd.reference.vqa_eval) and against hand computation; the loss; reading the
official files, with every kind of bad input; the submission; the real samples (3 questions, 10
COCO rows) through convert, cache, train and evaluate; and a generated sample through the command
lines, where BUTD must beat the best answer prior by a wide margin."""
import copy
import json
import os
import re
import shutil
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from butd import questions
from butd.evaluation.predict import submission
from butd.reference import vqa_eval as ref
from butd.synthetic.vqa2 import generate
from butd.tasks import get_task
from butd.tasks import vqa_answers as va
from butd.tasks.base import RawQuestions
from butd.tasks.json_stream import QuestionFileError, key_array_items
from butd.tasks.losses import dense_targets
from butd.tasks.vqa2 import ANNOTATION_FILE, QUESTION_FILE, HumanAnswers, official_accuracy

from helpers import REAL_GLOVE, REAL_TSV, REAL_VQA2_ANNOTATIONS, REAL_VQA2_QUESTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from converters import questions_to_shards, tsv_to_zarr  # noqa: E402

import evaluate  # noqa: E402  (the command lines live at the repository root)
import train  # noqa: E402

TASK = get_task("vqa2")
EMB = 32
FAST = ["--accelerator", "cpu", "--hidden", "128", "--bsz", "32", "--emb_dim", str(EMB), "--num_workers", "0",
        "--log_every", "5"]

# Answers chosen to exercise every rule: punctuation next to a space or not, digit,digit, periods
# before digits or not, number words, articles, contractions (and the capitalised keys that never
# match), case, stray whitespace.
TRICKY = ["Yes", "yes.", "yes!", "yes", " yes", "no", "No.", "two", "Two", "2", "2.5", "1,000", "1000",
          "a dog", "the Dog", "dogs", "t-shirt", "t - shirt", "dont know", "Im", "it's", "its", "none",
          "zero", "0", "red/white", "red / white", "(left)", "ten.", "10", "x-ray.", "a.m.", "3.", "3",
          "hes", "he's", "oclock", "o'clock", "a/c", "tennis racket", "tennis-racket", "one. two. three",
          "..." * 15, "@home", "", "yes\n", "yes\tno"]


def answer_dicts(answers):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def real_annotations():
    with open(REAL_VQA2_ANNOTATIONS) as f:
        return json.load(f)["annotations"]


# ---- normalisation and soft scores against the references ---------------------------------------

@pytest.mark.parametrize("text", TRICKY)
def test_normalisation_equals_the_references(text):
    assert va.process_punctuation(text) == ref.process_punctuation(text)
    assert va.process_digit_article(text) == ref.process_digit_article(text)
    assert va.normalize_answer(text) == ref.preprocess_answer(text)


def test_normalisation_by_hand():
    assert va.normalize_answer("Two dogs.") == "2 dogs"
    assert va.normalize_answer("1,000") == "1000"          # digit,digit deletes every mark
    assert va.normalize_answer("2.5") == "2.5"             # a period before a digit stays
    assert va.normalize_answer("t-shirt") == "t shirt"     # a mark not touching a space becomes one
    assert va.normalize_answer("t - shirt") == "t shirt"   # one touching a space is deleted
    assert va.normalize_answer("the Dog") == "dog"
    assert va.normalize_answer("dont know") == "don't know"
    assert va.normalize_answer("Im") == "im"               # capitalised contraction keys never match
    assert va.normalize_answer("none") == "0"
    assert va.process_punctuation("yes!") == "yes "        # kept by the official rule, spaces and all
    # re.UNICODE passed as sub()'s count: at most 32 periods go
    assert va.process_punctuation("." * 40) == "." * 8


def test_soft_scores_equal_get_score_and_the_leave_one_out_accuracy():
    for n in range(11):
        assert va.soft_score(n) == ref.get_score(n)
        assert va.soft_score(n) == pytest.approx(float(va.leave_one_out_accuracy(n)))


def test_soft_targets_of_the_three_real_questions():
    annotations = real_annotations()
    mcas = [va.majority_answer([a["answer"] for a in e["answers"]]) for e in annotations]
    assert mcas == ["net", "pitcher", "orange"]             # the README's multiple_choice_answer for 458752000
    ans2label, label2ans = va.candidate_answers(mcas, min_count=1)
    assert label2ans == ["net", "pitcher", "orange"]
    got = [va.soft_targets([a["answer"] for a in e["answers"]], ans2label) for e in annotations]
    # 458752000: net x6, netting, mesh, pitcher, orange; 458752001: pitcher x9, catcher; 458752002: orange x10
    assert got == [([0, 1, 2], [1.0, 0.3, 0.3]), ([1], [1.0]), ([2], [1.0])]
    reference = ref.compute_target([dict(e, image_id=458752) for e in annotations], ans2label)
    assert [(t["labels"], t["scores"]) for t in reference] == got


def test_soft_targets_count_normalised_human_answers_unlike_the_reference():
    """hengyuan-hu#40: the references count raw answers, so "Yes" and "two" earn nothing."""
    ans2label = {"yes": 0, "2": 1}
    answers = ["Yes"] * 3 + ["yes"] * 2 + ["two"] * 3 + ["2", "yes."]
    assert va.soft_targets(answers, ans2label) == ([0, 1], [1.0, 1.0])
    raw = ref.compute_target([{"question_id": 1, "image_id": 1, "answers": answer_dicts(answers)}], ans2label)[0]
    assert (raw["labels"], raw["scores"]) == ([0, 1], [0.6, 0.3])
    normalised = [{"answer": ref.preprocess_answer(a)} for a in answers]
    same = ref.compute_target([{"question_id": 1, "image_id": 1, "answers": normalised}], ans2label)[0]
    assert (same["labels"], same["scores"]) == va.soft_targets(answers, ans2label)


def test_candidates_equal_filter_answers_in_order():
    rng = np.random.default_rng(0)
    mcas = [TRICKY[i] for i in rng.integers(0, len(TRICKY), 400)]
    entries = [{"question_id": i, "multiple_choice_answer": a} for i, a in enumerate(mcas)]
    occurrence = ref.filter_answers(entries, min_occurrences=9)
    assert va.candidate_answers(mcas, min_count=9) == ref.create_labels(occurrence)


# ---- the official accuracy ---------------------------------------------------------------------

DISTINCT = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "gray"]
# (human answers, prediction, pre-2021 accuracy worked by hand, current-master accuracy)
HAND = [
    (DISTINCT, "red", 0.3, 0.3),          # 1 match: 9 subsets keep it (1/3), 1 drops it (0)
    (DISTINCT, "purple", 0.0, 0.0),
    (["2"] * 2 + ["3"] * 8, "2", 0.6, 0.6),   # (2 x 1/3 + 8 x 2/3) / 10
    (["2"] * 2 + ["3"] * 8, "3", 1.0, 1.0),
    (["yes"] * 3 + ["no"] * 7, "yes", 0.9, 0.9),   # (3 x 2/3 + 7 x 1) / 10
    (["two"] * 7 + ["2"] * 3, "2", 0.9, 1.0),      # pre-2021: human answers get punctuation only
    (["two"] * 7 + ["2"] * 3, "two", 0.9, 1.0),    # the prediction is always normalised
    (["two"] * 10, "2", 0.0, 0.0),                 # identical human answers are never touched
    (["Yes"] * 10, "yes", 0.0, 0.0),
    (["Yes"] * 10, "Yes", 0.0, 1.0),
    (["2"] * 10, "Two", 1.0, 0.0),
    (["yes!"] * 7 + ["yes"] * 3, "yes", 0.9, 1.0),  # "yes!" -> "yes " under the punctuation rule
    (["yes."] * 4 + ["yes"] * 6, "yes", 1.0, 1.0),
    (["1,000"] * 5 + ["1000"] * 5, "1000", 1.0, 1.0),
    (["2"] * 10, "  The Two\n", 1.0, 0.0),
    ([" yes"] + ["yes"] * 9, "yes", 1.0, 1.0),
]


@pytest.mark.parametrize("human, predicted, pre2021, master", HAND)
def test_vqa_accuracy_equals_hand_computation_and_the_official_code(human, predicted, pre2021, master):
    assert va.vqa_accuracy(predicted, human) == pytest.approx(pre2021)
    assert ref.evaluate_question_pre2021(answer_dicts(human), predicted) == pytest.approx(pre2021)
    assert ref.evaluate_question_master(answer_dicts(human), predicted) == pytest.approx(master)


def test_vqa_accuracy_equals_the_official_code_on_random_cases():
    rng = np.random.default_rng(1)
    for _ in range(500):
        pool = [TRICKY[i] for i in rng.integers(0, len(TRICKY), int(rng.integers(1, 5)))]
        human = [pool[i] for i in rng.integers(0, len(pool), 10)]
        predicted = human[0] if rng.random() < 0.5 else TRICKY[rng.integers(len(TRICKY))]
        assert va.vqa_accuracy(predicted, human) == pytest.approx(
            ref.evaluate_question_pre2021(answer_dicts(human), predicted), abs=1e-12)


def test_the_cached_matches_give_the_official_accuracy_of_every_candidate():
    """What the cache stores per question (candidates officially matched, and how often) scores
    every predicted candidate exactly as the official rule scores its answer string."""
    rng = np.random.default_rng(2)
    label2ans = list(dict.fromkeys(va.normalize_answer(a) for a in TRICKY))
    ans2label = {a: i for i, a in enumerate(label2ans)}
    answers = [[TRICKY[i] for i in rng.integers(0, len(TRICKY), 10)] for _ in range(60)] + [h for h, *_ in HAND]
    raws = RawQuestions("x", [str(i) for i in range(len(answers))], [["1"] * len(answers)], [""] * len(answers),
                        [HumanAnswers(va.majority_answer(h), tuple(h)) for h in answers], {})
    t = TASK.targets(raws, ans2label)
    for label in range(len(label2ans)):
        got = official_accuracy(np.full(len(answers), label), t["eval_labels"], t["eval_matches"])
        want = [va.vqa_accuracy(label2ans[label], h) for h in answers]
        np.testing.assert_allclose(got, want, atol=1e-12)


# ---- the loss ----------------------------------------------------------------------------------

def test_loss_is_per_example_bce_and_the_score_the_soft_score_of_the_argmax():
    """The modular branch's per_example_bce and compute_accuracy_with_logits, on the dense target."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g)
    labels = torch.tensor([[3, 0, -1], [11, -1, -1], [-1, -1, -1], [0, 5, 7], [2, -1, -1]])
    scores = torch.tensor([[1.0, 0.3, 0], [0.6, 0, 0], [0, 0, 0], [0.9, 0.3, 0.3], [1.0, 0, 0]])
    target = torch.zeros(5, 12)
    for i in range(5):
        for lab, s in zip(labels[i].tolist(), scores[i].tolist()):
            if lab >= 0:
                target[i, lab] = s
    torch.testing.assert_close(dense_targets(labels, scores, 12, "cpu"), target)
    batch = {"answer_labels": labels, "answer_scores": scores, "answered": torch.ones(5, dtype=torch.bool)}
    losses, score, weight = TASK.loss_and_score(logits, batch)
    per_example_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) * target.size(1)
    torch.testing.assert_close(losses.mean(), per_example_bce)
    one_hots = torch.zeros_like(target).scatter_(1, logits.argmax(1).view(-1, 1), 1)
    torch.testing.assert_close(score.sum(), (one_hots * target).sum())
    assert weight.tolist() == [1.0] * 5


# ---- reading the official files ------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 3, 64, 1 << 23])
def test_key_array_items_streams_the_elements_of_one_key(tmp_path, monkeypatch, block):
    import butd.tasks.json_stream as js
    monkeypatch.setattr(js, "_BLOCK", block)
    with open(REAL_VQA2_QUESTIONS) as f:
        doc = json.load(f)
    doc["z"] = 1500.0     # a bare number the buffer may cut after its '.'
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc, indent=1))
    assert list(key_array_items(str(path), "questions")) == doc["questions"]
    assert list(key_array_items(REAL_VQA2_ANNOTATIONS, "annotations")) == real_annotations()
    path.write_text('{"questions": [1, 2]}')
    assert list(key_array_items(str(path), "questions")) == [1, 2]
    for text, message in [('{"questions": {"a": 1}}', "must be an array"), ('{"info": 1}', "no top-level"),
                          ('{"questions": [1 2]}', "expected ','"), ('{"questions": [1]} x', "after the closing")]:
        path.write_text(text)
        with pytest.raises(QuestionFileError, match=message):
            list(key_array_items(str(path), "questions"))


def test_image_ids_match_in_both_naming_schemes():
    assert TASK.image_key("COCO_train2014_000000458752") == TASK.image_key("458752") == "458752"
    assert TASK.image_key("COCO_test2015_000000000001") == "1"
    order = TASK.question_order(np.array(["458752001", "1000", "458752000"]))
    assert order.tolist() == [1, 2, 0]           # by number, not as strings


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A generated sample (feature rows named COCO_<split>_%012d) and its caches, by the command lines."""
    root = str(tmp_path_factory.mktemp("vqa2_sample"))
    paths = generate(root, seed=5, train_images=300, val_images=40, test_images=10, questions_per_image=5,
                     feature_dim=64, emb_dim=EMB)
    data = ["--dataset", "vqa2", "--data", root]
    assert tsv_to_zarr.main(data + ["--workers", "1", "--quiet"]) == 0
    questions_to_shards.main(data + ["--glove", paths["glove"], "--emb_dim", str(EMB), "--workers", "1"])
    return root, paths


def _inputs(root, qdir, **options):
    return questions.Inputs("vqa2", qdir, os.path.join(root, "GloVe", f"glove.6B.{EMB}d.txt"),
                            os.path.join(root, "VQA2-Cache"), emb_dim=EMB, **options)


def test_the_cache_holds_every_question_with_compact_targets(sample):
    root, paths = sample
    qdir = os.path.join(root, "VQA2-Cache", "questions")
    manifest = questions.read_manifest(qdir)
    assert manifest["summary"]["questions"] == {"train2014": 1500, "val2014": 200, "test-dev2015": 25,
                                                "test2015": 50}
    assert manifest["summary"]["max_length"] == 14
    val = questions.load_split(qdir, "val2014")
    assert val.targets["answer_labels"].shape == (200, 10) and val.targets["answer_scores"].dtype == np.float32
    assert val.targets["answered"].all() and set(val.types["answer_type"]) == {"yes/no", "number", "other"}
    test = questions.load_split(qdir, "test2015")
    assert not test.targets["answered"].any() and (test.targets["answer_labels"] == -1).all()
    # soft targets as the references compute them from the normalised human answers
    _, label2ans = questions.load_answers(qdir)
    ans2label = {a: i for i, a in enumerate(label2ans)}
    with open(os.path.join(paths["questions"], ANNOTATION_FILE.format(split="val2014"))) as f:
        annotations = {str(a["question_id"]): a for a in json.load(f)["annotations"]}
    for i in range(0, 200, 17):
        entry = copy.deepcopy(annotations[val.question_ids[i]])
        for a in entry["answers"]:
            a["answer"] = ref.preprocess_answer(a["answer"])
        want = ref.compute_target([entry], ans2label)[0]
        n = len(want["labels"])
        assert val.targets["answer_labels"][i, :n].tolist() == want["labels"]
        np.testing.assert_allclose(val.targets["answer_scores"][i, :n], want["scores"], rtol=1e-6)
        assert (val.targets["answer_labels"][i, n:] == -1).all()
    # the candidates are the references' (filter_answers over train + val, min 9)
    entries = []
    for split in ("train2014", "val2014"):
        with open(os.path.join(paths["questions"], ANNOTATION_FILE.format(split=split))) as f:
            entries += json.load(f)["annotations"]
    assert label2ans == ref.create_labels(ref.filter_answers(entries, 9))[1]


def test_the_candidate_threshold_is_a_flag_for_small_subsets(sample, tmp_path):
    root, paths = sample
    qdir = os.path.join(root, "VQA2-Cache", "questions")
    default = len(questions.load_answers(qdir)[1])
    out = str(tmp_path / "questions")
    questions_to_shards.main(["--dataset", "vqa2", "--data", root, "--glove", paths["glove"], "--emb_dim", str(EMB),
                              "--workers", "1", "--min_answer_count", "60", "--out", out])
    kept = questions.load_answers(out)[1]
    mca = Counter(va.normalize_answer(a["multiple_choice_answer"]) for split in ("train2014", "val2014") for a in
                  json.load(open(os.path.join(root, "VQA2-Questions", f"v2_mscoco_{split}_annotations.json")))["annotations"])
    assert 0 < len(kept) < default and set(kept) == {a for a, n in mca.items() if n >= 60}
    # the setting is part of the cache's identity: the default cache is not taken for it
    assert questions.read_manifest(out)["fingerprint"] != questions.read_manifest(qdir)["fingerprint"]


def test_integer_image_ids_of_anderson_features_resolve_and_one_trainval_store_serves_both_splits(tmp_path):
    """The README's recipe for Anderson's features: 6 columns, integer ids, train and val in one
    store (converted from several files) that val2014.zarr links to."""
    root = str(tmp_path)
    generate(root, seed=6, train_images=30, val_images=6, test_images=4, questions_per_image=5, feature_dim=16,
             emb_dim=EMB, layout="anderson")
    qdir, features = os.path.join(root, "VQA2-Questions"), os.path.join(root, "VQA2-Features")
    assert tsv_to_zarr.main(["--dataset", "vqa2", "--data", root, "--workers", "1", "--quiet"]) == 0
    summary = questions.build(_inputs(root, qdir), str(tmp_path / "q"), workers=1, progress=False)
    assert summary["questions"]["train2014"] == 150 and not any(summary["dropped"].values())

    cache = tmp_path / "trainval"
    cache.mkdir()
    for files, store in [(["train2014_obj36.tsv", "val2014_obj36.tsv"], "train2014"),
                         (["test2015_obj36.tsv"], "test2015")]:
        assert tsv_to_zarr.main([os.path.join(features, f) for f in files] +
                                ["--out", str(cache / f"{store}.zarr"), "--workers", "1", "--quiet"]) == 0
    os.symlink("train2014.zarr", cache / "val2014.zarr")
    inputs = questions.Inputs("vqa2", qdir, os.path.join(root, "GloVe", f"glove.6B.{EMB}d.txt"), str(cache),
                              emb_dim=EMB)
    summary = questions.build(inputs, str(cache / "questions"), workers=1, progress=False)
    assert summary["questions"] == {"train2014": 150, "val2014": 30, "test-dev2015": 10, "test2015": 20}
    assert not any(summary["dropped"].values())
    val = questions.load_split(str(cache / "questions"), "val2014")
    assert val.image_rows.min() >= 30          # val's images follow train's in the joined store


def _edit(path, key, change):
    with open(path) as f:
        doc = json.load(f)
    change(doc[key])
    with open(path, "w") as f:
        json.dump(doc, f)


def _set_answers(value):
    return lambda anns: anns[3].__setitem__("answers", value)


QUESTIONS_TRAIN = QUESTION_FILE.format(split="train2014")
ANNOTATIONS_TRAIN = ANNOTATION_FILE.format(split="train2014")
BAD = {
    "annotation without its question": (QUESTIONS_TRAIN, "questions", lambda qs: qs.pop(3),
                                        ANNOTATIONS_TRAIN, r"question (\d+): this annotation's question is not in"),
    "question without its annotation": (ANNOTATIONS_TRAIN, "annotations", lambda anns: anns.pop(3),
                                        QUESTIONS_TRAIN, r"question (\d+) has no annotation in"),
    "question id repeated": (QUESTIONS_TRAIN, "questions", lambda qs: qs.append(dict(qs[3])),
                             QUESTIONS_TRAIN, r"question (\d+) is listed twice"),
    "annotation repeated": (ANNOTATIONS_TRAIN, "annotations", lambda anns: anns.append(anns[3]),
                            ANNOTATIONS_TRAIN, r"question (\d+): this annotation's question is annotated twice"),
    "answers not a list": (ANNOTATIONS_TRAIN, "annotations", _set_answers("yes"),
                           ANNOTATIONS_TRAIN, r"question (\d+): malformed 'answers'"),
    "nine answers": (ANNOTATIONS_TRAIN, "annotations", _set_answers(answer_dicts(["yes"] * 9)),
                     ANNOTATIONS_TRAIN, r"question (\d+): malformed 'answers'"),
    "an answer not a string": (ANNOTATIONS_TRAIN, "annotations", _set_answers(answer_dicts([2] * 10)),
                               ANNOTATIONS_TRAIN, r"question (\d+): malformed 'answers'"),
    "image in no store": (QUESTIONS_TRAIN, "questions", lambda qs: qs[3].__setitem__("image_id", 999999999),
                          QUESTIONS_TRAIN, r"1 train2014 question\(s\) ask about images that have no row.*"
                                           r"e\.g\. (\d+)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_file_and_question_and_leaves_no_cache(sample, tmp_path, case):
    root, paths = sample
    edited, key, change, named, pattern = BAD[case]
    qdir = str(tmp_path / "questions")
    shutil.copytree(paths["questions"], qdir)
    with open(os.path.join(qdir, edited)) as f:
        fourth = json.load(f)[key][3]["question_id"]
    _edit(os.path.join(qdir, edited), key, change)
    out = str(tmp_path / "cache")
    with pytest.raises(QuestionFileError) as error:
        questions.build(_inputs(root, qdir), out, workers=1, progress=False)
    message = str(error.value)
    assert message.startswith(os.path.join(qdir, named)), message
    match = re.search(pattern, message)
    assert match and int(match.group(1)) == fourth, message
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_drop_missing_leaves_out_a_question_without_features_and_the_submission_keeps_it(sample, tmp_path):
    root, paths = sample
    qdir = str(tmp_path / "questions")
    shutil.copytree(paths["questions"], qdir)
    name = QUESTION_FILE.format(split="test-dev2015")
    with open(os.path.join(qdir, name)) as f:
        lost = json.load(f)["questions"][3]["question_id"]
    _edit(os.path.join(qdir, name), "questions", lambda qs: qs[3].__setitem__("image_id", 999999999))
    # words only test questions use stay out of the vocabulary (the modular branch's: train + val)
    for split, word in (("test2015", "xylophone"), ("val2014", "zeppelin")):
        _edit(os.path.join(qdir, QUESTION_FILE.format(split=split)), "questions",
              lambda qs, word=word: qs[0].__setitem__("question", f"Is there a {word}?"))
    summary = questions.build(_inputs(root, qdir, drop_missing=True), str(tmp_path / "cache"), workers=1,
                              progress=False)
    assert summary["dropped"]["test-dev2015"] == 1
    words = questions.load_vocab(str(tmp_path / "cache")).word2idx
    assert "zeppelin" in words and "xylophone" not in words
    arrays = questions.load_split(str(tmp_path / "cache"), "test-dev2015")
    assert str(lost) not in arrays.question_ids.tolist()
    _, label2ans = questions.load_answers(str(tmp_path / "cache"))
    out = str(tmp_path / "submission.json")
    ids, answers = submission(TASK, arrays, np.zeros(len(arrays), dtype=np.int64), label2ans, qdir, "test-dev2015",
                              dropped=1)
    TASK.write_predictions(out, ids, answers)
    with open(out) as f:
        written = json.load(f)
    with open(os.path.join(qdir, name)) as f:
        every = [q["question_id"] for q in json.load(f)["questions"]]
    assert len(written) == len(every) == 25
    assert [e["question_id"] for e in written] == every
    assert all(isinstance(e["question_id"], int) and e["answer"] == label2ans[0] for e in written)


# ---- the real samples through convert, cache, train and evaluate -------------------------------------

def _real_layout(root):
    """The 10 real COCO rows as the three feature files (7 train, 3 val, the same 3 as test), and
    the real question and annotation files' format, their three questions asked about each image."""
    features, qdir = os.path.join(root, "features"), os.path.join(root, "questions")
    os.makedirs(features)
    os.makedirs(qdir)
    with open(REAL_TSV) as f:
        lines = f.readlines()
    parts = {"train2014": lines[:7], "val2014": lines[7:], "test2015": lines[7:]}
    for store, rows in parts.items():
        with open(os.path.join(features, f"{store}_obj36.tsv"), "w") as f:
            f.writelines(rows)
    with open(REAL_VQA2_QUESTIONS) as f:
        question_doc = json.load(f)
    with open(REAL_VQA2_ANNOTATIONS) as f:
        annotation_doc = json.load(f)
    for split, rows in [("train2014", parts["train2014"]), ("val2014", parts["val2014"]),
                        ("test-dev2015", parts["test2015"][:2]), ("test2015", parts["test2015"])]:
        image_ids = [int(TASK.image_key(line.split("\t", 1)[0])) for line in rows]
        qs, anns = [], []
        for image in image_ids:
            for q, a in zip(question_doc["questions"], annotation_doc["annotations"]):
                qid = image * 1000 + q["question_id"] % 1000
                qs.append(dict(q, image_id=image, question_id=qid))
                anns.append(dict(a, question_id=qid))
        with open(os.path.join(qdir, QUESTION_FILE.format(split=split)), "w") as f:
            json.dump(dict(question_doc, data_subtype=split, questions=qs), f)
        if split in ("train2014", "val2014"):
            with open(os.path.join(qdir, ANNOTATION_FILE.format(split=split)), "w") as f:
                json.dump(dict(annotation_doc, data_subtype=split, annotations=anns), f)
    return features, qdir


def test_the_real_rows_and_question_format_go_through_convert_cache_train_and_evaluate(tmp_path, one_thread, capsys):
    features, qdir = _real_layout(str(tmp_path))
    cache, ckpt = str(tmp_path / "cache"), str(tmp_path / "ckpt")
    assert tsv_to_zarr.main(["--dataset", "vqa2", "--features", features, "--cache", cache, "--workers", "1",
                             "--quiet"]) == 0
    data = ["--dataset", "vqa2", "--vqa2_questions", qdir, "--vqa2_features", features, "--vqa2_cache", cache,
            "--glove", REAL_GLOVE]
    _, checkpoints = train.main(["--run_name", "real", *data, "--checkpoint", ckpt, "--accelerator", "cpu",
                                 "--hidden", "16", "--bsz", "8", "--epochs", "1", "--num_workers", "0"])
    manifest = questions.read_manifest(os.path.join(cache, "questions"))
    assert manifest["summary"]["questions"] == {"train2014": 21, "val2014": 9, "test-dev2015": 6, "test2015": 9}
    # net, pitcher and orange are each the answer of 10 train + val questions (>= 9)
    assert manifest["summary"]["num_answers"] == 3

    out = str(tmp_path / "val.json")
    scores = evaluate.main(["--checkpoint", checkpoints.best_model_path, "--split", "val2014", "--out", out])
    assert scores["overall"]["count"] == 9 and f"{100 * scores['overall']['accuracy']:.2f}%" in capsys.readouterr().out
    _assert_the_official_rule_on_the_file(out, os.path.join(qdir, ANNOTATION_FILE.format(split="val2014")), scores)
    for split, n in (("test-dev2015", 6), ("test2015", 9)):
        out = str(tmp_path / f"{split}.json")
        evaluate.main(["--checkpoint", checkpoints.best_model_path, "--split", split, "--out", out])
        with open(out) as f:
            submitted = sorted(e["question_id"] for e in json.load(f))
        asked = key_array_items(os.path.join(qdir, QUESTION_FILE.format(split=split)), "questions")
        assert len(submitted) == n and submitted == sorted(q["question_id"] for q in asked)


def _assert_the_official_rule_on_the_file(predictions_file, annotations_file, scores):
    """The printed accuracy is the official (pre-2021) rule applied to the written predictions."""
    with open(predictions_file) as f:
        predicted = {e["question_id"]: e["answer"] for e in json.load(f)}
    with open(annotations_file) as f:
        annotations = json.load(f)["annotations"]
    assert set(predicted) == {a["question_id"] for a in annotations}
    official = [ref.evaluate_question_pre2021(a["answers"], predicted[a["question_id"]]) for a in annotations]
    assert scores["overall"]["accuracy"] == pytest.approx(np.mean(official), abs=1e-9)
    for answer_type, entry in scores["answer_type"].items():
        mine = [s for s, a in zip(official, annotations) if a.get("answer_type") == answer_type]
        assert entry["count"] == len(mine)
        if mine:
            assert entry["accuracy"] == pytest.approx(np.mean(mine), abs=1e-9)


# ---- a generated sample through the command lines -------------------------------------------------

def _train_and_evaluate(sample, model, epochs, tmp_path):
    root, paths = sample
    ckpt = str(tmp_path / "ckpt")
    _, checkpoints = train.main(["--run_name", "e2e", "--dataset", "vqa2", "--data", root, "--glove", paths["glove"],
                                 "--checkpoint", ckpt, "--model", model, "--epochs", str(epochs), "--lr", "0.01",
                                 "--answer_dropout", "0.2", *FAST])
    out = str(tmp_path / "val.json")
    scores = evaluate.main(["--checkpoint", checkpoints.best_model_path, "--split", "val2014", "--out", out])
    _assert_the_official_rule_on_the_file(
        out, os.path.join(paths["questions"], ANNOTATION_FILE.format(split="val2014")), scores)
    return scores


def test_butd_trained_from_the_command_line_beats_the_best_answer_prior_by_far(sample, one_thread, tmp_path, capsys):
    scores = _train_and_evaluate(sample, "butd", 8, tmp_path)
    printed = capsys.readouterr().out
    assert "answer-prior baseline" in printed and "yes/no" in printed and "how many" in printed
    assert scores["overall"]["accuracy"] > scores["baseline_score"] + 0.2, scores
    # the image matters for every answer type, not only for yes/no
    assert scores["answer_type"]["other"]["accuracy"] > 0.3, scores["answer_type"]


def test_film_trains_and_beats_the_best_answer_prior(sample, one_thread, tmp_path):
    scores = _train_and_evaluate(sample, "film", 3, tmp_path)
    assert scores["overall"]["accuracy"] > scores["baseline_score"] + 0.05, scores


@pytest.mark.slow
def test_film_learns_to_read_the_image(sample, one_thread, tmp_path):
    """FiLM's averaged boxes take ~12 epochs on this sample before the image starts to count."""
    scores = _train_and_evaluate(sample, "film", 30, tmp_path)
    assert scores["overall"]["accuracy"] > scores["baseline_score"] + 0.2, scores

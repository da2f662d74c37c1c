"""Scoring against a hand computation, the submission format, and the plots; evaluate.py refusing a
question cache whose vocabularies are not the checkpoint's, and a GQA submission that answers every
question of the file the server scores (questions the cache left out included)."""
import json
import os
import shutil

import numpy as np
import pytest

from butd import questions
from butd.evaluation.plots import plot_training_curves, training_curve_panels
from butd.tasks.gqa import GROUPS, predictions, score
from butd.tasks.scores import format_table

import evaluate
import train
from helpers import SMALL_FLAGS, build_questions, cli_run, copy_stores, one_line_error

# Eight questions worked by hand. Answer labels: 0 yes, 1 no, 2 red, 3 cat.
#  i  structural semantic  gold  predicted  correct
#  0  verify     obj       0     0          1
#  1  verify     obj       1     0          0
#  2  query      attr      2     2          1
#  3  query      cat       3     2          0
#  4  query      attr      2     2          1
#  5  choose     attr      2     2          1
#  6  logical    obj       1     1          1
#  7  compare    attr     -1     0          (no gold answer: never scored)
STRUCTURAL = ["verify", "verify", "query", "query", "query", "choose", "logical", "compare"]
SEMANTIC = ["obj", "obj", "attr", "cat", "attr", "attr", "obj", "attr"]
GOLD = np.array([0, 1, 2, 3, 2, 2, 1, -1])
PRED = np.array([0, 0, 2, 2, 2, 2, 1, 0])


def test_scores_equal_hand_computation():
    s = score(PRED, GOLD, STRUCTURAL, SEMANTIC)
    assert s["overall"] == {"accuracy": 5 / 7, "count": 7}
    # open = query (i 2,3,4): 2/3; binary = the rest with gold (i 0,1,5,6): 3/4
    assert s["answer_type"]["open"] == {"accuracy": 2 / 3, "count": 3}
    assert s["answer_type"]["binary"] == {"accuracy": 3 / 4, "count": 4}
    assert s["structural"]["verify"] == {"accuracy": 1 / 2, "count": 2}
    assert s["structural"]["query"] == {"accuracy": 2 / 3, "count": 3}
    assert s["structural"]["choose"] == {"accuracy": 1.0, "count": 1}
    assert s["structural"]["logical"] == {"accuracy": 1.0, "count": 1}
    assert s["structural"]["compare"] == {"accuracy": None, "count": 0}
    assert s["semantic"]["obj"] == {"accuracy": 2 / 3, "count": 3}
    assert s["semantic"]["attr"] == {"accuracy": 1.0, "count": 3}
    assert s["semantic"]["cat"] == {"accuracy": 0.0, "count": 1}
    assert s["semantic"]["rel"]["count"] == 0
    table = format_table(s, GROUPS)
    assert "71.43%" in table and "compare" in table


def test_unknown_types_are_reported_not_dropped():
    s = score(np.array([1, 1]), np.array([1, 0]), ["query", "weird"], ["attr", "odd"])
    assert s["structural"]["weird"] == {"accuracy": 0.0, "count": 1}
    assert s["semantic"]["odd"]["count"] == 1


def test_split_without_answers_scores_nothing():
    s = score(np.array([0, 1]), np.array([-1, -1]), ["", ""], ["", ""])
    assert s["overall"] == {"accuracy": None, "count": 0}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="lengths differ"):
        score(PRED, GOLD[:3], STRUCTURAL, SEMANTIC)


def test_predictions_submission_format():
    out = predictions(["q1", "q2"], ["no", "yes"])
    assert out == [{"questionId": "q1", "prediction": "no"}, {"questionId": "q2", "prediction": "yes"}]
    json.dumps(out)


def test_training_curves_png(tmp_path):
    files = []
    for run, shift in (("a", 0.0), ("b", 0.1)):
        path = tmp_path / f"{run}-metrics.json"
        path.write_text(json.dumps({"train_epoch_acc": [0.3 + shift, 0.5 + shift], "val_acc": [0.25, 0.45],
                                    "train_epoch_loss": [2.0, 1.5], "val_loss": [2.1, 1.7]}))
        files.append(str(path))
    out = plot_training_curves(files, str(tmp_path / "curves.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out) > 5000


def test_training_curves_without_metrics_is_an_error(tmp_path):
    path = tmp_path / "empty-metrics.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="no per-epoch"):
        plot_training_curves([str(path)], str(tmp_path / "x.png"))


def test_training_curves_number_epochs_as_checkpoints_and_pair_a_runs_lines(tmp_path):
    files = []
    for run, dataset in (("a", "vqa2"), ("b", "gqa")):
        path = tmp_path / f"{run}-metrics.json"
        path.write_text(json.dumps({"train_epoch_acc": [0.3, 0.5, 0.6], "val_acc": [0.25, 0.45, 0.5],
                                    "train_epoch_loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.4],
                                    "hyperparams": {"dataset": dataset}}))
        files.append(str(path))
    (score, _, ylabel, acc), loss = training_curve_panels(files)[0]
    assert acc["a train"][0] == [0, 1, 2]                   # epoch=2 in a checkpoint name is the third
    assert acc["a train"][2]["color"] == acc["a val"][2]["color"] != acc["b val"][2]["color"]
    assert acc["a train"][2]["linestyle"] != acc["a val"][2]["linestyle"]
    assert "VQA score" in ylabel and "exact match" in ylabel
    assert "GQA, VQA2" in training_curve_panels(files)[1]


def test_evaluate_and_resume_refuse_a_cache_rebuilt_from_reordered_questions(small_run, tmp_path, capsys):
    root, data, ckpt = small_run
    glove = data[3]
    assert evaluate.main(["--checkpoint", ckpt, "--out", str(tmp_path / "p.json")])["overall"]["count"] == 35
    # The same 95 train questions, their JSON keys in reverse order; the cache rebuilt from them.
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    path = qdir / "train_balanced_questions.json"
    with open(path) as f:
        items = list(json.load(f).items())
    assert len(items) == 95
    with open(path, "w") as f:
        json.dump(dict(reversed(items)), f)
    cache = copy_stores(root, tmp_path / "cache")
    build_questions(qdir, glove, cache)
    old = questions.read_manifest(os.path.join(root, "GQA-Cache", "questions"))["summary"]["vocabulary"]
    new = questions.read_manifest(os.path.join(cache, "questions"))["summary"]["vocabulary"]
    assert (new["ntoken"], new["num_answers"]) == (old["ntoken"], old["num_answers"])   # same counts,
    assert new["words"] != old["words"] and new["answers"] != old["answers"]            # other order

    argv = ["--checkpoint", ckpt, "--cache", cache, "--out", str(tmp_path / "p2.json")]
    with pytest.raises(questions.StaleCacheError, match=r"words \(the same \d+, in another order.*answers"):
        evaluate.main(argv)
    assert not os.path.exists(tmp_path / "p2.json")
    status, err = cli_run(evaluate.main, argv, capsys)
    assert status == 1 and "trained with" in one_line_error(err)
    # resuming on that cache is refused the same way, before any training
    with pytest.raises(questions.StaleCacheError, match="words"):
        train.main(["--run_name", "t", *data, "--gqa_questions", str(qdir), "--gqa_cache", cache,
                    "--checkpoint", str(tmp_path / "ck"), *SMALL_FLAGS, "--epochs", "3", "--resume", ckpt])


def test_a_checkpoint_copied_out_of_its_run_directory_is_evaluated_with_cache(small_run, tmp_path, capsys):
    """Its config.json only says where the caches are: --cache says it instead."""
    root, _, ckpt = small_run
    copied = str(shutil.copy(ckpt, tmp_path / "best.ckpt"))
    status, err = cli_run(evaluate.main, ["--checkpoint", copied], capsys)
    assert status == 1 and one_line_error(err).endswith("run configuration is missing (train.py writes it beside "
                                                        "its checkpoints); use a checkpoint inside its run "
                                                        "directory; or name its caches with --cache")
    scores = evaluate.main(["--checkpoint", copied, "--cache", os.path.join(root, "GQA-Cache")])
    assert scores["overall"]["count"] == 35
    assert os.path.exists(tmp_path / "predictions" / "best" / "testdev-predictions.json")


def test_the_submission_split_predicts_every_question_of_the_all_questions_file(small_run, tmp_path):
    root, data, ckpt = small_run
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    with open(qdir / "test_balanced_questions.json") as f:
        balanced = json.load(f)
    every = dict(balanced)
    for k, image in enumerate(sorted({q["imageId"] for q in balanced.values()})):   # unbalanced extras
        every[f"2{k:07d}"] = {"question": "Is the zebra to the left of the giraffe?", "imageId": image}
    with open(qdir / "submission_all_questions.json", "w", encoding="utf-8-sig") as f:
        json.dump(every, f)
    cache = copy_stores(root, tmp_path / "cache")
    build_questions(qdir, data[3], cache)
    manifest = questions.read_manifest(os.path.join(cache, "questions"))
    trained_with = questions.read_manifest(os.path.join(root, "GQA-Cache", "questions"))
    assert manifest["summary"]["questions"]["submission"] == len(every) > len(balanced)
    assert manifest["summary"]["vocabulary"] == trained_with["summary"]["vocabulary"]   # words kept out
    assert trained_with["summary"]["absent"] == ["submission"]                          # optional
    out = tmp_path / "submission.json"
    scores = evaluate.main(["--checkpoint", ckpt, "--cache", cache, "--split", "submission", "--out", str(out)])
    with open(out) as f:
        predictions = json.load(f)
    assert sorted(p["questionId"] for p in predictions) == sorted(every)               # the server's KeyError
    assert scores["overall"]["count"] == 0
    with pytest.raises(FileNotFoundError, match="submission split's question file was absent"):
        evaluate.main(["--checkpoint", ckpt, "--split", "submission", "--out", str(tmp_path / "x.json")])


def test_a_question_left_out_by_drop_missing_is_still_answered_in_the_submission(small_run, tmp_path, capsys):
    root, data, ckpt = small_run
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    with open(qdir / "testdev_balanced_questions.json") as f:
        testdev = json.load(f)
    first = next(iter(testdev.values()))          # its words and answer: the vocabulary stays the same
    testdev["00000001"] = {**first, "imageId": "n999999"}            # an image the testdev store lacks
    with open(qdir / "testdev_balanced_questions.json", "w") as f:
        json.dump(testdev, f)
    cache = copy_stores(root, tmp_path / "cache")
    assert build_questions(qdir, data[3], cache, "--drop-missing")["dropped"]["testdev"] == 1
    out = tmp_path / "testdev.json"
    scores = evaluate.main(["--checkpoint", ckpt, "--cache", cache, "--out", str(out)])
    with open(out) as f:
        predictions = json.load(f)
    assert [p["questionId"] for p in predictions] == list(testdev)                   # file order, all of them
    assert scores["overall"]["count"] == len(testdev) - 1 and scores["dropped"] == 1
    assert "1 testdev question(s) left out of the cache" in capsys.readouterr().out
    # the question files moved: found again with --questions, and refused before any inference without
    moved = shutil.move(str(qdir), str(tmp_path / "moved"))
    argv = ["--checkpoint", ckpt, "--cache", cache, "--out", str(tmp_path / "again.json")]
    status, err = cli_run(evaluate.main, argv, capsys)
    assert status == 1 and "pass --questions DIR" in one_line_error(err)
    assert not os.path.exists(tmp_path / "again-scores.json")                       # refused before inference
    assert evaluate.main([*argv, "--questions", moved])["dropped"] == 1
    # a question file that changed since the cache was built is not used to fill the submission
    testdev["00000002"] = {**first, "imageId": "n999998"}
    with open(os.path.join(moved, "testdev_balanced_questions.json"), "w") as f:
        json.dump(testdev, f)
    with pytest.raises(ValueError, match="not the files the cache was built from"):
        evaluate.main([*argv, "--questions", moved])

"""Scoring against a hand computation, the submission format, and the plots."""
import json
import os

import numpy as np
import pytest

from butd.tasks.gqa import GROUPS, predictions, score
from butd.evaluation.scores import format_table
from butd.evaluation.plots import plot_training_curves, training_curve_panels

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

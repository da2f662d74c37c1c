"""NLVR2 as a task: true/false statements about a pair of images.

Files, under the modular branch's directories (``--nlvr2_questions``, ``--nlvr2_features``,
``--nlvr2_cache``):

    NLVR2-Questions/{train,dev,test1}.json   the official statements, JSON lines (lil-lab/nlvr)
    NLVR2-Features/train_obj36.tsv           LXMERT's features of the train images -> NLVR2-Cache/train.zarr
    NLVR2-Features/valid_obj36.tsv           dev images                            -> NLVR2-Cache/valid.zarr
    NLVR2-Features/test_obj36.tsv            test1 images                          -> NLVR2-Cache/test.zarr

A statement's identifier is ``<split>-<set>-<pair>-<sentence>``; its images are the identifier
without the sentence part plus ``-img0`` (left) and ``-img1`` (right), the ids in the feature TSVs
(annotated-butd's ``create_entry``). The loader joins the two images' boxes (left, then right) with
an indicator channel (0 left, 1 right) after the 6 spatial ones. As in the modular branch: the word
vocabulary comes from all three files, statements have 40 tokens, the label is 1 when ``label`` is
"True" and 0 when "False" (2-way softmax cross-entropy), training is on train and validation on dev.

The metric is lil-lab's ``nlvr2/eval/metrics.py``: accuracy, and consistency, the share of
sentences (statements with the same split, set id and sentence id) whose every image pair is
predicted right. Predictions are that script's input, a CSV of ``identifier,True|False`` lines.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from butd.tasks.answers import NO_ANSWER, majority_baseline
from butd.tasks.base import RawQuestions, Split, Task
from butd.tasks.json_stream import QuestionFileError, json_lines
from butd.tasks.scores import format_table, mean_score

QUESTION_FILE = "{split}.json"
LABELS = ("False", "True")           # label k is LABELS[k]: 1 when the statement is true
IMAGE_SUFFIXES = ("-img0", "-img1")   # left, right
IDENTIFIER_PARTS = 4                  # split, set id, pair id, sentence id


class NLVR2(Task):
    name = "nlvr2"
    title = "NLVR2"
    questions_dir = "NLVR2-Questions"
    features_dir = "NLVR2-Features"
    cache_dir = "NLVR2-Cache"
    # test1's labels are public, but a statement file without them can still be predicted
    splits = (Split("train", "train"), Split("dev", "valid"), Split("test1", "test", answers=False))
    train_split, val_split = "train", "dev"
    stores = {"train": ("train_obj36.tsv",), "valid": ("valid_obj36.tsv",), "test": ("test_obj36.tsv",)}
    max_length = 40
    images_per_question = 2
    predictions_suffix = ".csv"

    # -- questions ---------------------------------------------------------------------------------
    def question_files(self, questions_dir: str, split: str) -> list:
        self.split(split)
        return [os.path.join(questions_dir, QUESTION_FILE.format(split=split))]

    def read_split(self, questions_dir: str, split: str) -> RawQuestions:
        path, = self.question_files(questions_dir, split)
        return read_statements(path, self.split(split).answers)

    # -- answers and targets -----------------------------------------------------------------------
    def answer_vocabulary(self, raws: dict[str, RawQuestions], min_answer_count=None) -> tuple:
        """Always ``{"False": 0, "True": 1}``: the 2-way classifier's outputs."""
        return {a: k for k, a in enumerate(LABELS)}, list(LABELS)

    def targets(self, raw: RawQuestions, ans2label: dict) -> dict[str, np.ndarray]:
        """``labels`` int64 [N]: 1 true, 0 false, -1 where the file gives no label."""
        labels = [NO_ANSWER if a is None else ans2label[a] for a in raw.answers]
        return {"labels": np.array(labels, dtype=np.int64)}

    def loss_and_score(self, logits, batch):
        from butd.tasks.losses import single_label_loss  # torch, only where a loss is computed
        return single_label_loss(logits, batch["labels"])

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> dict:
        return score(predicted, questions.targets["labels"], questions.question_ids)

    def format_scores(self, scores: dict) -> str:
        table = format_table(scores, ("consistency",))
        # the official script's own lines, so that its output and ours can be compared as text
        return (f"{table}\nlil-lab nlvr2/eval/metrics.py:\naccuracy={scores['overall']['accuracy']}\n"
                f"consistency={scores['consistency']['sentences']['accuracy']}")

    def baseline(self, train, questions, label2ans: Sequence[str]) -> tuple:
        return majority_baseline(train.targets["labels"], questions.targets["labels"], label2ans, "label")

    def format_predictions(self, question_ids: Sequence[str], answers: Sequence[str]) -> str:
        """``identifier,True|False`` per statement, the CSV lil-lab's metrics script reads."""
        return "".join(f"{i},{a}\n" for i, a in zip(question_ids, answers))

    def image_files(self, image_id: str, split: str) -> tuple:
        """The release's ``<image id>.png`` (``dev-850-0-img0.png``), or a JPEG of the same name."""
        return (f"{image_id}.png", f"{image_id}.jpg")


def image_ids(identifier: str) -> tuple:
    """(left, right) image ids of a statement: ``dev-850-0-1`` -> ``dev-850-0-img0``, ``dev-850-0-img1``."""
    pair = identifier.rsplit("-", 1)[0]
    return tuple(pair + suffix for suffix in IMAGE_SUFFIXES)


def sentence_group(identifier: str) -> str:
    """The consistency group of a statement: its identifier with the pair id blanked, as lil-lab's
    metrics script keys it (``dev-850-0-1`` -> ``dev-850--1``)."""
    parts = identifier.split("-")
    parts[2] = ""
    return "-".join(parts)


def read_statements(path: str, labels_required: bool) -> RawQuestions:
    """Read an NLVR2 statement file (JSON lines), checking every statement; the errors
    (``QuestionFileError``) name the file, the line and the identifier."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: statement file not found (expected the NLVR2 JSON-lines files "
                                "train.json, dev.json and test1.json)")
    raw = RawQuestions(path, [], [[], []], [], [], {})
    first_line = {}
    for line_no, entry in json_lines(path):
        identifier = _identifier(path, line_no, entry)
        if identifier in first_line:
            raise QuestionFileError(f"{path}, line {line_no}: statement {identifier} is listed twice "
                                    f"(first on line {first_line[identifier]})")
        first_line[identifier] = line_no
        where = f"{path}, line {line_no}: statement {identifier}"
        if not isinstance(entry.get("sentence"), str):
            raise QuestionFileError(f"{where}: missing 'sentence' (expected a string)")
        label = entry.get("label")
        if label is None and labels_required:
            raise QuestionFileError(f"{where}: missing 'label' (required in this split)")
        if label is not None and label not in LABELS:
            raise QuestionFileError(f"{where}: 'label' is {label!r}; expected \"True\" or \"False\"")
        for side, image in zip(raw.image_ids, image_ids(identifier)):
            side.append(image)
        raw.question_ids.append(identifier)
        raw.questions.append(entry["sentence"])
        raw.answers.append(label)
    return raw


def _identifier(path: str, line_no: int, entry) -> str:
    where = f"{path}, line {line_no}"
    if not isinstance(entry, dict):
        raise QuestionFileError(f"{where}: expected a JSON object per line, got {type(entry).__name__}")
    identifier = entry.get("identifier")
    if not isinstance(identifier, str):
        raise QuestionFileError(f"{where}: missing 'identifier' (expected a string like dev-850-0-1)")
    parts = identifier.split("-")
    if len(parts) != IDENTIFIER_PARTS or not all(parts) or "." in identifier:
        raise QuestionFileError(f"{where}: identifier {identifier!r} is not <split>-<set>-<pair>-<sentence> "
                                "(e.g. dev-850-0-1), so its images cannot be named")
    return identifier


def score(predicted: np.ndarray, labels: np.ndarray, identifiers: Sequence[str]) -> dict:
    """Accuracy and consistency of predicted labels against gold labels (-1 = none, never scored),
    as lil-lab's ``nlvr2/eval/metrics.py`` computes them.

    Returns ``{"overall": entry, "consistency": {"sentences": entry}}``, entries
    ``{"accuracy": float or None, "count": int}``; the consistency count is the number of sentences.
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    identifiers = np.asarray(identifiers, dtype=str)
    if not (len(predicted) == len(labels) == len(identifiers)):
        raise ValueError(f"score: lengths differ (predicted {len(predicted)}, labels {len(labels)}, "
                         f"identifiers {len(identifiers)})")
    keep = np.flatnonzero(labels != NO_ANSWER)
    correct = predicted[keep] == labels[keep]
    groups, group_of = np.unique([sentence_group(i) for i in identifiers[keep].tolist()], return_inverse=True)
    wrong = np.bincount(group_of.reshape(-1), weights=~correct, minlength=len(groups))
    # a mean of 0/1 values is an exact count over a count: the script's own figures, to the last bit
    return {"overall": mean_score(correct.astype(np.float64), np.ones(len(keep), dtype=bool)),
            "consistency": {"sentences": mean_score((wrong == 0).astype(np.float64),
                                                    np.ones(len(groups), dtype=bool))}}


TASK = NLVR2()

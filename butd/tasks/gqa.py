"""GQA (balanced questions) as a task: everything the rest of the code does not know about GQA.

Files, under the specification's directories (``--gqa_questions``, ``--gqa_features``, ``--gqa_cache``):

    GQA-Questions/{train,val,testdev,test}_balanced_questions.json   one object keyed by question id
    GQA-Questions/submission_all_questions.json   every question the test server scores (optional)
    GQA-Features/vg_gqa_obj36.tsv      train, val *and* test images -> GQA-Cache/trainval.zarr
    GQA-Features/gqa_testdev_obj36.tsv testdev images                -> GQA-Cache/testdev.zarr

As in the specification: the word vocabulary comes from all four splits, the answers from train,
val and testdev (keys lower-cased, the first spelling kept); one answer label per question and
softmax cross-entropy; questions of 40 tokens; training on train and validation on testdev (val
overlaps Visual Genome, which the features were trained on). A question's image is found by image
id in its split's store, never by position.

The metric follows the official GQA evaluation script: accuracy overall, by answer type (``open``
when the structural type is ``query``, ``binary`` otherwise) and by structural and semantic type,
with counts. Predictions are ``[{"questionId": ..., "prediction": ...}]``.

The GQA server scores ``submission_all_questions.json`` (all test questions, not only the balanced
ones) and fails on any question id missing from the upload (mac-network#17, lxmert#52). The
``submission`` split is that file: no answers, its images in the trainval store, its words kept out
of the vocabulary (so a model's vocabulary is the same with or without it), streamed as the others.
It is optional: without the file the cache has no ``submission`` split. Upload the predictions of
``python evaluate.py --checkpoint CKPT --split submission``.
"""
from __future__ import annotations

import json
import os
from itertools import repeat
from typing import Dict, Sequence

import numpy as np

from butd.tasks.answers import NO_ANSWER, majority_baseline
from butd.tasks.base import RawQuestions, Split, Task
from butd.tasks.json_stream import QuestionFileError, object_items
from butd.tasks.scores import by_type, format_table, mean_score

QUESTION_FILE = "{split}_balanced_questions.json"
SUBMISSION_FILE = "submission_all_questions.json"
STRUCTURAL = ("verify", "query", "choose", "logical", "compare")
SEMANTIC = ("attr", "cat", "global", "obj", "rel")
GROUPS = ("answer_type", "structural", "semantic")


class GQA(Task):
    name = "gqa"
    title = "GQA"
    questions_dir = "GQA-Questions"
    features_dir = "GQA-Features"
    cache_dir = "GQA-Cache"
    # The specification's file order: the vocabulary is built over all four, answers over the first three.
    splits = (Split("train", "trainval"), Split("val", "trainval"), Split("testdev", "testdev"),
              Split("test", "trainval", answers=False, answer_vocabulary=False),
              Split("submission", "trainval", answers=False, vocabulary=False, answer_vocabulary=False,
                    optional=True))
    train_split, val_split = "train", "testdev"
    stores = {"trainval": ("vg_gqa_obj36.tsv",), "testdev": ("gqa_testdev_obj36.tsv",)}
    max_length = 40

    # -- questions ---------------------------------------------------------------------------------
    def question_files(self, questions_dir: str, split: str) -> list:
        """The split's file; none for the optional submission split when its file is absent."""
        if self.split(split).optional:
            path = os.path.join(questions_dir, SUBMISSION_FILE)
            return [path] if os.path.exists(path) else []
        return [os.path.join(questions_dir, QUESTION_FILE.format(split=split))]

    def read_split(self, questions_dir: str, split: str) -> RawQuestions:
        files = self.question_files(questions_dir, split)
        if not files:
            raise FileNotFoundError(f"{os.path.join(questions_dir, SUBMISSION_FILE)}: question file not found "
                                    f"(the {split} split is read from GQA's {SUBMISSION_FILE})")
        return read_question_file(files[0], self.split(split).answers)

    # -- answers and targets -----------------------------------------------------------------------
    def answer_vocabulary(self, raws: Dict[str, RawQuestions]) -> tuple:
        """The specification's answer vocabulary: keys lower-cased, label2ans keeps the first spelling."""
        ans2label, label2ans = {}, []
        for split in self.splits:
            if split.answer_vocabulary and split.name in raws:
                for answer in raws[split.name].answers:
                    key = answer.lower()
                    if key not in ans2label:
                        ans2label[key] = len(ans2label)
                        label2ans.append(answer)
        return ans2label, label2ans

    def targets(self, raw: RawQuestions, ans2label: dict) -> Dict[str, np.ndarray]:
        """``labels`` int64 [N]: the answer's label, -1 where the question has no answer."""
        keys = [a.lower() if a is not None else None for a in raw.answers]
        labels = np.fromiter(map(ans2label.get, keys, repeat(NO_ANSWER)), dtype=np.int64, count=len(keys))
        unknown = np.flatnonzero((labels == NO_ANSWER) & np.array([k is not None for k in keys], dtype=bool))
        if len(unknown):
            i = unknown[0]
            vocabulary = ", ".join(s.name for s in self.splits if s.answer_vocabulary)
            raise QuestionFileError(f"{raw.path}: question {raw.question_ids[i]}: answer {raw.answers[i]!r} "
                                    f"is not in the answer vocabulary (built from {vocabulary}); "
                                    f"{len(unknown)} such question(s) in this file")
        return {"labels": labels}

    def loss_and_score(self, logits, batch):
        from butd.tasks.losses import single_label_loss  # torch, only where a loss is computed
        return single_label_loss(logits, batch["labels"])

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> dict:
        return score(predicted, questions.targets["labels"], questions.types["structural"],
                     questions.types["semantic"])

    def format_scores(self, scores: dict) -> str:
        return format_table(scores, GROUPS)

    def baseline(self, train, questions, label2ans: Sequence[str]) -> tuple:
        return majority_baseline(train.targets["labels"], questions.targets["labels"], label2ans, "answer")

    def format_predictions(self, question_ids: Sequence[str], answers: Sequence[str]) -> str:
        return json.dumps(predictions(question_ids, answers))


def read_question_file(path: str, answers_required: bool) -> RawQuestions:
    """Read a GQA question file (a JSON object keyed by question id), checking every question."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: question file not found (expected the GQA balanced "
                                "question files, e.g. train_balanced_questions.json)")
    raw = RawQuestions(path, [], [[]], [], [], {"structural": [], "semantic": []})
    seen = set()
    for qid, entry in object_items(path):
        if qid in seen:
            raise QuestionFileError(f"{path}: question {qid} is listed twice")
        seen.add(qid)
        _append(raw, qid, entry, answers_required)
    return raw


def _append(raw: RawQuestions, qid: str, entry, answers_required: bool) -> None:
    where = f"{raw.path}: question {qid}"
    if not isinstance(entry, dict):
        raise QuestionFileError(f"{where}: expected an object, got {type(entry).__name__}")
    if "." in qid:
        raise QuestionFileError(f"{where}: question ids may not hold '.' (WebDataset sample keys)")
    for name in ("question", "imageId"):
        if not isinstance(entry.get(name), str):
            raise QuestionFileError(f"{where}: missing '{name}' (expected a string)")
    answer = entry.get("answer")
    if answer is None and answers_required:
        raise QuestionFileError(f"{where}: missing 'answer' (required in this split)")
    if answer is not None and not isinstance(answer, str):
        raise QuestionFileError(f"{where}: 'answer' must be a string, got {answer!r}")
    types = entry.get("types") or {}
    raw.question_ids.append(qid)
    raw.image_ids[0].append(entry["imageId"])
    raw.questions.append(entry["question"])
    raw.answers.append(answer)
    raw.types["structural"].append(types.get("structural") or "")
    raw.types["semantic"].append(types.get("semantic") or "")


def score(predicted: np.ndarray, labels: np.ndarray, structural: np.ndarray, semantic: np.ndarray) -> dict:
    """Scores of predicted answer labels against gold labels (-1 = no gold answer, never scored).

    Returns ``{"overall", "answer_type": {binary, open}, "structural": {...}, "semantic": {...}}``,
    each entry ``{"accuracy": float or None, "count": int}``; ``None`` where nothing was scored.
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    structural, semantic = np.asarray(structural, dtype=str), np.asarray(semantic, dtype=str)
    if not (len(predicted) == len(labels) == len(structural) == len(semantic)):
        raise ValueError(f"score: lengths differ (predicted {len(predicted)}, labels {len(labels)}, "
                         f"structural {len(structural)}, semantic {len(semantic)})")
    keep = np.flatnonzero(labels != NO_ANSWER)
    correct = (predicted[keep] == labels[keep]).astype(np.float64)
    structural, semantic = structural[keep], semantic[keep]
    return {
        "overall": mean_score(correct, np.ones(len(keep), dtype=bool)),
        "answer_type": {"binary": mean_score(correct, structural != "query"),
                        "open": mean_score(correct, structural == "query")},
        "structural": by_type(correct, structural, STRUCTURAL),
        "semantic": by_type(correct, semantic, SEMANTIC),
    }


def predictions(question_ids: Sequence[str], answers: Sequence[str]) -> list:
    """``[{"questionId": ..., "prediction": ...}]``, the GQA submission format, in the given order."""
    if len(question_ids) != len(answers):
        raise ValueError(f"predictions: {len(question_ids)} question ids but {len(answers)} answers")
    return [{"questionId": str(q), "prediction": a} for q, a in zip(question_ids, answers)]


TASK = GQA()

"""GQA (balanced questions) as a task: everything the rest of the code does not know about GQA.

Files, under the specification's directories (``--gqa_questions``, ``--gqa_features``, ``--gqa_cache``):

    GQA-Questions/{train,val,testdev,test}_balanced_questions.json   one object keyed by question id
    GQA-Questions/submission_all_questions.json   every question the test server scores (optional)
    GQA-Features/vg_gqa_obj36.tsv      train, val *and* test images -> GQA-Cache/trainval.zarr
    GQA-Features/gqa_testdev_obj36.tsv testdev images                -> GQA-Cache/testdev.zarr

As in the specification: the word vocabulary comes from all four splits, the answers from train,
val and testdev (keys lower-cased, ``label2ans`` the first spelling met); one answer label per question and
softmax cross-entropy; questions of 40 tokens; training on train and validation on testdev (val
overlaps Visual Genome, which the features were trained on). A question's image is found by image
id in its split's store, never by position.

The metric follows the official GQA evaluation script: accuracy overall, by answer type (``open``
when the structural type is ``query``, ``binary`` otherwise) and by structural and semantic type,
with counts; and, from the official files beside the question files, consistency, validity,
plausibility, distribution, grounding and accuracy by reasoning steps and words
(``butd.tasks.gqa_metrics``). Predictions are ``[{"questionId": ..., "prediction": ...}]``.

The official scorer compares answer strings exactly, so a label is written in the spelling the
split's own gold answers use most (``written_answers``), else in the one the answer-vocabulary
splits use most (``answer_spellings``): one train answer ``Yes`` among a million ``yes`` would
otherwise make every ``yes`` prediction ``Yes``. Scores compare the written strings with the gold
ones, so the printed accuracy is the official scorer's accuracy of the file written.

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
from collections import Counter, defaultdict
from itertools import repeat
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from butd.tasks.answers import NO_ANSWER, majority_baseline
from butd.tasks.base import RawQuestions, Split, Task
from butd.tasks.gqa_metrics import SEMANTIC, STRUCTURAL, OfficialFiles, format_official
from butd.tasks.json_stream import QuestionFileError, object_items
from butd.tasks.scores import by_type, format_table, mean_score

QUESTION_FILE = "{split}_balanced_questions.json"
SUBMISSION_FILE = "submission_all_questions.json"
GROUPS = ("answer_type", "structural", "semantic")
LENGTH_GROUPS = ("steps", "words")   # the official accuracy by reasoning steps and by words


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
    def answer_vocabulary(self, raws: Dict[str, RawQuestions], min_answer_count=None) -> tuple:
        """The specification's answer vocabulary, every answer of its splits: keys lower-cased,
        label2ans keeps the first spelling (``min_answer_count`` does not apply: testdev's answers
        must all be in it)."""
        ans2label, label2ans = {}, []
        for split in self.splits:
            if split.answer_vocabulary and split.name in raws:
                for answer in raws[split.name].answers:
                    key = answer.lower()
                    if key not in ans2label:
                        ans2label[key] = len(ans2label)
                        label2ans.append(answer)
        return ans2label, label2ans

    def answer_spellings(self, raws: Dict[str, RawQuestions], ans2label: dict, label2ans: list) -> list:
        """Each label's most frequent spelling over the answer-vocabulary splits (the first met of
        equally frequent ones): what the test server's gold answers most likely use."""
        counts = defaultdict(Counter)
        for split in self.splits:
            if split.answer_vocabulary and split.name in raws:
                for answer in raws[split.name].answers:
                    counts[ans2label[answer.lower()]][answer] += 1
        return [counts[label].most_common(1)[0][0] if counts[label] else answer
                for label, answer in enumerate(label2ans)]

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
    def written_answers(self, questions, spellings: Sequence[str]) -> list:
        """``spellings``, except that a label the split's gold answers hold is written as they
        spell it most often."""
        written, gold = list(spellings), questions.answer_strings()
        if gold is None:
            return written
        labels = questions.targets["labels"]
        counts = defaultdict(Counter)
        for label, answer in zip(labels.tolist(), gold.tolist()):
            if label != NO_ANSWER:
                counts[label][answer] += 1
        for label, spelled in counts.items():
            written[label] = spelled.most_common(1)[0][0]
        return written

    def evaluate(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> dict:
        """Exact match of the written answers (``label2ans[predicted]``) with the gold strings, as
        the official scorer; by label where the arrays hold no gold strings."""
        gold = questions.answer_strings()
        if gold is None:
            return score(predicted, questions.targets["labels"], questions.types["structural"],
                         questions.types["semantic"])
        written = np.asarray(label2ans, dtype=str)[np.asarray(predicted, dtype=np.int64)] if len(predicted) \
            else np.zeros(0, dtype=str)
        return exact_score(written, gold, questions.targets["labels"] != NO_ANSWER, questions.types["structural"],
                           questions.types["semantic"])

    gallery_type = "structural"

    def question_scores(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> np.ndarray:
        """1.0 where the written answer equals the gold string (as ``evaluate`` compares them), 0.0
        where not, NaN where the question has no answer."""
        gold = questions.answer_strings()
        if gold is None:
            return super().question_scores(questions, predicted, label2ans)
        written = np.asarray(label2ans, dtype=str)[np.asarray(predicted, dtype=np.int64)] if len(predicted) \
            else np.zeros(0, dtype=str)
        answered = questions.targets["labels"] != NO_ANSWER
        return np.where(answered, (written == gold).astype(np.float64), np.nan)

    def reference_answers(self, questions, label2ans: Sequence[str]) -> np.ndarray:
        """The gold strings as the split's file writes them."""
        gold = questions.answer_strings()
        return super().reference_answers(questions, label2ans) if gold is None else gold

    def format_scores(self, scores: dict) -> str:
        """The official figures (where ``scores`` has them), then the table by answer type,
        structural and semantic type, steps and words."""
        lines = [format_official(scores), ""] if "official" in scores else []
        lines.append(format_table(scores, GROUPS + tuple(g for g in LENGTH_GROUPS if g in scores)))
        for group in LENGTH_GROUPS:
            if group not in scores and group in scores.get("not_available", {}):
                lines.append(f"{group:<12} not available ({scores['not_available'][group]})")
        return "\n".join(lines)

    def official_files(self, questions_dir: str, split: str):
        """The official files of a split with answers (``OfficialFiles``); None for test splits."""
        return OfficialFiles.find(questions_dir, split) if self.split(split).answers else None

    def baseline(self, train, questions, label2ans: Sequence[str]) -> tuple:
        return majority_baseline(train.targets["labels"], questions.targets["labels"], label2ans, "answer")

    def format_predictions(self, question_ids: Sequence[str], answers: Sequence[str]) -> str:
        return json.dumps(predictions(question_ids, answers))


def _new_raw(path: str) -> RawQuestions:
    return RawQuestions(path, [], [[]], [], [], {"structural": [], "semantic": []})


def read_question_file(path: str, answers_required: bool) -> RawQuestions:
    """Read a GQA question file (a JSON object keyed by question id), checking every question."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: question file not found (expected the GQA balanced "
                                "question files, e.g. train_balanced_questions.json)")
    raw = _new_raw(path)
    seen = set()
    for qid, entry in object_items(path):
        if qid in seen:
            raise QuestionFileError(f"{path}: question {qid} is listed twice")
        seen.add(qid)
        _append(raw, qid, entry, answers_required)
    return raw


def question_chunks(paths: List[str], size: int) -> Iterator[Tuple[RawQuestions, list]]:
    """GQA question files (one file, or an official folder's chunks) streamed in chunks of at most
    ``size`` questions: each chunk as ``RawQuestions`` (every question checked as
    ``read_question_file`` checks it; answers optional) and the questions' JSON objects, in file order."""
    for path in paths:
        raw, entries = _new_raw(path), []
        for qid, entry in object_items(path):
            _append(raw, qid, entry, False)
            entries.append(entry)
            if len(entries) == size:
                yield raw, entries
                raw, entries = _new_raw(path), []
        if entries:
            yield raw, entries


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
    _same_lengths(predicted=predicted, labels=labels, structural=structural, semantic=semantic)
    return _table(predicted == labels, labels != NO_ANSWER, structural, semantic)


def exact_score(written: np.ndarray, gold: np.ndarray, answered: np.ndarray, structural: np.ndarray,
                semantic: np.ndarray) -> dict:
    """``score`` of the answer strings written (str [N]) against the gold strings (str [N]) by
    exact match, as the official scorer compares them, over the questions ``answered`` (bool [N])."""
    written, gold = np.asarray(written, dtype=str), np.asarray(gold, dtype=str)
    _same_lengths(written=written, gold=gold, answered=answered, structural=structural, semantic=semantic)
    return _table(written == gold, np.asarray(answered, dtype=bool), structural, semantic)


def _same_lengths(**arrays) -> None:
    if len({len(a) for a in arrays.values()}) > 1:
        raise ValueError("score: lengths differ (" + ", ".join(f"{k} {len(a)}" for k, a in arrays.items()) + ")")


def _table(correct: np.ndarray, answered: np.ndarray, structural, semantic) -> dict:
    keep = np.flatnonzero(answered)
    correct = np.asarray(correct, dtype=np.float64)[keep]
    structural, semantic = np.asarray(structural, dtype=str)[keep], np.asarray(semantic, dtype=str)[keep]
    return {
        "overall": mean_score(correct, np.ones(len(keep), dtype=bool)),
        "answer_type": {"binary": mean_score(correct, structural != "query"),
                        "open": mean_score(correct, structural == "query")},
        "structural": by_type(correct, structural, STRUCTURAL),
        "semantic": by_type(correct, semantic, SEMANTIC),
    }


def prediction_entry(question_id: str, answer: str) -> dict:
    """One entry of the GQA submission format."""
    return {"questionId": str(question_id), "prediction": answer}


def predictions(question_ids: Sequence[str], answers: Sequence[str]) -> list:
    """``[{"questionId": ..., "prediction": ...}]``, the GQA submission format, in the given order."""
    if len(question_ids) != len(answers):
        raise ValueError(f"predictions: {len(question_ids)} question ids but {len(answers)} answers")
    return [prediction_entry(q, a) for q, a in zip(question_ids, answers)]


TASK = GQA()

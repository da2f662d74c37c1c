"""VQA v2 as a task: everything the rest of the code does not know about VQA v2.

Files, under the modular branch's directories (``--vqa2_questions``, ``--vqa2_features``, ``--vqa2_cache``):

    VQA2-Questions/v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json
    VQA2-Questions/v2_mscoco_{train2014,val2014}_annotations.json   (10 human answers per question)
    VQA2-Features/train2014_obj36.tsv  -> VQA2-Cache/train2014.zarr
    VQA2-Features/val2014_obj36.tsv    -> VQA2-Cache/val2014.zarr
    VQA2-Features/test2015_obj36.tsv   -> VQA2-Cache/test2015.zarr   (serves test-dev2015 and test2015)

As the modular branch (``src/preprocessing/vqa2/``, ``src/models/butd.py``): training on train2014
and validation on val2014; questions of 14 tokens; the word vocabulary from the train and val
questions; candidate answers the normalised ``multiple_choice_answer`` given by at least 9
train+val questions (3,129 on the full data); soft targets 0.3/0.6/0.9/1.0 for 1/2/3/4+ matching
human answers, with every human answer normalised first (``butd.tasks.vqa_answers`` says where
this departs from the reference); the loss is ``per_example_bce`` (binary cross-entropy with logits
summed over the answers); the logged score is the soft score of the arg-max answer.

Questions and annotations are streamed (the validation annotations are ~200 MB). An image id
matches whether a store names it ``COCO_train2014_000000458752`` (LXMERT's obj36 files) or
``458752`` (Anderson's files). Targets are stored compactly, at most 10 labels and scores per
question, and scattered into a dense target on the logits' device.

The metric is the official VQA accuracy (``vqa_answers.vqa_accuracy``, the pre-2021 vqaEval.py
rule) overall, per answer type (yes/no, number, other) and per question type, with counts; the
cache holds, per question, the candidates some human answer officially matches and how many do
(``eval_labels``, ``eval_matches``), which is all the official rule needs to score any predicted
candidate. Predictions are ``[{"question_id": int, "answer": str}]``, one per question of the
split's question file (the evaluation server's format).
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, NamedTuple, Sequence

import numpy as np

from butd.tasks.answers import NO_ANSWER
from butd.tasks.base import RawQuestions, Split, Task
from butd.tasks.json_stream import QuestionFileError, key_array_items
from butd.tasks.scores import by_type, format_table, mean_score
from butd.tasks.vqa_answers import (
    MAX_LABELS,
    MIN_ANSWER_COUNT,
    NUM_HUMAN_ANSWERS,
    candidate_answers,
    leave_one_out_accuracy,
    majority_answer,
    official_forms,
    official_matches,
    soft_targets,
)

QUESTION_FILE = "v2_OpenEnded_mscoco_{split}_questions.json"
ANNOTATION_FILE = "v2_mscoco_{split}_annotations.json"
ANSWER_TYPES = ("yes/no", "number", "other")
GROUPS = ("answer_type", "question_type")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


class HumanAnswers(NamedTuple):
    """One annotation's answers as read: its ``multiple_choice_answer`` and the ten raw answers."""
    multiple_choice: str
    answers: tuple


class VQA2(Task):
    name = "vqa2"
    title = "VQA v2"
    questions_dir = "VQA2-Questions"
    features_dir = "VQA2-Features"
    cache_dir = "VQA2-Cache"
    splits = (Split("train2014", "train2014"), Split("val2014", "val2014"),
              Split("test-dev2015", "test2015", answers=False, vocabulary=False, answer_vocabulary=False),
              Split("test2015", "test2015", answers=False, vocabulary=False, answer_vocabulary=False))
    train_split, val_split = "train2014", "val2014"
    stores = {"train2014": ("train2014_obj36.tsv",), "val2014": ("val2014_obj36.tsv",),
              "test2015": ("test2015_obj36.tsv",)}
    max_length = 14
    # Candidates: answers that at least this many train+val questions give (the references' 9).
    min_answer_count = MIN_ANSWER_COUNT

    def question_order(self, question_ids: np.ndarray) -> np.ndarray:
        """By question id as a number (the references sort the integer ids)."""
        return np.argsort(np.asarray(question_ids).astype(np.int64), kind="stable")

    def image_key(self, image_id: str) -> str:
        """``COCO_train2014_000000458752``, ``458752`` and ``000458752`` -> ``458752``."""
        m = _TRAILING_DIGITS.search(image_id)
        return str(int(m.group(1))) if m else image_id

    # -- questions ---------------------------------------------------------------------------------
    def question_files(self, questions_dir: str, split: str) -> list:
        files = [os.path.join(questions_dir, QUESTION_FILE.format(split=split))]
        if self.split(split).answers:
            files.append(os.path.join(questions_dir, ANNOTATION_FILE.format(split=split)))
        return files

    def read_split(self, questions_dir: str, split: str) -> RawQuestions:
        files = self.question_files(questions_dir, split)
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: VQA v2 file not found (expected the official question and "
                                        "annotation JSONs from visualqa.org, e.g. "
                                        f"{QUESTION_FILE.format(split='train2014')})")
        questions = read_questions(files[0])
        if len(files) == 1:
            return _unanswered(files[0], questions)
        return join_annotations(files[0], questions, files[1])

    # -- answers and targets -----------------------------------------------------------------------
    def answer_vocabulary(self, raws: Dict[str, RawQuestions], min_answer_count=None) -> tuple:
        """Candidates from the ``multiple_choice_answer`` of the train and val questions: those at
        least ``min_answer_count`` (default: the references' 9) of them give."""
        least = min_answer_count or self.min_answer_count
        ans2label, label2ans = candidate_answers((a.multiple_choice for s in self.splits if s.answer_vocabulary
                                                  for a in raws[s.name].answers), least)
        if not label2ans:
            sources = ", ".join(raws[s.name].path for s in self.splits if s.answer_vocabulary)
            raise QuestionFileError(f"{sources}: no answer is the multiple_choice_answer of at least {least} "
                                    "questions, so there is no candidate answer (a small subset? lower it with "
                                    "--min_answer_count)")
        return ans2label, label2ans

    def targets(self, raw: RawQuestions, ans2label: dict) -> Dict[str, np.ndarray]:
        """``answer_labels`` int64 [N, 10] (-1 padded) and ``answer_scores`` float32 [N, 10]: the
        soft targets; ``answered`` bool [N]; ``eval_labels`` int32 [N, W] (-1 padded) and
        ``eval_matches`` int8 [N, W]: each candidate some human answer officially matches, and how
        many do (W >= 10, more only where candidates share an official form)."""
        n = len(raw)
        labels = np.full((n, MAX_LABELS), NO_ANSWER, dtype=np.int64)
        scores = np.zeros((n, MAX_LABELS), dtype=np.float32)
        answered = np.array([a is not None for a in raw.answers], dtype=bool)
        forms = official_forms(sorted(ans2label, key=ans2label.get))
        matched = []
        for i, human in enumerate(raw.answers):
            if human is None:
                matched.append(())
                continue
            found, soft = soft_targets(human.answers, ans2label)
            labels[i, :len(found)], scores[i, :len(found)] = found, soft
            matched.append(official_matches(human.answers, forms))
        width = max([MAX_LABELS] + [len(m) for m in matched])
        eval_labels = np.full((n, width), NO_ANSWER, dtype=np.int32)
        eval_matches = np.zeros((n, width), dtype=np.int8)
        for i, pairs in enumerate(matched):
            if pairs:
                eval_labels[i, :len(pairs)], eval_matches[i, :len(pairs)] = zip(*pairs)
        return {"answer_labels": labels, "answer_scores": scores, "answered": answered,
                "eval_labels": eval_labels, "eval_matches": eval_matches}

    def loss_and_score(self, logits, batch):
        """The modular branch's ``per_example_bce`` per question (binary cross-entropy with logits
        summed over the answers: its mean over the batch and answers times the number of answers)
        and the soft score of the arg-max answer."""
        from butd.tasks.losses import soft_score_loss  # torch, only where a loss is computed
        return soft_score_loss(logits, batch["answer_labels"], batch["answer_scores"], batch["answered"])

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> dict:
        """The official VQA accuracy of the predicted labels, overall, per answer type and per
        question type (``{"accuracy", "count"}`` each; unanswered questions are not scored)."""
        t = questions.targets
        accuracy = official_accuracy(predicted, t["eval_labels"], t["eval_matches"])
        keep = np.asarray(t["answered"], dtype=bool)
        accuracy = accuracy[keep]
        return {"overall": mean_score(accuracy, np.ones(len(accuracy), dtype=bool)),
                "answer_type": by_type(accuracy, questions.types["answer_type"][keep], ANSWER_TYPES),
                "question_type": by_type(accuracy, questions.types["question_type"][keep])}

    def format_scores(self, scores: dict) -> str:
        return format_table(scores, GROUPS)

    gallery_type = "answer_type"

    def question_scores(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> np.ndarray:
        """The official VQA accuracy of each predicted label (0, 0.3, 0.6, 0.9 or 1.0 by the
        leave-one-out rule), NaN where the question has no answers."""
        t = questions.targets
        accuracy = official_accuracy(predicted, t["eval_labels"], t["eval_matches"])
        return np.where(np.asarray(t["answered"], dtype=bool), accuracy, np.nan)

    def reference_answers(self, questions, label2ans: Sequence[str]) -> np.ndarray:
        """The candidate answer most human answers officially match (the first of equals; "" where
        none does)."""
        t = questions.targets
        best = np.take_along_axis(t["eval_labels"], t["eval_matches"].argmax(axis=1)[:, None], axis=1)[:, 0]
        written = np.asarray(list(label2ans) + [""], dtype=str)
        return written[np.where(best < 0, len(label2ans), best)]

    def gold_listing(self, questions, label2ans: Sequence[str]) -> list:
        """Each candidate answer the human answers officially match, with how many of the ten do
        (``"2 (7/10)"``), most matched first."""
        t = questions.targets
        listing = []
        for labels, matches in zip(t["eval_labels"].tolist(), t["eval_matches"].tolist()):
            pairs = sorted(((m, label) for label, m in zip(labels, matches) if label >= 0 and m > 0),
                           key=lambda p: -p[0])
            listing.append([f"{label2ans[label]} ({m}/{NUM_HUMAN_ANSWERS})" for m, label in pairs])
        return listing

    def image_files(self, image_id: str, split: str) -> tuple:
        """COCO's names, ``COCO_<image set>_<12 digits>.jpg`` (the image set of the split's store:
        test-dev2015's images are test2015's)."""
        return (f"COCO_{self.split(split).store}_{int(self.image_key(image_id)):012d}.jpg",) \
            if self.image_key(image_id).isdigit() else (f"{image_id}.jpg",)

    def baseline(self, train, questions, label2ans: Sequence[str]) -> tuple:
        """The one answer with the highest total soft score over the training questions, scored by
        the official rule on ``questions``."""
        labels, scores = train.targets["answer_labels"], train.targets["answer_scores"]
        valid = labels >= 0
        best = int(np.bincount(labels[valid], weights=scores[valid], minlength=len(label2ans)).argmax())
        t = questions.targets
        keep = np.asarray(t["answered"], dtype=bool)
        constant = np.full(len(questions), best, dtype=np.int64)
        accuracy = official_accuracy(constant, t["eval_labels"], t["eval_matches"])[keep]
        return (f"the training questions' best single answer {label2ans[best]!r}",
                float(accuracy.mean()) if len(accuracy) else None)

    def format_predictions(self, question_ids: Sequence[str], answers: Sequence[str]) -> str:
        """``[{"question_id": int, "answer": str}]``, the VQA evaluation server's format."""
        return json.dumps([{"question_id": int(q), "answer": a} for q, a in zip(question_ids, answers)])


def official_accuracy(predicted: np.ndarray, eval_labels: np.ndarray, eval_matches: np.ndarray) -> np.ndarray:
    """float64 [N]: the official VQA accuracy of each predicted label, from the human answers'
    matches per candidate (``VQA2.targets``) by the leave-one-out rule over ten answers."""
    predicted = np.asarray(predicted).reshape(-1, 1)
    matches = np.where(eval_labels == predicted, eval_matches, 0).sum(axis=1)
    return leave_one_out_accuracy(matches, NUM_HUMAN_ANSWERS)


# -- reading the official files ------------------------------------------------------------------

def _int_id(value, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuestionFileError(f"{where}: '{what}' must be an integer, got {value!r}")
    return value


def _entries(path: str, key: str):
    """``(question id, where, entry)`` of each object in the file's ``key`` array; ``where`` names the
    file and the question for errors. Raises QuestionFileError for an element that is not an object
    or has no integer ``question_id``."""
    for k, entry in enumerate(key_array_items(path, key)):
        where = f"{path}: element {k} of '{key}'"
        if not isinstance(entry, dict):
            raise QuestionFileError(f"{where}: expected an object, got {type(entry).__name__}")
        qid = str(_int_id(entry.get("question_id"), where, "question_id"))
        yield qid, f"{path}: question {qid}", entry


def read_questions(path: str) -> Dict[str, tuple]:
    """question id (str) -> (image id (str), question) of a VQA v2 question file, in file order."""
    out: Dict[str, tuple] = {}
    for qid, where, entry in _entries(path, "questions"):
        image = entry.get("image_id")
        if isinstance(image, bool) or not isinstance(image, (int, str)):
            raise QuestionFileError(f"{where}: 'image_id' must be an integer, got {image!r}")
        if not isinstance(entry.get("question"), str):
            raise QuestionFileError(f"{where}: missing 'question' (expected a string)")
        if qid in out:
            raise QuestionFileError(f"{path}: question {qid} is listed twice")
        out[qid] = (str(image), entry["question"])
    return out


def _human_answers(entry: dict, where: str) -> HumanAnswers:
    answers = entry.get("answers")
    if not (isinstance(answers, list) and len(answers) == NUM_HUMAN_ANSWERS
            and all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)):
        raise QuestionFileError(f"{where}: malformed 'answers': expected a list of {NUM_HUMAN_ANSWERS} objects "
                                f"with a string 'answer', got {json.dumps(answers)[:200]}")
    raw = tuple(a["answer"] for a in answers)
    mca = entry.get("multiple_choice_answer")
    if mca is not None and not isinstance(mca, str):
        raise QuestionFileError(f"{where}: 'multiple_choice_answer' must be a string, got {mca!r}")
    # The official files always carry it; trimmed samples may not: its definition, the majority answer.
    return HumanAnswers(mca if mca is not None else majority_answer(raw), raw)


def join_annotations(questions_path: str, questions: Dict[str, tuple], path: str) -> RawQuestions:
    """A split with answers: its questions joined with their annotations, in annotation order (the
    references' order, which fixes the order of the candidate answers)."""
    raw = RawQuestions(questions_path, [], [[]], [], [], {"question_type": [], "answer_type": []})
    for qid, where, entry in _entries(path, "annotations"):
        if qid not in questions:
            why = "is annotated twice" if qid in raw.question_ids else f"is not in {questions_path}"
            raise QuestionFileError(f"{where}: this annotation's question {why}")
        image, text = questions.pop(qid)
        answers = _human_answers(entry, where)
        types = {t: entry.get(t) or "" for t in raw.types}
        for t, v in types.items():
            if not isinstance(v, str):
                raise QuestionFileError(f"{where}: '{t}' must be a string, got {v!r}")
        _append(raw, qid, image, text, answers, types)
    if questions:
        missing = list(questions)
        raise QuestionFileError(f"{questions_path}: question {missing[0]} has no annotation in {path} "
                                f"({len(missing)} such question(s), e.g. {', '.join(missing[:5])})")
    return raw


def _unanswered(path: str, questions: Dict[str, tuple]) -> RawQuestions:
    raw = RawQuestions(path, [], [[]], [], [], {"question_type": [], "answer_type": []})
    for qid, (image, text) in questions.items():
        _append(raw, qid, image, text, None, {"question_type": "", "answer_type": ""})
    return raw


def _append(raw: RawQuestions, qid: str, image: str, text: str, answers, types: dict) -> None:
    raw.question_ids.append(qid)
    raw.image_ids[0].append(image)
    raw.questions.append(text)
    raw.answers.append(answers)
    for t, v in types.items():
        raw.types[t].append(v)


TASK = VQA2()

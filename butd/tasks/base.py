"""What a dataset is to the rest of the code: the ``Task`` interface.

A task knows only what differs between datasets (GQA, VQA v2, NLVR2): its raw file names and
default directories, which feature store holds each split's images and how a question's image id
finds its row, how to read its question files, how answers become training targets and what the
loss is, its question length, its metric and its submission format. The converters, the question
cache, the loader, the LightningModule and evaluation take a task and never name a dataset.

    from butd.tasks import get_task
    task = get_task("gqa")
    task.store_path("data/GQA-Cache", "train")      # data/GQA-Cache/trainval.zarr

A new dataset is a new module in ``butd.tasks`` that subclasses ``Task``, implements its
abstract methods, sets its attributes and defines ``TASK``, its one instance, and a line naming
that module in ``butd.tasks._MODULES`` (which ``get_task`` and ``TASK_NAMES`` read). A subclass that
leaves a method or an attribute out fails when it is instantiated (``TypeError``), so when its
module is imported, not at evaluation time.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

import numpy as np

from butd.tasks.answers import NO_ANSWER

if TYPE_CHECKING:   # annotations only: a task's files and stores need no torch (butd.tasks.losses)
    import torch


# attributes every task sets (the others have defaults)
_REQUIRED = ("name", "title", "questions_dir", "features_dir", "cache_dir", "splits", "train_split", "val_split",
             "stores")


@dataclass(frozen=True)
class Split:
    """A question split: the feature store that holds its images, whether its file carries answers
    (required in a split used for training or scoring), whether its words and its answers join
    the word and answer vocabularies, and whether its file may be absent (``optional``: a split
    whose file is not there is left out of the question cache, which records it as absent; a
    split that joins a vocabulary is never optional, or its absence would change the vocabulary)."""
    name: str
    store: str
    answers: bool = True
    vocabulary: bool = True
    answer_vocabulary: bool = True
    optional: bool = False

    def __post_init__(self):
        if self.optional and (self.vocabulary or self.answer_vocabulary):
            raise ValueError(f"split {self.name}: an optional split cannot join a vocabulary")


@dataclass
class RawQuestions:
    """One split's questions as read from its file(s), in file order.

    ``image_ids[k]`` is the id of the k-th image of every question (one list per image of a
    question: 1 for GQA and VQA v2, 2 for NLVR2). ``answers`` holds the task's raw answer per
    question (None where the file has none), ``types`` the task's question types by name."""
    path: str
    question_ids: list
    image_ids: list
    questions: list
    answers: list
    types: Dict[str, list]

    def __len__(self) -> int:
        return len(self.question_ids)


class Task(ABC):
    """One dataset. Subclasses set the attributes without a default below and implement the
    abstract methods; ``TypeError`` at construction names what a subclass left out."""

    name: str                        # the --dataset value, and the prefix of its path flags
    title: str                       # for messages
    questions_dir: str               # default directory names under --data
    features_dir: str
    cache_dir: str
    splits: Tuple[Split, ...]
    train_split: str
    val_split: str
    stores: Dict[str, Tuple[str, ...]]   # store name -> the feature TSV(s) it is converted from
    max_length: int = 40
    images_per_question: int = 1
    predictions_suffix: str = ".json"    # the extension of the submission file ``write_predictions`` writes

    def __init__(self):
        missing = [name for name in _REQUIRED if not hasattr(self, name)]
        if missing:
            raise TypeError(f"{type(self).__name__} does not set {', '.join(missing)} (required of a butd.tasks Task)")

    # -- splits and stores -------------------------------------------------------------------------
    def split(self, name: str) -> Split:
        """The split named ``name``, in any case (``VAL2014`` is ``val2014``); ValueError naming the
        task's splits for another name."""
        for s in self.splits:
            if s.name.lower() == str(name).lower():
                return s
        raise ValueError(f"{self.title} has no split {name!r}; expected one of {', '.join(self.split_names)}")

    @property
    def split_names(self) -> Tuple[str, ...]:
        return tuple(s.name for s in self.splits)

    def store_path(self, cache_dir: str, split_or_store: str) -> str:
        """``<cache_dir>/<store>.zarr`` of a store, or of the store that serves a question split."""
        store = split_or_store if split_or_store in self.stores else self.split(split_or_store).store
        return os.path.join(cache_dir, f"{store}.zarr")

    def question_order(self, question_ids: np.ndarray) -> np.ndarray:
        """The order in which a split's questions are stored (an index array): sorted question ids,
        as the specification's ``sorted(examples)``."""
        return np.argsort(question_ids, kind="stable")

    def image_key(self, image_id: str) -> str:
        """The form in which a question's image id and a store's image id are compared. Identity by
        default; a task whose files name one image in several ways makes them equal here."""
        return image_id

    # -- questions ---------------------------------------------------------------------------------
    @abstractmethod
    def question_files(self, questions_dir: str, split: str) -> list:
        """The file(s) a split's questions are read from (their stats fingerprint the cache)."""

    @abstractmethod
    def read_split(self, questions_dir: str, split: str) -> RawQuestions:
        """Stream and check a split's question file(s); ``QuestionFileError`` names file and id."""

    # -- answers and training targets ----------------------------------------------------------------
    @abstractmethod
    def answer_vocabulary(self, raws: Dict[str, RawQuestions], min_answer_count: Optional[int] = None
                          ) -> Tuple[dict, list]:
        """(ans2label, label2ans) from the splits whose answers join the vocabulary. A task that keeps
        only the answers given often enough (VQA v2) keeps those given at least ``min_answer_count``
        times (None: its own threshold); the others keep every answer and ignore it."""

    def answer_spellings(self, raws: Dict[str, RawQuestions], ans2label: dict, label2ans: list) -> list:
        """How each answer label is written in predictions, by label: ``label2ans`` unless the task's
        answers come in several spellings per label (GQA)."""
        return list(label2ans)

    @abstractmethod
    def targets(self, raw: RawQuestions, ans2label: dict) -> Dict[str, np.ndarray]:
        """Per-question training targets as arrays with the question as first axis (the loader
        gathers them with the batch); questions without an answer get the task's 'none' value."""

    @abstractmethod
    def loss_and_score(self, logits: torch.Tensor, batch: dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss [B], score [B], weight [B]): per-question loss and score of the arg-max answer, and
        which questions count (1.0) or have no answer (0.0). The batch loss is
        ``(loss * weight).sum() / weight.sum()``."""

    # -- evaluation --------------------------------------------------------------------------------
    def written_answers(self, questions, spellings: Sequence[str]) -> list:
        """The answer string written for each label in a split's predictions: ``spellings``
        (``answer_spellings``) unless the split's own gold answers spell a label otherwise (GQA)."""
        return list(spellings)

    @abstractmethod
    def evaluate(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> dict:
        """Scores of predicted answer labels (int [N], in question order) with counts; ``label2ans``
        the answers written for the labels (``written_answers``)."""

    def official_files(self, questions_dir: str, split: str):
        """The task's official evaluation files for ``split`` beside its question files, for the
        figures beyond ``evaluate`` (GQA: ``butd.tasks.gqa_metrics.OfficialFiles``); None where the
        task or the split has none."""
        return None

    @abstractmethod
    def format_scores(self, scores: dict) -> str:
        """The scores as the plain-text table the task prints (``butd.tasks.scores.format_table``)."""

    @abstractmethod
    def baseline(self, train, questions, label2ans: Sequence[str]) -> Tuple[str, Optional[float]]:
        """(description, score) of the best answer prior: what a model that ignores the image and
        the question reaches; None where the split has no answers."""

    def write_predictions(self, path: str, question_ids: Sequence[str], answers: Sequence[str]) -> None:
        """Write one answer (a ``label2ans`` string) per question id, in the given order, in the
        task's submission format (``format_predictions``). Raises ``ValueError`` if the two
        lengths differ."""
        if len(question_ids) != len(answers):
            raise ValueError(f"predictions: {len(question_ids)} question ids but {len(answers)} answers")
        with open(path, "w") as f:
            f.write(self.format_predictions(question_ids, answers))

    @abstractmethod
    def format_predictions(self, question_ids: Sequence[str], answers: Sequence[str]) -> str:
        """The text of a submission file: ``answers[i]`` for ``question_ids[i]``, lengths equal."""

    # -- per question, for the evaluation report (butd.evaluation.report) ---------------------------
    # The question type a report's gallery samples across (a key of ``questions.types``); None: the
    # gold answer stands for it (NLVR2's true and false statements).
    gallery_type: Optional[str] = None

    def question_scores(self, questions, predicted: np.ndarray, label2ans: Sequence[str]) -> np.ndarray:
        """float64 [N]: the score of each predicted label, the unit ``evaluate``'s accuracy averages
        (1.0 right, 0.0 wrong here: an exact match of labels), NaN where the question has no answer."""
        gold = questions.targets["labels"]
        return np.where(gold == NO_ANSWER, np.nan, (np.asarray(predicted) == gold).astype(np.float64))

    def reference_answers(self, questions, label2ans: Sequence[str]) -> np.ndarray:
        """str [N]: the one gold answer each question's prediction is confused with when wrong
        ("" where it has none): here the answer of its gold label."""
        gold = questions.targets["labels"]
        written = np.asarray(list(label2ans) + [""], dtype=str)
        return written[np.where(gold == NO_ANSWER, len(label2ans), gold)]

    def gold_listing(self, questions, label2ans: Sequence[str]) -> list:
        """Per question, the gold answer(s) as a report shows them (a list of strings, empty where
        there is none): here the ``reference_answers``."""
        return [[a] if a else [] for a in self.reference_answers(questions, label2ans).tolist()]

    def image_files(self, image_id: str, split: str) -> Tuple[str, ...]:
        """The file names an image of ``split`` may have in a directory of the dataset's images,
        most likely first: here ``<image id>.jpg``."""
        return (f"{image_id}.jpg",)

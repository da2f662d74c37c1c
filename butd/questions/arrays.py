"""One split's questions as arrays: what the question cache stores per split and the loader reads."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

TARGET_PREFIX = "target."
TYPE_PREFIX = "type."


@dataclass
class QuestionArrays:
    """A split's questions, in the task's order, resolved against its feature store.

    ``question_ids`` str [N]; ``image_ids`` str [N, I] and ``image_rows`` int64 [N, I], the ids and
    the store rows of each question's I images (I = the task's images per question);
    ``tokens`` int [N, max_length], front-padded with the padding index; ``targets`` the task's
    training targets by name, each with the question as first axis; ``types`` the task's question
    types by name, str [N] ("" where unknown); ``answers`` the gold answer of each question as its
    file writes it, UTF-8 bytes [N] (numpy ``S``, a quarter of ``U``'s memory; b"" where it has
    none), what exact-match scorers compare predictions with, or None where the task's answers are
    not strings (VQA v2's ten human answers)."""
    question_ids: np.ndarray
    image_ids: np.ndarray
    image_rows: np.ndarray
    tokens: np.ndarray
    targets: Dict[str, np.ndarray] = field(default_factory=dict)
    types: Dict[str, np.ndarray] = field(default_factory=dict)
    answers: Optional[np.ndarray] = None

    def __post_init__(self):
        n = len(self.question_ids)
        # [N] or [N, images]; an empty split keeps its width (reshape cannot infer it from no rows)
        self.image_ids = _per_question(np.asarray(self.image_ids, dtype=str), n)
        self.image_rows = _per_question(np.asarray(self.image_rows, dtype=np.int64), n)
        for name, a in [("image_ids", self.image_ids), ("image_rows", self.image_rows), ("tokens", self.tokens),
                        *self.targets.items(), *self.types.items(),
                        *([("answers", self.answers)] if self.answers is not None else [])]:
            if len(a) != n:
                raise ValueError(f"QuestionArrays: {name} has {len(a)} rows for {n} questions")

    def __len__(self) -> int:
        return len(self.question_ids)

    @property
    def images_per_question(self) -> int:
        return self.image_rows.shape[1]

    def take(self, index) -> "QuestionArrays":
        """The questions at ``index`` (an index array, mask or slice), as a new QuestionArrays."""
        return QuestionArrays(self.question_ids[index], self.image_ids[index], self.image_rows[index],
                              self.tokens[index], {k: v[index] for k, v in self.targets.items()},
                              {k: v[index] for k, v in self.types.items()},
                              None if self.answers is None else self.answers[index])

    def to_npz(self) -> dict:
        """The arrays under flat names, for ``np.savez``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("targets", "types") and getattr(self, f.name) is not None}
        out.update({TARGET_PREFIX + k: v for k, v in self.targets.items()})
        out.update({TYPE_PREFIX + k: v for k, v in self.types.items()})
        return out

    @classmethod
    def from_npz(cls, arrays: dict) -> "QuestionArrays":
        targets = {k[len(TARGET_PREFIX):]: v for k, v in arrays.items() if k.startswith(TARGET_PREFIX)}
        types = {k[len(TYPE_PREFIX):]: v for k, v in arrays.items() if k.startswith(TYPE_PREFIX)}
        return cls(arrays["question_ids"], arrays["image_ids"], arrays["image_rows"], arrays["tokens"],
                   targets, types, arrays.get("answers"))

    def answer_strings(self) -> Optional[np.ndarray]:
        """The gold answers as str [N] ("" where none), or None where the arrays hold none."""
        return None if self.answers is None else np.char.decode(self.answers, "utf-8")


def _per_question(a: np.ndarray, n: int) -> np.ndarray:
    return a if a.ndim == 2 else a.reshape(n, -1 if n else 1)

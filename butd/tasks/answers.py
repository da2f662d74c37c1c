"""Answer labels shared by tasks: how targets are stored and the answer-prior baseline.

``single label`` (GQA, NLVR2): one answer label per question, int64, ``NO_ANSWER`` (-1) where the
question has none (its loss: ``butd.tasks.losses.single_label_loss``). VQA v2's soft scores are its
own: ``butd.tasks.vqa2``.
"""
from __future__ import annotations

import numpy as np

NO_ANSWER = -1


def majority_label(train_labels: np.ndarray) -> int:
    """The most frequent answered training label."""
    answered = train_labels[train_labels != NO_ANSWER]
    if not len(answered):
        raise ValueError("no answered training question: the majority answer is undefined")
    return int(np.bincount(answered).argmax())


def majority_baseline(train_labels: np.ndarray, gold_labels: np.ndarray, label2ans, what: str = "answer") -> tuple:
    """(description, accuracy) of always predicting the most frequent training label on
    ``gold_labels`` (None where none is answered): a single-label task's answer prior."""
    majority = majority_label(train_labels)
    gold = gold_labels[gold_labels != NO_ANSWER]
    return f"majority {what} {label2ans[majority]!r}", float((gold == majority).mean()) if len(gold) else None

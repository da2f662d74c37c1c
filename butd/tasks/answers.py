"""Answer schemes shared by tasks: how targets are stored, the loss, and the score of a prediction.

``single label`` (GQA, NLVR2): one answer label per question, int64, ``NO_ANSWER`` (-1) where the
question has none; softmax cross-entropy; the score of a prediction is 1 when its arg-max is the
label. (VQA v2's soft scores are its own: ``butd.tasks.vqa2``.)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

NO_ANSWER = -1


def single_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy [B], 1.0 where the arg-max is the label [B], 1.0 where there is a label [B])."""
    answered = (labels != NO_ANSWER).float()
    losses = F.cross_entropy(logits.float(), labels, ignore_index=NO_ANSWER, reduction="none")
    correct = (logits.argmax(dim=1) == labels).float()
    return losses, correct, answered


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

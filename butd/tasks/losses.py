"""The tasks' losses and scores of a batch: the only code of ``butd.tasks`` that needs torch.

A task's ``loss_and_score`` imports this module when it is first called (training, evaluation), so
what reads a task's files and stores (the converters, the question cache) starts without torch.

``single_label_loss`` (GQA, NLVR2): one answer label per question, ``NO_ANSWER`` (-1) where there is
none; softmax cross-entropy; a prediction scores 1 when its arg-max is the label.
``soft_score_loss`` (VQA v2): up to L (label, soft score) pairs per question; binary cross-entropy
with logits summed over the answers (the modular branch's ``per_example_bce``); a prediction scores
the soft score of its arg-max answer.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from butd.tasks.answers import NO_ANSWER


def single_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy [B], 1.0 where the arg-max is the label [B], 1.0 where there is a label [B])."""
    answered = (labels != NO_ANSWER).float()
    losses = F.cross_entropy(logits.float(), labels, ignore_index=NO_ANSWER, reduction="none")
    correct = (logits.argmax(dim=1) == labels).float()
    return losses, correct, answered


def dense_targets(labels: torch.Tensor, scores: torch.Tensor, num_answers: int, device) -> torch.Tensor:
    """float32 [B, num_answers]: ``scores`` [B, L] scattered at ``labels`` [B, L] (-1 = padding)."""
    labels, scores = labels.to(device), scores.to(device, torch.float32)
    valid = labels >= 0
    target = torch.zeros((labels.shape[0], num_answers), dtype=torch.float32, device=device)
    # padding adds 0.0 at label 0; real labels of a question are distinct
    return target.scatter_add_(1, labels.clamp(min=0), torch.where(valid, scores, torch.zeros_like(scores)))


def soft_score_loss(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                    answered: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(binary cross-entropy summed over the answers [B], the soft score of the arg-max answer [B],
    ``answered`` as float32 [B]) from ``labels`` / ``scores`` [B, L] (``dense_targets``)."""
    target = dense_targets(labels, scores, logits.shape[1], logits.device)
    losses = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(dim=1)
    score = target.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)
    return losses, score, answered.to(logits.device, torch.float32)

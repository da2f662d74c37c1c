"""GQA scoring: accuracy overall, by answer type (binary/open) and by structural and semantic type,
and predictions in the GQA submission format.

The answer types follow the official GQA evaluation script: a question is ``open`` when its
structural type is ``query`` and ``binary`` otherwise (verify, logical, choose, compare).
Questions without a gold answer (label < 0, the test split) are never scored.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

STRUCTURAL = ("verify", "query", "choose", "logical", "compare")
SEMANTIC = ("attr", "cat", "global", "obj", "rel")


def _accuracy(correct: np.ndarray, mask: np.ndarray) -> dict:
    count = int(mask.sum())
    return {"accuracy": float(correct[mask].mean()) if count else None, "count": count}


def _by_type(correct: np.ndarray, types: np.ndarray, known: Sequence[str]) -> Dict[str, dict]:
    # Known types always appear (count 0 if absent) so tables of different runs line up;
    # any other type found in the data is reported too rather than silently dropped.
    names = list(known) + sorted(set(types.tolist()) - set(known) - {""})
    return {name: _accuracy(correct, types == name) for name in names}


def score(predicted: np.ndarray, labels: np.ndarray, structural: np.ndarray,
          semantic: np.ndarray) -> dict:
    """Scores of predicted answer labels against gold labels (-1 = no gold answer).

    Returns ``{"overall", "answer_type": {binary, open}, "structural": {...}, "semantic": {...}}``,
    each entry ``{"accuracy": float or None, "count": int}``; ``None`` where nothing was scored.
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    structural, semantic = np.asarray(structural, dtype=str), np.asarray(semantic, dtype=str)
    if not (len(predicted) == len(labels) == len(structural) == len(semantic)):
        raise ValueError(f"score: lengths differ (predicted {len(predicted)}, labels {len(labels)}, "
                         f"structural {len(structural)}, semantic {len(semantic)})")
    answered = labels >= 0
    keep = np.flatnonzero(answered)
    correct = (predicted[keep] == labels[keep]).astype(np.float64)
    structural, semantic = structural[keep], semantic[keep]
    everything = np.ones(len(keep), dtype=bool)
    return {
        "overall": _accuracy(correct, everything),
        "answer_type": {"binary": _accuracy(correct, structural != "query"),
                        "open": _accuracy(correct, structural == "query")},
        "structural": _by_type(correct, structural, STRUCTURAL),
        "semantic": _by_type(correct, semantic, SEMANTIC),
    }


def format_table(scores: dict) -> str:
    """The scores as a plain-text table (group, type, accuracy %, count)."""
    rows = [("overall", "all", scores["overall"])]
    for group in ("answer_type", "structural", "semantic"):
        rows += [(group, name, entry) for name, entry in scores[group].items()]
    lines = [f"{'group':<12} {'type':<10} {'accuracy':>9} {'count':>8}", "-" * 42]
    for group, name, entry in rows:
        acc = "-" if entry["accuracy"] is None else f"{100 * entry['accuracy']:8.2f}%"
        lines.append(f"{group:<12} {name:<10} {acc:>9} {entry['count']:>8}")
    return "\n".join(lines)


def predictions(question_ids: Sequence[str], predicted: np.ndarray, label2ans: Sequence[str]) -> list:
    """``[{"questionId": ..., "prediction": ...}]``, the GQA submission format, in question order."""
    if len(question_ids) != len(predicted):
        raise ValueError(f"predictions: {len(question_ids)} question ids but {len(predicted)} predictions")
    return [{"questionId": str(q), "prediction": label2ans[int(p)]} for q, p in zip(question_ids, predicted)]

"""Scores by group, with counts, and the plain-text table every task prints.

A score table is ``{"overall": entry, group: {type: entry, ...}, ...}`` where an entry is
``{"accuracy": float or None, "count": int}`` (None where nothing was scored). ``accuracy`` is the
mean of per-question scores: 0/1 for exact-match tasks, the VQA score for VQA v2.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def mean_score(scores: np.ndarray, mask: np.ndarray) -> dict:
    """``{"accuracy": mean of scores[mask] or None, "count": mask.sum()}``."""
    count = int(mask.sum())
    return {"accuracy": float(scores[mask].mean()) if count else None, "count": count}


def by_type(scores: np.ndarray, types: np.ndarray, known: Sequence[str] = ()) -> Dict[str, dict]:
    """``mean_score`` per type. Known types always appear (count 0 if absent) so tables of different
    runs line up; any other type found in the data is reported too rather than silently dropped."""
    types = np.asarray(types, dtype=str)
    names = list(known) + sorted(set(types.tolist()) - set(known) - {""})
    return {name: mean_score(scores, types == name) for name in names}


def format_table(scores: dict, groups: Sequence[str]) -> str:
    """The scores as a plain-text table (group, type, accuracy %, count)."""
    rows = [("overall", "all", scores["overall"])]
    for group in groups:
        rows += [(group, name, entry) for name, entry in scores[group].items()]
    width = max([10] + [len(name) for _, name, _ in rows])
    lines = [f"{'group':<12} {'type':<{width}} {'accuracy':>9} {'count':>8}", "-" * (32 + width)]
    for group, name, entry in rows:
        acc = "-" if entry["accuracy"] is None else f"{100 * entry['accuracy']:8.2f}%"
        lines.append(f"{group:<12} {name:<{width}} {acc:>9} {entry['count']:>8}")
    return "\n".join(lines)

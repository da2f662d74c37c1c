"""What an evaluation report shows, gathered from a split's predictions: the most frequent confusions,
a gallery of questions sampled across types, right and wrong, and, for those questions only, a second
pass through the model for their top answers and where it looked.

    rows = confusions(reference, predicted, scores)                  # [(gold, predicted, count), ...]
    picked = sample_gallery(kinds, results, 48)                      # positions in the split
    items = gallery(lit, loader, arrays.take(picked), ...)           # one GalleryItem per question

Memory stays that of the split's labels: the confusions are counts, and attentions are computed
for the sampled questions alone (never kept for the split).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from butd.evaluation.inference import predict_batches

TOP_ANSWERS = 3
TOP_BOXES = 5
RESULTS = ("right", "partly right", "wrong", "unscored")


def result_of(score: float) -> str:
    """A question's result from its score (``Task.question_scores``): right (full score), wrong
    (none), partly right (VQA v2's 0.3-0.9) or unscored (no gold answer)."""
    if np.isnan(score):
        return "unscored"
    return "right" if score >= 1.0 else "wrong" if score <= 0.0 else "partly right"


def confusions(reference: np.ndarray, predicted: np.ndarray, scores: np.ndarray, top: int = 20
               ) -> Tuple[List[Tuple[str, str, int]], int]:
    """``(rows, total)``: the ``top`` most frequent (gold answer, predicted answer, count) over the
    questions not fully right whose prediction differs from their reference answer
    (``Task.reference_answers``), most frequent first (ties by gold, then predicted answer), and
    how many such questions there are. ``reference``, ``predicted`` str [N], ``scores`` float [N]
    (NaN: unscored, never counted)."""
    reference, predicted, scores = np.asarray(reference, dtype=str), np.asarray(predicted, dtype=str), \
        np.asarray(scores, dtype=np.float64)
    if not (len(reference) == len(predicted) == len(scores)):
        raise ValueError(f"confusions: lengths differ (reference {len(reference)}, predicted {len(predicted)}, "
                         f"scores {len(scores)})")
    wrong = (scores < 1.0) & (reference != predicted) & (reference != "")   # NaN < 1.0 is False
    counts = Counter(zip(reference[wrong].tolist(), predicted[wrong].tolist()))
    rows = sorted(((g, p, c) for (g, p), c in counts.items()), key=lambda r: (-r[2], r[0], r[1]))
    return rows[:top], int(wrong.sum())


def sample_gallery(kinds: Sequence[str], results: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """int64 [min(n, N)]: positions of questions spread over the (kind, result) strata: each
    stratum's questions shuffled (``seed``), then one from each stratum in turn (kinds in order of
    first appearance, results in ``RESULTS`` order) until ``n`` are taken, in that order (the
    gallery's first cards show every stratum)."""
    kinds, results = np.asarray(kinds, dtype=str), np.asarray(results, dtype=str)
    if len(kinds) != len(results):
        raise ValueError(f"sample_gallery: {len(kinds)} kinds for {len(results)} results")
    rng = np.random.default_rng(seed)
    strata = []
    for kind in dict.fromkeys(kinds.tolist()):
        for result in RESULTS:
            members = np.flatnonzero((kinds == kind) & (results == result))
            if len(members):
                strata.append(rng.permutation(members))
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(s) for s in strata):
        picked += [int(s[depth]) for s in strata if depth < len(s)][:n - len(picked)]
        depth += 1
    return np.array(picked, dtype=np.int64)


@dataclass
class ImageView:
    """One image of a gallery question: its id, its size in pixels (the store's ``img_w``,
    ``img_h``), and the boxes to draw, each (x0, y0, x1, y1) over its width and height with the
    model's attention ``weights`` on it (None for a model without attention: FiLM), its ``rows``,
    the box's row among the question's box rows (the attention's index), and its ``ranks``, 1 for
    the question's most attended box (over all its images; None without attention)."""
    image_id: str
    size: Tuple[int, int]
    boxes: np.ndarray
    weights: Optional[np.ndarray]
    rows: np.ndarray
    ranks: Optional[np.ndarray] = None


@dataclass
class GalleryItem:
    """One question of the gallery: ``question`` as the model read it (its tokens), its ``types``
    by name, its ``gold`` answer(s) as listed by ``Task.gold_listing``, the ``top`` predicted
    answers as (answer, probability, the score it would get), its ``score`` and ``result``
    (``result_of``: of the first answer, the prediction), its images."""
    question_id: str
    question: str
    types: Dict[str, str]
    gold: List[str]
    top: List[Tuple[str, float, float]]
    score: float
    result: str
    images: List[ImageView] = field(default_factory=list)


def question_text(tokens: np.ndarray, idx2word: Sequence[str]) -> str:
    """The words of a front-padded token row (padding and unknown words, which share the padding
    index, left out), the tokenizer's ``'s`` joined back to its word."""
    return " ".join(idx2word[t] for t in tokens.tolist() if 0 <= t < len(idx2word)).replace(" 's", "'s")


def gallery(lit, loader, questions, task, written: Sequence[str], idx2word: Sequence[str], sizes: np.ndarray,
            device, top_boxes: int = TOP_BOXES) -> List[GalleryItem]:
    """The gallery items of ``questions`` (a ``QuestionArrays``, the sampled questions, in order),
    predicted by ``lit`` through ``loader`` (over those questions): the top answers (``written``:
    the answer string per label), the ``top_boxes`` most attended boxes of each image and their
    weights (every real box, without weights, for a model without attention). ``sizes`` int [N, I, 2]:
    the (width, height) of each question's images."""
    n = len(questions)
    if not n:
        return []
    outputs: List[Optional[tuple]] = [None] * n
    for out in predict_batches(lit, loader, device):
        labels, probabilities = out.top(TOP_ANSWERS)
        for b, position in enumerate(out.index.tolist()):
            attention = None if out.attention is None else out.attention[b]
            outputs[position] = (labels[b], probabilities[b], attention, out.boxes[b], out.box_mask[b])
    missing = [questions.question_ids[p] for p, o in enumerate(outputs) if o is None]
    if missing:
        raise RuntimeError(f"the gallery's loader skipped {len(missing)} question(s), e.g. {missing[0]}")
    top = np.array([o[0] for o in outputs], dtype=np.int64).reshape(n, -1)
    # the score each of the top answers would get: the first is the prediction's
    top_scores = np.stack([task.question_scores(questions, top[:, k], written) for k in range(top.shape[1])], axis=1)
    gold = task.gold_listing(questions, written)
    images = questions.images_per_question
    items = []
    for p, (labels, probabilities, attention, boxes, mask) in enumerate(outputs):
        per_image = len(boxes) // images
        # the most attended real boxes of the question, over all its images (NLVR2: left and right)
        shown = np.flatnonzero(mask)
        if attention is not None:
            shown = shown[np.argsort(-attention[shown], kind="stable")[:top_boxes]]
        views = []
        for i in range(images):
            on_image = np.flatnonzero(shown // per_image == i)
            rows = shown[on_image]
            views.append(ImageView(str(questions.image_ids[p, i]), tuple(int(v) for v in sizes[p, i]),
                                   boxes[rows], None if attention is None else attention[rows], rows,
                                   None if attention is None else on_image + 1))
        items.append(GalleryItem(
            question_id=str(questions.question_ids[p]), question=question_text(questions.tokens[p], idx2word),
            types={name: str(values[p]) for name, values in questions.types.items() if str(values[p])},
            gold=gold[p], top=[(written[int(a)], float(q), float(s)) for a, q, s in zip(labels, probabilities, top_scores[p])],
            score=float(top_scores[p, 0]), result=result_of(float(top_scores[p, 0])), images=views))
    return items

"""GQA's official figures, computed in one streaming pass: accuracy, binary, open, consistency,
validity, plausibility, distribution, grounding, and accuracy per structural type, semantic type,
number of reasoning steps and number of words.

The rules are those of GQA's official ``eval.py`` (gqadataset.org); ``butd.reference.gqa_eval`` is
its transcription, which the tests hold these figures against. Every figure is over the balanced
questions (``isBalanced``), by exact string match of the prediction with ``answer``:

    files = OfficialFiles.find("data/GQA-Questions", "val")
    scorer = GQAScorer(consistency=bool(files.all_questions),
                       scenes=read_scene_graphs(files.scene_graphs) if files.scene_graphs else None)
    for qid, entry in question_stream:                 # every question of the file, in file order
        scorer.add(qid, entry, prediction, cells)      # cells: the attention written for it, or None
    scores = scorer.finish(choices=files.choices)

Memory stays flat in the questions streamed: the scorer keeps sums, not questions. Consistency needs,
per question of the all-questions file, its id and whether its prediction is right (compact numpy
chunks, ~10 bytes a question: val_all's 2M questions take ~20 MB), and the entailed ids of the
balanced questions answered right; validity and plausibility, the prediction of each balanced
question until the choices file is streamed at the end; grounding, the scene graphs' boxes.

Where the official script cannot run or divides by zero, the figure is ``None`` with the reason in
``not_available`` instead (an entailed question missing from the file, a scene graph missing an
image, no balanced question with a global group); a box of zero area adds no grounding here (the
script raises ZeroDivisionError).
"""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import numpy as np

from butd.tasks.json_stream import object_items

ALL_QUESTIONS = "{split}_all_questions.json"
CHOICES = "{split}_choices.json"
SCENE_GRAPHS = "{split}_sceneGraphs.json"
BALANCED = "{split}_balanced_questions.json"
# Splits whose all-questions file evaluate.py predicts whole (the official evaluation's tiers).
ALL_QUESTIONS_SPLITS = ("val", "testdev")
STRUCTURAL = ("verify", "query", "choose", "logical", "compare")
SEMANTIC = ("attr", "cat", "global", "obj", "rel")
# The operations that do not count as reasoning steps (the official getStepsNum).
NOT_A_STEP = ("exist", "query: name", "choose name")
# Where a question's detailed type contains "Common", the official validity/plausibility group.
COMMON_GROUP = ("color", "material", "shape")
# The official figures, in the order evaluate.py prints them.
METRICS = ("accuracy", "binary", "open", "consistency", "validity", "plausibility", "distribution", "grounding")
_CHUNK = 1 << 16
# Decimals of the attention written (coordinates and weights): ~2 KB a question of 36 boxes; the
# grounding figure is computed from the rounded values, exactly what the file holds.
ATTENTION_DECIMALS = 6


# ----------------------------------------------------------------------------------------------
# The official files beside the balanced questions.

def official_paths(questions_dir: str, name: str) -> List[str]:
    """The file ``<questions_dir>/<name>``, or else the chunks of the official chunked folder
    ``<questions_dir>/<stem>/<stem>_*.json`` (train_all_questions is released that way; the official
    ``loadFile`` reads any file so), in chunk-number order; [] where neither is there."""
    path = os.path.join(questions_dir, name)
    if os.path.isfile(path):
        return [path]
    stem, ext = os.path.splitext(name)
    folder = os.path.join(questions_dir, stem)
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(re.escape(stem) + r"_(.*)" + re.escape(ext) + r"\Z")
    found = [(m.group(1), f) for f in os.listdir(folder) if (m := pattern.match(f))]
    found.sort(key=lambda kf: (0, int(kf[0]), "") if kf[0].isdigit() else (1, 0, kf[0]))
    return [os.path.join(folder, f) for _, f in found]


@dataclass
class OfficialFiles:
    """Which of GQA's evaluation files a split has in ``questions_dir``: each a list of paths (one
    file or a folder's chunks), empty where absent. ``val`` has them all in the official release;
    ``testdev`` has no choices and no scene graphs (a user may add them)."""
    split: str
    questions_dir: str
    balanced: List[str] = field(default_factory=list)
    all_questions: List[str] = field(default_factory=list)
    choices: List[str] = field(default_factory=list)
    scene_graphs: List[str] = field(default_factory=list)

    @classmethod
    def find(cls, questions_dir: str, split: str) -> "OfficialFiles":
        def paths(pattern):
            return official_paths(questions_dir, pattern.format(split=split))
        return cls(split, questions_dir, paths(BALANCED),
                   paths(ALL_QUESTIONS) if split in ALL_QUESTIONS_SPLITS else [],
                   paths(CHOICES), paths(SCENE_GRAPHS))

    def name(self, pattern: str) -> str:
        """The file name a figure needs, e.g. ``testdev_choices.json``."""
        return pattern.format(split=self.split)


    def reasons(self, question_file: bool, attention: Optional[str]) -> Dict[str, str]:
        """Why each figure these files (or the model) cannot give is not available: ``question_file``
        whether the questions' JSON objects are at hand (else only what the question cache holds),
        ``attention`` None for a model with attention over boxes, else its name (``"FiLM"``)."""
        reasons = {}
        need_questions = f"needs {self.name(BALANCED)}"
        if self.split not in ALL_QUESTIONS_SPLITS:
            reasons["consistency"] = f"computed on {' and '.join(ALL_QUESTIONS_SPLITS)} only (their all-questions files)"
        elif not self.all_questions:
            reasons["consistency"] = f"needs {self.name(ALL_QUESTIONS)}"
        for name in ("validity", "plausibility"):
            if not self.choices or not question_file:
                reasons[name] = f"needs {self.name(CHOICES)}" if not self.choices else need_questions
        if attention is not None:
            reasons["grounding"] = attention
        elif not self.scene_graphs or not question_file:
            reasons["grounding"] = f"needs {self.name(SCENE_GRAPHS)}" if not self.scene_graphs else need_questions
        if not question_file:
            reasons.update(distribution=need_questions, steps=need_questions, words=need_questions)
        return reasons


# ----------------------------------------------------------------------------------------------
# Per question.

def steps_number(semantic: Iterable[dict]) -> int:
    """The number of reasoning steps: the semantic operations whose ``"operation: argument"`` text
    contains none of ``NOT_A_STEP`` (official ``getStepsNum``)."""
    return sum(1 for c in semantic if not any(o in f"{c['operation']}: {c['argument']}" for o in NOT_A_STEP))


def words_number(question: str) -> int:
    """The number of whitespace-separated words (official ``getWordsNum``)."""
    return len(question.split())


def belongs(prediction: str, group, detailed: str) -> bool:
    """Whether the prediction is in the choices ``group``; ``COMMON_GROUP`` instead where the
    question's detailed type contains ``Common`` (official ``belongs``)."""
    if "Common" in detailed:
        group = COMMON_GROUP
    return prediction in group


def attention_cells(boxes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float64 [n, 5]: the official object-based attention of one question, a cell per box
    (x0, y0, x1, y1, weight): ``boxes`` [n, 4] over the image's width and height, clipped to
    [0, 1], and ``weights`` [n], each rounded to ``ATTENTION_DECIMALS``."""
    cells = np.empty((len(boxes), 5), dtype=np.float64)
    cells[:, :4] = np.clip(np.asarray(boxes, dtype=np.float64), 0.0, 1.0)
    cells[:, 4] = weights
    return np.round(cells, ATTENTION_DECIMALS)


def attention_entry(question_id: str, cells: np.ndarray) -> dict:
    """One entry of the official attentions file: ``{"questionId", "attention": [[x0, y0, x1, y1, weight], ...]}``."""
    return {"questionId": str(question_id), "attention": cells.tolist()}


def read_scene_graphs(paths: List[str], images: Optional[set] = None) -> Dict[str, tuple]:
    """``{image id: (width, height, {object id: (x, y, w, h)})}`` from ``<split>_sceneGraphs.json``
    (``{image id: {"width", "height", "objects": {object id: {"x", "y", "w", "h", ...}}}}``),
    streamed; only ``images`` if given. Raises ``ValueError`` naming the file and image where a
    scene graph lacks its size or an object its box."""
    scenes = {}
    for path in paths:
        for image, graph in object_items(path):
            if images is not None and image not in images:
                continue
            try:
                objects = {oid: (o["x"], o["y"], o["w"], o["h"]) for oid, o in graph["objects"].items()}
                scenes[image] = (graph["width"], graph["height"], objects)
            except (KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}: image {image}: expected a scene graph with width, height and objects "
                                 f"with x, y, w, h (missing {e})") from None
    return scenes


def regions(entry: dict, scene: tuple) -> np.ndarray:
    """float64 [R, 4]: the boxes (x0, y0, x1, y1 over the image's width and height) of the objects
    a question's ``annotations.question`` and ``annotations.fullAnswer`` point to (official
    ``getRegion``). The official whole-image test never holds (``butd.reference.gqa_eval``), so
    the whole image is never a region. Raises ``KeyError`` for an object the scene graph lacks."""
    width, height, objects = scene
    annotations = entry.get("annotations") or {}
    pointers = [*(annotations.get("question") or {}).values(), *(annotations.get("fullAnswer") or {}).values()]
    xywh = np.array([objects[p] for p in pointers], dtype=np.float64).reshape(-1, 4)
    x, y, w, h = xywh.T
    return np.stack([x / width, y / height, (x + w) / width, (y + h) / height], axis=1)


def grounding_score(regions: np.ndarray, cells: np.ndarray) -> float:
    """Sum over regions [R, 4] and cells [C, 5] (x0, y0, x1, y1, weight) of weight x (area of
    cell and region) / (area of cell) (official ``computeGroundingScore``, object features). A cell
    of zero area adds nothing (the official script raises ZeroDivisionError)."""
    if not len(regions) or not len(cells):
        return 0.0
    c, r = cells[None, :, :4], regions[:, None, :]
    dx = np.minimum(c[..., 2], r[..., 2]) - np.maximum(c[..., 0], r[..., 0])
    dy = np.minimum(c[..., 3], r[..., 3]) - np.maximum(c[..., 1], r[..., 1])
    overlap = np.where(dx > 0, dx, 0.0) * np.where(dy > 0, dy, 0.0)
    area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    rate = np.divide(overlap, area, out=np.zeros_like(overlap), where=area != 0)
    return float((rate * cells[:, 4]).sum())


def chi_square(gold: Dict[str, Counter], predicted: Dict[str, Counter]) -> Optional[float]:
    """Sum over groups of (the group's sum over gold answers of (o - e)^2 / e) x (its gold count),
    over the total gold count (official ``chiSquare``); None where no group has a gold answer."""
    total_score, total = 0.0, 0
    for group, answers in gold.items():
        score = sum((predicted[group].get(a, 0) - e) ** 2 / e for a, e in answers.items())
        count = sum(answers.values())
        total_score += score * count
        total += count
    return total_score / total if total else None


# ----------------------------------------------------------------------------------------------
# The scorer.

def _entry(correct: float, count: int) -> dict:
    return {"accuracy": correct / count if count else None, "count": count}


class GQAScorer:
    """Accumulates GQA's official figures over questions added in file order (see the module
    docstring). ``consistency``: record every question for the consistency figure (give it every
    question of the all-questions file). ``scenes``: ``read_scene_graphs``'s result, to compute
    grounding from the ``cells`` given with each balanced question (None: no grounding)."""

    def __init__(self, consistency: bool = False, scenes: Optional[dict] = None):
        self.consistency, self.scenes = consistency, scenes
        self.sums = {g: defaultdict(lambda: [0.0, 0]) for g in ("answer_type", "structural", "semantic",
                                                                  "steps", "words")}
        self.correct, self.count = 0.0, 0
        self.gold, self.predicted = defaultdict(Counter), defaultdict(Counter)
        self.grounding, self.grounding_problem = 0.0, None
        # validity and plausibility: the prediction of each scored question, until the choices are read
        self.position: Dict[str, int] = {}
        self.predictions: List[str] = []
        self.common: List[bool] = []
        # consistency: every question's id and whether it is right; the balanced right ones' entailed ids
        self._ids, self._right, self._entailed, self._owner = [], [], [], []
        self._chunk_ids, self._chunk_right, self._chunk_entailed, self._chunk_owner = [], [], [], []
        self.owners = 0

    def add(self, qid: str, entry: dict, prediction: str, cells: Optional[np.ndarray] = None,
            scored: bool = True) -> None:
        """One question of the file: ``entry`` its JSON object, ``prediction`` the answer written
        for it, ``cells`` float64 [n, 5] the attention written for it (x0, y0, x1, y1, weight).
        Figures count it where it is balanced and ``scored`` (False: a question the evaluation left
        out, e.g. its image has no features; it still counts as an entailed question)."""
        gold = entry.get("answer")
        right = prediction == gold
        if self.consistency:
            self._chunk_ids.append(qid)
            self._chunk_right.append(right)
        if not (scored and entry.get("isBalanced", True)):
            self._flush(_CHUNK)
            return
        score = float(right)
        self.correct += score
        self.count += 1
        types = entry.get("types") or {}
        structural = types.get("structural") or ""
        for group, name in (("answer_type", "open" if structural == "query" else "binary"),
                            ("structural", structural), ("semantic", types.get("semantic") or ""),
                            ("steps", str(steps_number(entry.get("semantic") or []))),
                            ("words", str(words_number(entry["question"])))):
            total = self.sums[group][name]
            total[0] += score
            total[1] += 1
        global_group = (entry.get("groups") or {}).get("global")
        if global_group is not None:
            self.gold[global_group][gold] += 1
            self.predicted[global_group][prediction] += 1
        self.position[qid] = len(self.predictions)
        self.predictions.append(prediction)
        self.common.append("Common" in (types.get("detailed") or ""))
        if self.scenes is not None and self.grounding_problem is None:
            self._ground(qid, entry, cells)
        if self.consistency and right:
            entailed = [e for e in entry.get("entailed") or () if e != qid]
            if entailed:
                self._chunk_entailed += entailed
                self._chunk_owner += [self.owners] * len(entailed)
                self.owners += 1
        self._flush(_CHUNK)

    def _ground(self, qid: str, entry: dict, cells) -> None:
        scene = self.scenes.get(entry.get("imageId"))
        if scene is None:
            self.grounding_problem = f"the scene graphs have no image {entry.get('imageId')} (question {qid})"
            return
        if cells is None:
            self.grounding_problem = f"no attention for question {qid}"
            return
        try:
            self.grounding += grounding_score(regions(entry, scene), cells)
        except KeyError as e:
            self.grounding_problem = (f"the scene graph of image {entry.get('imageId')} has no object {e} "
                                      f"(question {qid})")

    def _flush(self, at_least: int) -> None:
        """Move the Python lists of ids into compact numpy chunks once they hold ``at_least``."""
        if len(self._chunk_ids) >= at_least:
            self._ids.append(_encode(self._chunk_ids))
            self._right.append(np.array(self._chunk_right, dtype=bool))
            self._chunk_ids, self._chunk_right = [], []
        if len(self._chunk_entailed) >= at_least:
            self._entailed.append(_encode(self._chunk_entailed))
            self._owner.append(np.array(self._chunk_owner, dtype=np.int64))
            self._chunk_entailed, self._chunk_owner = [], []

    # -- the figures -------------------------------------------------------------------------------
    def finish(self, choices: Optional[List[str]] = None) -> dict:
        """The scores: the table (``overall``, ``answer_type``, ``structural``, ``semantic``, ``steps``,
        ``words``: ``{"accuracy": fraction or None, "count"}``), ``official`` (each of ``METRICS`` in
        the official units: percent, distribution a plain number; None where not computed) and
        ``not_available`` (the reason of each None this scorer knows). ``choices``: the paths of
        ``<split>_choices.json``, streamed here for validity and plausibility."""
        self._flush(1)
        sums = self.sums
        table = {"overall": _entry(self.correct, self.count),
                 "answer_type": {k: _entry(*sums["answer_type"][k]) for k in ("binary", "open")},
                 "structural": _by_type(sums["structural"], STRUCTURAL),
                 "semantic": _by_type(sums["semantic"], SEMANTIC),
                 "steps": _by_number(sums["steps"]), "words": _by_number(sums["words"])}
        official = dict.fromkeys(METRICS)
        missing = {}

        def percent(entry):
            return None if entry["accuracy"] is None else 100 * entry["accuracy"]
        official["accuracy"] = percent(table["overall"])
        official["binary"] = percent(table["answer_type"]["binary"])
        official["open"] = percent(table["answer_type"]["open"])
        official["distribution"] = None if (chi := chi_square(self.gold, self.predicted)) is None else chi / 100
        if official["distribution"] is None:
            missing["distribution"] = "no balanced question has a global group"
        if self.scenes is not None:
            if self.grounding_problem:
                missing["grounding"] = self.grounding_problem
            elif self.count:
                official["grounding"] = 100 * self.grounding / self.count
        if choices:
            valid, plausible, lacking = self._choices(choices)
            if lacking:
                missing["validity"] = missing["plausibility"] = lacking
            elif self.count:
                official["validity"], official["plausibility"] = 100 * valid / self.count, 100 * plausible / self.count
        if self.consistency:
            official["consistency"], why = self._consistency()
            if why:
                missing["consistency"] = why
        for name in ("accuracy", "binary", "open"):
            if official[name] is None:
                missing[name] = "no balanced question" if name == "accuracy" else f"no {name} balanced question"
        return {**table, "official": official, "not_available": missing}

    def _choices(self, paths: List[str]):
        valid = plausible = 0
        seen = np.zeros(len(self.predictions), dtype=bool)
        for path in paths:
            for qid, entry in object_items(path):
                k = self.position.get(qid)
                if k is None or seen[k]:
                    continue
                seen[k] = True
                detailed = "Common" if self.common[k] else ""
                valid += belongs(self.predictions[k], entry.get("valid") or (), detailed)
                plausible += belongs(self.predictions[k], entry.get("plausible") or (), detailed)
        if not seen.all():
            first = next(q for q, k in self.position.items() if not seen[k])
            return 0, 0, (f"{os.path.basename(paths[0])} lacks {int((~seen).sum())} balanced question(s), "
                          f"e.g. {first}")
        return valid, plausible, None

    def _consistency(self):
        if not self.owners:
            return None, "no balanced question answered right has entailed questions"
        ids, right = np.concatenate(self._ids), np.concatenate(self._right)
        entailed, owner = np.concatenate(self._entailed), np.concatenate(self._owner)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        at = np.minimum(np.searchsorted(ids, entailed), len(ids) - 1)
        found = ids[at] == entailed
        if not found.all():
            first = entailed[np.flatnonzero(~found)[0]].decode()
            return None, (f"{int((~found).sum())} entailed question(s) are not in the all-questions file, "
                          f"e.g. {first}")
        per_question = np.bincount(owner, weights=right[order[at]], minlength=self.owners) / \
            np.bincount(owner, minlength=self.owners)
        return 100 * float(per_question.mean()), None


def _encode(ids: List[str]) -> np.ndarray:
    """Question ids as UTF-8 bytes (numpy ``S``): a quarter of the memory of ``U``, still sortable."""
    return np.char.encode(np.array(ids, dtype=str), "utf-8") if ids else np.zeros(0, dtype="S1")


def _by_type(sums: dict, known) -> dict:
    names = list(known) + sorted(set(sums) - set(known) - {""})
    return {name: _entry(*sums[name]) if name in sums else _entry(0.0, 0) for name in names}


def _by_number(sums: dict) -> dict:
    return {k: _entry(*sums[k]) for k in sorted(sums, key=int)}


def format_official(scores: dict) -> str:
    """The official figures as evaluate.py prints them, one a line: percent with 2 decimals, the
    distribution a plain number, or ``not available (why)``."""
    lines = []
    for name in METRICS:
        value = scores["official"].get(name)
        if value is None:
            text = f"not available ({scores.get('not_available', {}).get(name, 'not computed')})"
        elif name == "distribution":
            text = f"{value:.2f} (lower is better)"
        else:
            text = f"{value:.2f}%"
        lines.append(f"{name:<13} {text}")
    return "\n".join(lines)

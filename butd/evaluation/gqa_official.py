"""GQA's official evaluation around a checkpoint: the files the official ``eval.py`` reads, written
by us, and its figures (``butd.tasks.gqa_metrics``) computed from exactly them.

Two ways, by what lies beside the balanced question file (``OfficialFiles``):

- ``<split>_all_questions.json`` (or its official chunked folder) is there (``val``, ``testdev``):
  ``predict_all_questions`` streams it (~2M questions for val): each chunk tokenized with the
  question cache's vocabulary, its images resolved to rows of the split's feature store, predicted
  in batches through the model, written to the predictions file (every question) and the attentions
  file (every balanced one), and scored, without ever holding the whole file.
- otherwise ``score_cached`` scores the split predicted from the question cache, reading the
  balanced question file (streamed) for what the cache does not hold (semantic steps, groups,
  annotations); without that file, only what the cache holds (accuracy by type).

Both write ``<predictions stem>-attentions.json`` for a model with attention over boxes (BUTD) in
the official object-based format ``[{"questionId", "attention": [[x0, y0, x1, y1, weight], ...]}]``
(``gqa_metrics.attention_cells``), and compute grounding from those very values.
"""
from __future__ import annotations

import contextlib
import json
import os
from itertools import repeat
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from butd.evaluation.inference import SplitPredictions, predict_split
from butd.loading.batches import BatchDataset
from butd.loading.loaders import make_loader
from butd.questions import QuestionArrays, QuestionFileError, read_manifest
from butd.tasks.answers import majority_label
from butd.tasks.gqa import prediction_entry, question_chunks
from butd.tasks.gqa_metrics import GQAScorer, OfficialFiles, attention_cells, attention_entry, read_scene_graphs
from butd.tasks.json_stream import object_items
from butd.text import pad_front, split_batch

# Questions read, tokenized and predicted at a time from an all-questions file: bounded memory
# (their JSON objects and tensors), a loader made per chunk.
CHUNK_BATCHES = 16


class JsonArrayWriter:
    """A JSON array written element by element (the same text as ``json.dump`` of the list) into
    ``<path>.partial``, renamed to ``path`` when the ``with`` block ends without error and removed
    when it raises: a file that exists is complete."""

    def __init__(self, path: str):
        self.path, self.partial, self.count = path, path + ".partial", 0

    def __enter__(self) -> "JsonArrayWriter":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.file = open(self.partial, "w")
        self.file.write("[")
        return self

    def add(self, element) -> None:
        self.file.write((", " if self.count else "") + json.dumps(element))
        self.count += 1

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.file.write("]")
        self.file.close()
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            os.remove(self.partial)


def _writer(path: Optional[str]):
    return JsonArrayWriter(path) if path else contextlib.nullcontext()


def attentions_path(predictions_path: str) -> str:
    """``<predictions stem>-attentions.json`` beside the predictions."""
    return os.path.splitext(predictions_path)[0] + "-attentions.json"


def _complete(scores: dict, files: OfficialFiles, question_file: bool, attention: Optional[str]) -> dict:
    """The reasons of the figures the files or the model cannot give before the scorer's own."""
    scores["not_available"] = {**scores.get("not_available", {}), **files.reasons(question_file, attention)}
    return scores


def score_cached(task, files: OfficialFiles, arrays: QuestionArrays, predicted: SplitPredictions, written: list,
                 ids: list, answers: list, attentions: Optional[str], attention: Optional[str]) -> dict:
    """The official figures of a split predicted from the question cache (``arrays``, ``predicted``):
    ``ids``/``answers`` the predictions file's questions and answers (cached ones, and any the cache
    left out), ``written`` the answer written per label; writes the attentions file to
    ``attentions`` (None: none). ``attention``: None for a model with attention, else its name.
    Raises ``ValueError`` if the balanced question file holds other questions than the cache."""
    question_file = bool(files.balanced)
    scenes = None
    if question_file and files.scene_graphs and attentions:
        scenes = read_scene_graphs(files.scene_graphs, set(arrays.image_ids[:, 0].tolist()))
    rows = arrays.image_rows[:, 0]
    with _writer(attentions) as written_attention:
        if not question_file:
            scores = task.evaluate(arrays, predicted.labels, written)
            scores["official"] = {name: None if e["accuracy"] is None else 100 * e["accuracy"] for name, e in
                                  (("accuracy", scores["overall"]), *scores["answer_type"].items())}
            if attentions:
                for p, qid in enumerate(arrays.question_ids.tolist()):
                    written_attention.add(attention_entry(qid, attention_cells(*predicted.cells(p, rows[p]))))
            return _complete(scores, files, False, attention)
        position = {q: p for p, q in enumerate(arrays.question_ids.tolist())}
        answer_of = dict(zip(ids, answers))
        scorer, matched = GQAScorer(scenes=scenes), 0
        for path in files.balanced:
            for qid, entry in object_items(path):
                p = position.get(qid)
                cells = None
                if p is not None and attentions:
                    cells = attention_cells(*predicted.cells(p, rows[p]))
                    written_attention.add(attention_entry(qid, cells))
                if qid in answer_of:
                    scorer.add(qid, entry, answer_of[qid], cells, scored=p is not None)
                matched += p is not None
        if matched != len(arrays):
            raise ValueError(f"{', '.join(files.balanced)}: holds {matched} of the {len(arrays)} {files.split} questions "
                             "of the question cache: not the file the cache was built from (rebuild it)")
    return _complete(scorer.finish(files.choices if question_file else None), files, True, attention)


def predict_all_questions(lit, dm, split: str, files: OfficialFiles, written: list, device: torch.device,
                          out: str, attentions: Optional[str], attention: Optional[str], cached: Sequence[str],
                          say=print, positions: Optional[dict] = None) -> tuple:
    """Predict every question of ``files.all_questions`` with ``lit`` (``dm``: the set-up
    ``VQADataModule`` of its question cache), streamed, and write them to ``out`` (the official
    predictions file) and, for every balanced question, their attention to ``attentions`` (None:
    none); returns ``(scores, questions written, left out, labels)``. ``written``: the answer written per
    label; ``attention`` None for a model with attention, else its name. A question whose image has
    no row in the split's store is an error naming it, unless the question cache was built with
    ``--drop_missing``: it is then answered with the most frequent training answer and left out of
    the figures (``left out``). ``positions``: ``{question id: position}`` of the questions whose
    predicted labels to keep (the question cache's, for a report); ``labels`` is then int64
    [len(positions)], -1 where the file did not hold the question, else None. ``cached``: the
    question ids of the split's question cache; a file without every one of them is an error (the
    figures and the answer-prior baseline, which is computed over the cache, would count other
    questions)."""
    task, vocab, store = dm.task, dm.vocab, dm.store(split)
    manifest = read_manifest(dm.questions_dir)
    max_length, drop_missing = manifest["summary"]["max_length"], manifest["inputs"]["settings"]["drop_missing"]
    fallback = majority_label(dm.questions(dm.train_split).targets["labels"]) if drop_missing else 0
    row_of = {task.image_key(i): r for r, i in enumerate(store.image_ids().tolist())}
    scenes = read_scene_graphs(files.scene_graphs) if files.scene_graphs and attentions else None
    scorer, left_out = GQAScorer(consistency=True, scenes=scenes), 0
    where = files.all_questions[0] if len(files.all_questions) == 1 else \
        f"{os.path.dirname(files.all_questions[0])} ({len(files.all_questions)} chunks)"
    say(f"[*] predicting every {split} question of {where}")
    kept_labels = None if positions is None else np.full(len(positions), -1, dtype=np.int64)
    cached, held = set(cached), set()
    progress = tqdm(unit=" questions", disable=None, smoothing=0.1)
    with JsonArrayWriter(out) as written_predictions, _writer(attentions) as written_attention, progress:
        for raw, entries in question_chunks(files.all_questions, CHUNK_BATCHES * dm.batch_size):
            n = len(raw)
            words, lengths = split_batch(raw.questions)
            tokens = pad_front(vocab.lookup(words), lengths, max_length, vocab.padding_idx)
            image_ids = np.array(raw.image_ids[0], dtype=str)
            rows = np.fromiter(map(row_of.get, map(task.image_key, raw.image_ids[0]), repeat(-1)), np.int64, count=n)
            kept = np.flatnonzero(rows >= 0)
            if len(kept) < n:
                i = int(np.flatnonzero(rows < 0)[0])
                if not drop_missing:
                    raise QuestionFileError(
                        f"{raw.path}: question {raw.question_ids[i]} asks about image {image_ids[i]}, which has no "
                        f"row in the feature store {store.path} ({n - len(kept)} such question(s) in this chunk); "
                        "convert the right features, or build the question cache with --drop_missing to answer "
                        "them with the most frequent training answer")
                left_out += n - len(kept)
            chunk = QuestionArrays(np.array(raw.question_ids, dtype=str)[kept], image_ids[kept], rows[kept], tokens[kept])
            loader = make_loader(BatchDataset(chunk, store), dm.batch_size, pin_memory=device.type == "cuda")
            predicted = predict_split(lit, loader, len(kept), device, chunk.image_rows if attentions else None)
            labels = np.full(n, fallback, dtype=np.int64)
            labels[kept] = predicted.labels
            at = np.full(n, -1, dtype=np.int64)
            at[kept] = np.arange(len(kept))
            for i, (qid, entry) in enumerate(zip(raw.question_ids, entries)):
                answer, p = written[labels[i]], int(at[i])
                written_predictions.add(prediction_entry(qid, answer))
                cells = None
                if attentions and p >= 0 and entry.get("isBalanced", True):
                    cells = attention_cells(*predicted.cells(p, rows[i]))
                    written_attention.add(attention_entry(qid, cells))
                scorer.add(qid, entry, answer, cells, scored=p >= 0)
                if qid in cached:
                    held.add(qid)
                if positions is not None and p >= 0 and qid in positions:
                    kept_labels[positions[qid]] = labels[i]
            progress.update(n)
        count = written_predictions.count
        if len(held) != len(cached):   # inside the writers: no predictions file is left looking complete
            raise ValueError(f"{where}: holds {len(held)} of the {len(cached)} {split} questions of the question "
                             f"cache (not {next(iter(cached - held))}): not the all-questions file of the balanced "
                             "file the cache was built from")
    return _complete(scorer.finish(files.choices), files, True, attention), count, left_out, kept_labels

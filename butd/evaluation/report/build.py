"""An evaluation's report: one self-contained HTML file (``evaluate.py --report``).

    path = write_report(lit, dm, split, labels, written, scores, checkpoint=CKPT, predictions=OUT,
                        device=device, images="images/", examples=48)

``labels`` are the predictions evaluate.py made over the split (one pass over it); the report adds a
pass over the sampled gallery questions only, for their top answers and attention. Everything the
page shows is inline: charts and pictures as base64 PNG and JPEG, the styles and the filter's
script in the page, so the file opens anywhere once copied, with no network access.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from typing import Optional, Sequence

import numpy as np

from butd.evaluation.inference import has_attention
from butd.evaluation.report import charts, gather, page
from butd.evaluation.report.images import PAIR_HEIGHT, label_positions, picture_of

# How the score groups of the tasks (``Task.evaluate``) read as chart titles.
GROUP_TITLES = {"answer_type": "answer type", "structural": "structural type", "semantic": "semantic type",
                "steps": "number of reasoning steps", "words": "number of words in the question",
                "question_type": "question type"}
# Groups of one figure each, shown among the headline figures (NLVR2: the share of sentences whose
# every image pair is right), with their labels.
HEADLINE_GROUPS = {"consistency": "consistency"}
# The main model settings shown, in order (``ModelConfig`` and ``OptimConfig`` fields).
MODEL_SETTINGS = ("hidden", "emb_dim", "rnn", "rnn_layers", "bidirectional", "weight_norm", "attention_dropout",
                  "answer_dropout", "q_dropout", "emb_dropout", "freeze_embeddings")
OPTIM_SETTINGS = ("opt", "lr", "weight_decay", "bsz", "epochs", "max_steps", "gradient_clip", "seed")


def report_path(predictions: str) -> str:
    """``<predictions stem>-report.html`` beside the predictions."""
    return os.path.splitext(predictions)[0] + "-report.html"


def metrics_file(checkpoint: str) -> str:
    """Where train.py wrote the metrics of ``checkpoint``'s run: ``<checkpoint dir>/runs/<run>/x.ckpt``
    -> ``<checkpoint dir>/metrics/<run>-metrics.json``."""
    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    return os.path.join(os.path.dirname(os.path.dirname(run_dir)), "metrics",
                        f"{os.path.basename(run_dir)}-metrics.json")


def score_groups(scores: dict) -> dict:
    """``{group: {type: {"accuracy", "count"}}}``: the by-type tables of ``scores`` (``butd.tasks.scores``)."""
    return {name: value for name, value in scores.items()
            if isinstance(value, dict) and value and name not in ("overall", "official", "not_available")
            and all(isinstance(e, dict) and {"accuracy", "count"} <= set(e) for e in value.values())}


def score_charts(scores: dict) -> list:
    """``[{"title", "uri"}]``: the headline figures (overall accuracy, the official figures in percent
    where present, ``HEADLINE_GROUPS``) beside the answer-prior baseline, then one chart of accuracy
    per type with counts for every other group."""
    overall = scores["overall"]
    if not overall["count"]:
        return []
    baseline = scores.get("baseline_score")
    lines = {f"overall {100 * overall['accuracy']:.2f}%": overall["accuracy"]}
    if baseline is not None:
        lines[f"answer-prior baseline {100 * baseline:.2f}%"] = baseline
    headline = [("accuracy", overall["accuracy"], overall["count"])]
    official = scores.get("official") or {}
    for name, value in official.items():
        if name not in ("accuracy", "distribution") and value is not None:
            headline.append((name, value / 100, None))
    groups = score_groups(scores)
    for name, label in HEADLINE_GROUPS.items():
        for entry in groups.get(name, {}).values():
            headline.append((label, entry["accuracy"], entry["count"]))
    if baseline is not None:
        headline.append(("answer-prior baseline", baseline, None))
    made = [{"title": "headline figures", "uri": charts.accuracy_bars(headline)}]
    for name, table in groups.items():
        if name not in HEADLINE_GROUPS:
            rows = [(kind, e["accuracy"], e["count"]) for kind, e in table.items()]
            made.append({"title": f"accuracy per {GROUP_TITLES.get(name, name.replace('_', ' '))}",
                         "uri": charts.accuracy_bars(rows, lines)})
    return made


def _settings(values: dict, names: Sequence[str]) -> str:
    return ", ".join(f"{n} {values[n]}" for n in names if n in values and values[n] is not None)


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def described(lit, checkpoint: str, split: str, scores: dict, questions: int, saved: dict,
              device, metrics: Optional[dict]) -> list:
    """``[(label, text)]``: what was evaluated, for the page's first section."""
    hp = lit.hparams
    model, optim = dict(hp.get("model") or {}), dict(hp.get("optim") or {})
    parameters = sum(p.numel() for p in lit.model.parameters())
    scored = scores["overall"]["count"]
    rows = [("dataset", f"{lit.task.title}, split {split}"),
            ("checkpoint", f"{os.path.abspath(checkpoint)} (epoch {saved.get('epoch', '?')}, "
                           f"step {saved.get('global_step', '?')})"),
            ("run", os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))),
            ("model", f"{type(lit.model).__name__}, {parameters:,} parameters; {_settings(model, MODEL_SETTINGS)}"),
            ("training", _settings(optim, OPTIM_SETTINGS)),
            ("questions", f"{questions:,} in the question cache's {split} split, {scored:,} with a gold answer scored"
                          + (f"; {scores['dropped']:,} left out of the cache (--drop_missing), answered but not "
                             "scored" if scores.get("dropped") else "")),
            ("answer-prior baseline", f"{scores.get('baseline')}: {_percent(scores.get('baseline_score'))}"
             if scores.get("baseline_score") is not None else "no gold answers in this split"),
            ("accuracy", _percent(scores["overall"]["accuracy"]) if scored else "not scored (no gold answers)")]
    for which in ("best", "final"):
        entry = (metrics or {}).get(which)
        if entry:
            figures = ", ".join(f"{k} {_percent(v) if k.endswith('_acc') else f'{v:.4f}'}"
                                for k, v in entry.items() if k.startswith("val_") and isinstance(v, (int, float)))
            rows.append((f"{which} validation", f"epoch {entry.get('epoch')}, step {entry.get('step')}: {figures}"))
    rows.append(("evaluated on", f"{device}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"))
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def gallery_cards(items: Sequence[gather.GalleryItem], task, split: str, images: Optional[str]) -> tuple:
    """``(cards, found, total)``: each gallery item with its pictures (``picture_of``) and the
    rectangles of its boxes, and of the distinct images shown, how many were found in ``images``."""
    cards, found = [], {}   # image id -> whether its file was found
    for item in items:
        weights = [w for view in item.images if view.weights is not None for w in view.weights.tolist()]
        strongest = max(weights, default=0.0) or 1.0
        pictures = []
        for side, view in enumerate(item.images):
            picture = picture_of(task.image_files(view.image_id, split), images, view.size,
                                 max_height=PAIR_HEIGHT if len(item.images) > 1 else None)
            found[view.image_id] = found.get(view.image_id, False) or picture.uri is not None
            boxes = []
            rects = picture.rectangles(view.boxes)
            by_rank = sorted(range(len(rects)), key=lambda k: view.ranks[k] if view.ranks is not None else k)
            labels = dict(zip(by_rank, label_positions([rects[k] for k in by_rank], (picture.width, picture.height))))
            for k, (x, y, w, h) in enumerate(rects):
                weight = None if view.weights is None else float(view.weights[k])
                # a box's line as strong as its weight against the question's strongest: where the
                # model looks stands out from boxes it barely attends to
                boxes.append({"x": x, "y": y, "width": w, "height": h, "row": int(view.rows[k]), "weight": weight,
                              "rank": None if view.ranks is None else int(view.ranks[k]), "label": labels[k],
                              "strength": None if weight is None else weight / strongest})
            name = ("left", "right")[side] if len(item.images) == 2 else None
            pictures.append({"picture": picture, "view": view, "boxes": boxes, "side": name})
        filters = {f"type-{_slug(name)}": value for name, value in item.types.items()}
        cards.append({"item": item, "pictures": pictures, "filters": filters})
    return cards, sum(found.values()), len(found)


def filter_options(cards: Sequence[dict]) -> dict:
    """``{filter key: [values]}`` of the gallery's filters: the result (in ``gather.RESULTS``
    order), then each type (its values sorted, numbers by value)."""
    results = {card["item"].result for card in cards}
    options = {"result": [r for r in gather.RESULTS if r in results]}
    for card in cards:
        for key, value in card["filters"].items():
            options.setdefault(key, set()).add(value)
    def order(value: str):
        return (not value.isdigit(), int(value) if value.isdigit() else 0, value)
    return {key: values if key == "result" else sorted(values, key=order) for key, values in options.items()}


def run_metrics(checkpoint: str) -> tuple:
    """``(metrics, curves, note)`` of ``checkpoint``'s run: its metrics file's contents and training
    curves as a data URI, or None and ``note``, why not (no file, or no per-epoch metric in it)."""
    path = metrics_file(checkpoint)
    if not os.path.isfile(path):
        return None, None, f"no metrics file at {path} (train.py writes it there)"
    try:
        with open(path) as f:
            metrics = json.load(f)
        return metrics, charts.training_curves(path), None
    except ValueError as e:   # not JSON, or no per-epoch metric
        return None, None, f"{path}: {e}"


def write_report(lit, dm, split: str, labels: np.ndarray, written: Sequence[str], scores: dict, *,
                 checkpoint: str, predictions: str, device, images: Optional[str] = None, examples: int = 48,
                 saved: Optional[dict] = None, seed: int = 0) -> str:
    """Write the report of an evaluation to ``report_path(predictions)`` and return its path.

    ``lit``: the evaluated ``LitVQA`` (eval mode, on ``device``); ``dm``: the set-up ``VQADataModule``;
    ``labels`` int64 [N]: the predicted label of each question of its ``split`` (-1: not predicted,
    left out); ``written``: the answer written per label; ``scores``: evaluate.py's scores;
    ``images``: a directory of the dataset's images (``Task.image_files`` names them), or None;
    ``examples``: the gallery's size; ``saved``: the checkpoint's ``epoch`` and ``global_step``."""
    task, arrays = dm.task, dm.questions(split)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(arrays):
        raise ValueError(f"report: {len(labels)} labels for the {len(arrays)} questions of {split}")
    predicted = np.flatnonzero(labels >= 0)
    arrays, labels = arrays.take(predicted), labels[predicted]
    question_scores = task.question_scores(arrays, labels, written)
    reference = task.reference_answers(arrays, written)
    confused, not_right = gather.confusions(reference, np.asarray(written, dtype=str)[labels], question_scores)
    results = [gather.result_of(s) for s in question_scores.tolist()]
    kinds = arrays.types[task.gallery_type] if task.gallery_type else reference
    picked = gather.sample_gallery(kinds, results, examples, seed)
    chosen = arrays.take(picked)
    store = dm.store(split)
    sizes = store.image_sizes(chosen.image_rows.reshape(-1)).reshape(len(chosen), chosen.images_per_question, 2)
    items = []
    if len(chosen):
        from butd.loading.batches import BatchDataset
        from butd.loading.loaders import make_loader
        loader = make_loader(BatchDataset(chosen, store), dm.batch_size, pin_memory=device.type == "cuda")
        items = gather.gallery(lit, loader, chosen, task, written, dm.vocab.idx2word, sizes, device)
    if not task.gallery_type:
        for item in items:
            item.types = {"gold answer": ", ".join(item.gold) or "none", **item.types}
    cards, found, total = gallery_cards(items, task, split, images)
    metrics, curves, curves_note = run_metrics(checkpoint)

    path = report_path(predictions)
    title = f"{task.title} {split}: {os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))}"
    html = page.render(
        title=title, described=described(lit, checkpoint, split, scores, len(dm.questions(split)), saved or {},
                                         device, metrics),
        scores_text=task.format_scores(scores) if scores["overall"]["count"] else None,
        baseline=scores.get("baseline"), baseline_score=scores.get("baseline_score"),
        charts=score_charts(scores), not_available=(scores.get("not_available") or {}),
        distribution=(scores.get("official") or {}).get("distribution"),
        curves=curves, curves_note=curves_note, metrics_path=metrics_file(checkpoint),
        confusions=confused, not_right=not_right, scored=int(np.isfinite(question_scores).sum()),
        soft_score=bool(np.any((question_scores > 0) & (question_scores < 1))),
        cards=cards, filters=filter_options(cards), attention=has_attention(lit.model), images=images, found=found,
        total=total,
        examples=examples, questions=len(arrays), predictions=predictions)
    with open(path + ".partial", "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(path + ".partial", path)   # a report that exists is whole
    return path

"""A checkpoint's predictions for a split, scored by its task, written in its submission format.

``evaluate.py`` is the command line. The data is found through the configuration saved beside the
checkpoint (``config.json`` in the run directory); inference runs in batches through the training
loader, in question order (``butd.evaluation.inference``). A task with official evaluation files
(GQA: ``butd.evaluation.gqa_official``) is scored by them where they lie beside its question files.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional, Tuple

import numpy as np
import torch

from butd import questions
from butd.cli import require_gpus
from butd.evaluation import gqa_official
from butd.evaluation.inference import has_attention, predict_split
from butd.loading import VQADataModule
from butd.training.config import load_config
from butd.training.lit import LitVQA, read_checkpoint


def dropped_source(task, manifest: dict, split: str, questions_dir: Optional[str] = None) -> Tuple[int, Optional[str]]:
    """``(dropped, where)``: how many questions of ``split`` the cache left out (``--drop_missing``),
    and where ``submission`` reads them: ``questions_dir`` if given, else the directory of the files
    the cache was built from (its manifest); None if it left none out. Raises
    ``FileNotFoundError``, naming the file(s) and ``--questions``, if a file is not there (so
    before any inference)."""
    dropped = manifest["summary"]["dropped"].get(split, 0)
    if not dropped:
        return 0, None
    where = questions_dir or built_from(manifest, split)
    missing = [f for f in task.question_files(where, split) if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)}: not found. The question cache left out {dropped} "
            f"{split} question(s) (--drop_missing) and the predictions list them too, read from the split's "
            "question file(s): pass --questions DIR, the directory that holds them now")
    return dropped, where


def submission(task, arrays, predicted: np.ndarray, label2ans, questions_dir: Optional[str] = None,
               split: Optional[str] = None, dropped: int = 0) -> Tuple[list, list]:
    """``(question ids, answers)``: what a submission lists. Without ``questions_dir``, the predicted
    answer of each cached question, in cache order. With it, every question of ``split``'s question
    file(s), in the order ``task.read_split`` reads them: the ``dropped`` questions the cache left
    out (``--drop_missing``: their image has no feature row) get the answer predicted most often.
    Evaluation servers reject a submission that misses a question id (GQA: mac-network#17,
    lxmert#52). Raises ``ValueError`` if the lengths of ``arrays`` and ``predicted`` differ, or if
    the file(s) do not hold exactly the cached questions and ``dropped`` more (they changed since
    the cache was built)."""
    ids = arrays.question_ids.tolist()
    if len(ids) != len(predicted):
        raise ValueError(f"predictions: {len(ids)} questions but {len(predicted)} predictions")
    answers = [label2ans[int(p)] for p in predicted]
    if questions_dir is None:
        return ids, answers
    every = task.read_split(questions_dir, split).question_ids
    by_id = dict(zip(ids, answers))
    unknown = by_id.keys() - set(every)
    if unknown or len(every) != len(ids) + dropped:
        files = ", ".join(task.question_files(questions_dir, split))
        raise ValueError(f"{files}: {len(every)} {split} questions, {len(unknown)} cached ones missing "
                         f"(e.g. {', '.join(sorted(unknown)[:3]) or 'none'}); the cache holds {len(ids)} and left out "
                         f"{dropped}: these are not the files the cache was built from (rebuild it)")
    fallback = label2ans[int(np.bincount(predicted).argmax())] if len(predicted) else label2ans[0]
    return every, [by_id.get(q, fallback) for q in every]


def evaluate(checkpoint: str, split: Optional[str] = None, out: Optional[str] = None, cache: Optional[str] = None,
             bsz: int = 512, num_workers: int = 0, accelerator: str = "auto", say=print,
             questions_dir: Optional[str] = None, report: bool = False, report_examples: int = 48,
             images: Optional[str] = None) -> dict:
    """Predict ``split`` (default: the task's validation split) with ``checkpoint``, print the task's
    scores beside its answer-prior baseline, write the predictions to ``out`` (default
    ``<run dir>/predictions/<checkpoint name>/<split>-predictions.json``, ``.csv`` for NLVR2: the task's
    ``predictions_suffix``) and the scores beside them
    (``<out stem>-scores.json``); returns the scores. ``questions_dir``: where the split's question
    file is now, if it has moved since the cache was built (see ``dropped_source``); the task's
    official evaluation files are looked for there (GQA: all questions, choices, scene graphs).
    ``report``: also write ``<out stem>-report.html`` (``butd.evaluation.report``), its gallery
    ``report_examples`` questions, their images from ``images`` (a directory) where there. A
    directory given as ``checkpoint`` (a run's) or ``out``, or a file that is not a checkpoint, is
    refused before any work, naming what was expected."""
    if accelerator in ("gpu", "cuda"):
        require_gpus(1, f"--accelerator {accelerator}", "evaluate on the CPU with --accelerator cpu (or auto)")
    if os.path.isdir(checkpoint):
        found = sorted(glob.glob(os.path.join(glob.escape(checkpoint), "**", "*.ckpt"), recursive=True),
                       key=lambda path: (os.path.basename(path) != "last.ckpt", path))
        raise IsADirectoryError(f"{checkpoint}: a directory; --checkpoint names a .ckpt file written by train.py ("
                                + (f"here: {', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found
                                   else "none is in it)"))
    if out is not None and os.path.isdir(out):
        raise IsADirectoryError(f"--out {out}: a directory; --out names the predictions file "
                                f"(e.g. {os.path.join(out, 'predictions.json')})")
    saved = read_checkpoint(checkpoint)   # a damaged or unsafe file: one error naming it, before Lightning's
    saved = {k: saved.get(k) for k in ("epoch", "global_step")}
    if questions_dir is not None and not os.path.isdir(questions_dir):
        raise NotADirectoryError(f"--questions {questions_dir}: no such directory (the split's question files, "
                                 "where they are now)")
    cache_dir = cache or _run_cache(checkpoint)
    want_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if want_gpu else "cpu")

    lit = LitVQA.load_from_checkpoint(checkpoint, map_location=device, weights_only=True).eval()
    task = lit.task
    split = task.split(split or task.val_split).name
    dm = VQADataModule(task.name, cache_dir, batch_size=bsz, num_workers=num_workers,
                       pin_memory=device.type == "cuda")
    dm.setup("predict")
    questions.check_vocabulary(lit.hparams.vocabulary, dm.questions_dir, f"the checkpoint {checkpoint}")
    arrays = dm.questions(split)
    if not len(arrays):
        raise ValueError(f"{dm.questions_dir}: the {split} split has no questions; nothing to evaluate")
    manifest = questions.read_manifest(dm.questions_dir)
    dropped, source = dropped_source(task, manifest, split, questions_dir)
    written = task.written_answers(arrays, questions.load_spellings(dm.questions_dir))
    where = questions_dir or built_from(manifest, split)
    official = task.official_files(where, split) if where else None
    # a folder per checkpoint: two checkpoints of one run do not overwrite each other's predictions
    out = out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "predictions",
                              os.path.splitext(os.path.basename(checkpoint))[0],
                              f"{split}-predictions{task.predictions_suffix}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # where the model looks: written for the official grounding figure (BUTD; FiLM has no attention)
    attention = None if has_attention(lit.model) else type(lit.model).__name__
    attentions = gqa_official.attentions_path(out) if official is not None and attention is None else None

    if official is not None and official.all_questions:
        say(f"[*] evaluating {checkpoint} on {split}: every question of its all-questions file "
            f"({len(arrays)} balanced in the cache)")
        cached = arrays.question_ids.tolist()
        scores, written_count, dropped, labels = gqa_official.predict_all_questions(
            lit, dm, split, official, written, device, out, attentions, attention, cached, say,
            positions={q: p for p, q in enumerate(cached)} if report else None)
    else:
        say(f"[*] evaluating {checkpoint} on {split}: {len(arrays)} questions")
        predicted = predict_split(lit, dm.dataloader_for(split), len(arrays), device,
                                  arrays.image_rows if attentions else None)
        ids, answers = submission(task, arrays, predicted.labels, written, source, split, dropped)
        if official is not None:
            scores = gqa_official.score_cached(task, official, arrays, predicted, written, ids, answers,
                                               attentions, attention)
        else:
            scores = task.evaluate(arrays, predicted.labels, written)
        task.write_predictions(out, ids, answers)
        written_count, labels = len(ids), predicted.labels

    baseline, baseline_score = task.baseline(dm.questions(dm.train_split), arrays, written)
    scores.update(split=split, checkpoint=os.path.abspath(checkpoint), baseline=baseline,
                  baseline_score=baseline_score)
    scores["dropped"] = dropped   # listed in the predictions, not scored
    scores_file = os.path.splitext(out)[0] + "-scores.json"
    with open(scores_file, "w") as f:
        json.dump(scores, f, indent=2)

    if scores["overall"]["count"]:
        say(task.format_scores(scores))
        say(f"answer-prior baseline ({baseline}): {100 * baseline_score:.2f}%")
        if official is not None and any(r.startswith("needs ") for r in scores.get("not_available", {}).values()):
            say(f"[*] the files a figure needs were looked for in {official.questions_dir} "
                "(--questions names where they are)")
    else:
        say(f"[*] {split} has no answers: predictions written, no score can be computed")
    if dropped and official is not None and official.all_questions:
        say(f"[*] {dropped} {split} question(s) whose image has no feature row (--drop_missing) are listed with "
            "the most frequent training answer, and not scored")
    elif dropped:
        say(f"[*] {dropped} {split} question(s) left out of the cache (--drop_missing) are listed with the "
            "answer predicted most often, and not scored")
    say(f"[*] predictions ({written_count}): {out}")
    if attentions:
        say(f"[*] attentions: {attentions}")
    say(f"[*] scores: {scores_file}")
    if report:
        from butd.evaluation.report import write_report
        page = write_report(lit, dm, split, labels, written, scores, checkpoint=checkpoint, predictions=out,
                            device=device, images=images, examples=report_examples, saved=saved)
        say(f"[*] report: {page}")
    return scores


def _run_cache(checkpoint: str) -> str:
    """The cache directory of the run ``checkpoint`` belongs to (its config.json): where --cache is not given."""
    try:
        return load_config(checkpoint).data.paths()["cache"]
    except FileNotFoundError as e:   # a checkpoint copied out of its run directory
        raise FileNotFoundError(f"{e}; or name its caches with --cache") from None


def built_from(manifest: dict, split: str) -> Optional[str]:
    """The directory of the question file(s) the cache built ``split`` from (None if it has none)."""
    files = manifest["inputs"]["questions"].get(split) or []
    return os.path.dirname(files[0]["path"]) if files else None

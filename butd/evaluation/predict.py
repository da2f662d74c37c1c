"""A checkpoint's predictions for a split, scored by its task, written in its submission format.

``evaluate.py`` is the command line. The data is found through the configuration saved beside the
checkpoint (``config.json`` in the run directory); inference runs in batches through the training
loader, in question order.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import numpy as np
import torch

from butd import questions
from butd.loading import VQADataModule
from butd.training.config import load_config
from butd.training.lit import LitVQA, read_checkpoint


# no_grad, not inference_mode: the loader's thread writes into batch buffers made here, and torch
# refuses in-place writes to inference tensors outside inference mode (the two-image indicator)
@torch.no_grad()
def predict(lit: LitVQA, loader, num_questions: int, device: torch.device) -> np.ndarray:
    """Predicted answer label for every question of the loader's split, by question position."""
    predicted = np.full(num_questions, -1, dtype=np.int64)
    for i, batch in enumerate(loader):
        out = lit.predict_step({k: v.to(device, non_blocking=True) for k, v in batch.items()}, i)
        predicted[out["index"].cpu().numpy()] = out["prediction"].cpu().numpy()
    missing = np.flatnonzero(predicted < 0)
    if len(missing):
        raise RuntimeError(f"the loader skipped {len(missing)} of {num_questions} questions "
                           f"(e.g. positions {missing[:5].tolist()})")
    return predicted


def dropped_source(task, manifest: dict, split: str, questions_dir: Optional[str] = None) -> Tuple[int, Optional[str]]:
    """``(dropped, where)``: how many questions of ``split`` the cache left out (``--drop_missing``),
    and where ``submission`` reads them: ``questions_dir`` if given, else the directory of the files
    the cache was built from (its manifest); None if it left none out. Raises
    ``FileNotFoundError``, naming the file(s) and ``--questions``, if a file is not there (so
    before any inference)."""
    dropped = manifest["summary"]["dropped"].get(split, 0)
    if not dropped:
        return 0, None
    where = questions_dir or os.path.dirname(manifest["inputs"]["questions"][split][0]["path"])
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
             questions_dir: Optional[str] = None) -> dict:
    """Predict ``split`` (default: the task's validation split) with ``checkpoint``, print the task's
    scores beside its answer-prior baseline, write the predictions to ``out`` (default
    ``<run dir>/predictions/<checkpoint name>/<split>-predictions.json``, ``.csv`` for NLVR2: the task's
    ``predictions_suffix``) and the scores beside them
    (``<out stem>-scores.json``); returns the scores. ``questions_dir``: where the split's question
    file is now, if the cache left questions of it out and the file has moved since (see
    ``dropped_source``)."""
    config = load_config(checkpoint)
    paths = config.data.paths()
    cache_dir = cache or paths["cache"]
    want_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if want_gpu else "cpu")

    read_checkpoint(checkpoint)   # a damaged or unsafe file: one error naming it, before Lightning's
    lit = LitVQA.load_from_checkpoint(checkpoint, map_location=device, weights_only=True).eval()
    task = lit.task
    split = split or task.val_split
    task.split(split)
    dm = VQADataModule(task.name, cache_dir, batch_size=bsz, num_workers=num_workers,
                       pin_memory=device.type == "cuda")
    dm.setup("predict")
    questions.check_vocabulary(lit.hparams.vocabulary, dm.questions_dir, f"the checkpoint {checkpoint}")
    arrays = dm.questions(split)
    if not len(arrays):
        raise ValueError(f"{dm.questions_dir}: the {split} split has no questions; nothing to evaluate")
    manifest = questions.read_manifest(dm.questions_dir)
    dropped, source = dropped_source(task, manifest, split, questions_dir)
    say(f"[*] evaluating {checkpoint} on {split}: {len(arrays)} questions")
    predicted = predict(lit, dm.dataloader_for(split), len(arrays), device)

    scores = task.evaluate(arrays, predicted, dm.label2ans)
    baseline, baseline_score = task.baseline(dm.questions(dm.train_split), arrays, dm.label2ans)
    scores.update(split=split, checkpoint=os.path.abspath(checkpoint), baseline=baseline,
                  baseline_score=baseline_score)

    # a folder per checkpoint: two checkpoints of one run do not overwrite each other's predictions
    out = out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "predictions",
                              os.path.splitext(os.path.basename(checkpoint))[0],
                              f"{split}-predictions{task.predictions_suffix}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    scores["dropped"] = dropped   # listed in the predictions, not scored
    scores_file = os.path.splitext(out)[0] + "-scores.json"
    with open(scores_file, "w") as f:
        json.dump(scores, f, indent=2)
    ids, answers = submission(task, arrays, predicted, dm.label2ans, source, split, dropped)
    task.write_predictions(out, ids, answers)

    if scores["overall"]["count"]:
        say(task.format_scores(scores))
        say(f"answer-prior baseline ({baseline}): {100 * baseline_score:.2f}%")
    else:
        say(f"[*] {split} has no answers: predictions written, no score can be computed")
    if dropped:
        say(f"[*] {dropped} {split} question(s) left out of the cache (--drop_missing) are listed with the "
            "answer predicted most often, and not scored")
    say(f"[*] predictions ({len(ids)}): {out}\n[*] scores: {scores_file}")
    return scores

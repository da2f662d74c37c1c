"""Evaluate a trained checkpoint: GQA accuracy by question type, and predictions for submission.

    python evaluate.py --checkpoint checkpoints/runs/<run>/butd-epoch=..-val_acc=...ckpt
    python evaluate.py --checkpoint CKPT --split test --out test-predictions.json
    python evaluate.py --checkpoint CKPT --split val --accelerator gpu --bsz 1024

The data is found through the configuration saved beside the checkpoint (``config.json`` in the
run directory; ``--gqa_cache`` overrides its cache directory). Inference runs in batches through
the training loader, in question order. It prints overall accuracy, binary/open accuracy and
accuracy per structural and semantic type with their counts, then writes

    <out>                 [{"questionId": "...", "prediction": "..."}] for every question of the split
    <out stem>-scores.json the scores, the majority-answer baseline, the checkpoint and split

On a split without answers (test) it writes the predictions and says that no accuracy can be computed.
Default ``--out``: <run dir>/predictions/<split>-predictions.json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from butd import evaluation
from butd.run_config import load_run_config
from butd.schema import SPLITS

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a BUTD/FiLM checkpoint on a GQA split.")
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by train.py")
    p.add_argument("--split", default="testdev", choices=SPLITS)
    p.add_argument("--out", default=None, help="predictions JSON (default <run dir>/predictions/<split>-predictions.json)")
    p.add_argument("--gqa_cache", default=None, help="override the cache directory saved with the run")
    p.add_argument("--bsz", type=int, default=512)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    return p.parse_args(argv)


@torch.inference_mode()
def predict(lit, loader, num_questions: int, device: torch.device) -> np.ndarray:
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


def majority_baseline(train_labels: np.ndarray, labels: np.ndarray) -> tuple:
    """The most frequent training answer, and its accuracy on ``labels`` (None if unanswered)."""
    answered = train_labels[train_labels >= 0]
    majority = int(np.bincount(answered).argmax())
    gold = labels[labels >= 0]
    return majority, (float((gold == majority).mean()) if len(gold) else None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from butd.data import GQADataModule
    from butd.lit import LitVQA

    config = load_run_config(args.checkpoint)
    cache_dir = args.gqa_cache or config["cache_dir"]
    questions_dir = config["questions_dir"] if not args.gqa_cache else os.path.join(cache_dir, "questions")
    want_gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if want_gpu else "cpu")

    lit = LitVQA.load_from_checkpoint(args.checkpoint, map_location=device).eval()
    dm = GQADataModule(cache_dir, batch_size=args.bsz, num_workers=args.num_workers,
                       questions_dir=questions_dir, pin_memory=device.type == "cuda")
    dm.setup("predict")
    if (dm.ntoken, dm.num_answers) != (lit.hparams.ntoken, lit.hparams.num_answers):
        raise ValueError(f"{questions_dir}: vocabulary ({dm.ntoken} words, {dm.num_answers} answers) differs "
                         f"from the checkpoint's ({lit.hparams.ntoken}, {lit.hparams.num_answers}); "
                         "evaluate with the question cache the model was trained on")
    questions = dm.questions(args.split)
    print(f"[*] evaluating {args.checkpoint} on {args.split}: {len(questions)} questions")
    predicted = predict(lit, dm.dataloader_for(args.split), len(questions), device)

    scores = evaluation.score(predicted, questions.labels, questions.structural, questions.semantic)
    majority, baseline = majority_baseline(dm.questions(dm.train_split).labels, questions.labels)
    scores.update(split=args.split, checkpoint=os.path.abspath(args.checkpoint),
                  majority_answer=dm.label2ans[majority], majority_baseline=baseline)

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "predictions",
                                   f"{args.split}-predictions.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(evaluation.predictions(questions.question_ids, predicted, dm.label2ans), f)
    scores_file = os.path.splitext(out)[0] + "-scores.json"
    with open(scores_file, "w") as f:
        json.dump(scores, f, indent=2)

    if scores["overall"]["count"]:
        print(evaluation.format_table(scores))
        print(f"majority-answer baseline ({scores['majority_answer']!r}): {100 * baseline:.2f}%")
    else:
        print(f"[*] {args.split} has no answers: predictions written, no accuracy can be computed")
    print(f"[*] predictions: {out}\n[*] scores: {scores_file}")
    return scores


if __name__ == "__main__":
    main()

"""Evaluate a trained checkpoint: the task's scores by question type, and predictions for submission.

    python evaluate.py --checkpoint checkpoints/runs/<run>/butd-epoch=..-val_acc=...ckpt   # film-epoch=.. for FiLM
    python evaluate.py --checkpoint CKPT --split submission --out submission.json   # GQA: upload this
    python evaluate.py --checkpoint CKPT --split val --accelerator gpu --bsz 1024
    python evaluate.py --checkpoint CKPT --report --images data/GQA-Images    # + <out stem>-report.html

Every option, its default and its meaning: ``python evaluate.py --help``; they come from
``EvaluateConfig`` in butd/training/config.py (``--bsz``, ``--num_workers`` and ``--accelerator``
are train.py's, with its defaults). The task and the data are found through the configuration
saved beside the checkpoint (``config.json`` in the run directory; ``--cache``, or
``--<dataset>_cache``, overrides its cache directory). It prints the task's scores with
counts (GQA: accuracy overall, binary/open, per structural and semantic type) beside the best
answer-prior baseline, then writes

    <out>                  the predictions in the task's submission format, one per question of the split
    <out stem>-scores.json the scores, the baseline, the checkpoint and split
    <out stem>-report.html with --report: one self-contained page (scores and charts, training curves,
                           confusions, a gallery of questions with the boxes the model attended to;
                           --images DIR for the pictures, --report_examples N for the gallery's size)

GQA: GQA's official figures too (consistency, validity, plausibility, distribution, grounding, accuracy
by reasoning steps and words), from the official files found beside the question files
(``<split>_all_questions.json``, ``_choices.json``, ``_sceneGraphs.json``: each figure says which file it
needs where one is missing); with the all-questions file, every question of it is predicted and written.
A BUTD checkpoint also writes ``<out stem>-attentions.json`` (the official object-attention format).
On a split without answers (test) it writes the predictions and says that no score can be computed.
Default ``--out``: <run dir>/predictions/<checkpoint name>/<split>-predictions.json. The library code is
butd/evaluation/predict.py.

GQA's test server scores every question of ``submission_all_questions.json`` and fails on a missing
one: ``--split submission`` (that file, put beside the other question files) is the one to upload;
``--split test`` covers only the balanced test questions. Questions the cache left out
(``--drop_missing``) are listed too, with the answer predicted most often, read from the split's
question file where the cache was built from it (``--questions DIR`` if it has moved). A user
error (a wrong path, a question cache that is not the checkpoint's) is one line on stderr and
exit status 1.
"""
from __future__ import annotations

import os
import sys

from butd.cli import run
from butd.training.config import parse_evaluate

ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def main(argv=None) -> dict:
    options = parse_evaluate(argv)
    if options.accelerator not in ACCELERATORS:
        raise ValueError(f"--accelerator {options.accelerator}: evaluate.py runs on one of {', '.join(ACCELERATORS)}")
    if options.images is not None and not options.report:
        raise ValueError(f"--images {options.images}: the images are the report's; add --report")
    if options.images is not None and not os.path.isdir(options.images):
        raise FileNotFoundError(f"--images {options.images}: no such directory (the dataset's images, for the report)")
    from butd.evaluation.predict import evaluate
    return evaluate(options.checkpoint, options.split, options.out, options.cache, options.bsz, options.num_workers,
                    options.accelerator, questions_dir=options.questions, report=options.report,
                    report_examples=options.report_examples, images=options.images)


if __name__ == "__main__":
    sys.exit(run(main))   # a user's error: one line and exit status 1

"""Build a task's question cache: vocabularies, GloVe matrix, per-split arrays and tokenized shards.

    python converters/questions_to_shards.py            # data/GQA-Questions + data/GloVe/glove.6B.300d.txt
                                                        #   -> data/GQA-Cache/questions/
    python converters/questions_to_shards.py --questions /data/gqa --glove /data/glove.840B.300d.txt.gz \\
        --cache /fast/GQA-Cache --out /fast/GQA-Cache/questions

``--dataset`` picks the task (default gqa); its directories default under ``--data`` as train.py's do.
Run it after ``python converters/tsv_to_zarr.py``: every question's image is resolved to its row in
the feature store that serves its split (GQA: ``<cache>/trainval.zarr`` for train, val and test,
``<cache>/testdev.zarr`` for testdev). A question whose image has no row is an error;
``--drop_missing`` leaves such questions out and reports how many (never more than half a split).
A second run with the same inputs does nothing; changed inputs (files, feature stores, settings)
rebuild. The library code is butd/questions/.
"""
import json
import os
import sys

from butd import questions
from butd.cli import ArgumentParser, Bounded, description, run
from butd.tasks import TASK_NAMES
from butd.training.config import DataConfig


def main(argv=None) -> dict:
    p = ArgumentParser(description=description(__doc__))
    p.add_argument("--dataset", default="gqa", choices=TASK_NAMES, help="whose question files to read")
    p.add_argument("--data", default="data/", help="where downloaded data is located")
    p.add_argument("--questions", default=None, help="the question files (default <data>/GQA-Questions, "
                   "VQA2-Questions or NLVR2-Questions)")
    p.add_argument("--glove", default=None, help="GloVe vectors, .txt or .txt.gz (default <data>/GloVe/glove.6B.300d.txt, "
                   "or .txt.gz if only that is there)")
    p.add_argument("--cache", default=None, help="the dataset's feature stores and question cache: the stores are read "
                   "for their image ids (default <data>/GQA-Cache, VQA2-Cache or NLVR2-Cache)")
    p.add_argument("--out", default=None, help="the question cache's directory (default: <cache>/questions)")
    p.add_argument("--emb_dim", type=Bounded(int, low=1), default=300, help="GloVe dimension (checked against the file)")
    p.add_argument("--max_length", type=Bounded(int, low=1), default=None, help="tokens per question (default: the task's)")
    p.add_argument("--drop_missing", action="store_true",
                   help="leave out questions whose image has no feature row, instead of failing")
    p.add_argument("--min_answer_count", type=Bounded(int, low=1), default=None,
                   help="VQA v2: the candidate answers are those at least this many train+val questions give "
                        "(default: 9, the references'); lower it for a small subset. GQA and NLVR2 keep every answer")
    p.add_argument("--workers", type=Bounded(int, low=1), default=None, help="shard-writing processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    args = p.parse_args(argv)
    paths = DataConfig(dataset=args.dataset, data=args.data, glove=args.glove).paths()
    inputs = questions.Inputs(args.dataset, args.questions or paths["questions"], paths["glove"],
                              args.cache or paths["cache"], emb_dim=args.emb_dim, max_length=args.max_length,
                              drop_missing=args.drop_missing, min_answer_count=args.min_answer_count)
    summary = questions.build(inputs, args.out or os.path.join(inputs.cache, "questions"), force=args.force,
                              workers=args.workers)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run(main))   # a user's error (a missing file, a bad question or GloVe file): one line, exit status 1

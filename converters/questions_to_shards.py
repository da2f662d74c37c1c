"""Build the question cache: vocabularies, GloVe matrix and tokenized question shards.

    python converters/questions_to_shards.py            # data/GQA-Questions + data/GloVe/glove.6B.300d.txt
                                                        #   -> data/GQA-Cache/questions/
    python converters/questions_to_shards.py --questions /data/gqa --glove /data/glove.840B.300d.txt.gz \\
        --cache /fast/GQA-Cache --out /fast/GQA-Cache/questions

Run it after ``python converters/tsv_to_zarr.py``: every question's image is resolved to its row in
``<cache>/trainval.zarr`` (train, val, test) or ``<cache>/testdev.zarr``. A question whose image has
no row is an error; ``--drop-missing`` leaves such questions out and reports how many. A second run
with the same inputs does nothing; changed inputs (files, feature stores, settings) rebuild.
"""
import argparse
import json
import os
import sys

from butd.questions import StaleCacheError, build
from butd.text import MAX_LENGTH


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--questions", default="data/GQA-Questions", help="directory of the GQA question JSONs")
    p.add_argument("--glove", default="data/GloVe/glove.6B.300d.txt", help="GloVe vectors (.txt or .txt.gz)")
    p.add_argument("--cache", default="data/GQA-Cache", help="directory holding trainval.zarr and testdev.zarr")
    p.add_argument("--out", default=None, help="output directory (default: <cache>/questions)")
    p.add_argument("--emb_dim", type=int, default=300, help="GloVe dimension (checked against the file)")
    p.add_argument("--max_length", type=int, default=MAX_LENGTH, help="tokens per question (front-padded)")
    p.add_argument("--drop-missing", "--drop_missing", dest="drop_missing", action="store_true",
                   help="leave out questions whose image has no feature row, instead of failing")
    p.add_argument("--workers", type=int, default=None, help="shard-writing processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    args = p.parse_args(argv)
    try:
        summary = build(args.questions, args.glove, args.out or os.path.join(args.cache, "questions"),
                        args.cache, emb_dim=args.emb_dim, max_length=args.max_length,
                        drop_missing=args.drop_missing, force=args.force, workers=args.workers)
    # ValueError covers QuestionFileError, GloveFormatError and an incomplete or foreign feature store
    except (FileNotFoundError, FileExistsError, ValueError, StaleCacheError) as e:
        sys.exit(f"[!] {e}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

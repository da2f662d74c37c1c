"""The end-to-end demo a newcomer runs first: everything you would do on real GQA, on a generated sample.

    make demo                     # the same as: python -m butd.demo --data data
    python -m butd.demo --data /tmp/demo --epochs 6

Steps (each is the real tool, run as you would run it on the real data):
 1. generate a GQA-shaped sample in the real formats           python -m butd.synthetic.gqa --out data
 2. convert the feature TSVs into Zarr stores                   python converters/tsv_to_zarr.py
 3. build the vocabulary, GloVe matrix and question shards      python converters/questions_to_shards.py
 4. train BUTD on CPU for a few epochs                          python train.py --run_name demo ...
 5. evaluate the best checkpoint on testdev                     python evaluate.py --checkpoint ...
 6. plot the training curves                                    python -m butd.evaluation.plots ...
and prints where the checkpoint, metrics, predictions and plots are.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(step: str, args: list) -> None:
    print(f"\n[*] {step}\n    $ {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable] + args, cwd=ROOT, check=True)
    print(f"    ({time.time() - start:.1f} s)", flush=True)


def _best_checkpoint(runs_dir: str) -> str:
    # ModelCheckpoint keeps the top 3 by val_acc; the file names carry the score.
    ckpts = glob.glob(os.path.join(runs_dir, "*", "*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"no checkpoint under {runs_dir}: did training fail?")

    def val_acc(path):
        name = os.path.basename(path)
        return float(name.rsplit("val_acc=", 1)[-1][:-len(".ckpt")]) if "val_acc=" in name else -1.0
    newest_run = max({os.path.dirname(p) for p in ckpts}, key=os.path.getmtime)
    return max((p for p in ckpts if os.path.dirname(p) == newest_run), key=val_acc)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Run the whole pipeline on a generated sample.")
    p.add_argument("--data", default="data", help="where the sample and caches go (default: data/)")
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: <data>/checkpoints)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    data = os.path.abspath(args.data)
    ckpt_dir = os.path.abspath(args.checkpoint or os.path.join(data, "checkpoints"))
    paths = {
        "questions": os.path.join(data, "GQA-Questions"), "features": os.path.join(data, "GQA-Features"),
        "cache": os.path.join(data, "GQA-Cache"), "glove": os.path.join(data, "GloVe", "glove.6B.300d.txt"),
    }
    start = time.time()
    if os.path.exists(os.path.join(paths["features"], "vg_gqa_obj36.tsv")):
        print(f"[*] sample already in {data} (delete it to regenerate)")
    else:
        _run("1. generate the sample", ["-m", "butd.synthetic.gqa", "--out", data])
    _run("2. convert features", ["converters/tsv_to_zarr.py", "--features", paths["features"],
                                 "--cache", paths["cache"]])
    _run("3. build question shards", ["converters/questions_to_shards.py", "--questions", paths["questions"],
                                      "--glove", paths["glove"], "--cache", paths["cache"],
                                      "--out", os.path.join(paths["cache"], "questions")])
    # Small model and batches: the sample is small and this runs on CPU in a few minutes.
    _run("4. train", ["train.py", "--run_name", "demo", "--gqa_questions", paths["questions"],
                      "--gqa_features", paths["features"], "--gqa_cache", paths["cache"],
                      "--glove", paths["glove"], "--checkpoint", ckpt_dir, "--epochs", str(args.epochs),
                      "--hidden", "256", "--bsz", "64", "--seed", str(args.seed), "--num_workers", "0",
                      "--accelerator", "cpu"])
    best = _best_checkpoint(os.path.join(ckpt_dir, "runs"))
    predictions = os.path.join(ckpt_dir, "predictions", "testdev-predictions.json")
    _run("5. evaluate on testdev", ["evaluate.py", "--checkpoint", best, "--split", "testdev",
                                    "--out", predictions])
    metrics = sorted(glob.glob(os.path.join(ckpt_dir, "metrics", "demo-*-metrics.json")), key=os.path.getmtime)
    curves = os.path.join(ckpt_dir, "plots", "training_curves.png")
    _run("6. plot training curves", ["-m", "butd.evaluation.plots", metrics[-1], "--out", curves])

    scores_file = os.path.splitext(predictions)[0] + "-scores.json"
    with open(scores_file) as f:
        scores = json.load(f)
    print(f"\n[*] demo finished in {time.time() - start:.0f} s")
    print(f"    testdev accuracy   {100 * scores['overall']['accuracy']:.2f}%  "
          f"(answer-prior baseline, {scores['baseline']}: {100 * scores['baseline_score']:.2f}%)")
    print(f"    checkpoint         {best}")
    print(f"    metrics            {metrics[-1]}")
    print(f"    predictions        {predictions}")
    print(f"    scores             {scores_file}")
    print(f"    training curves    {curves}")


if __name__ == "__main__":
    main()

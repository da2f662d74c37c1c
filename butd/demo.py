"""The end-to-end demo a newcomer runs first: everything you would do on the real data, on a generated sample.

    make demo                     # GQA; the same as: python -m butd.demo --data data
    make demo DATASET=vqa2        # VQA v2 (or nlvr2): python -m butd.demo --data data --dataset vqa2
    python -m butd.demo --data /tmp/demo --epochs 6

Steps (each is the real tool, run as you would run it on the real data; <task> is --dataset):
 1. generate a sample of the task in its real formats   python -m butd.synthetic.<task> --out data
 2. convert the feature TSVs into Zarr stores            python converters/tsv_to_zarr.py --dataset <task>
 3. build the vocabulary, GloVe matrix and shards        python converters/questions_to_shards.py --dataset <task>
 4. train BUTD on CPU for a few epochs                   python train.py --dataset <task> --run_name demo ...
 5. evaluate the best checkpoint on the validation       python evaluate.py --checkpoint ...
    split (GQA testdev, VQA v2 val2014, NLVR2 dev)
 6. plot the training curves                             python -m butd.evaluation.plots ...
and prints where the checkpoint, metrics, predictions and plots are.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time

from butd.synthetic import GENERATORS
from butd.tasks import TASK_NAMES, get_task
from butd.training.config import DataConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generator_module(task: str) -> str:
    """The module that generates ``task``'s sample (``python -m`` runs it)."""
    if task not in GENERATORS:
        raise SystemExit(f"no generated sample for {task!r}; there is one for {', '.join(GENERATORS)}")
    return GENERATORS[task]


def _run(step: str, args: list) -> None:
    print(f"\n[*] {step}\n    $ python {shlex.join(args)}", flush=True)   # as a user would type it
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
    p.add_argument("--dataset", default="gqa", choices=TASK_NAMES, help="which task's sample to run (default: gqa)")
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: <data>/checkpoints)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    data = os.path.abspath(args.data)
    ckpt_dir = os.path.abspath(args.checkpoint or os.path.join(data, "checkpoints"))
    task = get_task(args.dataset)
    # The task's directories under --data, where the generator writes and the tools look by default.
    paths = DataConfig(dataset=task.name, data=data).paths()
    dataset = ["--dataset", task.name, "--data", data]
    start = time.time()
    if all(os.path.exists(os.path.join(paths["features"], files[0])) for files in task.stores.values()):
        print(f"[*] {task.title} sample already in {data} (delete it to regenerate)")
    else:
        _run("1. generate the sample", ["-m", generator_module(task.name), "--out", data])
    _run("2. convert features", ["converters/tsv_to_zarr.py", *dataset])
    _run("3. build question shards", ["converters/questions_to_shards.py", *dataset])
    # Small model and batches: the sample is small and this runs on CPU in a few minutes.
    _run("4. train", ["train.py", "--run_name", "demo", *dataset, "--checkpoint", ckpt_dir,
                      "--epochs", str(args.epochs), "--hidden", "256", "--bsz", "64", "--seed", str(args.seed),
                      "--num_workers", "0", "--accelerator", "cpu"])
    best = _best_checkpoint(os.path.join(ckpt_dir, "runs"))
    split = task.val_split
    predictions = os.path.join(ckpt_dir, "predictions", f"{split}-predictions{task.predictions_suffix}")
    _run(f"5. evaluate on {split}", ["evaluate.py", "--checkpoint", best, "--split", split, "--out", predictions])
    metrics = sorted(glob.glob(os.path.join(ckpt_dir, "metrics", "demo-*-metrics.json")), key=os.path.getmtime)
    curves = os.path.join(ckpt_dir, "plots", "training_curves.png")
    _run("6. plot training curves", ["-m", "butd.evaluation.plots", metrics[-1], "--out", curves])

    scores_file = os.path.splitext(predictions)[0] + "-scores.json"
    with open(scores_file) as f:
        scores = json.load(f)
    print(f"\n[*] demo finished in {time.time() - start:.0f} s")
    print(f"    {split} accuracy   {100 * scores['overall']['accuracy']:.2f}%  "
          f"(answer-prior baseline, {scores['baseline']}: {100 * scores['baseline_score']:.2f}%)")
    print(f"    checkpoint         {best}")
    print(f"    metrics            {metrics[-1]}")
    print(f"    predictions        {predictions}")
    print(f"    scores             {scores_file}")
    print(f"    training curves    {curves}")


if __name__ == "__main__":
    main()

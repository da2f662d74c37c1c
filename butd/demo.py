"""The end-to-end demo a newcomer runs first: everything you would do on the real data, on a generated sample.

    make demo                     # GQA; the same as: python -m butd.demo --data data --dataset gqa
    make demo DATASET=vqa2        # VQA v2 (or nlvr2): python -m butd.demo --data data --dataset vqa2
    make demo DATA=/scratch/butd  # anywhere else (the demo then works in /scratch/butd/demo/gqa/)
    python -m butd.demo --quick   # a smaller sample, model and training: a smoke test in about a minute

Everything the demo writes (sample, caches, checkpoints, predictions, plots) lives in a directory of
its own per dataset, ``<data>/demo/<dataset>/`` (``<dataset>-quick`` with ``--quick``), never where
the README puts real data (``data/GQA-Questions``, ``data/GloVe``, ...), and the demos of the three
datasets share nothing: run them in any order, as often as you like. Two demos of one directory at
once take turns (the second waits, saying so, on ``<dir>.lock``): each then trains, evaluates and
reports its own run. The generator refuses to write over a file it did not write
(``butd.synthetic.guard``), and a sample already there is reused.

Steps (each is the real tool, run as you would run it on the real data; <task> is --dataset, <dir>
the demo's directory):
 1. generate a sample of the task in its real formats   python -m butd.synthetic.<task> --out <dir>
 2. convert the feature TSVs into Zarr stores            python converters/tsv_to_zarr.py --dataset <task> --data <dir>
 3. build the vocabulary, GloVe matrix and shards        python converters/questions_to_shards.py --dataset <task> --data <dir>
 4. train BUTD on CPU for a few epochs                   python train.py --dataset <task> --run_name demo-<task> ...
 5. evaluate the best checkpoint on the validation       python evaluate.py --checkpoint ... --report
    split (GQA testdev, VQA v2 val2014, NLVR2 dev), and
    write its report page
 6. plot the training curves                             python -m butd.evaluation.plots ...
and prints where the checkpoint, metrics, predictions, report and plots are.
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
import sys
import time

from butd.build_lock import build_lock
from butd.cli import ArgumentParser, description
from butd.synthetic import GENERATORS
from butd.synthetic.command import ALREADY_THERE
from butd.tasks import TASK_NAMES, get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generator_module(task: str) -> str:
    """The module that generates ``task``'s sample (``python -m`` runs it)."""
    if task not in GENERATORS:
        raise SystemExit(f"no generated sample for {task!r}; there is one for {', '.join(GENERATORS)}")
    return GENERATORS[task]


def _run(step: str, args: list, capture: bool = False) -> str:
    """Run ``python args`` as a step of the demo; its output, with ``capture`` (printed too)."""
    print(f"\n[*] {step}\n    $ python {shlex.join(args)}", flush=True)   # as a user would type it
    start = time.time()
    done = subprocess.run([sys.executable] + args, cwd=ROOT, check=True, stdout=subprocess.PIPE if capture else None,
                          text=True)
    if capture:
        print(done.stdout, end="", flush=True)
    print(f"    ({time.time() - start:.1f} s)", flush=True)
    return done.stdout or ""


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


# --quick's epochs where 6 leave the sample's answers unlearnt (NLVR2 was at its majority label)
QUICK_EPOCHS = {"nlvr2": 12}


def demo_dir(data: str, task: str, quick: bool = False) -> str:
    """The demo's own directory for ``task`` under the data directory ``data``."""
    return os.path.join(data, "demo", task + ("-quick" if quick else ""))


def main(argv=None) -> dict:
    p = ArgumentParser(description=description(__doc__, 3))
    p.add_argument("--data", default="data", help="data directory; the demo works in <data>/demo/<dataset>/ only")
    p.add_argument("--dataset", default="gqa", choices=TASK_NAMES, help="which task's sample to run")
    p.add_argument("--quick", action="store_true",
                   help="a smaller sample, model and training, in <data>/demo/<dataset>-quick/: a smoke test")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 12; with --quick 6, NLVR2 12: it learns its pairs slower)")
    p.add_argument("--seed", type=int, default=7, help="training seed")
    args = p.parse_args(argv)
    task = get_task(args.dataset)
    root = os.path.abspath(demo_dir(args.data, task.name, args.quick))
    # one demo of a directory at a time: another one's sample, stores or newest run changing under
    # this one would make it evaluate and report the other's run
    with build_lock(root, say=lambda line: print(f"[*] waiting for the other demo in {root} to finish", flush=True)):
        return _demo(args, task, root)


def _demo(args, task, root: str) -> dict:
    ckpt_dir = os.path.join(root, "checkpoints")
    epochs = args.epochs or (QUICK_EPOCHS.get(task.name, 6) if args.quick else 12)
    dataset = ["--dataset", task.name, "--data", root]
    run = f"demo-{task.name}"
    start = time.time()
    print(f"[*] {task.title} demo in {root}")
    said = _run("1. generate the sample", ["-m", generator_module(task.name), "--out", root,
                                            *(["--quick"] if args.quick else [])], capture=True)
    # a sample written anew (its settings changed since the last demo) makes its stores anew too
    _run("2. convert features", ["converters/tsv_to_zarr.py", *dataset,
                                 *([] if ALREADY_THERE in said else ["--overwrite"])])
    _run("3. build question shards", ["converters/questions_to_shards.py", *dataset])
    # Small model and batches: the sample is small and this runs on CPU in a few minutes.
    _run("4. train", ["train.py", "--run_name", run, *dataset, "--checkpoint", ckpt_dir,
                      "--epochs", str(epochs), "--hidden", "128" if args.quick else "256",
                      "--bsz", "32" if args.quick else "64",
                      "--seed", str(args.seed), "--num_workers", "0", "--accelerator", "cpu"])
    best = _best_checkpoint(os.path.join(ckpt_dir, "runs"))
    run = os.path.basename(os.path.dirname(best))    # the run's full name: demo-<task>-<model>-x<seed>+<date>
    split = task.val_split
    predictions = os.path.join(ckpt_dir, "predictions", run, f"{split}-predictions{task.predictions_suffix}")
    _run(f"5. evaluate on {split}, with its report", ["evaluate.py", "--checkpoint", best, "--split", split,
                                                      "--out", predictions, "--report"])
    from butd.evaluation.report import report_path
    report = report_path(predictions)
    metrics = os.path.join(ckpt_dir, "metrics", f"{run}-metrics.json")
    curves = os.path.join(ckpt_dir, "plots", f"{run}-training_curves.png")
    _run("6. plot training curves", ["-m", "butd.evaluation.plots", metrics, "--out", curves])

    scores_file = os.path.splitext(predictions)[0] + "-scores.json"
    with open(scores_file) as f:
        scores = json.load(f)
    print(f"\n[*] {task.title} demo finished in {time.time() - start:.0f} s")
    print(f"    {split} accuracy   {100 * scores['overall']['accuracy']:.2f}%  "
          f"(answer-prior baseline, {scores['baseline']}: {100 * scores['baseline_score']:.2f}%)")
    print(f"    checkpoint         {best}")
    print(f"    metrics            {metrics}")
    print(f"    predictions        {predictions}")
    print(f"    scores             {scores_file}")
    print(f"    report             {report}")
    print(f"    training curves    {curves}")
    return {"scores": scores, "checkpoint": best, "predictions": predictions, "report": report, "curves": curves}


if __name__ == "__main__":
    main()

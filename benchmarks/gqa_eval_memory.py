"""Memory of GQA's official evaluation over an all-questions file: evaluate.py's streamed pass
against the official eval.py's way (the whole file as Python objects), on the same files, same run.

    python benchmarks/gqa_eval_memory.py                       # 50,000 and 200,000 questions
    python benchmarks/gqa_eval_memory.py --num_questions 100000,400000 --keep /tmp/gqamem

It writes GQA-shaped files (the real schema, ~850 bytes a question as the real files; one question in
15 balanced, as in val_all, each with up to 40 entailed ids) and a small feature store and question
cache (``questions_speed.make_data``), then, each in a fresh process so that its peak RSS is its own:

- ours: ``butd.evaluation.gqa_official.predict_all_questions`` with a small BUTD model: stream the
  file, tokenize, predict, write the predictions and attentions files, score every official figure;
- official: what GQA's eval.py holds at its peak: ``json.load`` of the all-questions file and the
  predictions as a dict.

The official way grows with the whole parsed file; ours only by the compact per-question
consistency record (~10 bytes) and the balanced questions' predictions, below the noise of a chunk's
working set. Prints the peak RSS of each, the growth per 1,000 questions between the smallest and
largest file and their ratio, ours' peak RSS in the first and second half of its pass (flat memory:
about equal), and ends with one JSON line. Our target: memory flat in the file's size (val_all: ~2M
questions, 1.3 GB of JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from questions_speed import TASK, _bodies, make_data

from butd.cli import run

from harness import MB, RESULTS, comma_list, parser, report

BALANCED_EVERY = 15


def write_all_questions(path: str, n: int, image_ids: list, seed: int = 0) -> None:
    """``n`` GQA-shaped questions as ``<split>_all_questions.json``; every ``BALANCED_EVERY``-th
    balanced; entailed ids among the file's own."""
    rng = np.random.default_rng(seed)
    bodies = _bodies(rng, 5000)
    pick, images, entailed = (rng.integers(len(bodies), size=n), rng.integers(len(image_ids), size=n),
                              rng.integers(0, 40, size=n))
    first = 20_000_000
    with open(path, "w") as f:
        f.write("{")
        for i in range(n):
            ids = ", ".join(f'"{first + (i + d) % n}"' for d in range(1, int(entailed[i]) + 1))
            body = bodies[pick[i]][0]
            if i % BALANCED_EVERY:
                body = body.replace('"isBalanced": true', '"isBalanced": false')
            f.write(f'{", " if i else ""}"{first + i}": {{"entailed": [{ids}], "equivalent": [], '
                    f'"imageId": "{image_ids[images[i]]}", {body}}}')
        f.write("}")


def child_ours(root: str) -> dict:
    import psutil
    import torch

    from butd import questions as Q
    from butd.evaluation.gqa_official import predict_all_questions
    from butd.loading import VQADataModule
    from butd.tasks.gqa_metrics import OfficialFiles
    from butd.training.lit import LitVQA
    torch.manual_seed(0)
    cache = os.path.join(root, "GQA-Cache")
    dm = VQADataModule("gqa", cache, batch_size=512)
    dm.setup("predict")
    lit = LitVQA("gqa", {"model": "butd", "hidden": 64, "emb_dim": 300}, ntoken=dm.ntoken,
                 num_answers=dm.num_answers, v_dim=dm.v_dim).eval()
    files = OfficialFiles.find(os.path.join(root, "GQA-Questions"), "testdev")
    samples, done = [], threading.Event()

    def sample():   # RSS every 0.2 s: the pass's first half against its second shows any growth
        while not done.wait(0.2):
            samples.append(psutil.Process().memory_info().rss)
    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    scores, count, *_ = predict_all_questions(   # (scores, written, left out, labels)
        lit, dm, "testdev", files, Q.load_spellings(dm.questions_dir), torch.device("cpu"),
        os.path.join(root, "predictions.json"), os.path.join(root, "attentions.json"), None, say=lambda *a: None)
    done.set()
    sampler.join()
    half = len(samples) // 2
    return {"seconds": time.perf_counter() - start, "questions": count,
            "first_half_peak": max(samples[:half], default=0), "second_half_peak": max(samples[half:], default=0),
            "consistency": scores["official"]["consistency"], "accuracy": scores["official"]["accuracy"]}


def child_official(root: str) -> dict:
    # eval.py's peak: the questions (loadFile) and the predictions dict, both whole
    start = time.perf_counter()
    with open(os.path.join(root, "GQA-Questions", "testdev_all_questions.json")) as f:
        questions = json.load(f)
    with open(os.path.join(root, "predictions.json")) as f:
        predictions = {p["questionId"]: p["prediction"] for p in json.load(f)}
    return {"seconds": time.perf_counter() - start, "questions": len(questions), "predictions": len(predictions)}


def run_child(kind: str, root: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--keep", root], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    if done.returncode:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--num_questions", type=comma_list(int), default="50000,200000",
                   help="all-questions file sizes to measure, comma-separated")
    p.add_argument("--keep", default=None, help="work in this directory and keep it (default: a temp dir)")
    p.add_argument("--out", default=RESULTS, help="where the PNG and JSON go")
    p.add_argument("--child", choices=["ours", "official"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = (child_ours if args.child == "ours" else child_official)(args.keep)
        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return result
    root = args.keep or tempfile.mkdtemp(prefix="gqa_eval_memory_")
    try:
        paths = make_data(root, train_questions=5000, images=400)
        from butd import questions as Q
        Q.build(Q.Inputs(task=TASK.name, questions=paths["questions"], glove=paths["glove"], cache=paths["cache"]),
                os.path.join(paths["cache"], "questions"), progress=False)
        testdev_images = Q.load_split(os.path.join(paths["cache"], "questions"), "testdev").image_ids[:, 0]
        runs = []
        for n in sorted(args.num_questions):
            all_file = os.path.join(paths["questions"], "testdev_all_questions.json")
            write_all_questions(all_file, n, sorted(set(testdev_images.tolist())))
            size_mb = os.path.getsize(all_file) / 1e6
            for kind in ("ours", "official"):
                r = run_child(kind, root)
                halves = (f"{r['first_half_peak'] / MB:.0f} / {r['second_half_peak'] / MB:.0f}"
                          if kind == "ours" else None)
                runs.append({"questions": n, "json_mb": round(size_mb, 1), "way": kind,
                             "peak_rss_mb": round(r["peak_rss"] / MB, 1), "halves": halves,
                             "seconds": round(r["seconds"], 2)})
                print(f"{n:>9,} questions ({size_mb:,.0f} MB): {kind:<8} peak RSS {r['peak_rss'] / MB:8.1f} MB"
                      + (f" (first / second half of the pass: {halves} MB)" if halves else "")
                      + f", {r['seconds']:.1f} s", flush=True)
        small, large = min(args.num_questions), max(args.num_questions)

        def growth(kind):   # MB per 1,000 questions between the smallest and largest file
            a, b = (next(r["peak_rss_mb"] for r in runs if r["way"] == kind and r["questions"] == n)
                    for n in (small, large))
            return (b - a) / ((large - small) / 1000) if large > small else float("nan")
        ours, official = growth("ours"), growth("official")
        peak = {kind: next(r["peak_rss_mb"] for r in runs if r["way"] == kind and r["questions"] == large)
                for kind in ("ours", "official")}
        summary = {"questions": sorted(args.num_questions), "ours_peak_mb": peak["ours"],
                   "official_peak_mb": peak["official"], "ours_mb_per_1000_questions": round(ours, 3),
                   "official_mb_per_1000_questions": round(official, 3),
                   "growth_ratio": round(ours / official, 4) if official else None,
                   "ours_halves_mb_at_largest": next(r["halves"] for r in runs
                                                     if r["way"] == "ours" and r["questions"] == large),
                   "load_average": round(os.getloadavg()[0], 1)}
        print(f"\ngrowth per 1,000 questions: ours {ours:.3f} MB, official way {official:.3f} MB "
              f"({ours / official:.3f}x); at {large:,} questions: ours {peak['ours']:.0f} MB, "
              f"official way {peak['official']:.0f} MB")
        series = {kind: ([r["questions"] for r in runs if r["way"] == kind],
                         [r["peak_rss_mb"] for r in runs if r["way"] == kind]) for kind in ("ours", "official")}
        return report("gqa_eval_memory", args.out, summary, runs, columns=[
            ("questions", "questions", ">10,"), ("JSON MB", "json_mb", ">8.1f"), ("way", "way", "<9"),
            ("peak RSS MB", "peak_rss_mb", ">12.1f"), ("halves MB", "halves", ">12"), ("seconds", "seconds", ">8.2f")],
            panels=[("Does memory grow with the all-questions file? Peak RSS", "questions in the file", "MB",
                     {f"evaluate.py (streamed): +{summary['ours_mb_per_1000_questions']:.2f} MB per 1,000 questions":
                      series["ours"],
                      f"official eval.py's way (json.load): +{summary['official_mb_per_1000_questions']:.2f} MB per "
                      "1,000": series["official"]}, {"y_from_zero": True})])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run(main))

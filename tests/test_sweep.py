"""Many runs at once on one data directory (a sweep, a job array): the caches are built once, by one
process, the others wait and use them; a conversion killed anywhere is resumed by the next run."""
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from butd import questions
from butd.features import schema
from butd.synthetic.gqa import generate

from helpers import build_gqa_caches, store_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = dict(train_images=40, val_images=4, test_images=4, testdev_images=8, questions_per_image=4, feature_dim=32)
RUN = ["--epochs", "1", "--hidden", "32", "--bsz", "32", "--accelerator", "cpu", "--num_workers", "0"]
BUILT = " -> "                      # a conversion's summary line: "[*] <input> -> <store>: ..."


def cache_contents(cache) -> dict:
    """What a run's caches hold: every store file, and the question cache but for its shards (whose
    tar headers carry the build time)."""
    out = {}
    for store in ("trainval.zarr", "testdev.zarr"):
        out.update({f"{store}/{k}": v for k, v in store_files(os.path.join(cache, store)).items()})
    qdir = os.path.join(cache, "questions")
    for name in sorted(os.listdir(qdir)):
        if name.endswith(".npz"):       # (a zip's members carry their write time too)
            with np.load(os.path.join(qdir, name), allow_pickle=False) as z:
                out[name] = {k: z[k].tobytes() for k in z.files}
        elif name.endswith((".npy", ".json")) and name != "manifest.json":
            with open(os.path.join(qdir, name), "rb") as f:
                out[name] = f.read()
    return out


def test_three_runs_started_at_once_build_the_caches_once_and_all_train(tmp_path):
    root = tmp_path / "data"
    generate(str(root), seed=2, **SAMPLE)
    runs = [subprocess.Popen([sys.executable, "train.py", "--run_name", f"C{i}", "--seed", str(i),
                              "--data", str(root), "--checkpoint", str(tmp_path / "ck"), *RUN],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(3)]
    logs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], "\n\n".join(log[-3000:] for log in logs)
    cache = root / "GQA-Cache"
    for store in ("trainval.zarr", "testdev.zarr"):
        built = [log for log in logs if f"{BUILT}{cache / store}:" in log]
        assert len(built) == 1, store                           # converted by one run
        assert all(f"{cache / store}: already complete" in log for log in logs if log not in built)
    assert sum("question cache written to" in log for log in logs) == 1
    assert sum("waiting for another process building" in log for log in logs) >= 1, logs
    single = tmp_path / "single"
    build_gqa_caches(root, single, chunk_images=32)
    assert cache_contents(cache) == cache_contents(single)


CONVERT = """
import sys
from butd.features.convert import convert_stores
from butd.tasks import get_task
convert_stores(get_task("gqa"), sys.argv[1], sys.argv[2], workers=1, chunk_images=1, progress=False)
"""


def test_a_conversion_killed_anywhere_while_another_waits_is_resumed_by_train_alone(tmp_path):
    root = tmp_path / "data"
    generate(str(root), seed=4, **{**SAMPLE, "train_images": 160, "feature_dim": 2048})   # ~3 s to convert
    cache = root / "GQA-Cache"
    rng = random.Random(0)
    for _ in range(4):
        # two converters of the same stores: one converts, the other waits for it (or resumes after it);
        # each is killed (-9) at a random point
        procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(root / "GQA-Features"), str(cache)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        for proc in procs:
            time.sleep(rng.uniform(0.4, 1.8))
            proc.kill()
        for proc in procs:
            proc.wait()
    done = subprocess.run([sys.executable, "train.py", "--run_name", "alone", "--data", str(root),
                           "--checkpoint", str(tmp_path / "ck"), *RUN], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert schema.is_complete(str(cache / "trainval.zarr")) and schema.is_complete(str(cache / "testdev.zarr"))
    questions.read_manifest(str(cache / "questions"))
    single = tmp_path / "single"
    build_gqa_caches(root, single, chunk_images=1)
    assert cache_contents(cache) == cache_contents(single)


def test_what_an_interrupted_store_left_is_started_over_without_overwrite(sample_dir, tmp_path):
    """Arrays without the store's zarr.json (a creation or removal cut short) are ours: converted
    anew; a folder with anything else in it is still refused."""
    from butd.features.convert import convert_tsv
    tsv = os.path.join(sample_dir, "GQA-Features", "gqa_testdev_obj36.tsv")
    out = tmp_path / "testdev.zarr"
    convert_tsv(tsv, str(out), workers=1, progress=False)
    os.remove(out / "zarr.json")
    summary = convert_tsv(tsv, str(out), workers=1, progress=False)
    assert not summary.already_complete and schema.is_complete(str(out))
    mine = tmp_path / "mine.zarr"
    (mine / "features").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a feature store"):
        convert_tsv(tsv, str(mine), workers=1, progress=False)
    assert (mine / "notes.txt").read_text() == "mine"

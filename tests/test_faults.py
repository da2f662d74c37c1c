"""Faults users of peer projects reported, replayed against ours: each test runs the user's scenario
and asserts what must happen instead (a refusal that names the cause, or the right result).

1 vocabulary of a checkpoint, 2 image ids in another format / empty splits, 3 --drop_missing across
commands, 4 resuming mid-epoch, 5 the GQA submission file, 6 exact validation under DDP, 7 the
feature size from agreement, 8 byte-order marks, 9 messages that name the fix; and several TSVs
converted into one store."""
import base64
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "converters"))
from butd import cli, questions  # noqa: E402
from butd.evaluation import plots  # noqa: E402
from butd.features import schema  # noqa: E402
from butd.features.convert import convert_stores, convert_tsv  # noqa: E402
from butd.features.reader import FeatureStore  # noqa: E402
from butd.features.tsv import TSVFormatError  # noqa: E402
from butd.loading.batches import BatchDataset  # noqa: E402
from butd.loading.loaders import make_loader  # noqa: E402
from butd.loading.sampler import ShardedBatchSampler  # noqa: E402
from butd.synthetic.gqa import generate  # noqa: E402
from butd.synthetic.scene import format_row, write_tsv  # noqa: E402
from butd.tasks import get_task  # noqa: E402
from butd.tasks.json_stream import json_lines, object_items  # noqa: E402
from butd.text.glove import read_glove  # noqa: E402
from butd.training.lit import LitVQA  # noqa: E402

import evaluate  # noqa: E402  (evaluate.py and train.py live at the repository root)
import questions_to_shards  # noqa: E402
import train  # noqa: E402
import tsv_to_zarr  # noqa: E402
from helpers import REAL_TSV, interrupted_after, make_rows, questions_for, read_store, write_store  # noqa: E402

EMB = 32
# 19 train images x 5 questions = 95 train questions: 6 steps of 16 per epoch; 35 testdev questions.
SAMPLE = dict(train_images=19, val_images=2, test_images=3, testdev_images=7, questions_per_image=5,
              feature_dim=32, emb_dim=EMB)
FAST = ["--hidden", "32", "--bsz", "16", "--emb_dim", str(EMB), "--accelerator", "cpu", "--log_every", "1",
        "--answer_dropout", "0", "--attention_dropout", "0"]


def make_sample(root, seed=3):
    paths = generate(str(root), seed=seed, **SAMPLE)
    return ["--data", str(root), "--glove", paths["glove"]]


def cli_run(main, argv, capsys):
    """(exit status, stderr) of a command line's ``main`` run as its script runs it."""
    capsys.readouterr()
    status = cli.run(main, argv)
    return status, capsys.readouterr().err


def one_line_error(err: str) -> str:
    """The one error line a command ended with (progress bars may come before it), never a traceback."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A sample and one epoch of training on it (train.py builds the caches on the way)."""
    root = tmp_path_factory.mktemp("faults_sample")
    data = make_sample(root)
    ckpt = tmp_path_factory.mktemp("faults_ckpt")
    _, checkpoints = train.main(["--run_name", "t", *data, "--checkpoint", str(ckpt), *FAST, "--epochs", "1"])
    return root, data, checkpoints.best_model_path


def copy_stores(root, dst):
    """The run's feature stores, copied to ``dst`` (a cache directory without a question cache)."""
    for store in ("trainval", "testdev"):
        shutil.copytree(os.path.join(root, "GQA-Cache", f"{store}.zarr"), os.path.join(dst, f"{store}.zarr"))
    return str(dst)


def build_questions(qdir, glove, cache, *flags):
    return questions_to_shards.main(["--questions", str(qdir), "--glove", glove, "--cache", str(cache),
                                     "--emb_dim", str(EMB), "--workers", "1", *flags])


# ---- 1. A checkpoint knows the vocabularies it was trained with ----

def test_1_evaluate_and_resume_refuse_a_cache_rebuilt_from_reordered_questions(trained, tmp_path, capsys):
    root, data, ckpt = trained
    glove = data[3]
    assert evaluate.main(["--checkpoint", ckpt, "--out", str(tmp_path / "p.json")])["overall"]["count"] == 35
    # The same 95 train questions, their JSON keys in reverse order; the cache rebuilt from them.
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    path = qdir / "train_balanced_questions.json"
    with open(path) as f:
        items = list(json.load(f).items())
    assert len(items) == 95
    with open(path, "w") as f:
        json.dump(dict(reversed(items)), f)
    cache = copy_stores(root, tmp_path / "cache")
    build_questions(qdir, glove, cache)
    old = questions.read_manifest(os.path.join(root, "GQA-Cache", "questions"))["summary"]["vocabulary"]
    new = questions.read_manifest(os.path.join(cache, "questions"))["summary"]["vocabulary"]
    assert (new["ntoken"], new["num_answers"]) == (old["ntoken"], old["num_answers"])   # same counts,
    assert new["words"] != old["words"] and new["answers"] != old["answers"]            # other order

    argv = ["--checkpoint", ckpt, "--cache", cache, "--out", str(tmp_path / "p2.json")]
    with pytest.raises(questions.StaleCacheError, match=r"words \(the same \d+, in another order.*answers"):
        evaluate.main(argv)
    assert not os.path.exists(tmp_path / "p2.json")
    status, err = cli_run(evaluate.main, argv, capsys)
    assert status == 1 and "trained with" in one_line_error(err)
    # resuming on that cache is refused the same way, before any training
    with pytest.raises(questions.StaleCacheError, match="words"):
        train.main(["--run_name", "t", *data, "--gqa_questions", str(qdir), "--gqa_cache", cache,
                    "--checkpoint", str(tmp_path / "ck"), *FAST, "--resume", ckpt])


# ---- 2. Image ids in another format; never train or evaluate on an empty split ----

def test_2_ids_in_another_format_are_refused_showing_both_sides(trained, tmp_path, capsys):
    root, data, _ = trained
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    path = qdir / "train_balanced_questions.json"
    with open(path) as f:
        qs = json.load(f)
    for q in qs.values():       # VQA-style: the questions say 2300000, the store COCO_..._000002300000
        q["imageId"] = f"COCO_train2014_{int(q['imageId']):012d}"
    with open(path, "w") as f:
        json.dump(qs, f)
    cache = copy_stores(root, tmp_path / "cache")
    for flags in ([], ["--drop-missing"]):
        with pytest.raises(ValueError) as e:
            build_questions(qdir, data[3], cache, *flags)
        message = str(e.value)
        assert "95 of 95 train question(s)" in message and "COCO_train2014_0000023" in message
        store_ids = schema.read_image_ids(os.path.join(cache, "trainval.zarr"))[:5]
        assert all(i in message for i in store_ids), message       # the store's ids beside the questions'
    assert not os.path.exists(os.path.join(cache, "questions"))


@pytest.mark.parametrize("split", ["train", "testdev"])
def test_2_training_refuses_an_empty_split(trained, tmp_path, capsys, split):
    root, data, _ = trained
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    with open(qdir / f"{split}_balanced_questions.json", "w") as f:
        json.dump({}, f)
    cache = copy_stores(root, tmp_path / "cache")
    argv = ["--run_name", "e", *data, "--gqa_questions", str(qdir), "--gqa_cache", cache,
            "--checkpoint", str(tmp_path / "ck"), *FAST, "--epochs", "1"]
    status, err = cli_run(train.main, argv, capsys)
    verb = "train" if split == "train" else "validate"
    assert status == 1 and f"the {split} split has no questions; nothing to {verb} on" in one_line_error(err)
    assert not os.path.exists(tmp_path / "ck" / "metrics")


# ---- 3. --drop_missing survives train.py ----

def test_3_a_cache_built_with_drop_missing_is_used_by_train(tmp_path, capsys, caplog, one_thread):
    data = make_sample(tmp_path / "s", seed=4)
    tsv = tmp_path / "s" / "GQA-Features" / "vg_gqa_obj36.tsv"
    with open(tmp_path / "s" / "GQA-Questions" / "train_balanced_questions.json") as f:
        gone = sorted({q["imageId"] for q in json.load(f).values()})[:2]
    with open(tsv) as f:
        lines = [line for line in f if line.split("\t")[0] not in gone]
    with open(tsv, "w") as f:
        f.writelines(lines)
    assert tsv_to_zarr.main(["--data", str(tmp_path / "s"), "--workers", "1", "--quiet"]) == 0
    run = ["--run_name", "d", *data, "--checkpoint", str(tmp_path / "ck"), *FAST, "--fast_dev_run"]
    # without the cache, train.py stops at the missing images: one line that names a flag it has
    status, err = cli_run(train.main, run, capsys)
    assert status == 1 and "pass --drop_missing" in one_line_error(err)
    # the user follows the converter's advice ...
    summary = build_questions(tmp_path / "s" / "GQA-Questions", data[3], tmp_path / "s" / "GQA-Cache",
                              "--drop-missing")
    assert summary["dropped"]["train"] == 10
    # ... and train.py, without the flag, uses that cache as it is
    trainer, _ = train.main(run)
    assert trainer.state.finished and "built with --drop_missing (10 question(s)" in caplog.text
    assert questions.read_manifest(str(tmp_path / "s" / "GQA-Cache" / "questions"))["summary"]["dropped"]["train"] == 10
    trainer, _ = train.main(run + ["--drop_missing"])     # the flag itself is train.py's too
    assert trainer.state.finished


# ---- 4. Resuming mid-epoch trains exactly what an uninterrupted run does ----

def losses(checkpoint_dir):
    [name] = os.listdir(os.path.join(checkpoint_dir, "metrics"))
    with open(os.path.join(checkpoint_dir, "metrics", name)) as f:
        events = json.load(f)
    return events["train_loss_step"], events["train_loss"]


def epoch_figures(checkpoint_dir):
    """Each epoch's training loss and accuracy, and the steps they were logged at."""
    [name] = os.listdir(os.path.join(checkpoint_dir, "metrics"))
    with open(os.path.join(checkpoint_dir, "metrics", name)) as f:
        events = json.load(f)
    return {k: events[k] for k in ("train_epoch_loss", "train_epoch_acc", "train_epoch_loss_step")}


def test_4_resume_after_max_steps_goes_on_batch_for_batch(trained, tmp_path, one_thread):
    _, data, _ = trained
    base = [*data, *FAST, "--epochs", "2"]
    full, _ = train.main(["--run_name", "full", "--checkpoint", str(tmp_path / "full"), *base])
    steps, full_losses = losses(tmp_path / "full")
    assert steps == list(range(12))                        # 2 epochs of 6 steps
    part, _ = train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base, "--max_steps", "3"])
    assert part.global_step == 3
    last = os.path.join(part.checkpoint_callback.dirpath, "last.ckpt")
    saved = os.path.join(part.checkpoint_callback.dirpath, "config.json")
    with open(saved) as f:
        before = f.read()
    with pytest.raises(ValueError, match="after batch 3 of epoch 0"):   # mid-epoch: another --bsz is refused
        train.main(["--resume", last, "--bsz", "8"])
    with open(saved) as f:
        assert f.read() == before      # ... and leaves the run's configuration as it was
    resumed, _ = train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base, "--resume", last])
    assert resumed.global_step == 12 and resumed.current_epoch == 2
    steps, part_losses = losses(tmp_path / "part")
    assert steps == list(range(12)) and part_losses == full_losses    # the same batches, in the same order
    assert epoch_figures(tmp_path / "part") == epoch_figures(tmp_path / "full")  # each epoch once, whole
    for name, value in full.lightning_module.state_dict().items():
        assert torch.equal(value, resumed.lightning_module.state_dict()[name]), name


def test_4_ctrl_c_saves_the_batch_and_resume_goes_on_from_the_next(trained, tmp_path, one_thread, monkeypatch):
    _, data, _ = trained
    base = [*data, *FAST, "--epochs", "2", "--answer_dropout", "0.5"]   # its draws go on where they stopped
    full, _ = train.main(["--run_name", "full", "--checkpoint", str(tmp_path / "full"), *base])
    step = LitVQA.training_step

    def interrupted_step(self, batch, batch_idx):   # Ctrl-C during the third step of the second epoch
        if self.global_step == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(LitVQA, "training_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base])
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    [run] = os.listdir(tmp_path / "part" / "runs")
    names = sorted(os.listdir(tmp_path / "part" / "runs" / run))
    # one last.ckpt, at the end of the interrupted batch; no validation or top-k file of the part-epoch
    assert [n for n in names if n.endswith(".ckpt")] == [n for n in names if n.startswith("butd-epoch=00")] + ["last.ckpt"]
    last = str(tmp_path / "part" / "runs" / run / "last.ckpt")
    assert torch.load(last, weights_only=False)["global_step"] == 9
    [metrics] = os.listdir(tmp_path / "part" / "metrics")
    with open(tmp_path / "part" / "metrics" / metrics) as f:
        events = json.load(f)
    assert events["status"] == "interrupted" and len(events["val_acc"]) == 1
    resumed, _ = train.main(["--resume", last])
    assert resumed.global_step == 12
    assert losses(tmp_path / "part") == losses(tmp_path / "full")    # the interrupted batch trained once
    assert epoch_figures(tmp_path / "part") == epoch_figures(tmp_path / "full")
    for name, value in full.lightning_module.state_dict().items():
        assert torch.equal(value, resumed.lightning_module.state_dict()[name]), name


def test_4_ctrl_c_during_the_sanity_check_stops_after_the_first_batch(trained, tmp_path, one_thread, monkeypatch):
    _, data, _ = trained
    validate = LitVQA.validation_step

    def interrupted(self, batch, batch_idx):   # one Ctrl-C, at the sanity check's first batch
        if self.trainer.sanity_checking and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return validate(self, batch, batch_idx)

    monkeypatch.setattr(LitVQA, "validation_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--run_name", "s", "--checkpoint", str(tmp_path), *data, *FAST, "--epochs", "2"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    [run] = os.listdir(tmp_path / "runs")
    assert torch.load(tmp_path / "runs" / run / "last.ckpt", weights_only=False)["global_step"] == 1


def test_a_run_that_fails_leaves_ctrl_c_as_it_was(trained, tmp_path, one_thread, monkeypatch):
    _, data, _ = trained

    def broken(self, batch, batch_idx):
        raise RuntimeError("a broken step")

    monkeypatch.setattr(LitVQA, "training_step", broken)
    with pytest.raises(RuntimeError, match="a broken step"):
        train.main(["--run_name", "b", "--checkpoint", str(tmp_path), *data, *FAST, "--epochs", "1"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_worker_processes_train_exactly_as_the_thread(trained, tmp_path, one_thread):
    _, data, _ = trained
    base = [*data, *FAST, "--epochs", "1", "--answer_dropout", "0.5", "--feature_cache", "none"]
    for workers in (0, 1):
        train.main(["--run_name", "w", "--checkpoint", str(tmp_path / str(workers)), *base, "--num_workers", str(workers)])
    assert losses(tmp_path / "0") == losses(tmp_path / "1")   # the same batches and the same dropout draws


def test_4_resume_with_worker_processes_and_epochs_1(trained, tmp_path, one_thread):
    """The issue's case: --epochs 1 --max_steps 3, then --resume: the resume used to train nothing."""
    _, data, _ = trained
    base = [*data, *FAST, "--epochs", "1", "--num_workers", "1"]
    train.main(["--run_name", "full", "--checkpoint", str(tmp_path / "full"), *base])
    part, _ = train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base, "--max_steps", "3"])
    last = os.path.join(part.checkpoint_callback.dirpath, "last.ckpt")
    resumed, _ = train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base, "--resume", last])
    assert resumed.global_step == 6
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert epoch_figures(tmp_path / "part") == epoch_figures(tmp_path / "full")


@pytest.mark.parametrize("workers", [0, 1])
def test_4_the_loader_saves_what_its_consumer_took(tmp_path, workers):
    ids = write_store(tmp_path / "s.zarr", num_images=37)
    dataset = BatchDataset(questions_for(ids, 100), FeatureStore(str(tmp_path / "s.zarr")))

    def loader():
        made = make_loader(dataset, batch_size=8, shuffle=True, seed=3, num_workers=workers, prefetch_factor=2)
        made.sampler.set_epoch(1)
        return made
    whole = [b["index"].tolist() for b in loader()]
    first = loader()
    it = iter(first)
    taken = [next(it)["index"].tolist() for _ in range(3)]        # the loader has gathered more by now
    state = first.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 3) and taken == whole[:3]
    again = loader()
    again.load_state_dict(state)
    again.sampler.set_epoch(1)                                    # as Lightning does on resume
    assert [b["index"].tolist() for b in again] == whole[3:]
    assert (again.state_dict()["epoch"], again.state_dict()["batches"]) == (2, 0)   # a finished epoch
    again.sampler.set_epoch(3)  # set_epoch before the pass begins (a checkpoint saved at epoch start)
    assert (again.state_dict()["epoch"], again.state_dict()["batches"]) == (3, 0)
    again.load_state_dict(state)
    again.sampler.set_epoch(2)  # another epoch than the restored position's: that one starts at 0
    assert (again.state_dict()["epoch"], again.state_dict()["batches"]) == (2, 0)


def test_4_a_mid_epoch_position_needs_the_same_batches():
    sampler = ShardedBatchSampler(100, 8, rank=0, world_size=2)
    state = sampler.state_dict(3)
    other = ShardedBatchSampler(100, 8, rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"world_size 2 -> 1.*same --bsz"):
        other.load_state_dict(state)
    other.load_state_dict(sampler.state_dict(len(sampler)))       # an epoch's end: anything goes
    assert (other.epoch, other.start) == (1, 0)


# ---- 5. A GQA submission the server accepts ----

def test_5_the_submission_split_predicts_every_question_of_the_all_questions_file(trained, tmp_path):
    root, data, ckpt = trained
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    with open(qdir / "test_balanced_questions.json") as f:
        balanced = json.load(f)
    every = dict(balanced)
    for k, image in enumerate(sorted({q["imageId"] for q in balanced.values()})):   # unbalanced extras
        every[f"2{k:07d}"] = {"question": "Is the zebra to the left of the giraffe?", "imageId": image}
    with open(qdir / "submission_all_questions.json", "w", encoding="utf-8-sig") as f:
        json.dump(every, f)
    cache = copy_stores(root, tmp_path / "cache")
    build_questions(qdir, data[3], cache)
    manifest = questions.read_manifest(os.path.join(cache, "questions"))
    trained_with = questions.read_manifest(os.path.join(root, "GQA-Cache", "questions"))
    assert manifest["summary"]["questions"]["submission"] == len(every) > len(balanced)
    assert manifest["summary"]["vocabulary"] == trained_with["summary"]["vocabulary"]   # words kept out
    assert trained_with["summary"]["absent"] == ["submission"]                          # optional
    out = tmp_path / "submission.json"
    scores = evaluate.main(["--checkpoint", ckpt, "--cache", cache, "--split", "submission", "--out", str(out)])
    with open(out) as f:
        predictions = json.load(f)
    assert sorted(p["questionId"] for p in predictions) == sorted(every)               # the server's KeyError
    assert scores["overall"]["count"] == 0
    with pytest.raises(FileNotFoundError, match="submission split's question file was absent"):
        evaluate.main(["--checkpoint", ckpt, "--split", "submission", "--out", str(tmp_path / "x.json")])


def test_5_a_question_left_out_by_drop_missing_is_still_answered_in_the_submission(trained, tmp_path, capsys):
    root, data, ckpt = trained
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    with open(qdir / "testdev_balanced_questions.json") as f:
        testdev = json.load(f)
    first = next(iter(testdev.values()))          # its words and answer: the vocabulary stays the same
    testdev["00000001"] = {**first, "imageId": "n999999"}            # an image the testdev store lacks
    with open(qdir / "testdev_balanced_questions.json", "w") as f:
        json.dump(testdev, f)
    cache = copy_stores(root, tmp_path / "cache")
    assert build_questions(qdir, data[3], cache, "--drop-missing")["dropped"]["testdev"] == 1
    out = tmp_path / "testdev.json"
    scores = evaluate.main(["--checkpoint", ckpt, "--cache", cache, "--out", str(out)])
    with open(out) as f:
        predictions = json.load(f)
    assert [p["questionId"] for p in predictions] == list(testdev)                   # file order, all of them
    assert scores["overall"]["count"] == len(testdev) - 1 and scores["dropped"] == 1
    assert "1 testdev question(s) left out of the cache" in capsys.readouterr().out
    # the question files moved: found again with --questions, and refused before any inference without
    moved = shutil.move(str(qdir), str(tmp_path / "moved"))
    argv = ["--checkpoint", ckpt, "--cache", cache, "--out", str(tmp_path / "again.json")]
    status, err = cli_run(evaluate.main, argv, capsys)
    assert status == 1 and "pass --questions DIR" in one_line_error(err)
    assert not os.path.exists(tmp_path / "again-scores.json")                       # refused before inference
    assert evaluate.main([*argv, "--questions", moved])["dropped"] == 1
    # a question file that changed since the cache was built is not used to fill the submission
    testdev["00000002"] = {**first, "imageId": "n999998"}
    with open(os.path.join(moved, "testdev_balanced_questions.json"), "w") as f:
        json.dump(testdev, f)
    with pytest.raises(ValueError, match="not the files the cache was built from"):
        evaluate.main([*argv, "--questions", moved])


# ---- 6. Exact validation under DDP ----

VALIDATE = """
import json, sys
import pytorch_lightning as pl
from butd.loading import VQADataModule
from butd.training.lit import LitVQA
ckpt, cache, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                     use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                     enable_model_summary=False)
[result] = trainer.validate(LitVQA.load_from_checkpoint(ckpt), datamodule=VQADataModule("gqa", cache, batch_size=16))
if trainer.is_global_zero:
    print("RESULT", json.dumps(result))
"""


def _validate(ckpt, cache, devices, script):
    """val_loss and val_acc of ``ckpt`` by ``devices`` processes (``strategy="ddp"`` re-runs the script
    in each, so it runs in a subprocess)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, str(script), ckpt, cache, str(devices)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def test_6_val_acc_with_two_processes_equals_one(trained, tmp_path):
    root, _, ckpt = trained
    cache = os.path.join(root, "GQA-Cache")
    (tmp_path / "validate.py").write_text(VALIDATE)
    one, two = (_validate(ckpt, cache, n, tmp_path / "validate.py") for n in (1, 2))
    # 35 questions: padding the ranks to 18 + 18 would count one twice, and 35 * acc is no integer
    # of a 36-question mean unless acc is 0 or 1
    assert 0 < one["val_acc"] < 1
    assert two["val_acc"] == one["val_acc"] and two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-6)
    ranks = [ShardedBatchSampler(35, 16, shuffle=False, rank=r, world_size=2, even=False) for r in (0, 1)]
    seen = [i for s in ranks for b in s for i in b]
    assert sorted(seen) == list(range(35))                       # each question exactly once


# ---- 7. One row must not decide the shape of a file ----

def _real_rows_with_a_narrow_first_row(path):
    """The real sample's rows, the first one's features cut to 36 x 1024 floats (valid base64)."""
    with open(REAL_TSV) as f:
        lines = f.readlines()
    fields = lines[0].rstrip("\n").split("\t")
    features = np.frombuffer(base64.b64decode(fields[9]), np.float32).reshape(36, 2048)
    fields[9] = base64.b64encode(np.ascontiguousarray(features[:, :1024]).tobytes()).decode()
    with open(path, "w", newline="") as f:
        f.writelines(["\t".join(fields) + "\n"] + lines[1:])
    return [line.split("\t")[0] for line in lines]


def test_7_the_feature_size_comes_from_agreement(tmp_path, capsys):
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    ids = _real_rows_with_a_narrow_first_row(tsv)
    with pytest.raises(TSVFormatError) as e:                     # the bad row is blamed, not line 2
        convert_tsv(tsv, out, workers=1, progress=False)
    assert str(e.value).startswith(f"{tsv}:1: ") and "1024" in str(e.value) and "9 of the first 10 rows" in str(e.value)
    summary = convert_tsv(tsv, out, workers=1, progress=False, on_bad_row="skip")
    assert summary.rows == 9 and summary.skipped == 1            # the nine good rows kept
    assert schema.read_image_ids(out).tolist() == ids[1:] and schema.read_attrs(out).feature_dim == 2048
    with open(out + ".bad_rows.json") as f:
        assert [r["line"] for r in json.load(f)["rows"]] == [1]
    # the user says the size: then row 1 is the good one, and a skip of 9 rows out of 10 fails
    status, err = cli_run(tsv_to_zarr.main, [tsv, "--out", str(tmp_path / "t.zarr"), "--feature_dim", "1024",
                                             "--on-bad-row", "skip", "--workers", "1", "--quiet"], capsys)
    assert status == 1 and "9 bad rows against 1 good ones" in err and not os.path.exists(tmp_path / "t.zarr")
    with pytest.raises(TSVFormatError, match=r"f\.tsv:1: .*2048"):
        convert_tsv(tsv, str(tmp_path / "u.zarr"), workers=1, progress=False, feature_dim=2048)


def test_7_a_tie_asks_for_the_feature_size(tmp_path):
    rows = make_rows(n=2, feature_dim=32) + make_rows(n=2, feature_dim=16, seed=1)
    for i, r in enumerate(rows):
        r.image_id = f"img{i}"
    write_tsv(str(tmp_path / "f.tsv"), rows)
    with pytest.raises(ValueError, match="disagree on the feature size.*--feature_dim"):
        convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), workers=1, progress=False)
    summary = convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), workers=1, progress=False,
                          feature_dim=16, on_bad_row="skip")
    assert summary.rows == 2 and schema.read_image_ids(str(tmp_path / "s.zarr")).tolist() == ["img2", "img3"]


# ---- 8. Text that starts with a byte-order mark ----

BOM = b"\xef\xbb\xbf"


def test_8_glove_with_a_bom_gives_the_first_word_its_vector(tmp_path):
    text = b"the 0.5 -1.25 2\nis 1 1 1\n"
    for name, opener in (("g.txt", open), ("g.txt.gz", gzip.open)):
        with opener(tmp_path / name, "wb") as f:
            f.write(BOM + text)
        weights, found = read_glove(str(tmp_path / name), {"the": 0, "is": 1}, 3)
        assert found.all() and weights[0].tolist() == [0.5, -1.25, 2.0], name


def test_8_question_files_with_a_bom(tmp_path):
    (tmp_path / "q.json").write_bytes(BOM + json.dumps({"q1": {"question": "Is it?"}}).encode())
    assert list(object_items(str(tmp_path / "q.json"))) == [("q1", {"question": "Is it?"})]
    (tmp_path / "q.jsonl").write_bytes(BOM + b'{"identifier": "dev-1-0-0"}\n{"identifier": "dev-1-0-1"}\n')
    assert [v["identifier"] for _, v in json_lines(str(tmp_path / "q.jsonl"))] == ["dev-1-0-0", "dev-1-0-1"]


def test_8_tsv_with_a_bom(tmp_path):
    rows = make_rows(n=6)
    text = "".join(format_row(r) for r in rows).encode()
    (tmp_path / "plain.tsv").write_bytes(text)
    (tmp_path / "bom.tsv").write_bytes(BOM + text)
    for name in ("plain", "bom"):
        convert_tsv(str(tmp_path / f"{name}.tsv"), str(tmp_path / f"{name}.zarr"), chunk_images=4, workers=2,
                    progress=False)
    plain, _ = read_store(tmp_path / "plain.zarr")
    bom, _ = read_store(tmp_path / "bom.zarr")
    assert bom[schema.IMAGE_IDS][0] == rows[0].image_id
    for name in plain:
        np.testing.assert_array_equal(bom[name], plain[name])


# ---- 9. Messages that name the fix ----

def test_9_another_on_bad_row_names_the_setting(tmp_path, capsys):
    write_tsv(str(tmp_path / "f.tsv"), make_rows(n=5))
    args = [str(tmp_path / "f.tsv"), "--out", str(tmp_path / "s.zarr"), "--workers", "1", "--quiet"]
    assert tsv_to_zarr.main(args) == 0
    capsys.readouterr()
    assert tsv_to_zarr.main(args + ["--on-bad-row", "skip"]) == 1
    err = capsys.readouterr().err
    assert "with other settings (--on-bad-row error -> skip)" in err and "--overwrite" in err
    write_tsv(str(tmp_path / "f.tsv"), make_rows(n=6))
    assert tsv_to_zarr.main(args) == 1
    assert f"from other input ({tmp_path / 'f.tsv'}: size" in capsys.readouterr().err


def test_9_a_compressed_tsv_is_named_not_dumped(tmp_path, capsys):
    with open(REAL_TSV, "rb") as f:
        head = f.read(1 << 20)
    with gzip.open(tmp_path / "f.tsv.gz", "wb") as f:
        f.write(head)
    with zipfile.ZipFile(tmp_path / "f.zip", "w") as z:
        z.writestr("f.tsv", head)
    for name, kind in (("f.tsv.gz", "gzip"), ("f.zip", "zip")):
        assert tsv_to_zarr.main([str(tmp_path / name), "--out", str(tmp_path / "s.zarr"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"compressed file ({kind})" in err and "decompress it first" in err and len(err) < 400, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_9_gpus_without_a_gpu_say_so_and_how_to_run_ddp_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "--run_name", "x", "--gpus", "2", "--data", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    line = one_line_error(done.stderr)
    assert "no GPU is visible" in line and "--accelerator cpu --devices 2 --strategy ddp" in line


def test_9_user_errors_are_one_line_from_every_command(tmp_path, capsys):
    status, err = cli_run(evaluate.main, ["--checkpoint", str(tmp_path / "none.ckpt")], capsys)
    assert status == 1 and "none.ckpt: no such checkpoint" in one_line_error(err)
    status, err = cli_run(train.main, ["--run_name", "x", "--data", str(tmp_path), "--accelerator", "cpu"], capsys)
    assert status == 1 and "vg_gqa_obj36.tsv: features TSV not found" in one_line_error(err)
    status, err = cli_run(questions_to_shards.main, ["--data", str(tmp_path)], capsys)
    assert status == 1 and "not found" in one_line_error(err)
    status, err = cli_run(plots.main, [str(tmp_path / "none-metrics.json")], capsys)
    assert status == 1 and "none-metrics.json" in one_line_error(err)


# ---- Several TSVs, one store ----

def test_several_tsvs_make_the_store_of_their_concatenation(tmp_path, capsys):
    rows = make_rows(n=21)
    write_tsv(str(tmp_path / "a.tsv.0"), rows[:8])
    write_tsv(str(tmp_path / "a.tsv.1"), rows[8:])
    write_tsv(str(tmp_path / "all.tsv"), rows)
    parts = [str(tmp_path / "a.tsv.0"), str(tmp_path / "a.tsv.1")]
    assert tsv_to_zarr.main([*parts, "--out", str(tmp_path / "parts.zarr"), "--chunk_images", "4",
                             "--workers", "2", "--quiet"]) == 0
    convert_tsv(str(tmp_path / "all.tsv"), str(tmp_path / "all.zarr"), chunk_images=4, workers=1, progress=False)
    got, attrs = read_store(tmp_path / "parts.zarr")
    want, _ = read_store(tmp_path / "all.zarr")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert [f["path"] for f in attrs["source"]["files"]] == [os.path.abspath(p) for p in parts]
    # the fingerprint covers every file: a changed second part is named
    write_tsv(parts[1], rows[8:20])
    with pytest.raises(ValueError, match=r"from other input \(.*a\.tsv\.1: size"):
        convert_tsv(parts, str(tmp_path / "parts.zarr"), chunk_images=4, workers=1, progress=False)


def test_several_tsvs_errors_name_the_right_file_and_resume(tmp_path, monkeypatch):
    rows = make_rows(n=12)
    lines = [format_row(r) for r in rows]
    a, b = str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")
    with open(a, "w") as f:
        f.writelines(lines[:6])
    with open(b, "w") as f:
        f.writelines(lines[6:8] + [lines[2]] + lines[8:])       # line 3 of b repeats line 3 of a
    with pytest.raises(TSVFormatError, match=rf"^{b}:3: .*first seen on {a}:3"):
        convert_tsv([a, b], str(tmp_path / "s.zarr"), workers=1, progress=False)
    with open(b, "w") as f:
        f.writelines(lines[6:8] + [lines[8][:1000] + "\n"] + lines[9:])
    with pytest.raises(TSVFormatError, match=rf"^{b}:3: "):
        convert_tsv([a, b], str(tmp_path / "s.zarr"), workers=1, progress=False)
    with open(b, "w") as f:
        f.writelines(lines[6:])
    out = str(tmp_path / "s.zarr")
    with interrupted_after(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        convert_tsv([a, b], out, chunk_images=2, workers=1, progress=False)
    summary = convert_tsv([a, b], out, chunk_images=2, workers=2, progress=False)
    assert (summary.chunks_resumed, summary.chunks_converted, summary.rows) == (2, 4, 12)
    assert schema.read_image_ids(out).tolist() == [r.image_id for r in rows]


def test_convert_stores_uses_every_file_of_a_store(tmp_path):
    class TwoFiles:
        title, stores = "test", {"trainval": ("x.tsv.0", "x.tsv.1")}

        def store_path(self, cache, store):
            return get_task("gqa").store_path(cache, store)
    rows = make_rows(n=10)
    write_tsv(str(tmp_path / "x.tsv.0"), rows[:4])
    write_tsv(str(tmp_path / "x.tsv.1"), rows[4:])
    convert_stores(TwoFiles(), str(tmp_path), str(tmp_path / "cache"), workers=1, progress=False)
    assert schema.read_image_ids(str(tmp_path / "cache" / "trainval.zarr")).tolist() == [r.image_id for r in rows]

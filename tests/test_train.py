"""train.py end to end on a generated GQA-shaped sample: converters run when the caches are missing,
a fast_dev_run, a training that must beat the majority answer by a wide margin (features, questions
and answers aligned from the TSVs to the loss), --resume, the metrics file, a 2-process DDP run,
and evaluate.py on the trained run; an empty split refused, a cache built with --drop_missing
used as it is, GPUs that are not there named, the configuration's flags."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from butd import questions  # noqa: E402
from butd.evaluation.predict import evaluate  # noqa: E402
from butd.loading.caches import check_caches, prepare_caches  # noqa: E402
from butd.synthetic.gqa import generate  # noqa: E402
from butd.training.config import parse_config  # noqa: E402
from butd.training.lit import LitVQA  # noqa: E402
from butd.training.run import prepare_before_fit, question_inputs, run_name  # noqa: E402
from butd.training.summary import summary  # noqa: E402

import train  # noqa: E402  (train.py lives at the repository root)
import tsv_to_zarr
from helpers import (
    SMALL_FLAGS,
    build_questions,
    cli_run,
    copy_stores,
    interrupted_after,
    make_small_sample,
    make_tsv,  # noqa: E402
    one_line_error,
)

EMB = 32
# Small, fast settings.
FAST = ["--hidden", "128", "--bsz", "32", "--emb_dim", str(EMB), "--accelerator", "cpu",
        "--num_workers", "0", "--log_every", "5"]
SPEC_KEYS = ("train_loss", "train_acc", "train_epoch_loss", "train_epoch_acc", "val_loss", "val_acc")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_sample")
    paths = generate(str(root), seed=3, train_images=300, val_images=4, test_images=4, testdev_images=40,
                     questions_per_image=10, feature_dim=64, emb_dim=EMB)
    return root, ["--data", str(root), "--glove", paths["glove"]]


def metrics_of(trainer) -> dict:
    with open(trainer.logger.path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def trained(sample, one_thread, tmp_path_factory):
    """One 8-epoch run (the caches get built on the way); later tests read and resume it."""
    root, data = sample
    ckpt = tmp_path_factory.mktemp("ckpt")
    argv = ["--run_name", "learn", *data, "--checkpoint", str(ckpt), *FAST, "--epochs", "8", "--lr", "0.005",
            "--answer_dropout", "0.2"]
    trainer, checkpoints = train.main(argv)
    return root, data, ckpt, trainer, checkpoints, argv


def test_defaults_are_the_specs():
    c = parse_config(["--run_name", "x"])
    m, o, d = c.model, c.optim, c.data
    assert (o.bsz, o.epochs, m.hidden, m.emb_dim, m.rnn, m.rnn_layers, o.opt, o.gradient_clip, o.seed) == \
        (256, 15, 1024, 300, "GRU", 1, "adamax", 0.25, 7)
    assert (m.weight_norm, m.bidirectional, m.attention_dropout, m.answer_dropout) == (True, False, 0.2, 0.5)
    assert (d.dataset, d.questions, d.cache) == \
        ("gqa", os.path.join("data/", "GQA-Questions"), os.path.join("data/", "GQA-Cache"))
    assert d.glove == os.path.join("data/", "GloVe", "glove.6B.300d.txt") and d.checkpoint == "checkpoints/"
    c = parse_config(["--run_name", "x", "--gpus", "2", "--no_weight_norm", "--bidirectional"])
    assert (c.hardware.accelerator, c.hardware.devices, c.model.weight_norm, c.model.bidirectional) == \
        ("gpu", 2, False, True)
    assert run_name(c).startswith("x-butd-x7+")
    c = parse_config(["--fast_dev_run", "--run_name", "x", "--weight_norm", "--bidirectional", "false"])
    assert (c.run.fast_dev_run, c.model.weight_norm, c.model.bidirectional) == (1, True, False)
    assert parse_config(["--run_name", "x", "--fast_dev_run", "3", "--weight_norm=no"]).run.fast_dev_run == 3
    with pytest.raises(SystemExit):
        parse_config(["--run_name", "x", "--resume"])    # no value: jsonargparse's error and usage


def test_a_datasets_paths_under_the_specifications_names():
    c = parse_config(["--run_name", "x", "--gqa_questions", "q", "--gqa_cache", "c", "--vqa2_cache", "v"])
    assert (c.data.questions, c.data.features, c.data.cache) == ("q", os.path.join("data/", "GQA-Features"), "c")
    # another dataset's are ignored, as in the modular branch; the dataset's own win over the generic flag
    c = parse_config(["--run_name", "x", "--dataset", "vqa2", "--gqa_cache", "c", "--features", "f"])
    assert (c.data.cache, c.data.features) == (os.path.join("data/", "VQA2-Cache"), "f")
    c = parse_config(["--run_name", "x", "--dataset", "nlvr2", "--cache", "generic", "--nlvr2_cache", "own"])
    assert c.data.cache == "own"


def test_an_older_runs_config_with_per_dataset_paths_still_loads(tmp_path):
    from butd.training.config import load_config
    run_dir = tmp_path / "runs" / "old"
    os.makedirs(run_dir)
    older = {**parse_config(["--run_name", "old", "--dataset", "vqa2"]).flat(), "resume": None}
    for kind in ("questions", "features", "cache"):     # what config.json held before --questions/--features/--cache
        del older[kind]
        older.update({f"{task}_{kind}": f"/{task}/{kind}" for task in ("gqa", "vqa2", "nlvr2")})
    with open(run_dir / "config.json", "w") as f:
        json.dump(older, f)
    (run_dir / "last.ckpt").write_bytes(b"")
    for config in (load_config(str(run_dir / "last.ckpt")), parse_config(["--config", str(run_dir / "config.json")]),
                   parse_config(["--resume", str(run_dir / "last.ckpt")])):
        assert (config.data.questions, config.data.cache) == ("/vqa2/questions", "/vqa2/cache")


def test_evaluate_options_come_from_the_configuration(capsys):
    from butd.training.config import DataConfig, HardwareConfig, OptimConfig, parse_evaluate
    options = parse_evaluate(["--checkpoint", "c.ckpt"])
    assert (options.bsz, options.num_workers, options.accelerator) == \
        (OptimConfig.bsz, DataConfig.num_workers, HardwareConfig.accelerator)
    assert parse_evaluate(["--checkpoint", "c", "--gqa_cache", "g", "--bsz", "1024"]).cache == "g"
    with pytest.raises(SystemExit):
        parse_evaluate(["--split", "val"])          # --checkpoint is required
    assert "--checkpoint" in capsys.readouterr().err


def test_print_config_prints_a_file_that_starts_the_same_run(tmp_path, capsys):
    argv = ["--run_name", "p", "--hidden", "64", "--bidirectional", "--no_weight_norm", "--vqa2_cache", "v",
            "--dataset", "vqa2"]
    with pytest.raises(SystemExit):
        parse_config([*argv, "--print_config"])
    (tmp_path / "p.yaml").write_text(capsys.readouterr().out)
    assert parse_config(["--config", str(tmp_path / "p.yaml")]) == parse_config(argv)


def test_a_gzipped_glove_file_is_found_where_the_text_file_would_be(tmp_path):
    glove = tmp_path / "GloVe" / "glove.6B.300d.txt"
    os.makedirs(glove.parent)
    (tmp_path / "GloVe" / "glove.6B.300d.txt.gz").write_bytes(b"")
    assert parse_config(["--run_name", "x", "--data", str(tmp_path)]).data.glove == str(glove) + ".gz"
    glove.write_text("")     # both there: the text file, as before
    assert parse_config(["--run_name", "x", "--data", str(tmp_path)]).data.glove == str(glove)


def test_a_second_run_in_the_same_minute_gets_its_own_name(tmp_path):
    c = parse_config(["--run_name", "x", "--checkpoint", str(tmp_path)])
    first = run_name(c)
    os.makedirs(tmp_path / "runs" / first)
    second = run_name(c)
    assert second != first
    if second.startswith(first):          # unless the minute turned in between
        assert second == first + "-2"


def test_missing_input_names_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vg_gqa_obj36\.tsv.*converters/tsv_to_zarr\.py"):
        train.main(["--run_name", "x", "--data", str(tmp_path), "--accelerator", "cpu"])


def test_the_metrics_file_says_how_the_run_ended(trained):
    _, _, _, trainer, checkpoints, _ = trained
    events = metrics_of(trainer)
    best, final = events["best"], events["final"]
    assert (final["epoch"], final["step"]) == (7, events["val_acc_step"][-1])
    assert (final["val_acc"], final["val_loss"]) == (events["val_acc"][-1], events["val_loss"][-1])
    assert final["checkpoint"] == os.path.join(os.path.dirname(checkpoints.best_model_path), "last.ckpt")
    epoch = best["epoch"]
    assert best["val_acc"] == events["val_acc"][epoch] == max(events["val_acc"])
    assert (best["val_loss"], best["step"]) == (events["val_loss"][epoch], events["val_acc_step"][epoch])
    assert best["checkpoint"] == checkpoints.best_model_path and f"epoch={epoch:02d}" in best["checkpoint"]
    text = summary(events, 8, 75, "runs/r", "metrics/r-metrics.json", None)
    assert f"best    epoch {epoch}  val_loss {best['val_loss']:.4f}  val_acc {100 * best['val_acc']:.2f}%" in text
    assert "8 epochs in 1 min 15 s" in text and "final   epoch 7" in text
    text = summary(events, 1, 2, "runs/r", "metrics/r-metrics.json", None, "interrupted", batches=1)
    assert "training interrupted: 1 epoch and 1 batch of epoch 1 in 2 s" in text


def test_training_beats_the_majority_answer_and_writes_the_run(trained):
    root, _, ckpt, trainer, checkpoints, _ = trained
    labels = questions.load_split(os.path.join(root, "GQA-Cache", "questions"), "testdev").targets["labels"]
    majority = np.bincount(labels[labels >= 0]).max() / (labels >= 0).sum()
    events = metrics_of(trainer)
    assert events["status"] == "success"
    for key in SPEC_KEYS:
        assert len(events[key]) == len(events[key + "_step"]) > 0, key
    assert len(events["val_acc"]) == 8
    assert events["hyperparams"]["run_name"] == "learn" and events["hyperparams"]["ntoken"] > 0
    assert max(events["val_acc"]) > majority + 0.2, (majority, events["val_acc"])

    run_dir = os.path.dirname(checkpoints.best_model_path)
    names = sorted(os.listdir(run_dir))
    assert len([n for n in names if n.startswith("butd-epoch=")]) == 3 and "last.ckpt" in names
    # last.ckpt is the last epoch's, whether or not that epoch made the top 3
    assert torch.load(os.path.join(run_dir, "last.ckpt"), weights_only=False)["global_step"] == trainer.global_step
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    assert os.path.basename(run_dir) == trainer.logger.name
    assert config["cache"] == os.path.join(root, "GQA-Cache") and config["hidden"] == 128
    assert LitVQA.load_from_checkpoint(checkpoints.best_model_path).hparams.v_dim == 64


def test_a_run_started_from_its_saved_config_resolves_to_the_same_configuration(trained, tmp_path):
    import yaml
    *_, checkpoints, argv = trained
    saved = os.path.join(os.path.dirname(checkpoints.best_model_path), "config.json")
    ran = parse_config(argv)
    assert parse_config(["--config", saved]) == ran
    with open(saved) as f, open(tmp_path / "run.yaml", "w") as out:
        yaml.safe_dump(json.load(f), out)
    assert parse_config(["--config", str(tmp_path / "run.yaml")]) == ran
    changed = parse_config(["--config", str(tmp_path / "run.yaml"), "--hidden", "64", "--no_weight_norm"])
    assert (changed.model.hidden, changed.model.weight_norm, changed.optim.lr) == (64, False, ran.optim.lr)


def test_resume_alone_reads_the_runs_settings_and_a_saved_file_never_resumes(tmp_path):
    import dataclasses

    from butd.training.config import save_config
    run_dir = tmp_path / "runs" / "r"
    ran = parse_config(["--run_name", "r", "--hidden", "64", "--dataset", "vqa2", "--checkpoint", str(tmp_path),
                        "--max_steps", "3", "--data", str(tmp_path / "data"), "--glove", "glove.txt"])
    save_config(str(run_dir), dataclasses.replace(ran, run=dataclasses.replace(ran.run, resume="elsewhere/last.ckpt")))
    with open(run_dir / "config.json") as f:
        saved = json.load(f)
    assert saved["resume"] is None      # how a run was started is not its configuration
    assert saved["glove"] == os.path.abspath("glove.txt")   # paths absolute: it resumes from anywhere
    last = str(run_dir / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        parse_config(["--resume", last])
    (run_dir / "last.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit):           # no abbreviations: --resum is not --resume
        parse_config(["--resum", last, "--run_name", "z"])
    resumed = parse_config(["--resume", last, "--epochs", "30"])
    assert resumed.run.resume == last and resumed.optim.epochs == 30
    assert resumed.optim.max_steps == -1              # where the interrupted invocation stopped is not kept
    assert resumed.data.glove == os.path.abspath("glove.txt")
    resumed.data.glove = ran.data.glove
    assert dataclasses.replace(resumed, run=ran.run, optim=ran.optim) == ran   # hidden 64, vqa2, its paths
    assert parse_config(["--resume", last, "--max_steps", "5"]).optim.max_steps == 5
    assert parse_config(["--config", str(run_dir / "config.json"), "--resume", last]).optim.max_steps == -1
    # a run copied elsewhere resumes there, not into the directory it was first made in
    copy = tmp_path / "elsewhere" / "runs" / "r"
    shutil.copytree(run_dir, copy)
    assert parse_config(["--resume", str(copy / "last.ckpt")]).data.checkpoint == str(tmp_path / "elsewhere")
    # an older run's file that still says resume: starting from it with a new name is a new run
    with open(run_dir / "config.json") as f:
        old = {**json.load(f), "resume": last}
    with open(tmp_path / "old.json", "w") as f:
        json.dump(old, f)
    assert parse_config(["--config", str(tmp_path / "old.json"), "--run_name", "again"]).run.resume is None


def test_resuming_with_other_model_settings_or_a_damaged_checkpoint_is_one_error(trained, tmp_path):
    _, data, ckpt, _, checkpoints, _ = trained
    last = os.path.join(os.path.dirname(checkpoints.best_model_path), "last.ckpt")
    with pytest.raises(ValueError, match=r"--hidden 128 \(this run: 64\)"):
        train.main(["--resume", last, "--hidden", "64"])
    with pytest.raises(ValueError, match=r"--opt adamax \(this run: adam\)"):   # its moments fit no other
        train.main(["--resume", last, "--opt", "adam"])
    cut = tmp_path / "last.ckpt"   # beside its run's config.json, as evaluate.py wants it
    with open(last, "rb") as f:
        cut.write_bytes(f.read()[:4096])
    shutil.copy(os.path.join(os.path.dirname(last), "config.json"), tmp_path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train.main(["--run_name", "x", *data, "--checkpoint", str(tmp_path), *FAST, "--resume", str(cut)])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        evaluate(str(cut))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_a_gpu_feature_cache_without_a_gpu_is_refused_before_any_work(trained, tmp_path):
    _, data, *_ = trained
    with pytest.raises(ValueError, match="--feature_cache gpu"):
        train.main(["--run_name", "x", *data, "--checkpoint", str(tmp_path), *FAST, "--feature_cache", "gpu"])
    assert not os.path.exists(tmp_path / "runs")


def test_fast_dev_run(trained):
    _, data, ckpt, *_ = trained
    trainer, _ = train.main(["--run_name", "dev", *data, "--checkpoint", str(ckpt), *FAST, "--fast_dev_run"])
    assert trainer.state.finished and trainer.global_step == 1


@pytest.mark.parametrize("logger,pattern", [("csv", "metrics.csv"), ("tensorboard", "events.out.tfevents.")])
def test_lightning_loggers_write_beside_the_specs_metrics(trained, tmp_path, logger, pattern):
    _, data, *_ = trained
    trainer, _ = train.main(["--run_name", "log", *data, "--checkpoint", str(tmp_path), *FAST, "--epochs", "1",
                             "--max_steps", "2", "--log_every", "1", "--logger", logger])
    run = trainer.loggers[0].name
    written = os.listdir(tmp_path / "logs" / run)
    assert any(name.startswith(pattern) for name in written), written
    assert metrics_of(trainer)["status"] == "success"


def test_resume_continues_at_the_next_epoch(trained):
    _, data, ckpt, first, checkpoints, _ = trained
    last = os.path.join(os.path.dirname(checkpoints.best_model_path), "last.ckpt")
    before = metrics_of(first)
    # a finished run resumed to the epochs it has: nothing would train, and it says so
    with pytest.raises(ValueError, match=r"last\.ckpt: the run has trained 8 epochs and --epochs is 8: nothing to resume"):
        train.main(["--resume", last, "--epochs", "8"])
    trainer, _ = train.main(["--run_name", "learn", *data, "--checkpoint", str(ckpt), *FAST,
                             "--epochs", "9", "--resume", last])
    assert trainer.logger.name == first.logger.name          # the same run, the same files
    events = metrics_of(trainer)
    assert events["val_acc"][:8] == before["val_acc"] and len(events["val_acc"]) == 9
    assert events["val_acc_step"][8] > before["val_acc_step"][7]
    assert trainer.current_epoch == 9 and trainer.global_step == first.global_step * 9 // 8


@pytest.mark.slow   # torch.compile's first compilation on 2 cores: ~30 s
def test_compiled_training_follows_the_eager_loss_curve(sample, tmp_path, one_thread):
    """--compile (torch.compile of the model) trains the same model: the logged losses match the
    eager run's to 1e-4 over the first ~150 steps; after that the two drift apart by float rounding
    compounding through Adamax, to 1e-2 over ~280 steps. Dropout off: compiled code draws its random
    masks from another generator (with dropout on, losses differed by 0.2 within 150 steps)."""
    _, data = sample
    base = ["--run_name", "c", *data, *FAST, "--epochs", "3", "--log_every", "10", "--attention_dropout", "0",
            "--answer_dropout", "0"]
    runs = [metrics_of(train.main([*base, "--checkpoint", str(tmp_path / name), *flags])[0])
            for name, flags in (("eager", []), ("compiled", ["--compile"]))]
    eager, compiled = ([*r["train_loss"], *r["val_loss"]] for r in runs)
    assert len(eager) > 25 and eager[-1] < 0.8 * eager[0]
    np.testing.assert_allclose(compiled[:15], eager[:15], rtol=1e-4)
    np.testing.assert_allclose(compiled, eager, rtol=1e-2)


@pytest.mark.parametrize("workers,epochs", [(0, 1), (1, 2)])
def test_ddp_two_processes_on_cpu(trained, tmp_path, workers, epochs):
    """Each rank with its loader thread, or with a worker process serving both epochs. Its output,
    a log (not a terminal), holds one line per epoch, and no cursor moves, tips or warnings."""
    root, data, *_ = trained
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", "--run_name", "ddp", *data, "--checkpoint", str(tmp_path), *FAST,
           "--devices", "2", "--strategy", "ddp", "--epochs", str(epochs), "--num_workers", str(workers),
           "--log_every", "1000"]    # longer than an epoch, which Lightning would warn about
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("epoch ")] == \
        [f"epoch {e}" for e in range(epochs)]
    assert "train_epoch_acc" in log and "\x1b" not in log and "\r" not in log
    for noise in ("Tip:", "LeafSpec", "logging interval", "Warning", "warn("):
        assert noise not in log, noise
    assert not re.search(r"\.py:\d+: ", log), log      # a warning's location: Lightning prints no category
    [name] = os.listdir(tmp_path / "metrics")
    with open(tmp_path / "metrics" / name) as f:
        events = json.load(f)
    assert events["status"] == "success" and len(events["val_acc"]) == epochs
    # Each rank trains on its own half of the questions: half the steps of one process.
    n = len(questions.load_split(os.path.join(root, "GQA-Cache", "questions"), "train"))
    steps = events["train_epoch_acc_step"]
    assert all(abs(s - n * (e + 1) / (2 * 32)) <= 1 for e, s in enumerate(steps)), (steps, n)
    [run] = os.listdir(tmp_path / "runs")
    assert any(n.startswith("butd-epoch=00") for n in os.listdir(tmp_path / "runs" / run))


@pytest.mark.slow
def test_ddp_resumed_mid_epoch_logs_the_epoch_of_both_ranks_once(trained, tmp_path):
    """The epoch's sums so far travel in the checkpoint, summed over the ranks, and come back on the
    first rank only: the resumed run logs the epoch figures of the uninterrupted one."""
    root, data, *_ = trained
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "train.py", "--run_name", "resumed", *data, *FAST, "--devices", "2", "--strategy", "ddp",
            "--epochs", "1", "--answer_dropout", "0", "--attention_dropout", "0"]   # dropout draws are not resumed

    def run(name, *flags):
        done = subprocess.run([*base, "--checkpoint", str(tmp_path / name), *flags], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        [metrics] = os.listdir(tmp_path / name / "metrics")
        with open(tmp_path / name / "metrics" / metrics) as f:
            return {k: v for k, v in json.load(f).items() if k.startswith("train_epoch")}

    full = run("full")
    run("part", "--max_steps", "2")
    [run_dir] = os.listdir(tmp_path / "part" / "runs")
    resumed = run("part", "--resume", str(tmp_path / "part" / "runs" / run_dir / "last.ckpt"))
    assert len(full["train_epoch_acc"]) == 1
    assert resumed["train_epoch_loss_step"] == full["train_epoch_loss_step"]
    for name in ("train_epoch_loss", "train_epoch_acc"):
        np.testing.assert_allclose(resumed[name], full[name], rtol=1e-6)


def test_changed_questions_rebuild_the_cache_and_a_stale_one_is_never_reused(tmp_path, monkeypatch):
    paths = generate(str(tmp_path), seed=5, train_images=8, val_images=2, test_images=2, testdev_images=2,
                     questions_per_image=3, feature_dim=16, emb_dim=EMB)
    config = parse_config(["--run_name", "x", "--data", str(tmp_path), "--glove", paths["glove"],
                           "--emb_dim", str(EMB)])
    inputs, features = question_inputs(config), config.data.features
    qdir = prepare_caches(inputs, features)
    built = questions.read_manifest(qdir)["fingerprint"]
    prepare_caches(inputs, features)                              # up to date: nothing rebuilt
    assert questions.read_manifest(qdir)["fingerprint"] == built

    qfile = os.path.join(config.data.questions, "train_balanced_questions.json")
    with open(qfile) as f:
        data = json.load(f)
    next(iter(data.values()))["question"] = "Is there a zebra in the picture?"
    with open(qfile, "w") as f:
        json.dump(data, f)
    with pytest.raises(questions.StaleCacheError, match="train"):
        check_caches(inputs, features)                            # a process that does not prepare never builds
    # which process prepares is Lightning's rule: global rank zero (prepare_data_per_node is False)
    from types import SimpleNamespace

    from butd.loading import VQADataModule
    for local_rank, node_rank in ((1, 0), (0, 1)):
        dm = VQADataModule("gqa", inputs.cache, inputs=inputs, features_dir=features)
        prepare_before_fit(SimpleNamespace(local_rank=local_rank, node_rank=node_rank), dm)
        with pytest.raises(questions.StaleCacheError, match="train"):
            dm.setup("fit")                                       # ... the others check in setup
    dm = VQADataModule("gqa", inputs.cache, inputs=inputs, features_dir=features)
    prepare_before_fit(SimpleNamespace(local_rank=0, node_rank=0), dm)   # the one that prepares rebuilds
    dm.setup("fit")
    assert questions.read_manifest(qdir)["fingerprint"] != built
    assert "zebra" in questions.load_vocab(qdir).word2idx


def test_a_store_converted_with_its_own_settings_is_kept_beside_its_tsvs(tmp_path):
    from butd.features import schema
    from butd.features.convert import convert_stores
    from butd.tasks import get_task
    paths = generate(str(tmp_path), seed=6, train_images=6, val_images=2, test_images=2, testdev_images=2,
                     questions_per_image=2, feature_dim=16, emb_dim=EMB)
    config_args = ["--run_name", "x", "--data", str(tmp_path), "--glove", paths["glove"], "--emb_dim", str(EMB)]
    config = parse_config(config_args)
    features, cache = config.data.features, config.data.paths()["cache"]
    convert_stores(get_task("gqa"), features, cache, compressor="zstd", dtype="float32", chunk_images=4,
                   workers=1, progress=False)
    store = os.path.join(cache, "testdev.zarr")
    made = os.path.getmtime(os.path.join(store, "zarr.json"))
    prepare_caches(question_inputs(config), features)             # the TSVs are still there: checked, kept
    attrs = schema.read_attrs(store)
    assert (attrs.compressor, attrs.dtype, attrs.chunk_images, attrs.complete) == ("zstd", "float32", 4, True)
    assert os.path.getmtime(os.path.join(store, "zarr.json")) == made
    # its input changed, even to the other layout: refused as another input
    tsv = os.path.join(features, "gqa_testdev_obj36.tsv")
    make_tsv(tsv, layout="anderson", n=2, boxes=(10, 12), feature_dim=16)
    with pytest.raises(ValueError, match=r"testdev\.zarr: exists but was made from other input") as e:
        prepare_caches(question_inputs(config), features)
    # in train.py's terms, which has no --overwrite: the converter's command that starts over, with
    # the store's own settings
    assert str(e.value).endswith(f"`python converters/tsv_to_zarr.py {tsv} --out {store} --dtype float32 "
                                 "--compressor zstd --chunk_images 4 --on-bad-row error --overwrite`")
    (tmp_path / "mine" / "trainval.zarr").mkdir(parents=True)
    (tmp_path / "mine" / "trainval.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"trainval\.zarr: exists and is not a feature store .*; move it away: train"):
        prepare_caches(question_inputs(parse_config([*config_args, "--cache", str(tmp_path / "mine")])), features)


def test_a_complete_store_converted_from_an_hdf5_cache_is_used_beside_the_tsvs(tmp_path, monkeypatch):
    """The specification's own set-up: testdev36.hdf5 made from the TSVs still in the features
    folder. A store converted from it is the user's choice of input: used as it is, not checked
    against the TSVs (which refused it as made from other input and advised overwriting it)."""
    import pickle

    import h5py

    from butd.features import schema
    from butd.features.convert import convert
    from butd.features.tsv import decode_row, spatial_features
    paths = generate(str(tmp_path), seed=7, train_images=6, val_images=2, test_images=2, testdev_images=3,
                     questions_per_image=2, feature_dim=16, emb_dim=EMB)
    config = parse_config(["--run_name", "x", "--data", str(tmp_path), "--glove", paths["glove"], "--emb_dim", str(EMB)])
    features, cache = config.data.features, config.data.paths()["cache"]
    with open(os.path.join(features, "gqa_testdev_obj36.tsv"), "rb") as f:
        rows = [decode_row(line.rstrip(b"\n"), "obj36") for line in f]
    with h5py.File(tmp_path / "testdev36.hdf5", "w") as h:
        h["image_features"] = np.stack([r.features for r in rows])
        h["image_bb"] = np.stack([r.boxes for r in rows])
        h["spatial_features"] = np.stack([spatial_features(r.boxes, r.img_w, r.img_h) for r in rows])
    with open(tmp_path / "testdev36_img2idx.pkl", "wb") as f:
        pickle.dump({r.image_id: i for i, r in enumerate(rows)}, f)
    store = os.path.join(cache, "testdev.zarr")
    # interrupted: resumed by the command that converts the HDF5 cache (it said the TSV was needed, or,
    # with the TSV there, that the store was made from other input)
    with pytest.raises(KeyboardInterrupt), interrupted_after(monkeypatch, 1):
        convert(str(tmp_path / "testdev36.hdf5"), store, workers=1, progress=False, chunk_images=1)
    resume = (f"{store}: feature store is incomplete (its conversion was interrupted or failed); run it again to "
              f"resume it: `python converters/tsv_to_zarr.py {tmp_path / 'testdev36.hdf5'} --out {store} --ids "
              f"{tmp_path / 'testdev36_img2idx.pkl'} --dtype float16 --compressor none --chunk_images 1 "
              "--on-bad-row error`")
    with pytest.raises(ValueError, match=re.escape(resume)):
        prepare_caches(question_inputs(config), features)
    with pytest.raises(FileNotFoundError, match=re.escape(resume)):      # questions_to_shards.py says the same
        questions.build(question_inputs(config), os.path.join(cache, "questions"), progress=False)
    # the conversion resumed in another process (here: thread) while train.py starts: train.py waits for
    # it under the store's lock, then uses the store (it refused it as made from other input)
    import threading

    from butd.build_lock import build_lock
    held, said = threading.Event(), []

    def converter():
        with build_lock(store):
            held.set()
            time.sleep(0.5)
            convert(str(tmp_path / "testdev36.hdf5"), store, workers=1, progress=False, chunk_images=1)
    resumed = threading.Thread(target=converter)
    resumed.start()
    held.wait(30)
    prepare_caches(question_inputs(config), features, say=said.append)
    resumed.join()
    assert any("waiting for another process building" in line and "testdev.zarr" in line for line in said)
    made = os.path.getmtime(os.path.join(store, "zarr.json"))
    prepare_caches(question_inputs(config), features)
    assert schema.read_attrs(store).layout == "hdf5"
    assert os.path.getmtime(os.path.join(store, "zarr.json")) == made
    assert schema.read_attrs(os.path.join(cache, "trainval.zarr")).layout == "obj36"   # the TSV's, converted


def test_evaluate_scores_and_predicts_every_question(trained, tmp_path):
    import evaluate
    root, _, _, _, checkpoints, _ = trained
    qdir = os.path.join(root, "GQA-Cache", "questions")
    out = str(tmp_path / "testdev.json")
    scores = evaluate.main(["--checkpoint", checkpoints.best_model_path, "--out", out])
    testdev = questions.load_split(qdir, "testdev")
    with open(out) as f:
        preds = json.load(f)
    assert sorted(p["questionId"] for p in preds) == sorted(testdev.question_ids.tolist())
    _, label2ans = questions.load_answers(qdir)
    assert {p["prediction"] for p in preds} <= set(label2ans)
    # the scores recomputed from the written predictions
    answer = {q: label2ans[label] for q, label in zip(testdev.question_ids, testdev.targets["labels"])}
    correct = np.mean([answer[p["questionId"]] == p["prediction"] for p in preds])
    assert scores["overall"] == {"accuracy": pytest.approx(correct), "count": len(testdev)}
    assert scores["overall"]["accuracy"] > scores["baseline_score"] + 0.2
    with open(str(tmp_path / "testdev-scores.json")) as f:
        assert json.load(f)["structural"]["query"]["count"] == int((testdev.types["structural"] == "query").sum())


def test_two_checkpoints_of_a_run_write_their_own_predictions_by_default(trained):
    import evaluate
    *_, checkpoints, _ = trained
    run_dir = os.path.dirname(checkpoints.best_model_path)
    best, last = checkpoints.best_model_path, os.path.join(run_dir, "last.ckpt")
    for ckpt in (best, last):
        evaluate.main(["--checkpoint", ckpt])
    for ckpt in (best, last):
        stem = os.path.splitext(os.path.basename(ckpt))[0]
        with open(os.path.join(run_dir, "predictions", stem, "testdev-predictions-scores.json")) as f:
            assert json.load(f)["checkpoint"] == os.path.abspath(ckpt)


def test_evaluate_on_a_split_without_answers(trained, tmp_path, capsys):
    import evaluate
    root, _, _, _, checkpoints, _ = trained
    out = str(tmp_path / "test.json")
    scores = evaluate.main(["--checkpoint", checkpoints.best_model_path, "--split", "test", "--out", out])
    assert scores["overall"] == {"accuracy": None, "count": 0}
    assert "no score can be computed" in capsys.readouterr().out
    test = questions.load_split(os.path.join(root, "GQA-Cache", "questions"), "test")
    with open(out) as f:
        assert [p["questionId"] for p in json.load(f)] == test.question_ids.tolist()


def test_evaluate_names_a_path_mistake_before_any_work(trained, tmp_path, capsys):
    """A run directory for --checkpoint, a file that is not a checkpoint, a directory for --out: one
    line each, saying what was expected; a split in another case is the split."""
    import evaluate
    *_, checkpoints, _ = trained
    run_dir = os.path.dirname(checkpoints.best_model_path)
    status, err = cli_run(evaluate.main, ["--checkpoint", run_dir], capsys)
    assert status == 1 and f"{run_dir}: a directory; --checkpoint names a .ckpt file" in one_line_error(err)
    assert "last.ckpt" in err
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    status, err = cli_run(evaluate.main, ["--checkpoint", str(tmp_path / "garbage.ckpt")], capsys)
    assert status == 1 and "garbage.ckpt: not a readable checkpoint" in one_line_error(err)
    status, err = cli_run(evaluate.main, ["--checkpoint", checkpoints.best_model_path, "--out", str(tmp_path)], capsys)
    assert status == 1 and f"--out {tmp_path}: a directory; --out names the predictions file" in one_line_error(err)
    out = str(tmp_path / "p.json")
    assert evaluate.main(["--checkpoint", checkpoints.best_model_path, "--split", "TESTDEV", "--out", out])["split"] \
        == "testdev"


@pytest.mark.parametrize("split", ["train", "testdev"])
def test_training_refuses_an_empty_split(small_run, tmp_path, capsys, split):
    root, data, _ = small_run
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    with open(qdir / f"{split}_balanced_questions.json", "w") as f:
        json.dump({}, f)
    cache = copy_stores(root, tmp_path / "cache")
    argv = ["--run_name", "e", *data, "--gqa_questions", str(qdir), "--gqa_cache", cache,
            "--checkpoint", str(tmp_path / "ck"), *SMALL_FLAGS, "--epochs", "1"]
    status, err = cli_run(train.main, argv, capsys)
    verb = "train" if split == "train" else "validate"
    assert status == 1 and f"the {split} split has no questions; nothing to {verb} on" in one_line_error(err)
    assert not os.path.exists(tmp_path / "ck" / "metrics")


def test_a_cache_built_with_drop_missing_is_used_by_train(tmp_path, capsys, caplog, one_thread):
    data = make_small_sample(tmp_path / "s", seed=4)
    tsv = tmp_path / "s" / "GQA-Features" / "vg_gqa_obj36.tsv"
    with open(tmp_path / "s" / "GQA-Questions" / "train_balanced_questions.json") as f:
        gone = sorted({q["imageId"] for q in json.load(f).values()})[:2]
    with open(tsv) as f:
        lines = [line for line in f if line.split("\t")[0] not in gone]
    with open(tsv, "w") as f:
        f.writelines(lines)
    assert tsv_to_zarr.main(["--data", str(tmp_path / "s"), "--workers", "1", "--quiet"]) == 0
    run = ["--run_name", "d", *data, "--checkpoint", str(tmp_path / "ck"), *SMALL_FLAGS, "--fast_dev_run"]
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_gpus_without_a_gpu_say_so_and_how_to_run_ddp_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "--run_name", "x", "--gpus", "2", "--data", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    line = one_line_error(done.stderr)
    assert "no GPU is visible" in line and "--accelerator cpu --devices 2 --strategy ddp" in line

"""Resuming mid-epoch (butd.training.resume, callbacks): a run stopped by --max_steps or Ctrl-C and
resumed trains exactly what an uninterrupted run does, batch for batch, with the same epoch figures
and weights; worker processes train as the thread does."""
import json
import os
import signal

import pytest
import torch

from butd.training.lit import LitVQA

import train
from helpers import SMALL_FLAGS


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


def test_resume_after_max_steps_goes_on_batch_for_batch(small_run, tmp_path, one_thread):
    _, data, _ = small_run
    base = [*data, *SMALL_FLAGS, "--epochs", "2"]
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


def test_ctrl_c_saves_the_batch_and_resume_goes_on_from_the_next(small_run, tmp_path, one_thread, monkeypatch, caplog):
    _, data, _ = small_run
    base = [*data, *SMALL_FLAGS, "--epochs", "2", "--answer_dropout", "0.5"]   # its draws go on where they stopped
    full, _ = train.main(["--run_name", "full", "--checkpoint", str(tmp_path / "full"), *base])
    step = LitVQA.training_step

    def interrupted_step(self, batch, batch_idx):   # Ctrl-C during the third step of the second epoch
        if self.global_step == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(LitVQA, "training_step", interrupted_step)
    caplog.clear()
    with pytest.raises(KeyboardInterrupt):
        train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base])
    monkeypatch.undo()
    said = caplog.text
    # the part-epoch: its batches, and neither the previous epoch's figures nor last.ckpt as its validation's
    assert "epoch 1: cut short after 3 of 6 batches, not validated" in said
    assert "[*] training interrupted: 1 epoch and 3 batches of epoch 1 in" in said
    assert "final   epoch 0 " in said and "/last.ckpt" not in said.split("final   epoch 0 ")[1].splitlines()[0]
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
    assert os.path.basename(events["final"]["checkpoint"]).startswith("butd-epoch=00")
    resumed, _ = train.main(["--resume", last])
    assert resumed.global_step == 12
    assert losses(tmp_path / "part") == losses(tmp_path / "full")    # the interrupted batch trained once
    assert epoch_figures(tmp_path / "part") == epoch_figures(tmp_path / "full")
    for name, value in full.lightning_module.state_dict().items():
        assert torch.equal(value, resumed.lightning_module.state_dict()[name]), name


def test_ctrl_c_during_the_sanity_check_stops_after_the_first_batch(small_run, tmp_path, one_thread, monkeypatch):
    _, data, _ = small_run
    validate = LitVQA.validation_step

    def interrupted(self, batch, batch_idx):   # one Ctrl-C, at the sanity check's first batch
        if self.trainer.sanity_checking and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return validate(self, batch, batch_idx)

    monkeypatch.setattr(LitVQA, "validation_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--run_name", "s", "--checkpoint", str(tmp_path), *data, *SMALL_FLAGS, "--epochs", "2"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    [run] = os.listdir(tmp_path / "runs")
    assert torch.load(tmp_path / "runs" / run / "last.ckpt", weights_only=False)["global_step"] == 1


def test_a_run_that_fails_leaves_ctrl_c_as_it_was(small_run, tmp_path, one_thread, monkeypatch):
    _, data, _ = small_run

    def broken(self, batch, batch_idx):
        raise RuntimeError("a broken step")

    monkeypatch.setattr(LitVQA, "training_step", broken)
    with pytest.raises(RuntimeError, match="a broken step"):
        train.main(["--run_name", "b", "--checkpoint", str(tmp_path), *data, *SMALL_FLAGS, "--epochs", "1"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_worker_processes_train_exactly_as_the_thread(small_run, tmp_path, one_thread):
    _, data, _ = small_run
    base = [*data, *SMALL_FLAGS, "--epochs", "1", "--answer_dropout", "0.5", "--feature_cache", "none"]
    for workers in (0, 1):
        train.main(["--run_name", "w", "--checkpoint", str(tmp_path / str(workers)), *base, "--num_workers", str(workers)])
    assert losses(tmp_path / "0") == losses(tmp_path / "1")   # the same batches and the same dropout draws


def test_resume_with_worker_processes_and_epochs_1(small_run, tmp_path, one_thread):
    """The issue's case: --epochs 1 --max_steps 3, then --resume: the resume used to train nothing."""
    _, data, _ = small_run
    base = [*data, *SMALL_FLAGS, "--epochs", "1", "--num_workers", "1"]
    train.main(["--run_name", "full", "--checkpoint", str(tmp_path / "full"), *base])
    part, _ = train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base, "--max_steps", "3"])
    last = os.path.join(part.checkpoint_callback.dirpath, "last.ckpt")
    resumed, _ = train.main(["--run_name", "part", "--checkpoint", str(tmp_path / "part"), *base, "--resume", last])
    assert resumed.global_step == 6
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert epoch_figures(tmp_path / "part") == epoch_figures(tmp_path / "full")

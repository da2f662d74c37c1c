"""Lightning's per-hook bookkeeping made cheap (``butd.training.lean_hooks``), with every hook still
called as before."""
import io

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from pytorch_lightning.callbacks import ModelSummary, TQDMProgressBar

from butd.training.callbacks import SaveConfig, StopOnInterrupt
from butd.training.config import RunConfig, TrainConfig, resolved
from butd.training.console import EpochLines
from butd.training.lean_hooks import CallbackGroup, ModelCheckpoint, QuietProfiler, grouped
from butd.training.lit import LitVQA
from butd.training.resume import MidEpochResume
from butd.training.run import make_trainer, run_callbacks


class Records(pl.Callback):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.calls.append((self.name, "on_train_batch_end", batch_idx))


class RecordsStart(Records):
    def on_train_start(self, trainer, module):
        self.calls.append((self.name, "on_train_start"))


class Stateful(pl.Callback):
    def state_dict(self):
        return {"kept": 1}


def test_a_group_calls_each_hook_on_the_members_that_define_it_in_order():
    calls = []
    group = CallbackGroup(RecordsStart("a", calls), Records("b", calls), pl.Callback())
    group.on_train_start(None, None)
    group.on_train_batch_end(None, None, None, None, 7)
    group.on_before_backward(None, None, None)                 # no member defines it: nothing
    assert calls == [("a", "on_train_start"), ("a", "on_train_batch_end", 7), ("b", "on_train_batch_end", 7)]
    assert "on_before_backward" not in vars(group)            # Lightning calls the base no-op instead


def test_a_group_refuses_a_member_that_keeps_state_in_checkpoints():
    with pytest.raises(TypeError, match="Stateful"):
        CallbackGroup(Stateful())


def test_grouped_leaves_checkpoints_progress_bars_and_stateful_callbacks_apart():
    top_k, bar, stateful, plain, summary = ModelCheckpoint(), TQDMProgressBar(), Stateful(), pl.Callback(), ModelSummary()
    group, *apart = grouped([top_k, plain, bar, stateful, summary])
    assert isinstance(group, CallbackGroup) and group.callbacks == [plain, summary]
    assert apart == [top_k, bar, stateful]
    assert grouped([top_k]) == [top_k]


@pytest.mark.parametrize("settings", [dict(monitor="val_acc", mode="max", save_top_k=3),
                                      dict(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)])
def test_model_checkpoint_keeps_lightnings_state_key(settings):
    """Checkpoints keep a ModelCheckpoint's state (its top-k list) under this key: one written by
    Lightning's class resumes into ours."""
    ours, theirs = ModelCheckpoint(**settings), LightningModelCheckpoint(**settings)
    assert ours.state_key == theirs.state_key == ours.state_key
    theirs.best_k_models = {"a.ckpt": torch.tensor(0.5)}
    ours.load_state_dict(theirs.state_dict())
    assert ours.best_k_models == theirs.best_k_models


def test_quiet_profiler_is_a_reusable_context_manager():
    profiler = QuietProfiler()
    with profiler.profile("outer"):
        with profiler.profile("inner"):
            ran = True
    assert ran


class NotATerminal(io.StringIO):
    pass


def test_train_py_trainer_calls_its_callbacks_as_one_group(tmp_path, monkeypatch):
    """The structure that keeps train.py's step cheap: Lightning sees the group and the two checkpoint
    callbacks, and the group holds every other callback of the run."""
    monkeypatch.setattr("sys.stderr", NotATerminal())
    config = resolved(TrainConfig(RunConfig(run_name="hooks")))
    config.data.checkpoint, config.hardware.accelerator = str(tmp_path), "cpu"
    callbacks, top_k, stop = run_callbacks(config, str(tmp_path / "run"))
    trainer = make_trainer(config, False, callbacks)
    group, *checkpoints = trainer.callbacks
    assert isinstance(trainer.profiler, QuietProfiler)
    assert isinstance(group, CallbackGroup) and [type(c) for c in checkpoints] == [ModelCheckpoint] * 2
    assert top_k in checkpoints
    assert [type(c) for c in group.callbacks] == [MidEpochResume, StopOnInterrupt, SaveConfig, EpochLines, ModelSummary]


def test_batches_move_to_the_device_tensor_by_tensor():
    lit = LitVQA(ntoken=10, num_answers=4, v_dim=8, model={"emb_dim": 4, "hidden": 8})
    batch = {"features": torch.zeros(2, 3, 8), "tokens": torch.zeros(2, 5, dtype=torch.long)}
    moved = lit.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved.keys() == batch.keys() and all(v.device.type == "meta" for v in moved.values())
    assert {k: (v.shape, v.dtype) for k, v in moved.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}
    same = lit.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert all(same[k] is batch[k] for k in batch)

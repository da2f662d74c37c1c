"""Each use of Lightning's and torchmetrics' internals (``butd.training.lightning_internals``) against
the installed versions: a release that moves one fails here, by name."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torchmetrics import Metric

from butd.training import lightning_internals as internals
from butd.training.lit import WeightedMeans

BATCHES = 5   # per epoch


class PositionLoader:
    """``BATCHES`` batches an epoch, each naming its epoch and number; saves (epoch, batches taken)
    and resumes from it, as ``butd.loading.loaders`` does."""

    def __init__(self):
        self.epoch, self.start, self.taken = 0, 0, (0, 0)

    def __len__(self):
        return BATCHES

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        for j in range(start, BATCHES):
            self.taken = (epoch, j + 1) if j + 1 < BATCHES else (epoch + 1, 0)   # an epoch's end: the next's start
            yield {"x": torch.full((2, 2), float(j)), "id": torch.tensor(100 * epoch + j)}

    def state_dict(self):
        return {"epoch": self.taken[0], "batches": self.taken[1]}

    def load_state_dict(self, state):
        self.epoch, self.start = state["epoch"], state["batches"]
        self.taken = (self.epoch, self.start)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.trained, self.attached, self.completed, self.whole = [], [], [], []

    def training_step(self, batch, batch_idx):
        self.hook_names = getattr(self, "hook_names", []) + [self.__dict__.get(internals.HOOK_NAME)]
        self.trained.append(int(batch["id"]))
        self.attached.append(internals.attached_to_trainer(self))
        self.log("id", batch["id"].float())
        return self.layer(batch["x"]).pow(2).mean()

    def on_train_epoch_end(self):
        self.completed.append(internals.batches_completed(self.trainer))
        self.whole.append(internals.epoch_whole(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Steps(Logger):
    """The step each logged training batch is written at."""
    name, version = "steps", 0

    def __init__(self):
        super().__init__()
        self.logged = []

    @property
    def experiment(self):
        return None

    def log_metrics(self, metrics, step):
        if "id" in metrics:
            self.logged.append((int(metrics["id"]), step))

    def log_hyperparams(self, params):
        pass


def fit(module, loader, ckpt_path=None, callbacks=(), **options):
    trainer = pl.Trainer(accelerator="cpu", logger=Steps(), enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=list(callbacks), log_every_n_steps=1, **options)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


def test_the_counters_of_a_checkpoint_stopped_mid_epoch(tmp_path):
    whole = fit(Tiny(), PositionLoader(), max_epochs=2).logger.logged
    module = Tiny()
    trainer = fit(module, PositionLoader(), max_epochs=1, max_steps=3)
    assert module.trained == [0, 1, 2] and module.completed == [3]     # batches_completed: the part-epoch
    assert module.whole == [False]
    trainer.save_checkpoint(tmp_path / "part.ckpt")
    checkpoint = torch.load(tmp_path / "part.ckpt", weights_only=False)
    assert internals.saved_loader_position(checkpoint) == (0, 3)
    assert internals.epochs_processed(checkpoint) == 1                 # Lightning counts the epoch as done

    # as saved, a resume trains nothing more of epoch 0: it starts epoch 1, beyond --epochs 1
    resumed = Tiny()
    fit(resumed, PositionLoader(), tmp_path / "part.ckpt", max_epochs=1)
    assert resumed.trained == []

    # rewound, it goes on with epoch 0's remaining batches, once each, and ends that epoch whole
    internals.rewind_fit_loop(checkpoint, 0, 3)
    torch.save(checkpoint, tmp_path / "rewound.ckpt")
    resumed = Tiny()
    trainer = fit(resumed, PositionLoader(), tmp_path / "rewound.ckpt", max_epochs=2)
    assert resumed.trained == [3, 4, 100, 101, 102, 103, 104]
    assert trainer.global_step == 2 * BATCHES and resumed.completed == [BATCHES, BATCHES] and resumed.whole == [True, True]
    assert trainer.logger.logged == whole[3:]     # logged at the steps of a run that never stopped
    assert all(resumed.attached) and not internals.attached_to_trainer(Tiny())


def test_a_whole_epoch_leaves_no_position(tmp_path):
    trainer = fit(Tiny(), PositionLoader(), max_epochs=1)
    trainer.save_checkpoint(tmp_path / "epoch.ckpt")
    checkpoint = torch.load(tmp_path / "epoch.ckpt", weights_only=False)
    assert internals.saved_loader_position(checkpoint) is None and internals.epochs_processed(checkpoint) == 1


def test_stop_after_this_step_ends_fitting_at_the_batch_end():
    class StopAtSecond(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                internals.stop_after_this_step(trainer)

    module = Tiny()
    trainer = fit(module, PositionLoader(), callbacks=[StopAtSecond()], max_epochs=3)
    assert module.trained == [0, 1] and trainer.global_step == 2


class PlainSum(Metric):
    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value):
        self.total += value

    def compute(self):
        return self.total


def test_epoch_sums_stay_float64_through_a_dtype_cast():
    assert PlainSum().to(torch.bfloat16).total.dtype == torch.bfloat16   # what torchmetrics does alone
    metric = WeightedMeans().to(torch.bfloat16)                          # with states_to_float64
    metric.update(torch.full((300,), 1.0), torch.zeros(300), torch.ones(300))
    assert metric.sums.dtype == torch.float64 and metric.sums.tolist() == [300, 0, 300]   # bf16 would stop at 256
    metric.reset()
    assert metric.sums.dtype == torch.float64


def test_lightning_names_the_hook_under_way_in_hook_name():
    """LitVQA sets HOOK_NAME without nn.Module's checks: Lightning must still name its hooks there."""
    module = Tiny()
    fit(module, PositionLoader(), max_epochs=1)
    assert module.hook_names == ["training_step"] * BATCHES


def test_the_trainer_takes_every_name_the_flags_accept():
    from lightning_fabric.connector import _convert_precision_to_unified_args
    for name in internals.trainer_names("precision"):
        _convert_precision_to_unified_args(name)                      # raises for a name it does not take
    assert {"32-true", "bf16-mixed", "16-mixed", "bf16"} <= set(internals.trainer_names("precision"))
    assert {"auto", "ddp", "ddp_spawn", "fsdp"} <= set(internals.trainer_names("strategy"))
    assert {"auto", "cpu", "gpu", "cuda"} <= set(internals.trainer_names("accelerator"))
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp_spawn", devices=1, precision="bf16", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.precision == "bf16-mixed"

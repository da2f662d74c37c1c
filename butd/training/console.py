"""What a run prints while it trains: a progress bar on a terminal, one line per epoch in a log,
and none of Lightning's advertising or warnings about its own internals.

Redirected to a file (a cluster job's log), tqdm's bars are carriage returns and cursor moves
(``ESC[A``) that no log viewer replays, so a run that does not write to a terminal prints instead
one line per epoch (its epoch number as the checkpoints number it, from 0)::

    epoch 3: train_epoch_acc 37.50%  train_epoch_loss 1.3092  val_acc 33.75%  val_loss 1.3397  (12.5 s)
"""
from __future__ import annotations

import logging
import sys
import time
import warnings

from lightning_utilities.core import rank_zero as lightning_rank_zero
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_info

from butd.training import lightning_internals as internals

# Lightning's messages that say nothing about this run:
WARNINGS = (
    # torch 2.13 deprecates a class that Lightning 2.6's own pytree code still uses (not our call)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # an epoch shorter than --log_every: the metrics JSON has every epoch's figures all the same
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # every run has a directory of its own (run_name), which holds config.json before any checkpoint
    # and a resumed run's checkpoints
    r"Checkpoint directory .* exists and is not empty",
    # LitVQA moves the loader's flat batch itself, with a DataModule or without: the module's hook is
    # the one meant
    r"You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a",
)
TIP = "💡 Tip:"    # Lightning's advertisements for its cloud services, printed at every fit


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP)


def quiet_lightning() -> None:
    """Silence the warnings in ``WARNINGS`` and Lightning's tips, in this process (DDP's re-launched
    processes import this module again and call it again)."""
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # rank_zero_info writes to the logger lightning_utilities holds (Lightning's packages each replace it)
    for log in {lightning_rank_zero.log, logging.getLogger("pytorch_lightning.utilities.rank_zero")}:
        if not any(isinstance(f, _NoTips) for f in log.filters):
            log.addFilter(_NoTips())


class EpochLines(Callback):
    """One line per training epoch on rank zero: its epoch metrics and its duration. The module logs
    an epoch's training figures after the callbacks' ``on_train_epoch_end``, so the line is printed
    when the next epoch starts, or training ends; an epoch cut short (``--max_steps``, Ctrl-C) has
    no training figures (see ``LitVQA.on_train_epoch_end``)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.ended = None    # (epoch, seconds, (batches, of) if cut short) of the epoch whose line is not printed yet

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._print(trainer)
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        whole = internals.epoch_whole(trainer)
        self.ended = (trainer.current_epoch, time.perf_counter() - self.started,
                      None if whole else (internals.batches_completed(trainer), trainer.num_training_batches))

    def on_train_end(self, trainer, pl_module) -> None:
        self._print(trainer)

    def _print(self, trainer) -> None:
        if self.ended is None:
            return
        epoch, seconds, cut = self.ended
        self.ended = None
        if cut:     # no figures: its training ones go on in the checkpoint, and no validation ran
            rank_zero_info(f"epoch {epoch}: cut short after {cut[0]} of {cut[1]} batches, not validated  ({seconds:.1f} s)")
            return
        figures = [f"{name} {float(value) * 100:.2f}%" if name.endswith("acc") else f"{name} {float(value):.4f}"
                   for name, value in sorted(trainer.callback_metrics.items())
                   if name.startswith(("val_", "train_epoch_"))]
        rank_zero_info(f"epoch {epoch}: {'  '.join(figures)}  ({seconds:.1f} s)")


def progress(refresh_rate: int, stream=None) -> tuple:
    """``(callbacks, enable_progress_bar)`` for the Trainer: a tqdm bar redrawn every
    ``refresh_rate`` steps where ``stream`` (default stderr) is a terminal, else ``EpochLines``."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        return [TQDMProgressBar(refresh_rate=max(1, refresh_rate))], True
    return [EpochLines()], False

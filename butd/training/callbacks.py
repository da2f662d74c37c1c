"""The callbacks of a run besides its checkpoints' (``butd.training.run.run_callbacks`` puts them
together): its configuration saved once training starts, and Ctrl-C that stops at a batch's end."""
from __future__ import annotations

import signal
import sys
import threading

import pytorch_lightning as pl

from butd.training.config import TrainConfig, save_config
from butd.training.lightning_internals import stop_after_this_step


class SaveConfig(pl.Callback):
    """Write ``config`` as ``<run_dir>/config.json`` (global rank 0) when training starts: after a
    resumed run has restored its checkpoint, so a resume refused there leaves the file as it was."""

    def __init__(self, run_dir: str, config: TrainConfig):
        self.run_dir, self.config = run_dir, config

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_config(self.run_dir, self.config)


class StopOnInterrupt(pl.Callback):
    """Ctrl-C while a single process fits: finish the training batch under way (the next one, from a
    validation), then stop as ``--max_steps`` would (no validation of the part-epoch, no top-k
    checkpoint of it; the run's ``last.ckpt`` callback saves the state, which ``MidEpochResume``
    resumes batch for batch); ``train.py`` then exits 130. A second Ctrl-C interrupts at once, as
    Lightning does.

    Under DDP Ctrl-C stays Lightning's (no checkpoint): each rank would see it at another point of
    its step, and a checkpoint's collectives would pair with another rank's gradient all-reduce."""

    def __init__(self, top_k=None):
        self.top_k = top_k            # the top-k ModelCheckpoint, kept from saving the part-epoch
        self.requested = self.stopped = False
        self._previous = None

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        # Ctrl-C during the sanity check or a validation stops after the next training batch, once
        # the validation under way has finished. (Not from on_fit_start: Lightning's signal connector,
        # set up after it, would put this handler back when fit ends.)
        self._install(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._install(trainer)

    def _install(self, trainer) -> None:
        if self._previous is None and trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True
        self._restore()
        print("\n[*] Ctrl-C: stopping at the end of a training batch, to save a checkpoint to resume from "
              "(Ctrl-C again stops at once, without one)", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested and not self.stopped:
            stop_after_this_step(trainer)
            if self.top_k is not None:
                self.top_k.save_top_k = 0
            self.stopped = True

    def _restore(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._request:
            signal.signal(signal.SIGINT, self._previous)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

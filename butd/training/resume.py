"""Resuming mid-epoch: a run stopped part-way through an epoch (``--max_steps``, a kill after a
mid-epoch checkpoint) goes on, after ``--resume``, with exactly the rest of that epoch's batches.

The train loaders save their sampler's position in Lightning's checkpoints and restore it
(``butd.loading.loaders``: ``state_dict``/``load_state_dict``, which Lightning calls on stateful
train loaders). Lightning's own counters, however, record an epoch cut short by ``max_steps`` as
finished: a resumed run would start the next epoch, and epoch ``e``'s remaining batches would never
be trained (with ``--epochs`` already reached, the resume trains nothing and exits 0).
``MidEpochResume`` puts Lightning's counters back to "batch ``b`` of epoch ``e`` done" whenever the
saved position says the epoch is unfinished, as if the checkpoint had been written at that batch's
end (what Lightning itself writes for a mid-epoch checkpoint). It also keeps torch's random states
in the checkpoint (Lightning does not), so that a single-process run resumed goes on with the
dropout draws it would have made: the same training as if it had not stopped. (Under DDP each rank
has its own states and only rank 0's would be saved: there, dropout draws after a resume differ.)

    trainer = pl.Trainer(callbacks=[MidEpochResume(), ...])
    trainer.fit(lit, datamodule=dm, ckpt_path="runs/<run>/last.ckpt")
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from butd.training import lightning_internals as internals

RNG_STATES = "rng_states"   # checkpoint key: torch's CPU (and CUDA) random states


def unfinished_position(checkpoint: dict):
    """(epoch, batches done) of the train loader's saved position when it is inside an epoch that
    Lightning's counters record as finished; None otherwise."""
    position = internals.saved_loader_position(checkpoint)
    if position is None or internals.epochs_processed(checkpoint) <= position[0]:
        return None      # no position inside an epoch, or Lightning already knows the epoch is unfinished
    return position


class MidEpochResume(pl.Callback):
    """On resume, continue an epoch that was stopped part-way instead of starting the next one, with
    the random states the run was saved with (single process)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.world_size == 1:
            checkpoint[RNG_STATES] = {"cpu": torch.get_rng_state(),
                                      "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        position = unfinished_position(checkpoint)
        if position is not None:
            internals.rewind_fit_loop(checkpoint, *position)
        states = checkpoint.get(RNG_STATES)
        if states is not None and trainer.world_size == 1:
            torch.set_rng_state(states["cpu"])
            if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states["cuda"])


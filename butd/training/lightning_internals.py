"""Every use of PyTorch Lightning's and torchmetrics' internals, in one module.

What the run needs and their public APIs do not give: the fit loop's progress counters (read and
rewound in a checkpoint to resume mid-epoch, read while fitting to tell a whole epoch from one cut
short), lowering the running epoch loop's ``max_steps`` to stop at a batch's end (Ctrl-C), whether a
LightningModule is attached to a Trainer, a torchmetrics metric's states and their reset values
(``_defaults``) kept float64 through a dtype cast, and the precision names the Trainer takes (the
flags are checked against them). Each function has a test in
``tests/test_lightning_internals.py`` against the installed versions, and ``setup.cfg`` bounds
``pytorch-lightning`` and ``torchmetrics`` to the versions those tests passed with
(pytorch-lightning 2.6.6, torchmetrics 1.9.0). A new release that moves one of these fails its test
here, not a resumed run.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

# -- the fit loop's counters, in a checkpoint (Trainer.save_checkpoint's "loops") ----------------


def _fit_loop(checkpoint: dict) -> dict:
    return checkpoint.get("loops", {}).get("fit_loop", {})


def saved_loader_position(checkpoint: dict) -> Optional[Tuple[int, int]]:
    """(epoch, batches taken) that the one stateful train loader saved in ``checkpoint`` (Lightning
    keeps a train loader's ``state_dict()`` under the fit loop's ``combined_loader``); None when there
    is no such loader or it had taken no batch of its epoch."""
    states = _fit_loop(checkpoint).get("state_dict", {}).get("combined_loader") or []
    if len(states) != 1 or not states[0].get("batches"):
        return None
    return int(states[0]["epoch"]), int(states[0]["batches"])


def epochs_processed(checkpoint: dict) -> int:
    """The epochs the fit loop's counters in ``checkpoint`` record as processed (an epoch stopped by
    ``max_steps`` counts as processed)."""
    return int(_fit_loop(checkpoint)["epoch_progress"]["current"]["processed"])


def rewind_fit_loop(checkpoint: dict, epoch: int, batches: int) -> None:
    """Set the fit loop's counters in ``checkpoint`` to those Lightning writes at the end of batch
    ``batches`` of epoch ``epoch`` (0-based epoch, batches counted from 1), so that a resume goes on
    with the next batch of that epoch instead of starting the next one."""
    fit = checkpoint["loops"]["fit_loop"]
    over = fit["epoch_progress"]["current"]["processed"] - epoch      # epochs counted as done too many
    for progress in fit["epoch_progress"].values():                   # "total" and "current"
        progress["processed"] -= over
        progress["completed"] = progress["processed"]
        progress["ready"] = progress["started"] = progress["processed"] + 1
    batch = fit["epoch_loop.batch_progress"]
    for name in ("total", "current"):
        counts = batch[name]
        done = counts["processed"] if name == "total" else batches
        counts.update(ready=done, started=done, processed=done, completed=done - 1)
    batch["is_last_batch"] = False
    # Lightning adds the batch that was ending when the checkpoint was written back on restart.
    fit["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
    checkpoint["epoch"] = epoch


# -- the running fit loop ------------------------------------------------------------------------


def batches_completed(trainer) -> int:
    """Training batches completed in the current epoch (the epoch loop's batch progress)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def epoch_whole(trainer) -> bool:
    """Whether the current training epoch ran all its batches (not cut short by ``max_steps`` or a stop)."""
    return batches_completed(trainer) >= trainer.num_training_batches


def stop_after_this_step(trainer) -> None:
    """End fitting after the step under way, as ``max_steps`` reached would (no validation of the
    part-epoch): lowers the running epoch loop's ``max_steps`` to the steps taken."""
    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step


# The LightningModule attribute in which Lightning names the hook under way (it sets it around every
# hook, and self.log reads it).
HOOK_NAME = "_current_fx_name"


def attached_to_trainer(module) -> bool:
    """Whether a LightningModule has a Trainer (its ``trainer`` property raises when it has none)."""
    return module._trainer is not None


# -- torchmetrics ---------------------------------------------------------------------------------


def states_to_float64(metric) -> None:
    """Make ``metric``'s states (tensors), and the values ``reset()`` gives them back (its ``_defaults``),
    float64 again: call it at the end of the metric's ``_apply``, which a dtype cast of the model
    goes through (torchmetrics guards ``.half()`` and ``.bfloat16()``, not ``.to(dtype)``)."""
    for name in metric._defaults:
        setattr(metric, name, getattr(metric, name).to(torch.float64))
        metric._defaults[name] = metric._defaults[name].to(torch.float64)


# -- the names the Trainer takes, for the flags that pass them on ------------------------------


def trainer_names(what: str) -> tuple:
    """The values ``pl.Trainer`` takes for ``what`` ("accelerator", "strategy", "precision") as a
    string: its registries' names (public) and, for precision, the ``Literal`` types its connector
    checks against (``lightning_fabric``'s private ``_PRECISION_INPUT_STR`` and ``_STR_ALIAS``)."""
    if what == "accelerator":
        from pytorch_lightning.accelerators import AcceleratorRegistry
        return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
    if what == "strategy":
        from pytorch_lightning.strategies import StrategyRegistry
        return ("auto", *StrategyRegistry.available_strategies())
    if what == "precision":
        from typing import get_args

        from lightning_fabric.plugins.precision import precision
        return (*get_args(precision._PRECISION_INPUT_STR), *get_args(precision._PRECISION_INPUT_STR_ALIAS))
    raise ValueError(f"{what!r}: not a Trainer argument named here")

"""Lightning's bookkeeping around every hook, made cheap for the hooks of every training step.

Lightning calls six callback hooks a training step on each callback, and a dozen hooks of the
LightningModule and the strategy; each call names itself to the profiler, even when the hook does
nothing: a context manager built per call (~3 µs here) and, for a ``ModelCheckpoint``, its settings
formatted into a string (~3.6 µs). Against a small model's ~12 ms CPU step these add up
(``benchmarks/step_speed.py`` with the tiny model). Here, without changing what any hook does:

- ``CallbackGroup``: callbacks that Lightning calls as one, forwarding each hook to the members
  that define it; ``grouped`` puts a run's callbacks in one, leaving out those Lightning finds by
  type or that keep state in checkpoints;
- ``ModelCheckpoint``: Lightning's, its ``state_key`` formatted once;
- ``QuietProfiler``: Lightning's default (no profiling), without a context manager per call.
"""
from __future__ import annotations

import contextlib

import pytorch_lightning as pl
from pytorch_lightning import callbacks as lightning_callbacks
from pytorch_lightning.profilers import PassThroughProfiler

# Lightning calls these hooks on each callback in turn; a group answers them for its members.
HOOKS = tuple(name for name in vars(pl.Callback) if name.startswith("on_") or name in ("setup", "teardown"))


class CallbackGroup(pl.Callback):
    """Callbacks that Lightning calls as one: each hook calls, in order, the members that define it.

    Members must keep no state of their own in checkpoints (``state_dict``: Lightning saves it under
    the callback's ``state_key``, and a group would save it under its own); leave callbacks that do
    (``ModelCheckpoint``) and those Lightning finds by their type (checkpoints, progress bars) outside.
    Raises TypeError for a member with a ``state_dict``."""

    def __init__(self, *callbacks: pl.Callback):
        stateful = [type(c).__name__ for c in callbacks if _keeps_state(c)]
        if stateful:
            raise TypeError(f"{', '.join(stateful)} keep(s) state in checkpoints: give it to the Trainer itself, "
                            "not to a CallbackGroup")
        self.callbacks = list(callbacks)
        for hook in HOOKS:
            members = [getattr(c, hook) for c in callbacks if getattr(type(c), hook) is not getattr(pl.Callback, hook)]
            if members:
                setattr(self, hook, _calling(members))


def grouped(callbacks: list) -> list:
    """``callbacks`` as the Trainer should get them: checkpoints, progress bars and callbacks that keep
    state as they are, all others in one ``CallbackGroup`` (first, in their order)."""
    apart = [c for c in callbacks if isinstance(c, (lightning_callbacks.Checkpoint, lightning_callbacks.ProgressBar))
             or _keeps_state(c)]
    together = [c for c in callbacks if all(c is not a for a in apart)]
    return [CallbackGroup(*together), *apart] if together else apart


def _keeps_state(callback: pl.Callback) -> bool:
    return type(callback).state_dict is not pl.Callback.state_dict


def _calling(methods: list):
    def call(*args, **kwargs):
        for method in methods:
            method(*args, **kwargs)
    return call


class ModelCheckpoint(lightning_callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, its ``state_key`` formatted once instead of at every hook call.
    The key is the same string (this class has Lightning's class name, which the key begins with, and
    the settings it formats are fixed once made), so checkpoints keep their callback states under it."""

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_formatted_state_key")
        if key is None:
            key = self.__dict__["_formatted_state_key"] = super().state_key
        return key


_NOTHING = contextlib.nullcontext()   # reusable, and re-entrant: hooks nest


class QuietProfiler(PassThroughProfiler):
    """Lightning's default profiler (profiles nothing), without building a context manager each time
    Lightning names a hook to it."""

    def profile(self, action_name: str):
        return _NOTHING

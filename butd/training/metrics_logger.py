"""The specification's JSON metric logger, on the Lightning 2.x ``Logger`` API.

    logger = MetricLogger(name=run_name, save_dir="checkpoints/")
    trainer = pl.Trainer(logger=logger, ...)

writes ``<save_dir>/metrics/<name>-metrics.json``: for each metric a list of values and a
``<metric>_step`` list of the global steps they were logged at (as the spec's file), the
hyper-parameters under ``hyperparams``, and ``status`` ("running" until the Trainer finalises the
run with "success" or "failed"; "interrupted" for a run stopped by Ctrl-C that can be resumed).
When the run ends, ``record_outcome`` adds ``best`` and ``final``: the validation with the highest
``val_acc`` (the first of equals, as the top-k checkpoints keep it) and the last one, each with its
epoch, step, every validation metric and its checkpoint. Only rank zero writes. The file is
rewritten whenever an epoch-level metric arrives (validation, train epoch means), so a killed run
keeps what it measured, and at the end.
"""
from __future__ import annotations

import json
import os
import re
from argparse import Namespace

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

# Metrics logged once per epoch: their arrival is the moment worth flushing the file.
EPOCH_METRICS = ("val_loss", "val_acc", "train_epoch_loss", "train_epoch_acc")
MONITOR = "val_acc"   # what the top-k checkpoints are chosen by (butd.training.run)


def validations(events: dict) -> list:
    """Every validation of a metrics file, in order: ``{"epoch", "step", <val metric>: value, ...}``,
    from the per-metric lists (``val_*`` and ``val_*_step``) and the epoch Lightning logs with them."""
    epoch_at = dict(zip(events.get("epoch_step", []), events.get("epoch", [])))
    names = [k for k in events if k.startswith("val_") and not k.endswith("_step") and isinstance(events[k], list)]
    rows: dict = {}
    for name in names:
        for value, step in zip(events[name], events.get(f"{name}_step", [])):
            row = rows.setdefault(step, {"epoch": None if step not in epoch_at else int(epoch_at[step]),
                                         "step": step})
            row[name] = value
    return [rows[step] for step in sorted(rows, key=lambda s: (s is None, s))]


def _epoch_named(checkpoint: str | None):
    named = re.search(r"epoch=(\d+)", os.path.basename(checkpoint or ""))
    return int(named.group(1)) if named else None


def outcome(events: dict, best_checkpoint: str | None = None, final_checkpoint: str | None = None,
            kept=()) -> dict:
    """``{"best": ..., "final": ...}`` of a metrics file's validations (see ``validations``), each
    with its ``checkpoint``; empty where no validation was logged. The best is the validation of
    the epoch that ``best_checkpoint``'s name gives (``epoch=NN``), else the highest ``val_acc``.
    Without ``final_checkpoint`` (a run that went on after its final validation), the final's is
    the one of ``kept`` (top-k checkpoints) that names its epoch, if any."""
    rows = [r for r in validations(events) if MONITOR in r]
    if not rows:
        return {}
    of_epoch = [r for r in rows if r["epoch"] == _epoch_named(best_checkpoint)]
    best = of_epoch[-1] if of_epoch else max(rows, key=lambda r: r[MONITOR])   # max(): the first of equals
    final = rows[-1]
    final_checkpoint = final_checkpoint or next((k for k in kept if _epoch_named(k) == final["epoch"]), None)
    return {"best": {**best, "checkpoint": best_checkpoint}, "final": {**final, "checkpoint": final_checkpoint}}


def metrics_path(save_dir: str, name: str) -> str:
    return os.path.join(save_dir, "metrics", f"{name}-metrics.json")


class MetricLogger(Logger):
    def __init__(self, name: str, save_dir: str, resume: bool = False):
        """``resume=True`` continues the lists of an existing metrics file of the same run."""
        super().__init__()
        self._name, self._save_dir = name, save_dir
        self.path = metrics_path(save_dir, name)
        self.events = {"status": "running"}
        if resume and os.path.exists(self.path):
            with open(self.path) as f:
                self.events = json.load(f)
            self.events["status"] = "running"
        self._dirty = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return 1

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def experiment(self):
        return None

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        # The Trainer logs the module's hyper-parameters; train.py logs the whole run configuration
        # first. Both are kept, merged into one flat dictionary as the specification's (the module
        # groups its model and optimiser options in dictionaries of their own).
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        flat = {}
        for key, value in params.items():
            flat.update(value if isinstance(value, dict) and key in ("model", "optim") else {key: value})
        self.events.setdefault("hyperparams", {}).update(flat)

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for metric, value in metrics.items():
            self.events.setdefault(metric, []).append(float(value))
            self.events.setdefault(f"{metric}_step", []).append(step)
            self._dirty |= metric in EPOCH_METRICS

    @rank_zero_only
    def save(self) -> None:
        # Lightning calls save() after every log_metrics; rewrite the file only for epoch metrics.
        if self._dirty:
            self._write()

    @rank_zero_only
    def record_outcome(self, best_checkpoint: str | None, final_checkpoint: str | None, kept=()) -> dict:
        """Add the run's ``best`` and ``final`` validations (``outcome``) to the file; returns them."""
        self.events.update(outcome(self.events, best_checkpoint, final_checkpoint, kept))
        self._write()
        return {k: self.events[k] for k in ("best", "final") if k in self.events}

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.events["status"] = status
        self._write()

    def _write(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.events, f, indent=4, default=str)
        os.replace(tmp, self.path)      # a reader never sees half a file
        self._dirty = False

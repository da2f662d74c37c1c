"""The specification's JSON metric logger, on the Lightning 2.x ``Logger`` API.

    logger = MetricLogger(name=run_name, save_dir="checkpoints/")
    trainer = pl.Trainer(logger=logger, ...)

writes ``<save_dir>/metrics/<name>-metrics.json``: for each metric a list of values and a
``<metric>_step`` list of the global steps they were logged at (as the spec's file), the
hyper-parameters under ``hyperparams``, and ``status`` ("running" until the Trainer finalises the
run with "success" or "failed"; "interrupted" for a run stopped by Ctrl-C that can be resumed). Only rank zero writes. The file is rewritten whenever an epoch-level
metric arrives (validation, train epoch means), so a killed run keeps what it measured, and at the end.
"""
from __future__ import annotations

import json
import os
from argparse import Namespace

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

# Metrics logged once per epoch: their arrival is the moment worth flushing the file.
EPOCH_METRICS = ("val_loss", "val_acc", "train_epoch_loss", "train_epoch_acc")


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

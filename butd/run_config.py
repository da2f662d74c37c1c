"""The resolved configuration saved with each training run, and finding it again from a checkpoint.

``train.py`` writes ``<checkpoint>/runs/<run>/config.json`` beside the run's checkpoints; ``--resume``
reads the run name from it and ``evaluate.py`` the data paths.
"""
from __future__ import annotations

import json
import os

RUN_CONFIG = "config.json"


def save_run_config(run_dir: str, config: dict) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_CONFIG)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def load_run_config(checkpoint: str) -> dict:
    """The configuration of the run ``checkpoint`` belongs to (the config.json beside it)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), RUN_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the run configuration is missing (train.py writes it beside its "
                                "checkpoints); use a checkpoint inside its run directory")
    with open(path) as f:
        return json.load(f)

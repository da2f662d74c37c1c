"""PNG plots: training curves from metrics files, and the benchmarks' figures, through one helper.

    python -m butd.evaluation.plots checkpoints/metrics/*-metrics.json --out curves.png

``line_plot`` is the one drawing routine; ``plot_training_curves`` (runs side by side) and the
benchmarks (throughput against workers or batch size) both go through it.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: no display on training or CI machines
import matplotlib.pyplot as plt  # noqa: E402

Series = Dict[str, Tuple[Sequence[float], Sequence[float]]]


def line_plot(panels: Sequence[Tuple[str, str, str, Series]], out: str, title: str = "") -> str:
    """Draw one panel per ``(panel title, x label, y label, {line label: (xs, ys)})`` side by side
    and save the figure as ``out`` (PNG). Returns ``out``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (panel_title, xlabel, ylabel, series) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _run_name(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len("-metrics.json")] if name.endswith("-metrics.json") else name


def _per_epoch(events: dict, metric: str) -> Tuple[list, list]:
    values = events.get(metric) or []
    return list(range(1, len(values) + 1)), [float(v) for v in values]


def plot_training_curves(metrics_files: Sequence[str], out: str) -> str:
    """Accuracy and loss per epoch, training and validation, one line per run and split.

    Reads the specification's metrics JSON: per metric a list of values (``train_epoch_acc``,
    ``val_acc``, ``train_epoch_loss``, ``val_loss``), one value per epoch.
    """
    acc: Series = {}
    loss: Series = {}
    for path in metrics_files:
        with open(path) as f:
            try:
                events = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a metrics JSON file ({e})") from None
        run = _run_name(path)
        for split, acc_key, loss_key in (("train", "train_epoch_acc", "train_epoch_loss"),
                                         ("val", "val_acc", "val_loss")):
            if events.get(acc_key):
                acc[f"{run} {split}"] = _per_epoch(events, acc_key)
            if events.get(loss_key):
                loss[f"{run} {split}"] = _per_epoch(events, loss_key)
    if not acc and not loss:
        raise ValueError(f"no per-epoch accuracy or loss in {', '.join(metrics_files)}")
    return line_plot([("accuracy", "epoch", "accuracy", acc), ("loss", "epoch", "loss", loss)], out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Plot training curves from metrics JSON files.")
    p.add_argument("metrics", nargs="+", help="<checkpoint>/metrics/<run>-metrics.json files")
    p.add_argument("--out", default="training_curves.png")
    args = p.parse_args(argv)
    print(f"[*] wrote {plot_training_curves(args.metrics, args.out)}")


if __name__ == "__main__":
    import sys

    from butd.cli import run
    sys.exit(run(main))   # a missing or empty metrics file: one line, exit status 1

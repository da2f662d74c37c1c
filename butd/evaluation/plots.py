"""PNG plots: training curves from metrics files, and the benchmarks' figures, through one helper.

    python -m butd.evaluation.plots checkpoints/metrics/*-metrics.json --out curves.png

``line_plot`` is the one drawing routine; ``plot_training_curves`` (runs side by side) and the
benchmarks (throughput against workers or batch size) both go through it.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: no display on training or CI machines
import matplotlib.pyplot as plt  # noqa: E402

# {line label: (xs, ys)} or {line label: (xs, ys, matplotlib line options)}
Series = Dict[str, tuple]


def line_plot(panels: Sequence[Tuple[str, str, str, Series]], out, title: str = ""):
    """Draw one panel per ``(panel title, x label, y label, {line label: (xs, ys[, line options])})``
    side by side and save the figure as ``out`` (PNG): a path, or a binary file object (e.g.
    ``io.BytesIO``). Returns ``out``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (panel_title, xlabel, ylabel, series) in zip(axes[0], panels):
        for label, (xs, ys, *style) in series.items():
            ax.plot(list(xs), list(ys), label=label, **{"marker": "o", "markersize": 3, **(style[0] if style else {})})
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if isinstance(out, (str, os.PathLike)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)
    return out


def _run_name(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len("-metrics.json")] if name.endswith("-metrics.json") else name


def _per_epoch(events: dict, metric: str) -> Tuple[list, list]:
    # numbered from 0, as Lightning numbers epochs in checkpoint names (epoch=11 is the 12th)
    values = events.get(metric) or []
    return list(range(len(values))), [float(v) for v in values]


# What each task's accuracy is (butd.tasks): exact match of one answer, or VQA v2's soft score.
SCORE_NAMES = {"vqa2": "VQA score (soft, official rule)", "gqa": "accuracy (exact match)",
               "nlvr2": "accuracy (exact match)"}


def training_curve_panels(metrics_files: Sequence[str]) -> Tuple[list, str]:
    """``(panels, title)`` for ``line_plot``: the score and the loss per epoch, training (dashed) and
    validation (solid) of a run in one colour, one colour per run. Epochs are numbered from 0 as in
    checkpoint names. The score axis says what the score is for the runs' dataset(s) (exact match,
    or VQA v2's soft score), and the title names them.

    Reads the specification's metrics JSON: per metric a list of values (``train_epoch_acc``,
    ``val_acc``, ``train_epoch_loss``, ``val_loss``), one value per epoch, and ``hyperparams``.
    Raises ValueError for a file that is not JSON or when no file has a per-epoch metric."""
    acc: Series = {}
    loss: Series = {}
    datasets = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, path in enumerate(metrics_files):
        with open(path) as f:
            try:
                events = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a metrics JSON file ({e})") from None
        run = _run_name(path)
        datasets.append((events.get("hyperparams") or {}).get("dataset"))
        for split, acc_key, loss_key, line in (("train", "train_epoch_acc", "train_epoch_loss", "--"),
                                               ("val", "val_acc", "val_loss", "-")):
            style = {"color": colours[k % len(colours)], "linestyle": line}
            if events.get(acc_key):
                acc[f"{run} {split}"] = (*_per_epoch(events, acc_key), style)
            if events.get(loss_key):
                loss[f"{run} {split}"] = (*_per_epoch(events, loss_key), style)
    if not acc and not loss:
        raise ValueError(f"no per-epoch accuracy or loss in {', '.join(metrics_files)}")
    known = sorted({d for d in datasets if d})
    score = " / ".join(dict.fromkeys(SCORE_NAMES.get(d, "accuracy") for d in known)) or "accuracy"
    runs = f"{len(metrics_files)} run{'s' * (len(metrics_files) > 1)}"
    title = " ".join([*([", ".join(known).upper()] if known else []), f"training curves ({runs})"])
    return [("score", "epoch", score, acc), ("loss", "epoch", "loss (training objective)", loss)], title


def plot_training_curves(metrics_files: Sequence[str], out: str, title: str | None = None) -> str:
    """Draw ``training_curve_panels`` of the metrics files into the PNG ``out`` (``title``
    replaces the default one); returns ``out``."""
    panels, default_title = training_curve_panels(metrics_files)
    return line_plot(panels, out, title=default_title if title is None else title)


def main(argv=None) -> None:
    from butd.cli import ArgumentParser, description
    p = ArgumentParser(description=description(__doc__))
    p.add_argument("metrics", nargs="+", help="<checkpoint>/metrics/<run>-metrics.json files")
    p.add_argument("--out", default="training_curves.png", help="the PNG to write")
    p.add_argument("--title", default=None, help="figure title (default: the runs' dataset)")
    args = p.parse_args(argv)
    print(f"[*] wrote {plot_training_curves(args.metrics, args.out, args.title)}")


if __name__ == "__main__":
    import sys

    from butd.cli import run
    sys.exit(run(main))   # a missing or empty metrics file: one line, exit status 1

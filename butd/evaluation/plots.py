"""PNG plots: training curves from metrics files, and the benchmarks' figures, through one helper.

    python -m butd.evaluation.plots checkpoints/metrics/*-metrics.json --out curves.png

``line_plot`` draws curves (``plot_training_curves``: runs side by side; benchmarks whose x axis is
a size); ``bar_chart`` draws one bar per measurement with its bound behind it and its ratio written
after it (the benchmarks that compare modes against their bounds and baselines).
"""
from __future__ import annotations

import json
import os
import textwrap
from typing import Dict, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: no display on training or CI machines
import matplotlib.pyplot as plt  # noqa: E402

# {line label: (xs, ys)} or {line label: (xs, ys, matplotlib line options)}
Series = Dict[str, tuple]


def line_plot(panels: Sequence[Tuple[str, str, str, Series]], out, title: str = ""):
    """Draw one panel per ``(panel title, x label, y label, {line label: (xs, ys[, line options])}[,
    {"y_from_zero": True}])`` side by side and save the figure as ``out`` (PNG): a path, or a binary file object (e.g.
    ``io.BytesIO``). Returns ``out``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (panel_title, xlabel, ylabel, series, *axis) in zip(axes[0], panels):
        for label, (xs, ys, *style) in series.items():
            ax.plot(list(xs), list(ys), label=label, **{"marker": "o", "markersize": 3, **(style[0] if style else {})})
        ax.set_title(panel_title)
        if axis and axis[0].get("y_from_zero"):   # sizes, not changes: a zoomed axis would magnify them
            ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)
    return out


# one bar of ``bar_chart``: label, value, and optionally bound (drawn behind it), note (written after
# it) and group (its colour: bars of one group share one)
Bar = Dict[str, object]


def bar_chart(panels: Sequence[Tuple[str, str, Sequence[Bar]]], out, title: str = ""):
    """One panel per ``(panel title, x label, bars)``, stacked, each bar a row: the measurement as a
    coloured bar from zero, its ``bound`` (if any) as a grey bar behind it, so that how full the grey
    bar is reads as the ratio, and its ``note`` (e.g. "0.91 of bound") written after both. Bars of
    one ``group`` share a colour; the bars keep their order, top to bottom. Saves a PNG
    as ``line_plot`` does; returns ``out``."""
    heights = [max(1, len(bars)) for _, _, bars in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.1 * len(panels) + 0.34 * sum(heights) + 0.4),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    colours = plt.get_cmap("tab10").colors
    groups: dict = {}
    for ax, (panel_title, xlabel, bars) in zip(axes[:, 0], panels):
        top = max([1e-12] + [max(float(b["value"]), float(b.get("bound") or 0)) for b in bars])
        for y, bar in enumerate(bars):
            group = bar.get("group", "")
            colour = colours[groups.setdefault(group, len(groups)) % len(colours)]
            if bar.get("bound"):
                ax.barh(y, bar["bound"], height=0.8, color="0.85", edgecolor="0.55", linewidth=0.8)
            ax.barh(y, bar["value"], height=0.5, color=colour)
            end = max(float(bar["value"]), float(bar.get("bound") or 0))
            if bar.get("note"):
                ax.text(end + top * 0.01, y, str(bar["note"]), va="center", fontsize=8)
        ax.set_yticks(range(len(bars)), [str(b["label"]) for b in bars], fontsize=8)
        ax.invert_yaxis()
        # room for the notes after the bars: about a hundredth of the axis per character
        longest = max([0] + [len(line) for b in bars for line in str(b.get("note") or "").splitlines()])
        ax.set_xlim(0, top * (1.05 + min(2.0, 0.014 * longest)))
        ax.set_title(textwrap.fill(panel_title, 90), fontsize=10, loc="left")
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)
    return out


def _save(fig, out) -> None:
    if isinstance(out, (str, os.PathLike)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)


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

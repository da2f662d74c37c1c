"""The report's charts as inline PNGs (matplotlib): accuracy per type with counts, and a run's
training curves (``butd.evaluation.plots``).

    uri = accuracy_bars([("query", 0.41, 86), ("verify", 0.68, 31)], {"overall 27.74%": 0.2774})
    uri = training_curves("checkpoints/metrics/<run>-metrics.json")     # "data:image/png;base64,..."
"""
from __future__ import annotations

import base64
import io
from typing import Dict, Optional, Sequence, Tuple

from butd.evaluation.plots import line_plot, plt, training_curve_panels

DPI = 96
BAR_COLOUR = "#4c72b0"
LINE_STYLES = ({"color": "#c44e52", "linestyle": "--"}, {"color": "#555555", "linestyle": ":"})


def png_uri(fig_or_writer) -> str:
    """A figure (closed here), or a function that writes a PNG into a file object, as a data URI."""
    buffer = io.BytesIO()
    if callable(fig_or_writer):
        fig_or_writer(buffer)
    else:
        fig_or_writer.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
        plt.close(fig_or_writer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def accuracy_bars(rows: Sequence[Tuple[str, Optional[float], Optional[int]]],
                  lines: Optional[Dict[str, float]] = None, xlabel: str = "accuracy (%)") -> str:
    """A horizontal bar per ``(label, accuracy as a fraction or None, count or None)``, in the given
    order from the top, each labelled with its percentage and count ("no questions" where the
    accuracy is None); ``lines``: vertical reference lines by legend label (fractions, e.g. the
    overall accuracy and the answer-prior baseline), drawn above the bars. Returns the PNG as a
    data URI (the page titles it)."""
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.3 * max(len(rows), 1)))
    positions = range(len(rows))
    values = [0.0 if a is None else 100 * a for _, a, _ in rows]
    ax.barh(list(positions), values, color=BAR_COLOUR, height=0.7)
    for y, (_, accuracy, count) in zip(positions, rows):
        counted = "" if count is None else f"  ({count:,})"
        text = "no questions" if accuracy is None else f"{100 * accuracy:.1f}%{counted}"
        ax.text((0 if accuracy is None else 100 * accuracy) + 1, y, text, va="center", fontsize=8,
                color="#777777" if accuracy is None else "#222222")
    for (label, value), style in zip((lines or {}).items(), LINE_STYLES):
        ax.axvline(100 * value, label=label, linewidth=1.2, **style)
    ax.set_yticks(list(positions), [label for label, _, _ in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 122)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if lines:   # above the bars, never over them
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False,
                  borderaxespad=0.2)
    fig.tight_layout()
    return png_uri(fig)


def training_curves(metrics_file: str) -> str:
    """The run's score and loss per epoch, training and validation (``plots.training_curve_panels``),
    as a data URI. Raises ValueError for a file without per-epoch metrics."""
    panels, title = training_curve_panels([metrics_file])
    return png_uri(lambda buffer: line_plot(panels, buffer, title))

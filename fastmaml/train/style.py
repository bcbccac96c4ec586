"""One style for every figure fastmaml draws (`fastmaml demo`, `fastmaml plot`, the benchmarks):
sizes readable in a two-column paper, the same colours for the same things, and axes that say
what they show.

    fig, axes = style.figure(ncols=2)
    style.log_axis(axes[0], "y")       # ticks at 1, 2, 5 x 10^k written as plain numbers (0.02, 0.5, 3)
    style.iteration_axis(axes[0])      # integer ticks only
    style.save(fig, path)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RC: dict[str, Any] = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.frameon": False, "lines.linewidth": 1.5, "lines.markersize": 4,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.spines.top": False,
    "axes.spines.right": False, "savefig.dpi": 150, "savefig.bbox": "tight", "figure.dpi": 100,
}
PANEL = (4.2, 3.2)  # inches per panel
COLORS = {"truth": "black", "support": "tab:purple", "MAML": "tab:red", "pre-trained": "tab:blue",
          "train": "tab:blue", "eval": "tab:orange"}
STEP_STYLES = {0: ":", 1: "--", 10: "-"}  # line style of a prediction after this many inner steps


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure(ncols: int = 1, nrows: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of nrows x ncols panels in the house style; returns (fig, flat list of axes)."""
    plt = pyplot()
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL[0] * ncols, PANEL[1] * nrows), squeeze=False)
    for ax in axes.flat:
        _apply(ax)
    return fig, list(axes.flat)


def _apply(ax: Axes) -> None:
    """rc_context only covers creation; these keep the style when the figure is drawn later."""
    ax.grid(True, alpha=RC["grid.alpha"], linewidth=RC["grid.linewidth"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=RC["xtick.labelsize"])
    ax.xaxis.label.set_fontsize(RC["axes.labelsize"])
    ax.yaxis.label.set_fontsize(RC["axes.labelsize"])
    ax.title.set_fontsize(RC["axes.titlesize"])


def plain_number(value: float, _pos: int | None = None) -> str:
    """A tick label without exponent notation: 0.002, 0.05, 3, 20, 1e+05 only beyond 10^5."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else ""
    if 1e-4 <= abs(value) < 1e5:
        return f"{value:.6g}"
    return f"{value:.0e}"


def log_axis(ax: Axes, which: str = "y") -> None:
    """Log scale with labelled ticks written as plain numbers, never only a minor '3x10^0': at
    every 1..9 x 10^k when the data span less than a decade, at 1, 2, 5 x 10^k up to three
    decades, at the powers of ten beyond. Call it after plotting: a range with fewer than two
    such ticks is widened to the ticks around it."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    get, set_ = (ax.get_ylim, ax.set_ylim) if which == "y" else (ax.get_xlim, ax.set_xlim)
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = sorted(get())
    decades = math.log10(hi / lo) if lo > 0 and math.isfinite(hi) else 3.0
    subs = tuple(range(1, 10)) if decades < 1 else (1, 2, 5) if decades <= 3 else (1,)
    if lo > 0 and math.isfinite(hi):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2)
                 for m in subs]
        if sum(lo <= t <= hi for t in ticks) < 2:
            set_(max(t for t in ticks if t <= lo), min(t for t in ticks if t >= hi))
    axis.set_major_locator(LogLocator(base=10, subs=tuple(float(m) for m in subs)))
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(m) for m in range(1, 10))))
    axis.set_minor_formatter(NullFormatter())


def iteration_axis(ax: Axes, which: str = "x") -> None:
    """Integer ticks only (iterations, inner steps)."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if which == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def metric_scale(metric: str) -> tuple[float, str]:
    """(factor, axis label) of a metric as the docs quote it: accuracy in %, MSE as is."""
    return (100.0, "accuracy (%)") if metric == "accuracy" else (1.0, "MSE")


def title(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=RC["axes.titlesize"] + 1)


def legend_below(fig: Figure, ax: Axes) -> None:
    """One legend for the figure, in a row under its panels (taken from `ax`)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=min(len(labels), 6),
               frameon=False, fontsize=RC["legend.fontsize"])


def save(fig: Figure, path: str | os.PathLike) -> Path:
    plt = pyplot()
    with plt.rc_context(RC):
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return Path(path)

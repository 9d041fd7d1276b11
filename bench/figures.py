"""The experiments' figures (bench/experiments.py), drawn with matplotlib when it is installed
(`pip install ".[plot]"`); without it the tables are still written and the figures skipped.

Invariants:
- A figure shows only numbers the seeds determine (means over seeds, bytes counted by the compiled
  code), never timings, so regenerating it gives the same picture.
"""

from __future__ import annotations

import io
import sys

import numpy as np

from spadrt.files import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed (pip install ".[plot]"): figures skipped', file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, figure, path: str):
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    with atomic_write(path, "figure") as file:
        file.write(buffer.getvalue())
    print(f"wrote {path}", file=sys.stderr)


def optimisation_figure(curves: dict[str, dict[str, np.ndarray]], title: str, path: str):
    """curves: function name -> estimator label -> mean objective per step."""
    plt = _pyplot()
    if plt is None:
        return
    figure, panels = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6))
    for axes, (function, by_estimator) in zip(np.atleast_1d(panels), curves.items()):
        for label, curve in by_estimator.items():
            axes.plot(np.arange(len(curve)), curve, label=label, linewidth=1.2,
                      linestyle="--" if label == "exact" else "-")
        if all(np.nanmin(c) > 0 for c in by_estimator.values()):
            axes.set_yscale("log")
        axes.set_title(function)
        axes.set_xlabel("Adam step")
        axes.grid(True, alpha=0.3)
    np.atleast_1d(panels)[0].set_ylabel("objective (mean over seeds)")
    np.atleast_1d(panels)[-1].legend(fontsize=8)
    figure.suptitle(title)
    _save(plt, figure, path)


def memory_figure(points: dict[str, dict[str, list[tuple[float, float]]]], path: str):
    """points: model title -> series label -> (keep, bytes) pairs."""
    plt = _pyplot()
    if plt is None:
        return
    figure, panels = plt.subplots(1, len(points), figsize=(6 * len(points), 3.8))
    for axes, (title, series) in zip(np.atleast_1d(panels), points.items()):
        for label, pairs in series.items():
            keeps, counts = zip(*sorted(pairs))
            axes.plot(keeps, counts, marker="o", label=label)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("keep")
        axes.set_ylabel("bytes")
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    _save(plt, figure, path)

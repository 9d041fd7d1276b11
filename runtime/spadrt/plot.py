"""Loss curves with matplotlib, an optional extra (`pip install "spadc[plot]"`).

Invariants:
- `require_matplotlib()` raises a `SpadcError` saying how to install it, so a command can refuse
  `--plot` before any training starts; nothing here is imported by the rest of the runtime.
- `loss_curve(path, series)` writes one line per series over the epochs (or steps), with ticks, a
  legend and a log scale when the values span more than two decades; the file is written
  atomically (spadrt.files).
"""

from __future__ import annotations

import io
import math

from .errors import SpadcError
from .files import atomic_write

INSTALL_HINT = 'plots need matplotlib: pip install "spadc[plot]" (or pip install matplotlib)'


FORMATS = ("png", "pdf", "svg")


def require_matplotlib(path: str | None = None):
    """Raise now if a plot could not be drawn: no matplotlib, or a file type it does not write."""
    if path is not None and path.rsplit(".", 1)[-1].lower() not in FORMATS:
        raise SpadcError(f"cannot plot to {path}: name a .png, .pdf or .svg file")
    try:
        import matplotlib
    except ImportError:
        raise SpadcError(INSTALL_HINT) from None
    matplotlib.use("Agg")  # files only: no display needed


def loss_curve(path: str, series: dict[str, list[float]], xlabel: str = "epoch", title: str = "loss"):
    require_matplotlib(path)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for name, values in series.items():
            axes.plot(range(1, len(values) + 1), values, label=name, linewidth=1.5)
        finite = [v for values in series.values() for v in values if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            axes.set_yscale("log")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(title)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format=path.rsplit(".", 1)[-1].lower())
    finally:
        plt.close(figure)
    with atomic_write(path, "plot") as file:
        file.write(buffer.getvalue())

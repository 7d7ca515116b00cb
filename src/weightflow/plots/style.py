"""One consistent, thesis-like figure style: serif fonts, light grid, colour-blind-safe palette.

Use :func:`figure` to make a figure and :func:`save` to write it as PDF (and PNG for the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["figure", "save", "PALETTE", "color_for"]

# Okabe–Ito colour-blind-safe palette.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

RC = {
    "font.family": "serif",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 3.2, height: float = 2.6, **kwargs):
    """``(fig, axes)`` with the weightflow style; ``width``/``height`` are per panel, in inches."""
    plt.rcParams.update(RC)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                        layout="constrained", **kwargs)


def save(fig, paths: Iterable[str | Path]) -> None:
    """Write ``fig`` to every path (format from the suffix: .pdf, .png) and close it."""
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    plt.close(fig)

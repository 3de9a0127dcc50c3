"""Saving matplotlib figures as PNG files atomically (headless: the Agg backend)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from speechbrain_memristor.util.atomic import write_atomic


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out ``figure``, write it to ``path`` as PNG atomically, close it; returns the path."""
    plt = pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())

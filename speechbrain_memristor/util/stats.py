"""Summary statistics of repeated measurements (for example the WER over chips)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

STATISTICS = ("mean", "std", "min", "max")


def summary_statistics(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1; 0 for one value), min and max of ``values``."""
    if not values:
        raise ValueError("summary_statistics needs at least one value.")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }

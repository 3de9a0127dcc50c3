"""Cells per second of `CellArray` against the reference ``synaptogen`` package, in one run.

Times, for both implementations on the same machine and in the same process: creating the
cells, a SET pulse (-2 V on cells in HRS), a full RESET pulse (+2 V on cells in LRS: every cell
starts a new cycle), a pulse of random voltages U(-2, 2) V (the same voltages for both), and one
noisy read at 0.2 V. Each operation is repeated, alternating implementations, and the fastest
repeat counts (the machine may be shared). The first RESET after creation is reported
separately: there `CellArray` opens its VAR history (a one-off allocation).

Usage: python bench/bench_device.py [--cells 1000000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import synaptogen.synaptogen as reference
import torch

from speechbrain_memristor.physics.cells import CellArray

T = TypeVar("T")


def timed(action: Callable[..., T], *args: object) -> tuple[T, float]:
    """(result, seconds) of action(*args)."""
    start = time.perf_counter()
    result = action(*args)
    return result, time.perf_counter() - start


def reference_bytes_per_cell(cells: reference.CellArray) -> float:
    arrays = [value for value in vars(cells).values() if isinstance(value, np.ndarray)]
    return sum(array.nbytes for array in arrays) / len(cells)


def measure(n: int, repeats: int) -> dict[str, dict[str, float]]:
    """Best seconds per operation and implementation."""
    generator = torch.Generator().manual_seed(0)
    voltages = np.random.default_rng(0).uniform(-2.0, 2.0, n).astype(np.float32)
    best: dict[str, dict[str, float]] = {}

    def record(operation: str, implementation: str, seconds: float) -> None:
        row = best.setdefault(operation, {})
        row[implementation] = min(row.get(implementation, float("inf")), seconds)

    for _ in range(repeats):
        ours, seconds = timed(CellArray, n, None, None, generator)
        record("create", "ours", seconds)
        ref, seconds = timed(reference.CellArrayCPU, n)
        record("create", "reference", seconds)
        pulses = (("ours", ours.apply_voltage), ("reference", partial(reference.applyVoltage, ref)))
        for implementation, apply in pulses:
            apply(-2.0)
            record("first reset (+2 V)", implementation, timed(apply, 2.0)[1])
            record("set (-2 V)", implementation, timed(apply, -2.0)[1])
            record("reset (+2 V)", implementation, timed(apply, 2.0)[1])
            apply(-2.0)
            record("random U(-2, 2) V", implementation, timed(apply, voltages)[1])
        record("read 0.2 V", "ours", timed(ours.read, 0.2)[1])
        record("read 0.2 V", "reference", timed(reference.Iread, ref, 0.2)[1])
    best["bytes per cell"] = {
        "ours": float(ours.bytes_per_cell),
        "reference": reference_bytes_per_cell(ref),
    }
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.cells} cells, torch threads {args.threads}, best of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    results = measure(args.cells, args.repeats)
    bytes_row = results.pop("bytes per cell")
    print(f"{'operation':<20} {'ours (cells/s)':>15} {'reference':>15} {'ratio':>7}")
    for operation, seconds in results.items():
        ours = args.cells / seconds["ours"]
        ref = args.cells / seconds["reference"]
        print(f"{operation:<20} {ours:>15.3e} {ref:>15.3e} {ours / ref:>7.2f}")
    print(
        f"bytes per cell after cycling: ours {bytes_row['ours']:.0f}, "
        f"reference {bytes_row['reference']:.0f}"
    )


if __name__ == "__main__":
    main()

"""First-order vs exact wire-resistance read: relative errors over wire resistance and tile size.

Usage: python bench/wire_error_table.py [--sizes 8 16 32 64 128] [--resistances 0.1 0.3 1 3]

One square tile of programmed-like random states (2 planes, 40 % of the cells in LRS near
r = 0, the rest near r = 1), full-range random 8-bit inputs, no read noise, ideal ADC. Per
cell of the table: the first-order read's error relative to the exact read (|| fo - exact || /
|| exact ||) and relative to the true IR-drop loss (|| fo - exact || / || exact - ideal ||),
and the loss itself relative to the ideal read. The exact solver is checked against a dense
nodal solve in tests/crossbar/test_wires.py.
"""

from __future__ import annotations

import argparse

import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.chip import Crossbar


def states(size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    bits = torch.rand(2, size, size, generator=generator) < 0.4
    low = torch.rand(2, size, size, generator=generator) * 0.15
    high = 0.8 + torch.rand(2, size, size, generator=generator) * 0.25
    return torch.where(bits, low, high)


def errors(size: int, resistance: float, count: int = 4) -> tuple[float, float, float]:
    base = HardwareConfig(
        tile_rows=size,
        tile_cols=size,
        read_noise="off",
        adc_precision_bits=None,
        adc_range_bits=None,
    )
    pos, neg = states(size, 0), states(size, 1)
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(-127, 128, (count, size), generator=generator).float()
    ideal = Crossbar(pos, neg, 1.0, base, 0).read(codes).double()
    reads = {}
    for solver in ("first_order", "exact"):
        hardware = base.replace(wire_resistance=resistance, wire_solver=solver)
        reads[solver] = Crossbar(pos, neg, 1.0, hardware, 0).read(codes).double()
    error = (reads["first_order"] - reads["exact"]).norm()
    loss = (reads["exact"] - ideal).norm()
    return float(error / reads["exact"].norm()), float(error / loss), float(loss / ideal.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--resistances", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0])
    args = parser.parse_args()
    print("| tile | wire ohm | r G N^2 | IR-drop loss | first-order error (read) | (loss) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        for resistance in args.resistances:
            read_error, loss_error, loss = errors(size, resistance)
            parameter = resistance * size**2 / 4500.0
            print(
                f"| {size} | {resistance:g} | {parameter:.3g} | {loss:.2%} | {read_error:.3%} "
                f"| {loss_error:.1%} |"
            )


if __name__ == "__main__":
    main()

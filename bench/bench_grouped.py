"""Depthwise convolution of a Conformer layer mapped group-wise: fake_quant and analog vs digital.

The convolution module's depthwise Conv1d of the paper's Conformer (d_model 384 channels,
kernel 31, groups 384) on 10 s of audio for a batch of 4 ([4, 384, 250] after the frontend's
4x subsampling), converted with `convert(..., include=["*"])` and timed in each execution mode
in one process (eval, after one untimed pass; the best of ``--repeats`` runs counts, since the
machine may be shared). Prints the ratios to digital, the cells (weights x cells per weight)
and the cells a block-diagonal [384, 384 x 31] matrix would have needed.

Usage: python bench/bench_grouped.py [--channels 384] [--kernel 31] [--batch 4] [--frames 250]
       [--preset paper] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls, program, set_execution


def best_time(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--kernel", type=int, default=31)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    channels, kernel = args.channels, args.kernel
    model = torch.nn.Sequential(
        torch.nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
    )
    model.eval()
    x = torch.randn(args.batch, channels, args.frames)
    hardware = HardwareConfig.preset(args.preset)
    convert(model, hardware, "digital", include=["*"])
    (matmul,) = hardware_matmuls(model)
    inventory = matmul.inventory(model[0].weight)
    timings = {}
    for mode in ("digital", "fake_quant", "analog"):
        set_execution(model, mode)
        if mode == "analog":
            start = time.perf_counter()
            program(model)
            print(f"programming: {time.perf_counter() - start:.3f} s")
        timings[mode] = best_time(model, x, args.repeats)
    block_cells = channels * channels * kernel * 2 * hardware.bit_planes
    print(
        f"depthwise Conv1d {channels} channels, kernel {kernel}, input {tuple(x.shape)}, "
        f"preset {args.preset}, {args.threads} threads"
    )
    print(
        f"cells {inventory.cells:,} (= {inventory.weights:,} weights x "
        f"{2 * hardware.bit_planes}); block-diagonal would need {block_cells:,}; "
        f"tiles {inventory.arrays}, utilization {inventory.utilization:.3f}"
    )
    digital = timings["digital"]
    for mode, seconds in timings.items():
        print(f"{mode:>10}: {seconds * 1e3:8.2f} ms  ({seconds / digital:6.2f}x digital)")


if __name__ == "__main__":
    main()

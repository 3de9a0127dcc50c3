"""Analog MemristorLinear vs F.linear: forward time, peak memory, programming throughput.

Usage: python bench/bench_linear.py [--threads 2] [--frames 1600] [--repeats 7]

Everything is measured in this one process. Times are medians over interleaved repeats (the
analog and digital runs alternate, so machine load affects both alike). Peak memory is the
largest number of bytes the CPU allocator holds during one forward, above what it held when
the forward started, read from torch.profiler's memory events ("Total Allocated", which the
profiler tracks for every allocation and free while it runs). Inputs, weights and the
programmed chip exist before the forward and are not counted; the output is.

The machine's load average is printed: on a shared machine, other processes make the many
short parallel regions of the analog read wait for descheduled OpenMP threads, which inflates
the 2-thread analog times far more than F.linear's; ``--threads 1`` is less sensitive.

Each line also gives the analog read's matrix-product work in F.linear units: planes x
padded_in / in products with the difference matrix, twice that with read noise (the variance is
a second product). That ratio is a floor for the time ratio whatever the elementwise work costs.

Programming throughput is measured on one layer (4 cells per 3-bit weight) and extrapolated
linearly to a 40 M-weight model (the authors' Conformer maps about 40.7 M weights), with
write-verify off and on (default windows), interleaved, and the time ratio verify on / off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.layers.linear import MemristorLinear

SHAPES = ((512, 2048), (384, 1536))
MODEL_WEIGHTS = 40_000_000


def peak_forward_bytes(run) -> int:
    """Peak bytes allocated above the starting level while ``run()`` executes."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    descriptor, path = tempfile.mkstemp(suffix=".json")
    os.close(descriptor)
    try:
        prof.export_chrome_trace(path)
        with open(path) as trace:
            events = json.load(trace)["traceEvents"]
    finally:
        os.remove(path)
    memory = sorted(
        (event for event in events if event.get("name") == "[memory]"), key=lambda e: e["ts"]
    )
    cpu = [e["args"] for e in memory if e["args"].get("Device Type", 0) == 0]
    return max((args["Total Allocated"] for args in cpu), default=0)


def median_seconds(run, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def bench_shape(in_features: int, out_features: int, frames: int, repeats: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features)
    x = torch.randn(frames, in_features)
    for noise in ("physical", "off"):
        hardware = HardwareConfig(
            weight_bits=3,
            tile_rows=128,
            tile_cols=128,
            adc_precision_bits=4,
            adc_range_bits=4,
            read_noise=noise,
        )
        layer = MemristorLinear.from_linear(linear, hardware, "fake_quant", name="bench")
        layer.train()
        layer(x)
        layer.eval()
        layer.execution = "analog"
        with torch.no_grad():
            layer(x)  # programs the chip and warms up
            F.linear(x, linear.weight, linear.bias)

            def analog(layer=layer):
                return layer(x)

            def digital():
                return F.linear(x, linear.weight, linear.bias)

            analog_times, digital_times = [], []
            for _ in range(repeats):
                analog_times += median_seconds(analog, 1)
                digital_times += median_seconds(digital, 1)
            analog_s = statistics.median(analog_times)
            digital_s = statistics.median(digital_times)
            analog_peak = peak_forward_bytes(analog)
            digital_peak = peak_forward_bytes(digital)
        chip = layer.matmul.chip
        matmul_work = (
            chip.planes * chip.layout.padded_in / in_features * (1 if noise == "off" else 2)
        )
        print(
            f"{in_features:4d}->{out_features:<5d} noise={noise:8s} frames={frames}: "
            f"analog {analog_s * 1e3:7.1f} ms, F.linear {digital_s * 1e3:6.1f} ms, "
            f"ratio {analog_s / digital_s:5.2f}x (work {matmul_work:.0f}x) | peak alloc analog "
            f"{analog_peak / 2**20:6.1f} MiB, F.linear {digital_peak / 2**20:5.1f} MiB, "
            f"ratio {analog_peak / digital_peak:4.2f}x | rare cells "
            f"{chip.rare_cell_count}/{chip.inventory().cells}"
        )


def bench_programming(repeats: int = 3) -> None:
    """Programming throughput with write-verify off (the default) and on (default windows),
    interleaved, medians over ``repeats``, and their ratio."""
    generator = torch.Generator().manual_seed(0)
    weight_int = torch.randint(-3, 4, (2048, 512), generator=generator).float()
    weights = weight_int.numel()
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu_times: dict[bool, list[float]] = {False: [], True: []}
    chips = {}
    for _ in range(repeats):
        for verify in (False, True):
            hardware = HardwareConfig(weight_bits=3, write_verify=verify)
            start, cpu_start = time.perf_counter(), time.process_time()
            chips[verify] = Crossbar.program(weight_int, 1.0, hardware, chip_seed=0)
            times[verify].append(time.perf_counter() - start)
            cpu_times[verify].append(time.process_time() - cpu_start)
    for verify in (False, True):
        seconds = statistics.median(times[verify])
        cells = chips[verify].inventory().cells
        stats = chips[verify].programming
        extra = (
            f"; attempts {list(stats.attempts)}, unverified {stats.unverified}" if verify else ""
        )
        print(
            f"programming{' with write-verify' if verify else ''}: {weights / 1e6:.2f} M weights "
            f"({cells / 1e6:.1f} M cells) in {seconds:.2f} s = {cells / seconds / 1e6:.2f} M "
            f"cells/s; 40 M-weight model (3 bits, {4 * MODEL_WEIGHTS / 1e6:.0f} M cells): "
            f"~{seconds / weights * MODEL_WEIGHTS:.0f} s{extra}"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    cpu_ratio = statistics.median(cpu_times[True]) / statistics.median(cpu_times[False])
    print(
        f"programming time write-verify on / off: {ratio:.2f}x wall clock, {cpu_ratio:.2f}x "
        f"process CPU time (medians of {repeats}; the first verify run includes the one-time "
        "window calibration)"
    )


# ---------------------------------------------------- circuit modes (wires, bit-serial)
CIRCUIT_MODES = {
    "today": {},
    "IR drop first-order 1 ohm": {"wire_resistance": 1.0},
    "bit-serial": {"dac_mode": "bit_serial"},
}


def bench_circuit_modes(in_features: int, out_features: int, frames: int, repeats: int) -> None:
    """Chip reads (physical noise, ADC 4/4, 128 x 128 tiles) of today's parallel read, the
    first-order IR-drop read and the bit-serial read, interleaved with F.linear; ratios to
    F.linear and to today's read (targets: IR drop <= 2x, bit-serial <= input bits x today)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator)
    weight_int = torch.randint(-3, 4, (out_features, in_features), generator=generator).float()
    x = torch.randn(frames, in_features, generator=generator)
    scale = x.abs().max() / 127
    chips = {
        name: Crossbar.program(weight_int, 1.0, HardwareConfig(**fields), chip_seed=0)
        for name, fields in CIRCUIT_MODES.items()
    }
    times: dict[str, list[float]] = {name: [] for name in (*chips, "F.linear")}
    with torch.no_grad():
        for _ in range(repeats):
            for name, chip in chips.items():
                times[name] += median_seconds(lambda chip=chip: chip.read(x, scale), 1)
            times["F.linear"] += median_seconds(lambda: F.linear(x, weight), 1)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    bits = chips["bit-serial"].dac.pulse_bits
    for name in chips:
        print(
            f"{in_features:4d}->{out_features:<5d} {name:26s}: {seconds[name] * 1e3:7.1f} ms, "
            f"{seconds[name] / seconds['F.linear']:6.1f}x F.linear, "
            f"{seconds[name] / seconds['today']:5.2f}x today"
            + (f" ({bits} input bits)" if name == "bit-serial" else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--programming-repeats", type=int, default=3)
    parser.add_argument(
        "--programming-only", action="store_true", help="only the programming throughput"
    )
    parser.add_argument(
        "--circuit-only", action="store_true", help="only the IR-drop and bit-serial reads"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    if args.circuit_only:
        for in_features, out_features in SHAPES:
            bench_circuit_modes(in_features, out_features, args.frames, args.repeats)
        return
    if not args.programming_only:
        for in_features, out_features in SHAPES:
            bench_shape(in_features, out_features, args.frames, args.repeats)
            bench_circuit_modes(in_features, out_features, args.frames, args.repeats)
    bench_programming(args.programming_repeats)


if __name__ == "__main__":
    main()

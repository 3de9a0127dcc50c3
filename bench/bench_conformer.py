"""Whole-encoder cost of memristor execution: digital vs fake_quant vs analog, and programming.

Builds the paper's Conformer encoder (SpeechBrain TransformerASR, conformer, RelPosMHAXL:
12 layers, d_model 384, 4 heads, FFN 1536, kernel 31), maps it with the paper's mapping
(`PAPER_CONFORMER_MAPPING`, about 40.7 M weights) and times, in one process:

- the time to program every mapped layer onto chips (`program`);
- eval forward passes (after one untimed pass) on 10 s of audio for a batch of 4 (250 frames after the frontend's 4x
  subsampling, fed to the encoder as [4, 250, 384]) in each execution mode; the best of
  ``--repeats`` runs counts (the machine may be shared), and analog / digital is the ratio;
- memory: the chips' resident size (non-persistent buffers) and the peak resident set size of
  the process during each mode's forward passes above the level before them (Linux VmHWM,
  reset through /proc/self/clear_refs).

Usage: python bench/bench_conformer.py [--layers 12] [--batch 4] [--frames 250]
       [--preset paper] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls, program, set_execution


def peak_rss_reset() -> bool:
    """Reset the process's peak resident set size; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def rss_kib(field: str) -> int:
    """VmRSS or VmHWM of this process in KiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def build_encoder(layers: int) -> TransformerASR:
    return TransformerASR(
        input_size=384,
        tgt_vocab=1000,
        d_model=384,
        nhead=4,
        num_encoder_layers=layers,
        num_decoder_layers=0,
        d_ffn=1536,
        dropout=0.0,
        kernel_size=31,
        encoder_module="conformer",
        attention_type="RelPosMHAXL",
        normalize_before=True,
        causal=False,
    ).eval()


def time_forward(model: TransformerASR, features: torch.Tensor, repeats: int) -> tuple[float, int]:
    """(best seconds per forward, peak RSS increase in KiB over the level before).

    One untimed pass first (lazy programming, allocator warm-up).
    """
    with torch.no_grad():
        model.encode(features, None)
    reset = peak_rss_reset()
    before = rss_kib("VmRSS")
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode(features, None)
            best = min(best, time.perf_counter() - start)
    return best, (rss_kib("VmHWM") - before) if reset else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    model = build_encoder(args.layers)
    features = torch.randn(args.batch, args.frames, 384)
    convert(model, HardwareConfig.preset(args.preset), execution="digital")
    matmuls = hardware_matmuls(model)
    weights = sum(p.numel() for p in model.encoder.parameters())
    print(
        f"Conformer encoder: {args.layers} layers, d_model 384, FFN 1536, {weights / 1e6:.1f} M "
        f"parameters, {len(matmuls)} mapped matrices; input [{args.batch}, {args.frames}, 384]; "
        f"preset {args.preset!r}; {args.threads} threads; best of {args.repeats}"
    )

    timings = {}
    for mode in ("digital", "fake_quant"):
        set_execution(model, mode)
        timings[mode] = time_forward(model, features, args.repeats)

    start = time.perf_counter()
    program(model)
    programming = time.perf_counter() - start
    chip_bytes = sum(
        buffer.numel() * buffer.element_size() for m in matmuls for buffer in m.chip.buffers()
    )
    cells = sum(m.chip.inventory().cells for m in matmuls)
    print(
        f"programming: {programming:.1f} s for {cells / 1e6:.1f} M cells "
        f"({cells / programming / 1e6:.2f} M cells/s); chips hold {chip_bytes / 2**20:.0f} MiB"
    )
    set_execution(model, "analog")
    timings["analog"] = time_forward(model, features, args.repeats)

    digital = timings["digital"][0]
    print(f"{'mode':<11} {'forward s':>10} {'x digital':>10} {'peak RSS +MiB':>14}")
    for mode, (seconds, peak_kib) in timings.items():
        peak = f"{peak_kib / 1024:.0f}" if peak_kib >= 0 else "n/a"
        print(f"{mode:<11} {seconds:>10.3f} {seconds / digital:>10.2f} {peak:>14}")
    print(f"analog / digital = {timings['analog'][0] / digital:.2f} (target <= 6 on 2 cores)")


if __name__ == "__main__":
    main()

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
       [--preset paper] [--read-noise off] [--repeats 3] [--threads 2] [--device cuda]

On CUDA, times are taken after synchronizing and memory is CUDA's peak allocation.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls, program, set_execution

FRAME_SECONDS = 0.04  # one encoder frame: 10 ms features after 4x subsampling
TEDLIUM2_TEST_HOURS = 2.6  # the TED-LIUM release 2 test split (1157 utterances)


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
    """(best seconds per forward, peak memory increase in KiB over the level before: RSS on
    the CPU, CUDA's peak allocation on a GPU).

    One untimed pass first (lazy programming, allocator warm-up).
    """
    cuda = features.is_cuda
    with torch.no_grad():
        model.encode(features, None)
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        reset = True
    else:
        reset = peak_rss_reset()
        before = rss_kib("VmRSS")
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode(features, None)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    if cuda:
        return best, (torch.cuda.max_memory_allocated() - before) // 1024
    return best, (rss_kib("VmHWM") - before) if reset else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--read-noise", default=None, help="override the preset's read_noise")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    model = build_encoder(args.layers).to(args.device)
    features = torch.randn(args.batch, args.frames, 384).to(args.device)
    hardware = HardwareConfig.preset(args.preset)
    if args.read_noise is not None:
        hardware = hardware.replace(read_noise=args.read_noise)
    convert(model, hardware, execution="digital")
    matmuls = hardware_matmuls(model)
    weights = sum(p.numel() for p in model.encoder.parameters())
    print(
        f"Conformer encoder: {args.layers} layers, d_model 384, FFN 1536, {weights / 1e6:.1f} M "
        f"parameters, {len(matmuls)} mapped matrices; input [{args.batch}, {args.frames}, 384]; "
        f"preset {args.preset!r}, read noise {hardware.read_noise}; {args.device}, "
        f"{args.threads} threads; best of {args.repeats}"
    )

    timings = {}
    for mode in ("digital", "fake_quant"):
        set_execution(model, mode)
        timings[mode] = time_forward(model, features, args.repeats)

    start = time.perf_counter()
    program(model)
    if features.is_cuda:
        torch.cuda.synchronize()
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
    memory = "peak CUDA +MiB" if features.is_cuda else "peak RSS +MiB"
    print(f"{'mode':<11} {'forward s':>10} {'x digital':>10} {memory:>14}")
    for mode, (seconds, peak_kib) in timings.items():
        peak = f"{peak_kib / 1024:.0f}" if peak_kib >= 0 else "n/a"
        print(f"{mode:<11} {seconds:>10.3f} {seconds / digital:>10.2f} {peak:>14}")
    print(f"analog / digital = {timings['analog'][0] / digital:.2f} (target <= 7 on 2 cores)")
    audio_seconds = args.batch * args.frames * FRAME_SECONDS
    for mode, (seconds, _) in timings.items():
        print(
            f"TED-LIUM 2 test split ({TEDLIUM2_TEST_HOURS} h, 1157 utterances) encoder pass, "
            f"{mode}, extrapolated from this throughput: "
            f"{seconds / audio_seconds * TEDLIUM2_TEST_HOURS * 3600:.0f} s"
        )


if __name__ == "__main__":
    main()

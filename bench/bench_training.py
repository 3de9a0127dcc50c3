"""Cost of one training step of the demo Conformer in each training method, against fake_quant.

Builds the demo recipe's model (hparams/demo_conformer_ctc.yaml: CNN frontend, 4 Conformer
layers, d_model 144, CTC output; the paper preset at 3 bits) through its own YAML and hook, and
times, in one process, one optimizer step (forward, CTC loss, backward, AdamW) on a batch of
random features ([batch, frames, 80] Fbank-like, ``--batch`` 8 x ``--frames`` 300 frames, about
the demo's 3 s segments) in:

- ``fake_quant``: plain QAT;
- ``chip_in_the_loop``: forward values read from training chips (`layers.hardware_aware`);
  steps inside a reprogramming round, plus the time to program the chips, amortized over the
  recipe's ``reprogram_every`` steps;
- ``noise_injection``: calibrated noisy weights per forward.

The best of ``--repeats`` steps counts (after one untimed step; the machine may be shared);
ratios are to the fake_quant step of the same run.

Usage: python bench/bench_training.py [--batch 8] [--frames 300] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "TEDLIUM2" / "ASR" / "conformer"
HPARAMS = RECIPE / "hparams" / "demo_conformer_ctc.yaml"
METHODS = (None, "chip_in_the_loop", "noise_injection")


def build(method: str | None, folder: str) -> dict:
    """The demo hparams (model, hook) with ``method``, converted; same initial weights."""
    torch.manual_seed(0)
    overrides = {
        "data_folder": folder,
        "output_folder": folder,
        "execution": "analog",
        "training_method": method,
    }
    with open(HPARAMS, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    hparams["memristor"].convert(hparams["modules"])
    hparams["model"].train()
    return hparams


def training_step(hparams: dict, batch: tuple, optimizer: torch.optim.Optimizer) -> None:
    """One hook step, forward, CTC loss, backward and optimizer step."""
    feats, lengths, tokens, token_lengths = batch
    hparams["memristor"].start_train_batch()
    modules = hparams["modules"]
    encoded = modules["encoder"](modules["CNN"](feats), lengths)
    log_probs = hparams["log_softmax"](modules["ctc_lin"](encoded))
    loss = hparams["ctc_cost"](log_probs, tokens, lengths, token_lengths)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    generator = torch.Generator().manual_seed(1)
    batch = (
        torch.randn(args.batch, args.frames, 80, generator=generator),
        torch.ones(args.batch),
        torch.randint(1, 40, (args.batch, args.frames // 10), generator=generator),
        torch.ones(args.batch),
    )
    steps, programming, reprogram_every = {}, 0.0, 1
    with tempfile.TemporaryDirectory() as folder:
        for method in METHODS:
            hparams = build(method, folder)
            hook = hparams["memristor"]
            optimizer = torch.optim.AdamW(hparams["model"].parameters(), lr=1e-4)
            if method == "chip_in_the_loop":
                reprogram_every = hook.reprogram_every
                if args.repeats + 1 >= reprogram_every:
                    raise SystemExit(
                        f"--repeats must stay below reprogram_every - 1 ({reprogram_every})"
                    )
                start = time.perf_counter()
                hook.start_train_batch()  # programs the round's training chips
                programming = time.perf_counter() - start
                hook.training_step = 0  # the timed steps below stay in this round
            training_step(hparams, batch, optimizer)  # untimed warm-up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                training_step(hparams, batch, optimizer)
                best = min(best, time.perf_counter() - start)
            steps[method] = best
    fake_quant = steps[None]
    amortized = steps["chip_in_the_loop"] + programming / reprogram_every
    print(
        f"Demo Conformer training step: batch {args.batch} x {args.frames} frames, "
        f"{args.threads} threads, best of {args.repeats}"
    )
    print(f"fake_quant step:            {fake_quant * 1e3:8.1f} ms   1.00x")
    for label, seconds in (
        ("chip in the loop (read)", steps["chip_in_the_loop"]),
        (f"chip in the loop (+ programming / {reprogram_every})", amortized),
        ("noise injection", steps["noise_injection"]),
    ):
        print(f"{label + ':':27} {seconds * 1e3:8.1f} ms   {seconds / fake_quant:.2f}x")
    print(f"programming the training chips: {programming:.2f} s per round")


if __name__ == "__main__":
    main()

"""Hardware-aware training methods of mapped layers (on top of ``fake_quant`` training).

A `HardwareMatmul` in ``fake_quant`` execution and training mode (``module.training``) with a
``training_method`` computes its output as follows; validation, test and every other mode are
unchanged (the method is inactive in eval mode).

- ``chip_in_the_loop``: the forward value is the analog read (DAC, crossbar with read noise,
  ADC; `crossbar.Crossbar.read`) of a training chip programmed from the weights; the gradient
  is fake_quant's (straight-through, `straight_through`: value of the chip, gradient of the
  fake-quantized product). Between reprogrammings the fake-quantized weights' change since
  programming is added digitally (x_q dW_q^T), so the value follows every update (a stale chip
  alone gives the optimizer no feedback for ``reprogram_every`` steps, and the demo model
  diverged that way). The driver (`brain.MemristorHook`) reprograms every training chip
  from the current weights every ``reprogram_every`` steps with the seeds of
  `training_chip_seed` and restarts each chip's read-noise stream at every step from
  `training_step_seed`, so every DDP rank and a resumed run read the same chips and noise.
- ``noise_injection``: the fake-quantized weight's value is replaced, once per forward, by a
  draw of the calibrated effective weights (`crossbar.weight_noise`: per integer level the
  measured mean and spread of programmed cell pairs plus the weight-referred read noise); the
  gradient is fake_quant's.

Seed streams: evaluation chips use integer global seeds (``hook.seed + k``), hashed with the
layer name into the layer's chip seed (`HardwareMatmul.chip_seed`). Training chips use text
global seeds ``"hardware_aware/<base>/<round>"``: their hash inputs never equal an evaluation
chip's (the repr of a text differs from that of every integer), so a training chip coincides
with an evaluation chip only through a 63-bit SHA-256 collision.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from speechbrain_memristor.util.seeding import stable_seed


class TrainingMethod(str, Enum):
    """How a mapped layer trains beyond plain QAT (module doc)."""

    CHIP_IN_THE_LOOP = "chip_in_the_loop"
    NOISE_INJECTION = "noise_injection"

    def __str__(self) -> str:
        return self.value


TRAINING_METHODS: tuple[str, ...] = tuple(method.value for method in TrainingMethod)


def check_training_method(method: object, field: str = "training_method") -> TrainingMethod | None:
    """``method`` as a `TrainingMethod` (None stays None: plain QAT), else a ValueError."""
    if method is None:
        return None
    try:
        return TrainingMethod(method)
    except ValueError:
        raise ValueError(
            f"{field}={method!r} is invalid; choose one of {', '.join(TRAINING_METHODS)} "
            "(or null for plain fake_quant training)."
        ) from None


def training_chip_seed(base: int, round_index: int) -> str:
    """Global seed of the training chips of reprogramming round ``round_index`` (a text, never
    an evaluation chip's integer seed; module doc)."""
    return f"hardware_aware/{base}/{round_index}"


def training_step_seed(base: int, step: int) -> int:
    """Seed of the read noise (chip in the loop) or injected noise of training ``step``."""
    return stable_seed("hardware_aware step", base, step)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value``; backward: the gradient goes to ``surrogate`` unchanged."""

    @staticmethod
    def forward(ctx, value: Tensor, surrogate: Tensor) -> Tensor:  # type: ignore[override]
        del ctx, surrogate
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        return None, grad_output


def straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """Exactly ``value`` in the forward pass, with the gradient of ``surrogate`` (same shape)."""
    if value.shape != surrogate.shape:
        raise ValueError(
            f"straight_through: value {tuple(value.shape)} and surrogate "
            f"{tuple(surrogate.shape)} differ in shape."
        )
    return _StraightThrough.apply(value.detach(), surrogate)

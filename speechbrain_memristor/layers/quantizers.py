"""Fake quantizers for quantization-aware training (QAT) with straight-through gradients.

Weights: per tensor, symmetric, reduced range: scale s_w = max|W| / Q_w with
Q_w = 2^(weight_bits-1) - 1, integers clamp(round(W / s_w), -Q_w, Q_w). The scale follows the
current weights (no state).

Inputs: quantized exactly like the DAC (`crossbar.periphery.DigitalToAnalogConverter`) with scale
s_a = max(|min|, |max|) / Q_a of an observed range (Q_a = 2^(dac_bits-1) - 1), onto the code
grid the chip uses (`HardwareConfig.dac_grid`): value = code * s_a * Q_a / M with the DAC's
codes in [-M, M]. On the symmetric grid (M = Q_a) that is code * s_a; on the authors'
SynaptogenML grid (M = 2^(dac_bits-1)) QAT sees the 2^dac_bits + 1 levels the chip applies,
over the same range +-s_a Q_a, rather than a grid the chip never uses. The observer
("minmax": running extremes; "moving_average": extremes averaged with ``observer_momentum``)
updates in training mode and, once, on the first batch it sees if it was never calibrated.
Its state lives in non-persistent buffers and travels via ``state()`` / ``load_state()``.

Layer outputs (``HardwareConfig.output_bits``, off by default): `RangeQuantizer`, symmetric
onto integers in [-(2^(b-1)-1), 2^(b-1)-1] with its own observer of the same kind; state as for
inputs. Attention operands (``attention_bits``): `fake_quantize_dynamic`, stateless.

Gradients: straight-through inside the clipping range, zero outside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.periphery import (
    DigitalToAnalogConverter,
    quantize_codes,
    quantize_symmetric,
)

# Smallest range treated as non-zero, so an all-zero tensor gets a finite scale.
MIN_RANGE = 1e-12


class _FakeQuantize(torch.autograd.Function):
    """quantize_codes(x, scale, qmax, steps_per_code) * scale * steps_per_code with a clipped
    straight-through gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, values: Tensor, scale: Tensor, qmax: int, steps_per_code: float
    ) -> Tensor:
        ctx.save_for_backward(values.abs() <= scale * (qmax * steps_per_code))
        quantized = quantize_codes(values, scale, qmax, steps_per_code).mul_(scale)
        return quantized if steps_per_code == 1.0 else quantized.mul_(steps_per_code)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None


def fake_quantize(values: Tensor, scale: Tensor, qmax: int, steps_per_code: float = 1.0) -> Tensor:
    """Values rounded to multiples of ``scale * steps_per_code`` within
    +-qmax*steps_per_code*scale; straight-through gradient. ``steps_per_code`` 1.0 (weights,
    the symmetric DAC) gives quantize_symmetric(values, scale, qmax) * scale."""
    return _FakeQuantize.apply(values, scale, qmax, steps_per_code)


def symmetric_scale(magnitude: Tensor, qmax: int) -> Tensor:
    """Scale (value per integer step) that maps ``magnitude`` onto ``qmax``."""
    return magnitude.clamp_min(MIN_RANGE) / qmax


class WeightQuantizer(torch.nn.Module):
    """Per-tensor symmetric reduced-range weight quantizer (stateless)."""

    def __init__(self, hardware: HardwareConfig):
        super().__init__()
        self.qmax = hardware.weight_qmax

    def scale(self, weight: Tensor) -> Tensor:
        """Scalar tensor: max|W| / Q_w (detached)."""
        return symmetric_scale(weight.detach().abs().amax(), self.qmax)

    def integers(self, weight: Tensor) -> Tensor:
        """Weight integers in [-Q_w, Q_w] (float tensor, same shape, detached)."""
        weight = weight.detach()
        return quantize_symmetric(weight, self.scale(weight), self.qmax)

    def forward(self, weight: Tensor) -> Tensor:
        """Fake-quantized weight with straight-through gradient."""
        return fake_quantize(weight, self.scale(weight), self.qmax)


class RangeQuantizer(torch.nn.Module):
    """Symmetric per-tensor quantizer with a min-max or moving-average range observer: scale
    max(|min|, |max|) / ``qmax``, integers in [-qmax, qmax] (2 qmax + 1 levels)."""

    def __init__(self, qmax: int, observer: str, momentum: float):
        super().__init__()
        self.qmax = qmax
        self.observer = observer
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(float("inf")), persistent=False)
        self.register_buffer("max_val", torch.tensor(float("-inf")), persistent=False)

    @property
    def calibrated(self) -> bool:
        """True once a range has been observed or loaded."""
        return bool(self.min_val <= self.max_val)

    @torch.no_grad()
    def observe(self, values: Tensor) -> None:
        """Update the observed range with the extremes of ``values``."""
        if values.numel() == 0:
            return
        low, high = torch.aminmax(values.detach().float())
        if not self.calibrated:
            self.min_val.copy_(low)
            self.max_val.copy_(high)
        elif self.observer == "minmax":
            torch.minimum(self.min_val, low, out=self.min_val)
            torch.maximum(self.max_val, high, out=self.max_val)
        else:
            self.min_val.lerp_(low, self.momentum)
            self.max_val.lerp_(high, self.momentum)

    def scale(self) -> Tensor:
        """Scalar tensor: max(|min|, |max|) / qmax (value per integer step)."""
        magnitude = torch.maximum(self.min_val.abs(), self.max_val.abs())
        return symmetric_scale(magnitude, self.qmax)

    def calibrated_scale(self, values: Tensor) -> Tensor:
        """The scale for ``values``, observing them first in training or if uncalibrated."""
        if self.training or not self.calibrated:
            self.observe(values)
        return self.scale()

    def forward(self, values: Tensor) -> Tensor:
        """Fake-quantized ``values`` with straight-through gradient; updates the observer first."""
        return fake_quantize(values, self.calibrated_scale(values).to(values.dtype), self.qmax)

    def state(self) -> dict[str, Tensor]:
        """Calibration state: observed ``min`` and ``max`` (inf/-inf when uncalibrated)."""
        return {"min": self.min_val.detach().clone(), "max": self.max_val.detach().clone()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore a state produced by ``state()``."""
        missing = {"min", "max"} - set(state)
        if missing:
            raise KeyError(f"Quantizer state lacks {sorted(missing)}; got keys {sorted(state)}.")
        with torch.no_grad():
            self.min_val.copy_(torch.as_tensor(state["min"]))
            self.max_val.copy_(torch.as_tensor(state["max"]))


class ActivationQuantizer(RangeQuantizer):
    """Input (DAC) quantizer onto the DAC's code grid, with a min-max or moving-average range
    observer; ``qmax`` is Q_a (the scale's integer range), ``dac`` the chip's converter."""

    def __init__(self, hardware: HardwareConfig):
        super().__init__(hardware.dac_qmax, hardware.observer, hardware.observer_momentum)
        self.dac = DigitalToAnalogConverter.from_config(hardware)

    def forward(self, values: Tensor) -> Tensor:
        """Fake-quantized ``values`` with straight-through gradient; updates the observer first."""
        scale = self.calibrated_scale(values).to(values.dtype)
        return fake_quantize(values, scale, self.dac.max_code, self.dac.steps_per_code)


def output_quantizer(hardware: HardwareConfig) -> RangeQuantizer | None:
    """The layer-output quantizer of ``hardware.output_bits`` (None when the option is off)."""
    if hardware.output_bits is None:
        return None
    qmax = 2 ** (hardware.output_bits - 1) - 1
    return RangeQuantizer(qmax, hardware.observer, hardware.observer_momentum)


def fake_quantize_dynamic(values: Tensor, bits: int) -> Tensor:
    """``values`` fake-quantized per tensor, symmetric, at their own range: scale max|values| /
    (2^(bits-1) - 1) (detached), straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    scale = symmetric_scale(values.detach().abs().amax(), qmax).to(values.dtype)
    return fake_quantize(values, scale, qmax)

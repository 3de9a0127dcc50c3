"""Crossbar periphery: the DAC (numbers to volts) and the ADC (amperes to numbers).

DAC: an input x with quantizer scale s (value per integer step) becomes the integer
q = clamp(round(x / s), -Q, Q), Q = 2^(dac_bits-1) - 1, applied as the voltage
q / Q * input_voltage (volts). Negative inputs are negative voltages.

ADC: a column current difference I (amperes) becomes the value I * current_scale, rounded to
the step 2^-p and clipped to +-2^(r-1) (p = adc_precision_bits, r = adc_range_bits). The ADC
returns integer codes (value / step); multiplying by ``step`` gives values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig


def quantize_symmetric(values: Tensor, scale: Tensor | float, qmax: int) -> Tensor:
    """Integers (as floats) clamp(round(values / scale), -qmax, qmax); round half to even."""
    return torch.div(values, scale).round_().clamp_(-qmax, qmax)


@dataclass(frozen=True)
class DigitalToAnalogConverter:
    """Symmetric DAC with integers in [-qmax, qmax] mapped linearly onto +-input_voltage (V)."""

    qmax: int
    input_voltage: float

    @classmethod
    def from_config(cls, hardware: HardwareConfig) -> DigitalToAnalogConverter:
        return cls(qmax=hardware.dac_qmax, input_voltage=hardware.input_voltage)

    @property
    def volts_per_step(self) -> float:
        return self.input_voltage / self.qmax

    def integers(self, values: Tensor, scale: Tensor | float) -> Tensor:
        """DAC integer codes of ``values`` (same shape, float dtype) for the input ``scale``."""
        return quantize_symmetric(values, scale, self.qmax)

    def level_voltages(self) -> Tensor:
        """All output voltages, float32 [2*qmax + 1]: index q + qmax holds q * volts_per_step."""
        codes = torch.arange(-self.qmax, self.qmax + 1, dtype=torch.float32)
        return codes * torch.tensor(self.volts_per_step, dtype=torch.float32)


@dataclass(frozen=True)
class AnalogToDigitalConverter:
    """ADC with step 2^-precision_bits and clipping to +-2^(range_bits-1); None = ideal."""

    precision_bits: int | None
    range_bits: int | None

    @classmethod
    def from_config(cls, hardware: HardwareConfig) -> AnalogToDigitalConverter:
        return cls(hardware.adc_precision_bits, hardware.adc_range_bits)

    @property
    def step(self) -> float:
        """Value of one code (1.0 for the ideal ADC, whose codes are the values themselves)."""
        return 1.0 if self.precision_bits is None else 2.0**-self.precision_bits

    @property
    def max_code(self) -> float:
        """Largest code magnitude, 2^(range_bits-1) / step (inf for the ideal ADC)."""
        if self.range_bits is None:
            return float("inf")
        return 2.0 ** (self.range_bits - 1) / self.step

    def quantize_steps_(self, steps: Tensor) -> Tensor:
        """In place: codes of values expressed in ADC steps (round half to even, then clip)."""
        if self.precision_bits is not None:
            steps.round_().clamp_(-self.max_code, self.max_code)
        return steps

    def convert_(self, values: Tensor, gain: float) -> Tensor:
        """In place: codes of ``values * gain`` (gain: value per unit of ``values``)."""
        return self.quantize_steps_(values.mul_(gain / self.step))

"""Crossbar periphery: the DAC (numbers to volts) and the ADC (amperes to numbers).

DAC: an input x with quantizer scale s (value per quantizer step, s = max|x| / Q_a,
Q_a = 2^(dac_bits-1) - 1) becomes the code c = clamp(round(x / s / (Q_a / M)), -M, M), applied
as the voltage c / M * input_voltage (volts); M is the grid's largest code
(`HardwareConfig.dac_grid`): Q_a on the symmetric grid (c = clamp(round(x / s), -Q_a, Q_a),
bit for bit, since Q_a / M = 1), 2^(dac_bits-1) on the authors' SynaptogenML grid (257 levels
for 8 bits, Q_a / M = 127/128 exactly). Both map the input range +-s Q_a onto
+-input_voltage, so a read in units of sum_i (c_i / M) w_int is rescaled by
weight_scale * s * Q_a on either grid. Negative inputs are negative voltages.

Bit-serial inputs (``dac_mode="bit_serial"``): the code c is applied as B = bit length of M
pulses, bit b (least significant first) of |c| as sign(c) * input_voltage or 0 V: a 1-bit DAC
per row (`DigitalToAnalogConverter.pulse_converter`, codes -1, 0, 1). Each pulse is one read
with its own ADC conversions, and the converted reads are added digitally with weights
2^b / M, so the result is in the units of the parallel read (sum_i (c_i / M) w).

ADC: a column current difference I (amperes) becomes the value I * current_scale, rounded to
the step 2^-p and clipped to +-2^(r-1) (p = adc_precision_bits, r = adc_range_bits). The ADC
returns integer codes (value / step); multiplying by ``step`` gives values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig


def quantize_symmetric(values: Tensor, scale: Tensor | float, qmax: int) -> Tensor:
    """Integers (as floats) clamp(round(values / scale), -qmax, qmax); round half to even."""
    return torch.div(values, scale).round_().clamp_(-qmax, qmax)


def quantize_codes(
    values: Tensor, scale: Tensor | float, max_code: int, steps_per_code: float = 1.0
) -> Tensor:
    """Codes (as floats) clamp(round(values / scale / steps_per_code), -max_code, max_code);
    round half to even. ``steps_per_code`` 1.0 is `quantize_symmetric` (no extra pass). The
    divisor is a tensor on the values' device: CUDA turns a division by a Python scalar into a
    multiplication by its rounded reciprocal, which would move near-tie codes off the CPU's."""
    steps = torch.div(values, scale)
    if steps_per_code != 1.0:
        steps.div_(torch.full((), steps_per_code, dtype=steps.dtype, device=steps.device))
    return steps.round_().clamp_(-max_code, max_code)


@dataclass(frozen=True)
class DigitalToAnalogConverter:
    """DAC with codes in [-max_code, max_code] mapped linearly onto +-input_voltage (V).

    ``input_qmax`` is the input quantizer's integer range Q_a (scale = max|x| / Q_a); one code
    is Q_a / max_code quantizer steps. Build it with `from_config`, which picks the grid of
    ``hardware.dac_grid`` once (max_code Q_a or 2^(dac_bits-1)); every use (the read, its
    level tables, `ideal_read`, the input fake quantizer) goes through these fields.
    """

    max_code: int
    input_qmax: int
    input_voltage: float
    bit_serial: bool = False

    @classmethod
    def from_config(cls, hardware: HardwareConfig) -> DigitalToAnalogConverter:
        return cls(
            max_code=hardware.dac_max_code,
            input_qmax=hardware.dac_qmax,
            input_voltage=hardware.input_voltage,
            bit_serial=hardware.dac_mode == "bit_serial",
        )

    @property
    def pulse_bits(self) -> int:
        """Pulses per input in bit-serial mode: the bit length B of ``max_code``."""
        return self.max_code.bit_length()

    @property
    def read_pulses(self) -> int:
        """Reads per input vector: 1 (parallel) or `pulse_bits` (bit-serial)."""
        return self.pulse_bits if self.bit_serial else 1

    def pulse_converter(self) -> DigitalToAnalogConverter:
        """The DAC that drives the rows: itself (parallel) or the 1-bit pulse DAC (codes -1, 0,
        1 at +-input_voltage) of bit-serial mode."""
        if not self.bit_serial:
            return self
        return DigitalToAnalogConverter(1, 1, self.input_voltage)

    def bit_pulses(self, codes: Tensor) -> Tensor:
        """[B, *codes.shape] float pulses sign(c) * bit b of |c| (b = 0 first) of DAC codes."""
        magnitude = codes.abs().to(torch.int64)
        shifts = torch.arange(self.pulse_bits, device=codes.device).view(-1, *[1] * codes.ndim)
        return ((magnitude.unsqueeze(0) >> shifts) & 1).to(codes.dtype) * codes.sign()

    def read(
        self,
        inputs: Tensor,
        scale: Tensor | float,
        read: Callable[[Tensor, Tensor | float], Tensor],
    ) -> Tensor:
        """``read(row inputs, scale)`` [N, out] of inputs [N, in] in this DAC's mode: one read
        (parallel), or one read per input bit, added with weights 2^b / M (bit-serial; the
        pulses are read as integer codes with scale 1 by `pulse_converter`)."""
        if not self.bit_serial:
            return read(inputs, scale)
        pulses = self.bit_pulses(self.integers(inputs, scale))
        values = read(pulses.flatten(0, 1), 1.0).view(self.pulse_bits, *inputs.shape[:-1], -1)
        weights = 2.0 ** torch.arange(self.pulse_bits, device=values.device) / self.max_code
        return torch.einsum("b...o,b->...o", values, weights.to(values.dtype))

    @property
    def steps_per_code(self) -> float:
        """Quantizer steps per code, Q_a / max_code: 1.0 (symmetric), 127/128 (8-bit authors'),
        exact in binary floating point."""
        return self.input_qmax / self.max_code

    @property
    def levels(self) -> int:
        """Number of codes, 2 * max_code + 1."""
        return 2 * self.max_code + 1

    @property
    def level_offset(self) -> int:
        """Level index of code 0: level = code + max_code indexes `level_voltages`."""
        return self.max_code

    @property
    def volts_per_code(self) -> float:
        return self.input_voltage / self.max_code

    def integers(self, values: Tensor, scale: Tensor | float) -> Tensor:
        """DAC codes of ``values`` (same shape, float dtype) for the input quantizer ``scale``."""
        return quantize_codes(values, scale, self.max_code, self.steps_per_code)

    def level_codes(self, device: torch.device | str | None = None) -> Tensor:
        """All codes in level order, float32 [levels]: -max_code .. max_code."""
        return torch.arange(-self.max_code, self.max_code + 1, dtype=torch.float32, device=device)

    def level_voltages(self) -> Tensor:
        """All output voltages, float32 [levels]: level code + max_code holds
        code * volts_per_code."""
        return self.level_codes() * torch.tensor(self.volts_per_code, dtype=torch.float32)


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

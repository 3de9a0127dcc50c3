"""Read noise of a resistive cell: Johnson (thermal) plus shot noise, as Gaussian variance.

For a cell carrying I amperes at U volts, read over a bandwidth BW (Hz) at temperature T (K):

    variance = 4 kB T BW |I / U| + 2 q |I| BW = a(U) |I|,   a(U) = 4 kB T BW / |U| + 2 q BW

with U = 0 replaced by 1e-12 V (the Johnson term needs a conductance). The authors'
SynaptogenML uses Euler's number in place of the electron charge and a bandwidth of 1e-8 Hz;
`read_noise_model` turns ``HardwareConfig.read_noise`` into one `ReadNoiseModel` (or None for
"off"), so the read path never branches on the mode's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig

BOLTZMANN = 1.380649e-23  # J/K
ELECTRON_CHARGE = 1.602176634e-19  # C
EULER_NUMBER = math.e  # what SynaptogenML uses as "charge"
ZERO_VOLTAGE_REPLACEMENT = 1e-12  # V, stands in for U = 0 in the Johnson term
# SynaptogenML's noise constants: bandwidth (Hz) and Euler's number in place of the charge.
SYNAPTOGENML_BANDWIDTH = 1e-8
SYNAPTOGENML_CHARGE = EULER_NUMBER


def _check_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value!r} is invalid; use a finite number >= 0.")


def shot_and_johnson_coefficient(
    voltage: Tensor | float,
    bandwidth: float,
    temperature: float,
    charge: float = ELECTRON_CHARGE,
) -> Tensor:
    """a(U) = 4 kB T BW / |U| + 2 q BW: read-noise variance per ampere of |I| (A^2 / A).

    ``voltage`` in volts (any shape); the result has its shape, device and floating dtype.
    """
    _check_non_negative("bandwidth", bandwidth)
    _check_non_negative("temperature", temperature)
    _check_non_negative("charge", charge)
    voltage = torch.as_tensor(voltage)
    if not voltage.is_floating_point():
        voltage = voltage.float()
    magnitude = voltage.abs().masked_fill_(voltage == 0, ZERO_VOLTAGE_REPLACEMENT)
    johnson = 4.0 * BOLTZMANN * temperature * bandwidth
    return (johnson / magnitude).add_(2.0 * charge * bandwidth)


def read_noise_variance(
    current: Tensor,
    voltage: Tensor | float,
    bandwidth: float,
    temperature: float,
    charge: float = ELECTRON_CHARGE,
) -> Tensor:
    """Variance (A^2) of one read of cells carrying ``current`` amperes at ``voltage`` volts.

    ``voltage`` broadcasts against ``current``; the result has the broadcast shape.
    """
    coefficient = shot_and_johnson_coefficient(voltage, bandwidth, temperature, charge)
    return current.abs() * coefficient.to(current.device)


@dataclass(frozen=True)
class ReadNoiseModel:
    """Johnson plus shot read noise with fixed constants: bandwidth (Hz), temperature (K) and
    the charge (C) used in the shot term."""

    bandwidth: float
    temperature: float
    charge: float = ELECTRON_CHARGE

    def coefficient(self, voltage: Tensor | float) -> Tensor:
        """a(U) in A^2 per ampere of |I| (see `shot_and_johnson_coefficient`)."""
        return shot_and_johnson_coefficient(voltage, self.bandwidth, self.temperature, self.charge)


def read_noise_model(hardware: HardwareConfig) -> ReadNoiseModel | None:
    """The noise of ``hardware.read_noise``: None for "off"; "physical" with the configured
    bandwidth and temperature; "synaptogenml" with the authors' bandwidth and charge."""
    if hardware.read_noise == "off":
        return None
    if hardware.read_noise == "synaptogenml":
        return ReadNoiseModel(SYNAPTOGENML_BANDWIDTH, hardware.temperature, SYNAPTOGENML_CHARGE)
    return ReadNoiseModel(hardware.bandwidth, hardware.temperature)

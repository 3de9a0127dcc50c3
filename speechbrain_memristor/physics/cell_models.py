"""Cell models: how a cell of state r conducts, and what programming leaves in it.

A cell of state r in [0, 1] at U volts conducts I(U, r) = (1 - r) L(U) + r H(U) amperes, with
L and H the low- and high-resistance bound curves. Two models, chosen once from
``HardwareConfig.cell_model`` by `cell_model`:

- `SynaptogenCells`: the Synaptogen ReRAM model (`cells.CellArray`): L = P_LLRS and
  H = P_HHRS (nonlinear I-V polynomials), states from measured device-to-device and
  cycle-to-cycle statistics.
- `IdealCells`: ideal switches: linear I-V L(U) = G_LLRS U, H = 0, a 1 bit at r = 0 and a
  0 bit at r = 1 (not conducting).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.physics.cells import CellArray
from speechbrain_memristor.physics.params import DeviceParams, load_device_params

# Amplitude (V) of the optional random initial cycles: U(-2, 2) V pulses.
INITIAL_CYCLE_VOLTAGE = 2.0
# Fresh cells sampled (fixed seed) for the median LRS/HRS resistances of `bit_conductance`.
CALIBRATION_CELLS = 1 << 16
CALIBRATION_SEED = 0


class CellModel:
    """Bound curves and programming of one kind of cell (see the module doc)."""

    def __init__(self, params: DeviceParams):
        self.params = params

    def low(self, voltage: Tensor) -> Tensor:
        """L(U) in amperes, same shape as ``voltage`` (volts)."""
        raise NotImplementedError

    def high(self, voltage: Tensor) -> Tensor:
        """H(U) in amperes, same shape as ``voltage`` (volts)."""
        raise NotImplementedError

    def program(self, bits: Tensor, hardware: HardwareConfig, generator: torch.Generator) -> Tensor:
        """States r (float32 [n]) of fresh cells programmed to ``bits`` (bool [n], CPU)."""
        raise NotImplementedError

    def bit_conductance(self) -> float:
        """Conductance difference (S) of a typical bit-1 and bit-0 cell (for calibration)."""
        raise NotImplementedError


class SynaptogenCells(CellModel):
    """Synaptogen ReRAM cells: nonlinear bound curves, statistical programming."""

    def low(self, voltage: Tensor) -> Tensor:
        return self.params.i_llrs(voltage)

    def high(self, voltage: Tensor) -> Tensor:
        return self.params.i_hhrs(voltage)

    def program(self, bits: Tensor, hardware: HardwareConfig, generator: torch.Generator) -> Tensor:
        """Create the cells, apply ``initial_cycles`` random pulses U(-2, 2) V, reset at
        ``reset_voltage``, then apply ``set_voltage`` to the cells holding 1."""
        count = bits.shape[0]
        cells = CellArray(
            count, params=self.params, var_order=hardware.device_var_order, generator=generator
        )
        for _ in range(hardware.initial_cycles):
            pulses = torch.rand(count, generator=generator) * 2 - 1
            cells.apply_voltage(pulses * INITIAL_CYCLE_VOLTAGE)
        cells.apply_voltage(torch.full((count,), hardware.reset_voltage))
        cells.apply_voltage(torch.where(bits, hardware.set_voltage, 0.0))
        return cells.r

    def bit_conductance(self) -> float:
        """1/R_LRS - 1/R_HRS of the median resistances of CALIBRATION_CELLS fresh cells."""
        return _median_bit_conductance(self.params.path, self.params.var_order)


class IdealCells(CellModel):
    """Ideal switches: L(U) = G_LLRS U, H = 0; a 1 bit at r = 0, a 0 bit at r = 1."""

    def low(self, voltage: Tensor) -> Tensor:
        return voltage * float(self.params.g_llrs)

    def high(self, voltage: Tensor) -> Tensor:
        return torch.zeros_like(voltage)

    def program(self, bits: Tensor, hardware: HardwareConfig, generator: torch.Generator) -> Tensor:
        del hardware, generator  # deterministic
        return torch.where(bits, 0.0, 1.0)

    def bit_conductance(self) -> float:
        return float(self.params.g_llrs)


CELL_MODEL_CLASSES: dict[str, type[CellModel]] = {
    "synaptogen": SynaptogenCells,
    "ideal": IdealCells,
}


def device_params(hardware: HardwareConfig) -> DeviceParams:
    """The (cached) device parameters named by ``hardware`` (synaptogen's file for None)."""
    return load_device_params(hardware.device_params, hardware.device_var_order)


def cell_model(hardware: HardwareConfig) -> CellModel:
    """The cell model ``hardware.cell_model`` names, on the configured device parameters."""
    return CELL_MODEL_CLASSES[hardware.cell_model](device_params(hardware))


@functools.lru_cache(maxsize=8)
def _median_bit_conductance(params_path: str, var_order: int) -> float:
    """Memoized: sampling CALIBRATION_CELLS cells takes a fraction of a second."""
    params = load_device_params(params_path, var_order)
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    cells = CellArray(CALIBRATION_CELLS, params=params, var_order=var_order, generator=generator)
    return float(1.0 / cells.lrs.double().median() - 1.0 / cells.hrs.double().median())

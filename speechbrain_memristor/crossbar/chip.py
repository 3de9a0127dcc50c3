"""`Crossbar`: the programmed chip of one weight matrix, its analog read and its inventory.

The chip keeps only what reads need (`read` module doc): per plane and tile the difference
and sum matrices of the positive and negative cells' states, DAC-level lookup tables of the
mean and noise coefficients, and the cells above the smallest r* for the exact sparse noise
correction. `InventoryCounts` is the one place where cell, tile, array and conversion counts
of a weight matrix on a given hardware are derived (`ChipInventory` for dense matrices,
`grouped.GroupedInventory` for group-wise kernels; the chip, the conversion log and the
hardware report all use them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.layout import TileLayout, from_tile_major, to_tile_major
from speechbrain_memristor.crossbar.periphery import (
    AnalogToDigitalConverter,
    DigitalToAnalogConverter,
)
from speechbrain_memristor.crossbar.programming import program_chip
from speechbrain_memristor.crossbar.read import ReadNoise, ReadPath, tiled_read
from speechbrain_memristor.crossbar.wires import WireCircuit
from speechbrain_memristor.physics.calibration import calibrated_current_scale
from speechbrain_memristor.physics.cell_models import ProgrammingStats, cell_model
from speechbrain_memristor.physics.noise import ZERO_VOLTAGE_REPLACEMENT, read_noise_model
from speechbrain_memristor.util.seeding import stable_seed


class InventoryCounts:
    """The counts every inventory derives from its placement, per input vector (one place).

    An inventory (a dataclass) supplies the matrix's ``out_features``, ``in_features``,
    ``bit_planes``, tile size ``tile_rows`` x ``tile_cols`` and read ``pulses`` per input
    vector (1: parallel DAC; the input bits B: bit-serial), and per bit plane and pulse:
    ``pairs_per_plane`` (differential tile pairs), ``rows_driven`` (DAC conversions, one per
    driven row of each tile pair) and ``columns_converted`` (ADC conversions). A bit plane's
    cells are 2 x weights (unused and padded tile cells do not exist); each is read once per
    pulse.
    """

    out_features: int
    in_features: int
    bit_planes: int
    tile_rows: int
    tile_cols: int
    pulses: int
    pairs_per_plane: int
    rows_driven: int
    columns_converted: int

    @property
    def weights(self) -> int:
        return self.out_features * self.in_features

    @property
    def cells(self) -> int:
        """Physical cells: planes x 2 x weights (padding excluded)."""
        return self.bit_planes * 2 * self.weights

    @property
    def array_pairs(self) -> int:
        """Differential tile pairs over all planes."""
        return self.bit_planes * self.pairs_per_plane

    @property
    def arrays(self) -> int:
        """Physical tiles: two per differential pair."""
        return 2 * self.array_pairs

    @property
    def capacity(self) -> int:
        """Cells the arrays could hold (padding included)."""
        return self.arrays * self.tile_rows * self.tile_cols

    @property
    def utilization(self) -> float:
        return self.cells / self.capacity

    @property
    def dac_conversions(self) -> int:
        return self.pulses * self.bit_planes * self.rows_driven

    @property
    def adc_conversions(self) -> int:
        return self.pulses * self.bit_planes * self.columns_converted

    @property
    def cell_reads(self) -> int:
        return self.pulses * self.cells


@dataclass(frozen=True)
class ChipInventory(InventoryCounts):
    """Hardware of one [out, in] weight matrix (`InventoryCounts`).

    A bit plane is a differential pair of ``tile_rows`` x ``tile_cols`` arrays per tile (rows
    = inputs, the last tile zero-padded): tiles_in x tiles_out pairs. Per plane and pulse, DAC
    conversions: one per driven row of each column tile (tiles_out x in); ADC conversions:
    one per column and input tile (tiles_in x out).
    """

    out_features: int
    in_features: int
    bit_planes: int
    tiles_in: int
    tiles_out: int
    tile_rows: int
    tile_cols: int
    pulses: int = 1

    @classmethod
    def of(cls, out_features: int, in_features: int, hardware: HardwareConfig) -> ChipInventory:
        """The inventory of an [out_features, in_features] matrix on ``hardware``."""
        layout = TileLayout.from_config(in_features, out_features, hardware)
        return cls(
            out_features,
            in_features,
            hardware.bit_planes,
            layout.tiles_in,
            layout.tiles_out,
            layout.tile_rows,
            layout.tile_cols,
            DigitalToAnalogConverter.from_config(hardware).read_pulses,
        )

    @property
    def pairs_per_plane(self) -> int:
        return self.tiles_in * self.tiles_out

    @property
    def rows_driven(self) -> int:
        return self.tiles_out * self.in_features

    @property
    def columns_converted(self) -> int:
        return self.tiles_in * self.out_features


class Crossbar(torch.nn.Module):
    """A programmed chip for one [out, in] weight matrix and its analog read.

    Built by `Crossbar.program` (from weights) or directly from states (for experiments):
    ``states_pos`` / ``states_neg`` [planes, in, out] are the r values of the positive and
    negative cells. Reads take inputs and the input quantizer's scale and return values in
    units of ``sum_i code_i / M * w_int_io`` (code_i the DAC codes, M = ``dac.max_code`` of
    ``hardware.dac_grid``), which the layer rescales by weight_scale * input_scale * Q_a on
    either grid. The DAC-level tables hold one entry per code of the grid (index code + M)
    plus a last one for padded rows. All tensors are non-persistent buffers (they
    follow ``.to(device)``, but are not in any state_dict); the read-noise generator is seeded
    from ``read_seed`` on each device.
    """

    def __init__(
        self,
        states_pos: Tensor,
        states_neg: Tensor,
        weight_scale: float,
        hardware: HardwareConfig,
        read_seed: int,
    ):
        super().__init__()
        planes, in_features, out_features = states_pos.shape
        if states_neg.shape != states_pos.shape:
            raise ValueError(
                f"states_neg shape {tuple(states_neg.shape)} differs from states_pos "
                f"{tuple(states_pos.shape)}."
            )
        self.hardware = hardware
        self.layout = TileLayout.from_config(in_features, out_features, hardware)
        self.planes = planes
        self.weight_scale = float(weight_scale)
        self.read_seed = read_seed
        self.dac = DigitalToAnalogConverter.from_config(hardware)
        self.row_dac = self.dac.pulse_converter()  # what drives the rows (1-bit if serial)
        self.adc = AnalogToDigitalConverter.from_config(hardware)
        self.current_scale = calibrated_current_scale(hardware)
        self.noise_model = read_noise_model(hardware)
        self._generator: torch.Generator | None = None
        # What programming took (`Crossbar.program`); None for a chip built from states.
        self.programming: ProgrammingStats | None = None

        states_pos, states_neg = states_pos.float().cpu(), states_neg.float().cpu()
        cells = cell_model(hardware)
        steps_per_ampere = self.current_scale / self.adc.step
        volts = self.row_dac.level_voltages()
        mean_lut = (cells.high(volts) - cells.low(volts)) * steps_per_ampere
        self._buffer("mean_lut", F.pad(mean_lut, (0, 1)))
        self._buffer("difference", to_tile_major(states_pos - states_neg, self.layout))
        self._buffer("total", to_tile_major(states_pos + states_neg, self.layout))

        noise_volts = torch.where(volts == 0, ZERO_VOLTAGE_REPLACEMENT, volts)
        low, high = cells.low(noise_volts), cells.high(noise_volts)
        if self.noise_model is None:
            coefficient = torch.zeros_like(noise_volts)
        else:
            coefficient = self.noise_model.coefficient(noise_volts) * noise_volts.sign()
        coefficient = coefficient * steps_per_ampere**2
        self._buffer("alpha_lut", F.pad(coefficient * low, (0, 1)))
        self._buffer("beta_lut", F.pad(coefficient * (high - low), (0, 1)))
        self.rare_threshold = float((low / (low - high)).min())
        self._store_rare_cells(states_pos, states_neg)
        self.input_levels: Tensor | None = None  # `count_inputs`
        self.input_vectors = 0
        self.counting_inputs = False
        self.wires: WireCircuit | None = None
        if hardware.wire_resistance > 0:
            self.wires = WireCircuit(
                to_tile_major(states_pos, self.layout),
                to_tile_major(states_neg, self.layout),
                self.layout,
                hardware,
                cells,
                volts,
                steps_per_ampere,
                self.noise_model,
            )

    def _buffer(self, name: str, tensor: Tensor) -> None:
        self.register_buffer(name, tensor.contiguous(), persistent=False)

    def _store_rare_cells(self, states_pos: Tensor, states_neg: Tensor) -> None:
        """Index the cells above the smallest r* (their |I| is not linear in r)."""
        paired = torch.stack([states_pos, states_neg])  # [2, planes, in, out]
        rare = (paired > self.rare_threshold).nonzero()
        _, plane, row, column = rare.unbind(1)
        order = torch.argsort(column, stable=True)
        tile = row // self.layout.tile_rows
        self._buffer("rare_rows", row[order])
        self._buffer("rare_batches", (tile * self.planes + plane)[order])
        self._buffer("rare_columns", column[order])
        self._buffer("rare_states", paired[tuple(rare.t())][order])

    @classmethod
    def program(
        cls,
        weight_int: Tensor,
        weight_scale: float,
        hardware: HardwareConfig,
        chip_seed: int,
        device: torch.device | str | None = None,
    ) -> Crossbar:
        """Program integer weights [out, in] (in [-Q_w, Q_w]) onto fresh cells
        (`programming.program_chip`; its statistics in ``programming``), the device model
        running on ``device`` (None, the default: the CPU, so that a chip is the same whatever
        device reads it; a CUDA device is faster but draws other random numbers). The chip is
        a pure function of (weights, hardware, chip_seed, programming device type)."""
        device_type = torch.device("cpu" if device is None else device).type
        with (
            torch.autocast("cpu", enabled=False),  # float32 states under a bf16 recipe too
            torch.autocast(device_type, enabled=False),
        ):
            states_pos, states_neg, stats = program_chip(weight_int, hardware, chip_seed, device)
        chip = cls(states_pos, states_neg, weight_scale, hardware, stable_seed(chip_seed, "read"))
        chip.programming = stats
        return chip

    def states(self) -> tuple[Tensor, Tensor]:
        """(r_pos, r_neg), each [planes, in, out], recovered from the stored sum and difference
        matrices (exact up to float32 rounding of r+ +- r-)."""
        r_pos = (self.total + self.difference) / 2
        r_neg = (self.total - self.difference) / 2
        return from_tile_major(r_pos, self.layout), from_tile_major(r_neg, self.layout)

    def inventory(self) -> ChipInventory:
        """Cells, arrays and conversions of this chip (`ChipInventory`)."""
        return ChipInventory.of(self.layout.out_features, self.layout.in_features, self.hardware)

    def state_sum(self) -> float:
        """Sum of the states r over every cell (padded rows hold none), in float64."""
        return float(self.total.double().sum())

    def row_state_sums(self) -> Tensor:
        """Sum of the states r of each input row's cells (both sides, every plane and
        column), float64 [in_features]."""
        layout = self.layout
        per_row = self.total.double().view(layout.tiles_in, self.planes, layout.tile_rows, -1)
        return per_row.sum((1, 3)).reshape(-1)[: layout.in_features]

    def count_inputs(self) -> None:
        """Start counting (from zero) the DAC levels that `read` applies to each input row:
        ``input_levels`` [in_features, dac levels] (float64 counts, level = code +
        ``dac.level_offset``) over ``input_vectors`` reads, until ``counting_inputs`` is set
        False (`studies.report.measuring_inputs`)."""
        self.input_levels = torch.zeros(
            self.layout.in_features, self.dac.levels, dtype=torch.float64
        )
        self.input_vectors = 0
        self.counting_inputs = True

    def _count_levels(self, inputs: Tensor, input_scale: Tensor | float) -> None:
        levels = self.dac.integers(inputs.detach().float(), input_scale).long()
        rows = torch.arange(self.layout.in_features, device=levels.device) * self.dac.levels
        index = (levels + self.dac.level_offset + rows).flatten()
        counts = torch.bincount(index, minlength=self.input_levels.numel())
        self.input_levels += counts.cpu().view_as(self.input_levels)
        self.input_vectors += inputs.shape[0]

    @property
    def rare_cell_count(self) -> int:
        """Cells above the smallest r* (handled by the exact sparse correction)."""
        return int(self.rare_rows.numel())

    def reseed_read_noise(self, read_seed: int) -> None:
        """Restart the read-noise stream from ``read_seed`` (chip in the loop: one stream per
        training step, so a resumed or DDP run draws the same noise)."""
        self.read_seed = read_seed
        self._generator = None

    def _noise(self) -> ReadNoise | None:
        if self.noise_model is None:
            return None
        device = self.difference.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.read_seed)
        return ReadNoise(
            self.alpha_lut,
            self.beta_lut,
            self.total,
            self.rare_rows,
            self.rare_batches,
            self.rare_columns,
            self.rare_states,
            self._generator,
        )

    def read(self, inputs: Tensor, input_scale: Tensor | float = 1.0) -> Tensor:
        """Values [N, out] for inputs [N, in] (DAC codes `DigitalToAnalogConverter.integers`
        of inputs / input_scale), in units of sum_i code_i / M * w_int_io (M =
        ``dac.max_code``; on the symmetric grid an ``input_scale`` of 1.0 passes integer codes
        through). Always float32, also under autocast."""
        if inputs.dim() != 2 or inputs.shape[1] != self.layout.in_features:
            raise ValueError(
                f"inputs must be [N, {self.layout.in_features}], got {tuple(inputs.shape)}."
            )
        if self.counting_inputs:
            self._count_levels(inputs, input_scale)
        path = ReadPath(
            self.layout, self.row_dac, self.adc, self.mean_lut, self.difference, self.wires
        )
        device = self.difference.device
        noise = self._noise()
        # The read is float32 even under fp16/bf16 autocast (integer ADC codes add exactly).
        with torch.autocast(device.type, enabled=False):
            return self.dac.read(
                inputs.to(device, torch.float32),
                input_scale,
                lambda rows, scale: tiled_read(rows, scale, path, noise),
            )

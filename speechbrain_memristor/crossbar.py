"""Bit-sliced differential crossbar tiles: programming and the closed-form analog read.

Mapping. A weight integer w in [-Q_w, Q_w] for input row i and output column o is split into
its sign and the b-1 bits of |w| (bit plane k has weight 2^k). Per plane there are two cells for
(i, o): the positive cell holds bit k of |w| if w > 0, the negative cell if w < 0; a cell holding
1 is SET to low resistance, a cell holding 0 stays in high resistance. Rows are cut into tiles
of ``tile_rows`` (the last tile zero-padded: padded cells do not exist, so they neither conduct
nor add noise); columns into tiles of ``tile_cols`` (which only changes the inventory, since
every column has its own ADC per plane and input tile).

Read. A cell of state r at voltage u conducts I(u, r) = (1 - r) L(u) + r H(u) (amperes, L and H
the device's low and high resistance bound curves). One input tile t and plane k give the
column current difference

    m_o = sum_i D(u_i) (r+_io - r-_io),   D = H - L,

one matrix product with the precomputed difference matrix. The read noise of each cell is an
independent Gaussian of variance a(u) |I(u, r)| (a(u) = 4 kB T BW / |u| + 2 q BW, u = 0 read
as 1e-12 V); below r*(u) = L / (L - H), |I| = sign(u) (L + r D), so the column variance is

    v_o = 2 sum_i a s L (u_i) + sum_i a s D (u_i) (r+_io + r-_io)   (s = sign(u))

a second matrix product with the precomputed sum matrix, plus an exact sparse correction
2 max(0, -a s (L + r D)) for every cell whose state exceeds the smallest r* over the DAC's
voltages. The column value is (m_o + sqrt(v_o) N(0, 1)) * current_scale, converted by the ADC
per tile, plane and column; planes are combined by shift-and-add and tiles summed digitally.
The work is batched over tiles and planes and blocked over input rows and output columns, so
its temporaries stay within a fixed size and never grow with batch x inputs x outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.converters import (
    AnalogToDigitalConverter,
    DigitalToAnalogConverter,
    calibrated_current_scale,
    device_params,
)
from speechbrain_memristor.device.cells import CellArray
from speechbrain_memristor.device.noise import (
    EULER_NUMBER,
    ZERO_VOLTAGE_REPLACEMENT,
    shot_and_johnson_coefficient,
)
from speechbrain_memristor.device.params import DeviceParams
from speechbrain_memristor.seeding import stable_seed

# Cells created and switched at once while programming (about 80-220 bytes each in the device
# model, see CellArray.bytes_per_cell).
# Part of the chip's definition: each chunk has its own generator seeded by (chip seed, index).
PROGRAMMING_CHUNK_CELLS = 1 << 19
# Amplitude (V) of the optional random initial cycles: U(-2, 2) V pulses.
INITIAL_CYCLE_VOLTAGE = 2.0
# Reads run in blocks of at most READ_BLOCK_ROWS input rows and as many output columns as keep
# one [tiles_in * planes, rows, columns] temporary within READ_BLOCK_ELEMENTS (2 MiB in float32;
# two such buffers with read noise). Chosen with bench/bench_linear.py on 2 cores: 256 rows and
# 2^19 elements were fastest (2^18 up to 1.5x slower, 2^20 1.3x slower) with the least memory.
READ_BLOCK_ROWS = 256
READ_BLOCK_ELEMENTS = 1 << 19
# Column blocks narrower than the layer are cut to a multiple of 64: products of such widths ran
# about 8 % faster on 2 AVX-512 cores than odd widths (341 columns for 384 -> 1536 layers).
READ_BLOCK_COLUMN_MULTIPLE = 64
# SynaptogenML's noise constants: bandwidth (Hz) and Euler's number in place of the charge.
SYNAPTOGENML_BANDWIDTH = 1e-8
SYNAPTOGENML_CHARGE = EULER_NUMBER


@dataclass(frozen=True)
class TileLayout:
    """How an [out, in] weight matrix is cut into crossbar tiles (rows = inputs)."""

    in_features: int
    out_features: int
    tile_rows: int
    tile_cols: int

    @classmethod
    def from_config(
        cls, in_features: int, out_features: int, hardware: HardwareConfig
    ) -> TileLayout:
        """Tile sizes from ``hardware`` (0 = untiled: one tile spans the whole dimension)."""
        return cls(
            in_features,
            out_features,
            hardware.tile_rows or in_features,
            hardware.tile_cols or out_features,
        )

    @property
    def tiles_in(self) -> int:
        return math.ceil(self.in_features / self.tile_rows)

    @property
    def tiles_out(self) -> int:
        return math.ceil(self.out_features / self.tile_cols)

    @property
    def padded_in(self) -> int:
        return self.tiles_in * self.tile_rows


def magnitude_bit_planes(magnitudes: Tensor, planes: int) -> Tensor:
    """Bool [planes, *shape]: bit k of each non-negative integer in ``magnitudes``."""
    magnitudes = magnitudes.to(torch.int64)
    if bool((magnitudes < 0).any()) or bool((magnitudes >= 2**planes).any()):
        raise ValueError(
            f"magnitudes must be integers in [0, {2**planes - 1}] for {planes} planes."
        )
    shifts = torch.arange(planes, dtype=torch.int64, device=magnitudes.device)
    shifts = shifts.view(-1, *([1] * magnitudes.dim()))
    return ((magnitudes.unsqueeze(0) >> shifts) & 1).bool()


def signed_bit_planes(weight_int: Tensor, planes: int) -> Tensor:
    """Float32 [planes, in, out]: sign(w) * bit k of |w| for integer weights [out, in]."""
    weight_t = weight_int.t().to(torch.int64)
    return magnitude_bit_planes(weight_t.abs(), planes).float() * weight_t.sign().float()


def to_tile_major(matrix: Tensor, layout: TileLayout) -> Tensor:
    """[planes, in, out] -> [tiles_in * planes, tile_rows, out] (batch index tile * planes +
    plane), padded rows zero."""
    planes = matrix.shape[0]
    padded = F.pad(matrix, (0, 0, 0, layout.padded_in - layout.in_features))
    tiled = padded.view(planes, layout.tiles_in, layout.tile_rows, layout.out_features)
    return tiled.transpose(0, 1).reshape(
        layout.tiles_in * planes, layout.tile_rows, layout.out_features
    )


def from_tile_major(matrix: Tensor, layout: TileLayout) -> Tensor:
    """Inverse of `to_tile_major`: [tiles_in * planes, tile_rows, out] -> [planes, in, out]."""
    planes = matrix.shape[0] // layout.tiles_in
    tiled = matrix.reshape(layout.tiles_in, planes, layout.tile_rows, layout.out_features)
    merged = tiled.transpose(0, 1).reshape(planes, layout.padded_in, layout.out_features)
    return merged[:, : layout.in_features]


@dataclass
class _ReadNoise:
    """Per-read noise terms in ADC steps squared (see module doc); LUTs indexed by DAC level.

    Rare cells are sorted by output column so that each column block is a contiguous slice."""

    alpha_lut: Tensor  # [levels + 1] a s L per cell, last entry 0 (absent row)
    beta_lut: Tensor  # [levels + 1] a s D per unit of r, last entry 0
    total: Tensor  # [tiles_in * planes, tile_rows, out]: r+ + r-
    rare_rows: Tensor  # [n] input row of each cell above the smallest r*
    rare_batches: Tensor  # [n] its tile * planes + plane
    rare_columns: Tensor  # [n] its output column, sorted
    rare_states: Tensor  # [n] its state r
    generator: torch.Generator


@dataclass(frozen=True)
class ReadPath:
    """What one read needs besides the inputs: layout, converters and the mean matrix.

    ``mean_lut[level]`` (level = DAC code + Q_a; ADC steps per unit of ``difference``)
    multiplies ``difference`` [tiles_in * planes, tile_rows, out]; its last entry (0) marks
    padded rows.
    """

    layout: TileLayout
    dac: DigitalToAnalogConverter
    adc: AnalogToDigitalConverter
    mean_lut: Tensor
    difference: Tensor

    @property
    def planes(self) -> int:
        return self.difference.shape[0] // self.layout.tiles_in


def tiled_read(
    inputs: Tensor, input_scale: Tensor, path: ReadPath, noise: _ReadNoise | None = None
) -> Tensor:
    """Shift-and-added ADC values [N, out] for inputs [N, in] (DAC with ``input_scale``).

    Matrix products are batched over (input tile, plane) pairs, so that even a layer of one
    or three input tiles keeps every core busy. Each block's ADC steps (which first hold the
    scaled Gaussian samples) and variance live in two buffers allocated once per call (at most
    READ_BLOCK_ELEMENTS floats each) and are filled in place."""
    layout, planes = path.layout, path.planes
    tiles, out_features = layout.tiles_in, layout.out_features
    batches = tiles * planes
    rows = inputs.shape[0]
    block_rows = max(1, min(rows, READ_BLOCK_ROWS))
    block_cols = max(1, min(out_features, READ_BLOCK_ELEMENTS // (batches * block_rows)))
    if READ_BLOCK_COLUMN_MULTIPLE < block_cols < out_features:
        block_cols -= block_cols % READ_BLOCK_COLUMN_MULTIPLE
    absent = path.mean_lut.shape[0] - 1
    column_starts = range(0, out_features, block_cols)
    buffer_size = batches * block_rows * block_cols
    steps_buffer = inputs.new_empty(buffer_size)
    if noise is not None:  # rare cells of each column block: a slice of the sorted list
        edges = torch.tensor([*column_starts, out_features], device=noise.rare_columns.device)
        rare_edges = torch.searchsorted(noise.rare_columns, edges).tolist()
        variance_buffer = inputs.new_empty(buffer_size)
    # Shift-and-add weight 2^k of each batch (tile, plane k): integer ADC codes sum exactly.
    shift_weights = (2.0 ** torch.arange(planes, device=inputs.device)).repeat(tiles)
    result = inputs.new_empty(rows, out_features)
    for row in range(0, rows, block_rows):
        codes = path.dac.integers(inputs[row : row + block_rows], input_scale)
        levels = codes.add_(path.dac.qmax).to(torch.int32)
        count = levels.shape[0]
        padding = layout.padded_in - layout.in_features
        padded = F.pad(levels, (0, padding), value=absent) if padding else levels
        # Level indices tile-major and contiguous: [tiles_in * count * tile_rows].
        tile_levels = padded.view(count, tiles, layout.tile_rows).transpose(0, 1).reshape(-1)
        mean_coefficients = _per_plane(
            path.mean_lut.index_select(0, tile_levels), tiles, planes, layout.tile_rows
        )
        if noise is not None:
            beta, offset = _noise_coefficients(tile_levels, noise, tiles, planes)
        for index, column in enumerate(column_starts):
            block = slice(column, min(column + block_cols, out_features))
            shape = (batches, count, block.stop - block.start)
            size = math.prod(shape)
            steps = steps_buffer[:size].view(shape)
            difference = path.difference[:, :, block]
            if noise is None:
                torch.bmm(mean_coefficients, difference, out=steps)
            else:  # steps = noise sample * standard deviation, then + the mean product
                variance = variance_buffer[:size].view(shape)
                torch.baddbmm(offset, beta, noise.total[:, :, block], out=variance)
                rare = slice(rare_edges[index], rare_edges[index + 1])
                _correct_rare_cells(variance, levels, block, rare, noise)
                steps.normal_(generator=noise.generator).mul_(variance.clamp_min_(0.0).sqrt_())
                steps.baddbmm_(mean_coefficients, difference)
            path.adc.quantize_steps_(steps)
            shifted = torch.mv(steps.view(batches, -1).t(), shift_weights)
            result[row : row + count, block] = shifted.view(count, -1).mul_(path.adc.step)
    return result


def _per_plane(per_cell: Tensor, tiles: int, planes: int, tile_rows: int) -> Tensor:
    """[tiles_in * count * tile_rows] coefficients -> [tiles_in * planes, count, tile_rows],
    each tile's block repeated for its planes (batch index tile * planes + plane)."""
    per_tile = per_cell.view(tiles, 1, -1, tile_rows)
    return per_tile.expand(tiles, planes, -1, tile_rows).reshape(tiles * planes, -1, tile_rows)


def _noise_coefficients(
    tile_levels: Tensor, noise: _ReadNoise, tiles: int, planes: int
) -> tuple[Tensor, Tensor]:
    """Per (input tile, plane) and row: a s D per cell [tiles_in * planes, count, tile_rows]
    and the column offset 2 sum_rows a s L [tiles_in * planes, count, 1] of the closed-form
    variance."""
    tile_rows = noise.total.shape[1]
    beta = noise.beta_lut.index_select(0, tile_levels)
    alpha = noise.alpha_lut.index_select(0, tile_levels).view(tiles, -1, tile_rows)
    offset = 2.0 * alpha.sum(-1, keepdim=True)  # [tiles_in, count, 1]
    return _per_plane(beta, tiles, planes, tile_rows), _per_plane(offset, tiles, planes, 1)


def _correct_rare_cells(
    variance: Tensor, levels: Tensor, block: slice, rare: slice, noise: _ReadNoise
) -> None:
    """In place: add 2 max(0, -a s (L + r D)) for the rare cells of the column ``block``
    (``rare`` slice of the sorted list), making their contribution a |I| exactly."""
    if rare.stop == rare.start:
        return
    rare_levels = levels[:, noise.rare_rows[rare]]  # [count, n]
    linear = noise.alpha_lut[rare_levels] + noise.rare_states[rare] * noise.beta_lut[rare_levels]
    correction = torch.relu(linear.neg_()).mul_(2.0)
    batch = torch.arange(levels.shape[0], device=levels.device).unsqueeze(1)
    index = (
        noise.rare_batches[rare].expand_as(rare_levels),
        batch.expand_as(rare_levels),
        (noise.rare_columns[rare] - block.start).expand_as(rare_levels),
    )
    variance.index_put_(index, correction, accumulate=True)


def ideal_read(
    inputs: Tensor,
    input_scale: Tensor,
    weight_int: Tensor,
    hardware: HardwareConfig,
) -> Tensor:
    """Shift-and-added ADC values [N, out] of an ideal chip for inputs [N, in].

    Each tile and plane gives sum_i (code_i / Q_a) * sign(w) bit_k(|w|), the value a calibrated
    chip of ideal cells produces, then the ADC as in the analog read. Emulates the ADC in QAT.
    """
    device = inputs.device
    layout = TileLayout.from_config(weight_int.shape[1], weight_int.shape[0], hardware)
    dac = DigitalToAnalogConverter.from_config(hardware)
    adc = AnalogToDigitalConverter.from_config(hardware)
    planes = hardware.bit_planes
    difference = to_tile_major(signed_bit_planes(weight_int, planes), layout).to(device)
    levels = torch.arange(-dac.qmax, dac.qmax + 1, dtype=torch.float32, device=device)
    mean_lut = F.pad(levels / (dac.qmax * adc.step), (0, 1))
    path = ReadPath(layout, dac, adc, mean_lut, difference)
    return tiled_read(inputs, input_scale, path)


class CellCurves:
    """The bound curves L(u) (low resistance) and H(u) (high resistance) in amperes."""

    def __init__(self, params: DeviceParams, cell_model: str):
        self.params = params
        self.ideal = cell_model == "ideal"

    def low(self, voltage: Tensor) -> Tensor:
        if self.ideal:
            return voltage * float(self.params.g_llrs)
        return self.params.i_llrs(voltage)

    def high(self, voltage: Tensor) -> Tensor:
        if self.ideal:
            return torch.zeros_like(voltage)
        return self.params.i_hhrs(voltage)


def program_states(bits: Tensor, hardware: HardwareConfig, chip_seed: int) -> Tensor:
    """Programmed states r (float32 [n]) of cells holding ``bits`` (bool [n]), on the CPU.

    Synaptogen cells, per chunk of PROGRAMMING_CHUNK_CELLS: create the cells, apply
    ``initial_cycles`` random pulses U(-2, 2) V, reset at ``reset_voltage``, then apply
    ``set_voltage`` to the cells holding 1. Ideal cells: r = 0 for 1 and r = 1 for 0.
    """
    if hardware.cell_model == "ideal":
        return torch.where(bits, 0.0, 1.0)
    params = device_params(hardware)
    states = torch.empty(bits.shape[0], dtype=torch.float32)
    for index, start in enumerate(range(0, bits.shape[0], PROGRAMMING_CHUNK_CELLS)):
        chunk_bits = bits[start : start + PROGRAMMING_CHUNK_CELLS]
        count = chunk_bits.shape[0]
        generator = torch.Generator().manual_seed(stable_seed(chip_seed, index))
        cells = CellArray(
            count, params=params, var_order=hardware.device_var_order, generator=generator
        )
        for _ in range(hardware.initial_cycles):
            pulses = torch.rand(count, generator=generator) * 2 - 1
            cells.apply_voltage(pulses * INITIAL_CYCLE_VOLTAGE)
        cells.apply_voltage(torch.full((count,), hardware.reset_voltage))
        cells.apply_voltage(torch.where(chunk_bits, hardware.set_voltage, 0.0))
        states[start : start + count] = cells.r
    return states


class Crossbar(torch.nn.Module):
    """A programmed chip for one [out, in] weight matrix and its analog read.

    Built by `Crossbar.program` (from weights) or directly from states (for experiments):
    ``states_pos`` / ``states_neg`` [planes, in, out] are the r values of the positive and
    negative cells. Reads take inputs and the input quantizer's scale and return values in
    units of ``sum_i code_i / Q_a * w_int_io`` (code_i the DAC integers), which the layer
    rescales by weight_scale * input_scale * Q_a. All tensors are non-persistent buffers (they
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
        self.adc = AnalogToDigitalConverter.from_config(hardware)
        self.current_scale = calibrated_current_scale(hardware)
        self._generator: torch.Generator | None = None

        states_pos, states_neg = states_pos.float().cpu(), states_neg.float().cpu()
        curves = CellCurves(device_params(hardware), hardware.cell_model)
        steps_per_ampere = self.current_scale / self.adc.step
        volts = self.dac.level_voltages()
        mean_lut = (curves.high(volts) - curves.low(volts)) * steps_per_ampere
        self._buffer("mean_lut", F.pad(mean_lut, (0, 1)))
        self._buffer("difference", to_tile_major(states_pos - states_neg, self.layout))
        self._buffer("total", to_tile_major(states_pos + states_neg, self.layout))

        noise_volts = torch.where(volts == 0, ZERO_VOLTAGE_REPLACEMENT, volts)
        low, high = curves.low(noise_volts), curves.high(noise_volts)
        coefficient = self._noise_coefficient(noise_volts) * noise_volts.sign()
        coefficient = coefficient * steps_per_ampere**2
        self._buffer("alpha_lut", F.pad(coefficient * low, (0, 1)))
        self._buffer("beta_lut", F.pad(coefficient * (high - low), (0, 1)))
        self.rare_threshold = float((low / (low - high)).min())
        self._store_rare_cells(states_pos, states_neg)

    def _buffer(self, name: str, tensor: Tensor) -> None:
        self.register_buffer(name, tensor.contiguous(), persistent=False)

    def _noise_coefficient(self, volts: Tensor) -> Tensor:
        """a(u) in A^2 per ampere of |I| for the configured noise mode (0 when off)."""
        hardware = self.hardware
        if hardware.read_noise == "physical":
            return shot_and_johnson_coefficient(volts, hardware.bandwidth, hardware.temperature)
        if hardware.read_noise == "synaptogenml":
            return shot_and_johnson_coefficient(
                volts, SYNAPTOGENML_BANDWIDTH, hardware.temperature, charge=SYNAPTOGENML_CHARGE
            )
        return torch.zeros_like(volts)

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
        cls, weight_int: Tensor, weight_scale: float, hardware: HardwareConfig, chip_seed: int
    ) -> Crossbar:
        """Program integer weights [out, in] (in [-Q_w, Q_w]) onto fresh cells, on the CPU.

        Cells are laid out [planes, (positive, negative), in, out] and programmed in chunks
        (`program_states`). The chip is a pure function of (weights, hardware, chip_seed).
        """
        qmax = hardware.weight_qmax
        weight_t = weight_int.detach().cpu().t().to(torch.int64)
        if bool((weight_t.abs() > qmax).any()):
            raise ValueError(
                f"weight integers must lie in [-{qmax}, {qmax}] for "
                f"weight_bits={hardware.weight_bits}."
            )
        bits = magnitude_bit_planes(weight_t.abs(), hardware.bit_planes)
        paired = torch.stack([bits & (weight_t > 0), bits & (weight_t < 0)], dim=1)
        states = program_states(paired.reshape(-1), hardware, chip_seed).view(paired.shape)
        return cls(
            states[:, 0], states[:, 1], weight_scale, hardware, stable_seed(chip_seed, "read")
        )

    def states(self) -> tuple[Tensor, Tensor]:
        """(r_pos, r_neg), each [planes, in, out], recovered from the stored sum and difference
        matrices (exact up to float32 rounding of r+ +- r-)."""
        r_pos = (self.total + self.difference) / 2
        r_neg = (self.total - self.difference) / 2
        return from_tile_major(r_pos, self.layout), from_tile_major(r_neg, self.layout)

    @property
    def cell_count(self) -> int:
        """Physical cells: planes x 2 x in x out (padding excluded)."""
        return self.planes * 2 * self.layout.in_features * self.layout.out_features

    @property
    def array_count(self) -> int:
        """Differential tile pairs: planes x tiles_in x tiles_out."""
        return self.planes * self.layout.tiles_in * self.layout.tiles_out

    @property
    def conversions_per_read(self) -> int:
        """ADC conversions per input vector: planes x tiles_in x out."""
        return self.planes * self.layout.tiles_in * self.layout.out_features

    @property
    def rare_cell_count(self) -> int:
        """Cells above the smallest r* (handled by the exact sparse correction)."""
        return int(self.rare_rows.numel())

    def _noise(self) -> _ReadNoise | None:
        if self.hardware.read_noise == "off":
            return None
        device = self.difference.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.read_seed)
        return _ReadNoise(
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
        """Values [N, out] for inputs [N, in]: DAC codes clamp(round(inputs / input_scale)),
        in units of sum_i code_i / Q_a * w_int_io (1.0 passes integer codes through)."""
        if inputs.dim() != 2 or inputs.shape[1] != self.layout.in_features:
            raise ValueError(
                f"inputs must be [N, {self.layout.in_features}], got {tuple(inputs.shape)}."
            )
        path = ReadPath(self.layout, self.dac, self.adc, self.mean_lut, self.difference)
        device = self.difference.device
        return tiled_read(inputs.to(device, torch.float32), input_scale, path, self._noise())

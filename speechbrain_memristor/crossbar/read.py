"""The closed-form analog read of programmed tiles, blocked so that memory stays bounded.

A cell of state r at voltage u conducts I(u, r) = (1 - r) L(u) + r H(u) (amperes, L and H the
cell model's bound curves). One input tile t and plane k give the column current difference

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
from speechbrain_memristor.crossbar.layout import (
    TileLayout,
    repeat_per_plane,
    signed_bit_planes,
    to_tile_major,
)
from speechbrain_memristor.crossbar.periphery import (
    AnalogToDigitalConverter,
    DigitalToAnalogConverter,
)
from speechbrain_memristor.crossbar.wires import WireCircuit

# Reads run in blocks of at most READ_BLOCK_ROWS input rows and as many output columns as keep
# one [tiles_in * planes, rows, columns] temporary within READ_BLOCK_ELEMENTS (2 MiB in float32;
# two such buffers with read noise). Chosen with bench/bench_linear.py on 2 cores: 256 rows and
# 2^19 elements were fastest (2^18 up to 1.5x slower, 2^20 1.3x slower) with the least memory.
READ_BLOCK_ROWS = 256
READ_BLOCK_ELEMENTS = 1 << 19
# Column blocks narrower than the layer are cut to a multiple of 64: products of such widths ran
# about 8 % faster on 2 AVX-512 cores than odd widths (341 columns for 384 -> 1536 layers).
READ_BLOCK_COLUMN_MULTIPLE = 64


@dataclass
class ReadNoise:
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

    ``mean_lut[level]`` (level = DAC code + ``dac.level_offset``; ADC steps per unit of
    ``difference``)
    multiplies ``difference`` [tiles_in * planes, tile_rows, out]; its last entry (0) marks
    padded rows. ``wires``: the tiles' wire resistance (`wires.WireCircuit`; None: ideal).
    """

    layout: TileLayout
    dac: DigitalToAnalogConverter
    adc: AnalogToDigitalConverter
    mean_lut: Tensor
    difference: Tensor
    wires: WireCircuit | None = None

    @property
    def planes(self) -> int:
        return self.difference.shape[0] // self.layout.tiles_in


def tiled_read(
    inputs: Tensor, input_scale: Tensor, path: ReadPath, noise: ReadNoise | None = None
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
    exact = path.wires is not None and path.wires.exact
    if exact:  # the nodal solve takes whole output tiles (and blocks its own memory)
        block_cols = min(layout.tile_cols, out_features)
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
        levels = codes.add_(path.dac.level_offset).to(torch.int32)
        count = levels.shape[0]
        padding = layout.padded_in - layout.in_features
        padded = F.pad(levels, (0, padding), value=absent) if padding else levels
        # Level indices tile-major and contiguous: [tiles_in * count * tile_rows].
        tile_levels = padded.view(count, tiles, layout.tile_rows).transpose(0, 1).reshape(-1)
        mean_per_cell = path.mean_lut.index_select(0, tile_levels)
        wire_terms = None
        if path.wires is not None and not exact:  # first-order IR drop (its linear term here)
            wire_terms = path.wires.first_order_terms(tile_levels, tiles, planes)
            mean_per_cell = mean_per_cell.add_(wire_terms.linear)
        mean_coefficients = repeat_per_plane(
            mean_per_cell.view(tiles, -1, layout.tile_rows), planes
        )
        if noise is not None:
            beta, offset = _noise_coefficients(tile_levels, noise, tiles, planes)
        for index, column in enumerate(column_starts):
            block = slice(column, min(column + block_cols, out_features))
            shape = (batches, count, block.stop - block.start)
            size = math.prod(shape)
            steps = steps_buffer[:size].view(shape)
            difference = path.difference[:, :, block]
            if exact:
                _exact_steps_(steps, path, noise, tile_levels, block)
            elif noise is None:
                torch.bmm(mean_coefficients, difference, out=steps)
            else:  # steps = noise sample * standard deviation, then + the mean product
                variance = variance_buffer[:size].view(shape)
                torch.baddbmm(offset, beta, noise.total[:, :, block], out=variance)
                rare = slice(rare_edges[index], rare_edges[index + 1])
                _correct_rare_cells(variance, levels, block, rare, noise)
                steps.normal_(generator=noise.generator).mul_(variance.clamp_min_(0.0).sqrt_())
                steps.baddbmm_(mean_coefficients, difference)
            if wire_terms is not None:  # first-order IR drop: row and bilinear terms
                path.wires.add_first_order_(steps, wire_terms, block)
            path.adc.quantize_steps_(steps)
            shifted = torch.mv(steps.view(batches, -1).t(), shift_weights)
            result[row : row + count, block] = shifted.view(count, -1).mul_(path.adc.step)
    return result


def _exact_steps_(
    steps: Tensor, path: ReadPath, noise: ReadNoise | None, tile_levels: Tensor, block: slice
) -> None:
    """In place: the column ``block``'s steps by the exact nodal solve (`wires.WireCircuit`),
    plus noise of its exact variance drawn like the closed-form read's."""
    tiles = path.layout.tiles_in
    mean, variance = path.wires.exact_read(tile_levels, tiles, path.planes, block)
    if noise is None:
        steps.copy_(mean)
        return
    steps.normal_(generator=noise.generator).mul_(variance.clamp_min_(0.0).sqrt_())
    steps.add_(mean)


def _noise_coefficients(
    tile_levels: Tensor, noise: ReadNoise, tiles: int, planes: int
) -> tuple[Tensor, Tensor]:
    """Per (input tile, plane) and row: a s D per cell [tiles_in * planes, count, tile_rows]
    and the column offset 2 sum_rows a s L [tiles_in * planes, count, 1] of the closed-form
    variance."""
    tile_rows = noise.total.shape[1]
    beta = noise.beta_lut.index_select(0, tile_levels).view(tiles, -1, tile_rows)
    alpha = noise.alpha_lut.index_select(0, tile_levels).view(tiles, -1, tile_rows)
    offset = 2.0 * alpha.sum(-1, keepdim=True)  # [tiles_in, count, 1]
    return repeat_per_plane(beta, planes), repeat_per_plane(offset, planes)


def _correct_rare_cells(
    variance: Tensor, levels: Tensor, block: slice, rare: slice, noise: ReadNoise
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

    Each tile and plane gives sum_i (code_i / M) * sign(w) bit_k(|w|) (M the DAC grid's largest
    code, ``dac.max_code``), the value a calibrated chip of ideal cells produces, then the ADC
    as in the analog read (bit by bit in bit-serial mode). Emulates the ADC in QAT.
    """
    device = inputs.device
    layout = TileLayout.from_config(weight_int.shape[1], weight_int.shape[0], hardware)
    dac = DigitalToAnalogConverter.from_config(hardware)
    rows = dac.pulse_converter()
    adc = AnalogToDigitalConverter.from_config(hardware)
    planes = hardware.bit_planes
    difference = to_tile_major(signed_bit_planes(weight_int, planes), layout).to(device)
    mean_lut = F.pad(rows.level_codes(device) / (rows.max_code * adc.step), (0, 1))
    path = ReadPath(layout, rows, adc, mean_lut, difference)
    return dac.read(inputs, input_scale, lambda x, scale: tiled_read(x, scale, path))

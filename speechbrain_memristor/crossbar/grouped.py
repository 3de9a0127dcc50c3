"""Grouped (and depthwise) convolutions on crossbars, group by group.

A convolution with G groups holds G independent matrices [n, K] (n = out_channels / G
columns, K = in_channels / G x taps rows). Each is placed on its own (`GroupPacking`): its K
rows are cut into chunks of min(K, tile_rows) rows and its n columns into tiles of
``tile_cols``; when a whole group fits one tile (K <= tile_rows, n <= tile_cols), a tile holds
min(tile_rows // K, tile_cols // n) groups along its diagonal, each on its own rows and its own
columns (groups never share a row, which would mix their inputs, or a column, which would mix
their outputs). Cells of a tile that no group uses do not exist (as the padding of dense
layers: they neither conduct nor add noise), so cells, reads and work grow with the weights
(G x n x K), not with channels squared as a block-diagonal [C_out, C_in x taps] matrix would.

Since a column only sums its own group's rows, every tile gives the partial sums of one
group's row chunk: the read of a packed chip is the read of G small chips [n, K] with tiles of
min(K, tile_rows) rows, batched over groups (`GroupedCrossbar.read`): one product per (group,
row chunk) with every plane's columns side by side, read noise with the exact closed-form
variance and rare-cell correction of the dense read (`crossbar.read`), the ADC per (group,
chunk, plane, column), planes shift-and-added and chunks summed digitally.

Programming: the G matrices are programmed as one [n, G x K] matrix (group g on rows
g K .. (g + 1) K - 1), so a chip is a pure function of (weights, hardware, seed) with one
Synaptogen cell per (plane, sign, weight); ``initial_cycle_mode="per_array"`` shares a pulse
voltage over ``tile_rows`` consecutive rows of that stacked matrix, not exactly over the
packed tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.chip import ChipInventory, Crossbar, InventoryCounts
from speechbrain_memristor.crossbar.layout import magnitude_bit_planes
from speechbrain_memristor.crossbar.periphery import DigitalToAnalogConverter
from speechbrain_memristor.crossbar.programming import program_chip
from speechbrain_memristor.util.seeding import stable_seed

# Rows of a read block: one [groups x chunks, rows, planes x n] temporary stays within this.
GROUPED_READ_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class GroupPacking:
    """How G group matrices [out_per_group, in_per_group] lie on tiles (module doc)."""

    groups: int
    out_per_group: int
    in_per_group: int
    tile_rows: int
    tile_cols: int

    @classmethod
    def from_config(
        cls, groups: int, out_features: int, in_per_group: int, hardware: HardwareConfig
    ) -> GroupPacking:
        """The packing of a grouped kernel [out_features, in_per_group] (0 tile size: one
        tile spans a group's whole dimension)."""
        if groups < 1 or out_features % groups:
            raise ValueError(f"out_features={out_features} is not a multiple of groups={groups}.")
        n = out_features // groups
        return cls(
            groups, n, in_per_group, hardware.tile_rows or in_per_group, hardware.tile_cols or n
        )

    @property
    def chunk_rows(self) -> int:
        """Rows of one group's chunk (a group's rows per tile)."""
        return min(self.in_per_group, self.tile_rows)

    @property
    def tiles_in(self) -> int:
        """Row chunks per group."""
        return math.ceil(self.in_per_group / self.chunk_rows)

    @property
    def tiles_out(self) -> int:
        """Column tiles per group."""
        return math.ceil(self.out_per_group / self.tile_cols)

    @property
    def groups_per_tile(self) -> int:
        if self.tiles_in == 1 and self.tiles_out == 1:
            return min(self.tile_rows // self.in_per_group, self.tile_cols // self.out_per_group)
        return 1

    @property
    def tiles(self) -> int:
        """Tiles per bit plane and bitline side."""
        packs = math.ceil(self.groups / self.groups_per_tile)
        return packs * self.tiles_in * self.tiles_out


@dataclass(frozen=True)
class GroupedInventory(InventoryCounts):
    """The inventory (`InventoryCounts`) of a group-wise packed kernel [out_features,
    in_features] (``in_features``: rows per group K): ``packing.tiles`` tile pairs per plane;
    per plane and pulse, DAC conversions: one per driven row of each column tile (groups x K x
    tiles_out); ADC conversions: one per column and row chunk (out x tiles_in)."""

    out_features: int
    in_features: int
    bit_planes: int
    packing: GroupPacking
    pulses: int = 1

    @classmethod
    def of(
        cls, groups: int, out_features: int, in_per_group: int, hardware: HardwareConfig
    ) -> GroupedInventory:
        packing = GroupPacking.from_config(groups, out_features, in_per_group, hardware)
        pulses = DigitalToAnalogConverter.from_config(hardware).read_pulses
        return cls(out_features, in_per_group, hardware.bit_planes, packing, pulses)

    @property
    def tile_rows(self) -> int:
        return self.packing.tile_rows

    @property
    def tile_cols(self) -> int:
        return self.packing.tile_cols

    @property
    def pairs_per_plane(self) -> int:
        return self.packing.tiles

    @property
    def rows_driven(self) -> int:
        return self.packing.groups * self.in_features * self.packing.tiles_out

    @property
    def columns_converted(self) -> int:
        return self.out_features * self.packing.tiles_in


def matrix_inventory(
    out_features: int, in_features: int, hardware: HardwareConfig, groups: int = 1
) -> ChipInventory | GroupedInventory:
    """The inventory of a kernel [out_features, in_features] (per group when ``groups`` > 1)."""
    if groups == 1:
        return ChipInventory.of(out_features, in_features, hardware)
    return GroupedInventory.of(groups, out_features, in_features, hardware)


def stack_groups(matrix: Tensor, groups: int) -> Tensor:
    """[G n, K] -> [n, G K]: group g's matrix on rows g K .. (g + 1) K - 1 of the stack."""
    out_features, in_per_group = matrix.shape
    blocks = matrix.reshape(groups, out_features // groups, in_per_group)
    return blocks.permute(1, 0, 2).reshape(out_features // groups, groups * in_per_group)


class GroupedCrossbar(torch.nn.Module):
    """The group-wise chip of a grouped kernel and its read (module doc).

    Built by `program` or from states ``states_pos`` / ``states_neg`` [planes, G, K, n] (r of
    the positive and negative cell of each weight). Reads take patches [N, G K] (group-major,
    as im2col orders channels) and return [N, G n] in the units of `Crossbar.read`. The
    states, lookup tables and rare cells live in ``chip``, a `Crossbar` of the groups stacked
    row chunk by row chunk ([planes, G x tiles_in x chunk_rows, n], rows past a group's K
    holding no cell), which is never read as a whole.
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
        planes, groups, in_per_group, out_per_group = states_pos.shape
        self.hardware = hardware
        self.packing = GroupPacking.from_config(
            groups, groups * out_per_group, in_per_group, hardware
        )
        self.planes = planes
        padding = self.packing.tiles_in * self.packing.chunk_rows - in_per_group
        stacked = [
            F.pad(states.float(), (0, 0, 0, padding)).reshape(planes, -1, out_per_group)
            for states in (states_pos, states_neg)
        ]
        if hardware.wire_resistance > 0:
            raise ValueError(
                f"HardwareConfig.wire_resistance={hardware.wire_resistance} is not supported for "
                "grouped convolutions mapped group-wise; set it to 0 for them (layer_hardware "
                "{'<conv pattern>': {wire_resistance: 0}}) or keep them digital (exclude)."
            )
        chunked = hardware.replace(tile_rows=self.packing.chunk_rows, tile_cols=0)
        self.chip = Crossbar(*stacked, weight_scale, chunked, read_seed)
        self.weight_scale = self.chip.weight_scale
        self.programming = None
        chunks, rows = groups * self.packing.tiles_in, self.packing.chunk_rows
        # [chunks, rows, planes x n]: every plane's columns side by side, one product per chunk.
        for name in ("difference", "total"):
            tiled = getattr(self.chip, name).view(chunks, planes, rows, out_per_group)
            columns = tiled.permute(0, 2, 1, 3).reshape(chunks, rows, planes * out_per_group)
            self.register_buffer(f"{name}_columns", columns.contiguous(), persistent=False)

    @classmethod
    def program(
        cls,
        weight_int: Tensor,
        weight_scale: float,
        hardware: HardwareConfig,
        chip_seed: int,
        groups: int,
    ) -> GroupedCrossbar:
        """Program integer weights [G n, K] group-wise (module doc); a pure function of
        (weights, hardware, chip_seed)."""
        out_features, in_per_group = weight_int.shape
        n = out_features // groups
        programmed = program_chip(stack_groups(weight_int, groups), hardware, chip_seed)
        states = [
            s.reshape(s.shape[0], groups, in_per_group, n)
            for s in (programmed.states_pos, programmed.states_neg)
        ]
        chip = cls(*states, weight_scale, hardware, stable_seed(chip_seed, "read"))
        chip.programming = programmed.stats
        return chip

    def inventory(self) -> GroupedInventory:
        packing = self.packing
        return GroupedInventory.of(
            packing.groups,
            packing.groups * packing.out_per_group,
            packing.in_per_group,
            self.hardware,
        )

    def states(self) -> tuple[Tensor, Tensor]:
        """(r_pos, r_neg), each [planes, G, K, n]."""
        packing = self.packing
        shape = (self.planes, packing.groups, -1, packing.out_per_group)
        return tuple(s.reshape(shape)[:, :, : packing.in_per_group] for s in self.chip.states())

    def state_sum(self) -> float:
        return self.chip.state_sum()

    @property
    def rare_cell_count(self) -> int:
        return self.chip.rare_cell_count

    def read(self, inputs: Tensor, input_scale: Tensor | float = 1.0) -> Tensor:
        """Values [N, G n] for patches [N, G K] (module doc; units of `Crossbar.read`; in
        ``dac_mode="bit_serial"`` one read per input bit, as the dense chip)."""
        groups, in_per_group = self.packing.groups, self.packing.in_per_group
        if inputs.dim() != 2 or inputs.shape[1] != groups * in_per_group:
            raise ValueError(
                f"inputs must be [N, {groups * in_per_group}], got {tuple(inputs.shape)}."
            )
        inputs = inputs.to(self.difference_columns.device, torch.float32)
        return self.chip.dac.read(inputs, input_scale, self._read_rows)

    def _read_rows(self, inputs: Tensor, input_scale: Tensor | float) -> Tensor:
        """One read of patches [N, G K] through the row DAC (`Crossbar.row_dac`)."""
        packing, chip = self.packing, self.chip
        groups, in_per_group = packing.groups, packing.in_per_group
        device = self.difference_columns.device
        chunks, rows = self.difference_columns.shape[:2]
        columns = self.difference_columns.shape[2]
        noise = chip._noise()
        padding = packing.tiles_in * rows - in_per_group
        absent = chip.mean_lut.shape[0] - 1
        shift = 2.0 ** torch.arange(self.planes, device=device)
        count_max = max(1, GROUPED_READ_BLOCK_ELEMENTS // (chunks * max(rows, columns)))
        result = inputs.new_empty(inputs.shape[0], groups * packing.out_per_group)
        for start in range(0, inputs.shape[0], count_max):
            codes = chip.row_dac.integers(inputs[start : start + count_max], input_scale)
            levels = codes.add_(chip.row_dac.level_offset).to(torch.int32)
            count = levels.shape[0]
            levels = levels.view(count, groups, in_per_group)
            if padding:
                levels = F.pad(levels, (0, padding), value=absent)
            levels = levels.reshape(count, -1)  # stacked rows of the chip
            chunk_levels = levels.view(count, chunks, rows).transpose(0, 1)  # [chunks, N, rows]
            mean = chip.mean_lut[chunk_levels]
            steps = torch.bmm(mean, self.difference_columns)  # [chunks, N, planes x n]
            if noise is not None:
                variance = torch.baddbmm(
                    2.0 * noise.alpha_lut[chunk_levels].sum(-1, keepdim=True),
                    noise.beta_lut[chunk_levels],
                    self.total_columns,
                )
                self._correct_rare_cells(variance, levels, noise)
                sample = torch.randn(
                    steps.shape, generator=noise.generator, device=device, dtype=steps.dtype
                )
                steps.addcmul_(sample, variance.clamp_min_(0.0).sqrt_())
            chip.adc.quantize_steps_(steps)
            per_plane = steps.view(groups, packing.tiles_in, count, self.planes, -1)
            values = torch.einsum("gtnpo,p->ngo", per_plane, shift)  # [N, G, n]
            result[start : start + count] = values.reshape(count, -1).mul_(chip.adc.step)
        return result

    def _correct_rare_cells(self, variance: Tensor, levels: Tensor, noise) -> None:
        """In place: the exact variance of the cells above the smallest r* (`crossbar.read`);
        ``levels`` [N, stacked rows], ``variance`` [chunks, N, planes x n]."""
        if noise.rare_rows.numel() == 0:
            return
        rare_levels = levels[:, noise.rare_rows]  # [N, cells]
        linear = noise.alpha_lut[rare_levels] + noise.rare_states * noise.beta_lut[rare_levels]
        correction = torch.relu(linear.neg_()).mul_(2.0)
        chunk = (noise.rare_batches // self.planes).expand_as(rare_levels)
        plane = noise.rare_batches % self.planes
        column = (plane * self.packing.out_per_group + noise.rare_columns).expand_as(rare_levels)
        batch = torch.arange(levels.shape[0], device=levels.device).unsqueeze(1)
        variance.index_put_((chunk, batch.expand_as(rare_levels), column), correction, True)


def ideal_grouped_read(
    inputs: Tensor, input_scale: Tensor, weight_int: Tensor, hardware: HardwareConfig, groups: int
) -> Tensor:
    """Values [N, G n] of an ideal group-wise chip (ideal cells, no read noise, ``hardware``'s
    DAC and ADC) for patches [N, G K] and integer weights [G n, K]: what `ideal_read` is for
    dense matrices (emulates the ADC in QAT)."""
    out_features, in_per_group = weight_int.shape
    weight_t = stack_groups(weight_int, groups).t().to(torch.int64)  # [G K, n]
    bits = magnitude_bit_planes(weight_t.abs(), hardware.bit_planes)
    shape = (hardware.bit_planes, groups, in_per_group, out_features // groups)
    # An ideal cell holding 1 is at r = 0 (LLRS), holding 0 at r = 1 (not conducting).
    states = [(1.0 - (bits & mask).float()).view(shape) for mask in (weight_t > 0, weight_t < 0)]
    ideal = hardware.replace(cell_model="ideal", read_noise="off", wire_resistance=0.0)
    chip = GroupedCrossbar(*states, 1.0, ideal, read_seed=0).to(inputs.device)
    return chip.read(inputs, input_scale)

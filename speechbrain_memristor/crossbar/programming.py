"""Programming a chip: integer weights -> bit planes -> programmed cell states.

Cells are laid out [planes, (positive, negative), in, out] and programmed in chunks of
PROGRAMMING_CHUNK_CELLS, each with its own generator seeded by (chip seed, chunk index), by
the configured cell model (`physics.cell_models`). What does not depend on the chunking is
drawn once per chip from its own generator:

- stuck-at faults (``stuck_lrs_rate``, ``stuck_hrs_rate``): one uniform number per cell from
  stable_seed(chip seed, "faults"): u < stuck_lrs_rate: stuck in LRS; then
  u < stuck_lrs_rate + stuck_hrs_rate: stuck in HRS;
- per-array initial cycles (``initial_cycle_mode="per_array"``): the [initial_cycles,
  arrays] voltages U(-2, 2) V from stable_seed(chip seed, "initial cycles"); an array is one
  (bit plane, bitline side, input-row tile, output-column tile) tile, numbered
  ((plane * 2 + side) * tiles_in + row tile) * tiles_out + column tile (`array_indices`).

A chip is therefore a pure function of (weights, hardware config, chip seed). With the default
settings (per-cell cycles, no verify, no faults) the states are those of the first version.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.layout import TileLayout, magnitude_bit_planes
from speechbrain_memristor.physics.cell_models import (
    FREE,
    INITIAL_CYCLE_VOLTAGE,
    STUCK_HRS,
    STUCK_LRS,
    ProgrammingStats,
    cell_model,
)
from speechbrain_memristor.util.seeding import stable_seed

# Cells created and switched at once while programming (about 80-220 bytes each in the device
# model, see CellArray.bytes_per_cell).
# Part of the chip's definition: each chunk has its own generator seeded by (chip seed, index).
PROGRAMMING_CHUNK_CELLS = 1 << 19
# Chunk on a CUDA device: 2^23 cells hold at most about 1.8 GB of device-model state.
CUDA_PROGRAMMING_CHUNK_CELLS = 1 << 23


class ProgrammedWeights(NamedTuple):
    """States of the positive and negative cells, each float32 [planes, in, out], and the
    programming statistics of the chip."""

    states_pos: Tensor
    states_neg: Tensor
    stats: ProgrammingStats


def stuck_codes(cells: int, hardware: HardwareConfig, chip_seed: int) -> Tensor | None:
    """int8 [cells] stuck-at codes (FREE, STUCK_LRS, STUCK_HRS) of a chip (None: no faults)."""
    if hardware.stuck_lrs_rate == 0.0 and hardware.stuck_hrs_rate == 0.0:
        return None
    generator = torch.Generator().manual_seed(stable_seed(chip_seed, "faults"))
    uniform = torch.rand(cells, generator=generator, dtype=torch.float64)
    codes = torch.full((cells,), FREE, dtype=torch.int8)
    codes[uniform < hardware.stuck_lrs_rate + hardware.stuck_hrs_rate] = STUCK_HRS
    codes[uniform < hardware.stuck_lrs_rate] = STUCK_LRS
    return codes


def array_indices(start: int, stop: int, layout: TileLayout) -> Tensor:
    """int64 array number (module doc) of the cells start..stop-1 of the flat
    [planes, 2, in, out] layout."""
    flat = torch.arange(start, stop, dtype=torch.int64)
    column = flat % layout.out_features
    row = (flat // layout.out_features) % layout.in_features
    plane_side = flat // (layout.out_features * layout.in_features)
    tile = plane_side * layout.tiles_in + row // layout.tile_rows
    return tile * layout.tiles_out + column // layout.tile_cols


def array_cycle_voltages(arrays: int, hardware: HardwareConfig, chip_seed: int) -> Tensor:
    """float32 [initial_cycles, arrays]: one U(-2, 2) V pulse per array and initial cycle."""
    generator = torch.Generator().manual_seed(stable_seed(chip_seed, "initial cycles"))
    uniform = torch.rand(hardware.initial_cycles, arrays, generator=generator)
    return (uniform * 2 - 1) * INITIAL_CYCLE_VOLTAGE


def program_states(
    bits: Tensor,
    hardware: HardwareConfig,
    chip_seed: int,
    layout: TileLayout | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, ProgrammingStats]:
    """Programmed states r (float32 [n], CPU) of cells holding ``bits`` (bool [n]), one chunk at
    a time (see `CellModel.program`), and the statistics.

    ``layout``: how the flat cells lie on arrays ([planes, 2, in, out] of ``layout``), for
    per-array initial cycles; None: all cells form one array. ``device``: where the device
    model runs (None: the CPU, chunks of PROGRAMMING_CHUNK_CELLS; CUDA: chunks of
    CUDA_PROGRAMMING_CHUNK_CELLS with CUDA generators, so other random draws: another chip).
    """
    device = torch.device("cpu" if device is None else device)
    chunk = PROGRAMMING_CHUNK_CELLS if device.type == "cpu" else CUDA_PROGRAMMING_CHUNK_CELLS
    model = cell_model(hardware)
    count = bits.shape[0]
    states = torch.empty(count, dtype=torch.float32)
    stuck = stuck_codes(count, hardware, chip_seed)
    per_array = hardware.initial_cycle_mode == "per_array" and hardware.initial_cycles > 0
    if per_array:
        arrays = 1
        if layout is not None:
            sides = count // (layout.in_features * layout.out_features)
            arrays = sides * layout.tiles_in * layout.tiles_out
        array_voltages = array_cycle_voltages(arrays, hardware, chip_seed)
    stats = ProgrammingStats()
    for index, start in enumerate(range(0, count, chunk)):
        stop = min(start + chunk, count)
        cycle_voltages = None
        if per_array:
            if layout is None:
                cycle_voltages = array_voltages.expand(-1, stop - start)
            else:
                cycle_voltages = array_voltages[:, array_indices(start, stop, layout)]
        generator = torch.Generator(device).manual_seed(stable_seed(chip_seed, index))
        chunk_states, chunk_stats = model.program(
            bits[start:stop].to(device),
            hardware,
            generator,
            cycle_voltages=None if cycle_voltages is None else cycle_voltages.to(device),
            stuck=None if stuck is None else stuck[start:stop].to(device),
        )
        states[start:stop] = chunk_states.cpu()
        stats = stats + chunk_stats
    return states, stats


def program_chip(
    weight_int: Tensor,
    hardware: HardwareConfig,
    chip_seed: int,
    device: torch.device | str | None = None,
) -> ProgrammedWeights:
    """States and statistics of integer weights [out, in] (in [-Q_w, Q_w]) programmed onto
    fresh cells, the device model running on ``device`` (None: the CPU; `program_states`)."""
    qmax = hardware.weight_qmax
    weight_t = weight_int.detach().cpu().t().to(torch.int64)
    if bool((weight_t.abs() > qmax).any()):
        raise ValueError(
            f"weight integers must lie in [-{qmax}, {qmax}] for weight_bits={hardware.weight_bits}."
        )
    bits = magnitude_bit_planes(weight_t.abs(), hardware.bit_planes)
    paired = torch.stack([bits & (weight_t > 0), bits & (weight_t < 0)], dim=1)
    layout = TileLayout.from_config(weight_t.shape[0], weight_t.shape[1], hardware)
    states, stats = program_states(paired.reshape(-1), hardware, chip_seed, layout, device)
    states = states.view(paired.shape)
    return ProgrammedWeights(states[:, 0], states[:, 1], stats)


def program_weights(
    weight_int: Tensor, hardware: HardwareConfig, chip_seed: int
) -> tuple[Tensor, Tensor]:
    """States (r_pos, r_neg), each float32 [planes, in, out], of integer weights [out, in]
    (in [-Q_w, Q_w]) programmed onto fresh cells on the CPU (`program_chip` without the
    statistics)."""
    programmed = program_chip(weight_int, hardware, chip_seed)
    return programmed.states_pos, programmed.states_neg

"""Programming a chip: integer weights -> bit planes -> programmed cell states.

Cells are laid out [planes, (positive, negative), in, out] and programmed in chunks of
PROGRAMMING_CHUNK_CELLS, each with its own generator seeded by (chip seed, chunk index), by
the configured cell model (`physics.cell_models`). A chip is therefore a pure function of
(weights, hardware config, chip seed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.layout import magnitude_bit_planes
from speechbrain_memristor.physics.cell_models import cell_model
from speechbrain_memristor.util.seeding import stable_seed

# Cells created and switched at once while programming (about 80-220 bytes each in the device
# model, see CellArray.bytes_per_cell).
# Part of the chip's definition: each chunk has its own generator seeded by (chip seed, index).
PROGRAMMING_CHUNK_CELLS = 1 << 19


def program_states(bits: Tensor, hardware: HardwareConfig, chip_seed: int) -> Tensor:
    """Programmed states r (float32 [n]) of cells holding ``bits`` (bool [n]), on the CPU,
    one chunk of PROGRAMMING_CHUNK_CELLS at a time (see `CellModel.program`)."""
    model = cell_model(hardware)
    states = torch.empty(bits.shape[0], dtype=torch.float32)
    for index, start in enumerate(range(0, bits.shape[0], PROGRAMMING_CHUNK_CELLS)):
        chunk_bits = bits[start : start + PROGRAMMING_CHUNK_CELLS]
        generator = torch.Generator().manual_seed(stable_seed(chip_seed, index))
        states[start : start + chunk_bits.shape[0]] = model.program(chunk_bits, hardware, generator)
    return states


def program_weights(
    weight_int: Tensor, hardware: HardwareConfig, chip_seed: int
) -> tuple[Tensor, Tensor]:
    """States (r_pos, r_neg), each float32 [planes, in, out], of integer weights [out, in]
    (in [-Q_w, Q_w]) programmed onto fresh cells on the CPU."""
    qmax = hardware.weight_qmax
    weight_t = weight_int.detach().cpu().t().to(torch.int64)
    if bool((weight_t.abs() > qmax).any()):
        raise ValueError(
            f"weight integers must lie in [-{qmax}, {qmax}] for weight_bits={hardware.weight_bits}."
        )
    bits = magnitude_bit_planes(weight_t.abs(), hardware.bit_planes)
    paired = torch.stack([bits & (weight_t > 0), bits & (weight_t < 0)], dim=1)
    states = program_states(paired.reshape(-1), hardware, chip_seed).view(paired.shape)
    return states[:, 0], states[:, 1]

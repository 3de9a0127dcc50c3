"""How a weight matrix lies on crossbar tiles: bit planes, tiles, the tile-major layout.

A weight integer w in [-Q_w, Q_w] for input row i and output column o is split into its sign
and the b-1 bits of |w| (bit plane k has weight 2^k). Per plane there are two cells for (i, o):
the positive cell holds bit k of |w| if w > 0, the negative cell if w < 0. Rows are cut into
tiles of ``tile_rows`` (the last tile zero-padded: padded cells do not exist, so they neither
conduct nor add noise); columns into tiles of ``tile_cols`` (which only changes the inventory,
since every column has its own ADC per plane and input tile). Matrices the read multiplies are
kept tile-major: [tiles_in * planes, tile_rows, out], batch index tile * planes + plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig


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


def repeat_per_plane(per_tile: Tensor, planes: int) -> Tensor:
    """[tiles_in, count, k] per input tile -> [tiles_in * planes, count, k] in the tile-major
    batch order (index tile * planes + plane): each tile's block repeated for its planes."""
    tiles, rest = per_tile.shape[0], per_tile.shape[1:]
    return per_tile.unsqueeze(1).expand(tiles, planes, *rest).reshape(tiles * planes, *rest)


def from_tile_major(matrix: Tensor, layout: TileLayout) -> Tensor:
    """Inverse of `to_tile_major`: [tiles_in * planes, tile_rows, out] -> [planes, in, out]."""
    planes = matrix.shape[0] // layout.tiles_in
    tiled = matrix.reshape(layout.tiles_in, planes, layout.tile_rows, layout.out_features)
    merged = tiled.transpose(0, 1).reshape(planes, layout.padded_in, layout.out_features)
    return merged[:, : layout.in_features]

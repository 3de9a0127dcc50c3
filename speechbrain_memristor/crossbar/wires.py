"""Wire resistance of the tile circuit (IR drop): an exact nodal solve and a first-order read.

The circuit of one physical array (one side of a differential pair, one input tile, one bit
plane, one output tile; R = ``tile_rows`` rows i, C used columns j): row i is driven at its
left end by the DAC voltage V_i and runs through one wire segment of ``r`` ohms
(``HardwareConfig.wire_resistance``) to cell 0, then one segment per cell; column j runs down
through one segment per cell to the sense amplifier, a virtual ground below row R - 1 (the
circuit of Xiao et al., IEEE Circuits and Systems Magazine 22(4), 2022, with row wires too).
Cell (i, j) carries I(u, r_ij) = (1 - r) L(u) + r H(u) at u = a_ij - b_ij (row node minus
column node voltage). Padded rows and unused columns hold no cell. With the drops
alpha = V_i - a (rows) and beta = b (columns), Kirchhoff's current law reads

    alpha_ij = r sum_j' P_jj' I_ij',   P_jj' = min(j, j') + 1   (segments shared from the driver)
    beta_ij  = r sum_i' Q_ii' I_i'j,   Q_ii' = R - max(i, i')   (segments shared to the amplifier)

and the sensed current of column j is sum_i I_ij. P = T T^T and Q = S S^T with triangular
all-ones T, S: applying r P or r Q is two cumulative sums, and their inverses (the wires'
nodal conductance matrices) are two first differences.

Exact (`wire_solver="exact"`): Newton's method on the nodal equations F(alpha, beta) =
(P^-1 alpha / r - I, Q^-1 beta / r - I) = 0 from the first-order guess; each Newton step
solves the symmetric Jacobian [[P^-1/r + G, G], [G, Q^-1/r + G]] (G = diag dI/du, the cells'
differential conductance) by conjugate gradients preconditioned with the wires' exact inverse
(r P, r Q: four cumulative sums). The wires' conductance (1 / r, about 1 S) dominates G
(< 1e-3 S), so the preconditioned system has eigenvalues in [1, 1 + c r G_max N^2] and
converges in a few tens of iterations for the tiles of practical interest. It runs in float64
on blocks of at most EXACT_BLOCK_ELEMENTS cell voltages; read noise is then the exact
a(u) |I(u)| of every cell at its solved voltage.

First order (`wire_solver="first_order"`, the default): linearize every cell around its ideal
operating point u = V_i: I_ij = I0_ij - g_ij (alpha_ij + beta_ij) with I0 = L_i + r_ij D_i,
g = L'_i + r_ij D'_i (L_i = L(V_i), D = H - L, primes d/du of the I-V polynomials), and the
drops taken at the ideal currents I0. The column correction sum_i g (alpha + beta) / r is then

    row wires:    p_j sum_i L'L  +  sum_i L'D (r P)_ij  +  p_j sum_i D'L r_ij
                  +  sum_i D'D (r o rP)_ij                               (p_j = sum_j' P_jj')
    column wires: L'^T Q L  +  sum_i (D (Q L') + D' (Q L))_i r_ij
                  +  sum_m lambda_m (sum_i e_mi D'_i r_ij) (sum_i e_mi D_i r_ij)

with Q = sum_m lambda_m e_m e_m^T its eigendecomposition (the last, bilinear term couples two
rows of a column; it is kept to the WIRE_SPECTRAL_TERMS largest eigenvalues, which hold
8/pi^2 = 81 % of the trace with one term, 90 % with two; smooth column profiles, the
common case since r >= 0, lie almost entirely in the first ones: on the README's error table
two terms leave 1.1-1.2 x the error of four, one term 2 x). Per (input tile, plane) the
terms without r are the same on both sides of the differential pair and cancel. The column
wires' linear term multiplies r+ - r-, like the ideal read: its coefficients are added to the
mean product's (no product of its own). The three row terms multiply precomputed (r+ P - r- P),
p o (r+ - r-) and (r+ o r+P) - (r- o r-P), stacked along the inner dimension: one product of
three times the ideal read's inner size. The bilinear one, per side
sum_m lambda_m (a_m . r)(b_m . r) with a_m = e_m D', b_m = e_m D, enters the pair's difference
as sum_m lambda_m ((a_m . s)(b_m . d) + (a_m . d)(b_m . s)) / 2 with s = r+ + r-, d = r+ - r-
(no cancellation between sides): two products of 2 WIRE_SPECTRAL_TERMS times the ideal read's
rows. In all 3 + 4 WIRE_SPECTRAL_TERMS (11) extra products' worth of work of the ideal read's
size, with per-level coefficients (float32, computed once per block of inputs), and no
[batch, in, out] tensor. Its error is second order in
r G N^2 (tabulated in README.md); read noise keeps the closed form at the ideal voltages
(the IR drop changes the variance by a relative amount of order r G N^2, a second-order
effect on the read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.layout import TileLayout, repeat_per_plane
from speechbrain_memristor.physics.cell_models import CellModel
from speechbrain_memristor.physics.noise import ReadNoiseModel

# Eigenvalues of the column-sharing matrix Q kept in the first-order bilinear term.
WIRE_SPECTRAL_TERMS = 2
# Exact solve: cell voltages per block (float64; about ten such buffers live at once).
EXACT_BLOCK_ELEMENTS = 1 << 20
# Exact solve: Newton stops when the largest nodal current residual is below this fraction of
# the largest cell current (float64 leaves about 1e-16 N^2 after the wires' differences: 3e-11
# at N = 512); each step's CG stops at CG_TOLERANCE of its preconditioned residual norm.
NEWTON_TOLERANCE = 1e-10
NEWTON_MAX_STEPS = 30
CG_TOLERANCE = 1e-12
CG_MAX_STEPS = 2000


def curves_and_slopes(cells: CellModel, voltage: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L, H, L', H') at ``voltage`` (A and S, same shape): the bound curves and their
    derivatives (exact: autograd through the I-V polynomials)."""
    with torch.enable_grad():
        u = voltage.detach().clone().requires_grad_(True)
        curves = cells.low(u), cells.high(u)
        slopes = [
            torch.autograd.grad(curve.sum(), u)[0] if curve.requires_grad else torch.zeros_like(u)
            for curve in curves
        ]  # (a constant curve, e.g. the ideal cells' H = 0, has no graph)
    return curves[0].detach(), curves[1].detach(), slopes[0], slopes[1]


def row_sharing(x: Tensor, tile_cols: int, columns: int) -> Tensor:
    """sum_j' P_jj' x_..j' along the last dim (P_jj' = min(j, j') + 1 within each output tile
    of ``tile_cols`` columns, the last one ``columns`` wide in all): two cumulative sums."""
    tiles = math.ceil(columns / tile_cols)
    padded = F.pad(x, (0, tiles * tile_cols - columns))
    shaped = padded.unflatten(-1, (tiles, tile_cols))
    suffix = shaped.flip(-1).cumsum(-1).flip(-1)
    return suffix.cumsum(-1).flatten(-2)[..., :columns]


def column_sharing(x: Tensor) -> Tensor:
    """sum_i' Q_ii' x_.i'. along dim -2 (Q_ii' = R - max(i, i'), R = x.shape[-2])."""
    return x.cumsum(-2).flip(-2).cumsum(-2).flip(-2)


def row_sharing_inverse(x: Tensor, tile_cols: int, columns: int) -> Tensor:
    """Inverse of `row_sharing`: first difference from the driver, then the reverse first
    difference with no current beyond each tile's last column (the line's open end)."""
    tiles = math.ceil(columns / tile_cols)
    padded = F.pad(x, (0, tiles * tile_cols - columns))
    shaped = padded.unflatten(-1, (tiles, tile_cols))
    forward = (shaped - F.pad(shaped[..., :-1], (1, 0))).flatten(-2)[..., :columns]
    index = torch.arange(columns, device=x.device)
    line_end = ((index + 1) % tile_cols == 0) | (index == columns - 1)
    return forward - F.pad(forward[..., 1:], (0, 1)).masked_fill(line_end, 0.0)


def column_sharing_inverse(x: Tensor) -> Tensor:
    """Inverse of `column_sharing` along dim -2."""
    below = x - F.pad(x[..., 1:, :], (0, 0, 0, 1))
    return below - F.pad(below[..., :-1, :], (0, 0, 1, 0))


def column_sharing_matrix(rows: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Q [rows, rows], Q_ii' = rows - max(i, i')."""
    index = torch.arange(rows, dtype=dtype)
    return rows - torch.maximum(index[:, None], index[None, :])


@dataclass
class FirstOrderTerms:
    """Coefficients of the first-order correction for one block of inputs (ADC steps).

    ``linear`` [tiles_in * count * tile_rows]: minus the column wires' linear term, added to
    the mean product's per-cell coefficients; ``row`` [tiles_in * planes, count, 3 tile_rows]:
    minus the row terms, against ``WireCircuit.row_matrix``; ``pair`` [tiles_in * planes,
    count * 2 * terms, tile_rows]: the bilinear term's rows (with -lambda_m / 2 r steps),
    against ``WireCircuit.sum_difference``."""

    linear: Tensor
    row: Tensor
    pair: Tensor
    terms: int


class WireCircuit(torch.nn.Module):
    """The wires of a chip's tiles: what the first-order and the exact read need.

    ``states_pos`` / ``states_neg`` are tile-major [tiles_in * planes, tile_rows, out] (padded
    rows zero). Per-level tables (index DAC level; the last entry, 0, marks padded rows) are in
    ADC steps: ``steps_per_ampere`` times amperes. Buffers are non-persistent (they follow
    ``.to(device)``)."""

    def __init__(
        self,
        states_pos: Tensor,
        states_neg: Tensor,
        layout: TileLayout,
        hardware: HardwareConfig,
        cells: CellModel,
        volts: Tensor,
        steps_per_ampere: float,
        noise_model: ReadNoiseModel | None,
    ):
        super().__init__()
        self.resistance = hardware.wire_resistance
        self.exact = hardware.wire_solver == "exact"
        self.layout = layout
        self.cells = cells
        self.steps_per_ampere = steps_per_ampere
        self.noise_model = noise_model
        rows, columns = layout.tile_rows, layout.out_features
        volts64 = volts.double()
        low, high, low_slope, high_slope = curves_and_slopes(cells, volts64)
        diff, diff_slope = high - low, high_slope - low_slope
        scale = self.resistance * steps_per_ampere

        def table(*values: Tensor) -> Tensor:  # per-level rows, absent-row entry 0
            return torch.stack([F.pad(value, (0, 1)) for value in values]).float()

        self._buffer("volts", F.pad(volts64, (0, 1)))
        # Row wires: coefficients of (r P) diff, p_j-weighted diff and (r o rP) diff, in steps.
        self._buffer(
            "row_lut", table(low_slope * diff, diff_slope * low, diff_slope * diff) * scale
        )
        # Column wires: per-level L, L', D, D' (amperes; r and the ADC steps folded in later).
        self._buffer("curve_lut", table(low, low_slope, diff, diff_slope))
        pos64, neg64 = states_pos.double(), states_neg.double()
        pos_shared = row_sharing(pos64, layout.tile_cols, columns)
        neg_shared = row_sharing(neg64, layout.tile_cols, columns)
        totals = row_sharing(torch.ones(1, columns, dtype=torch.float64), layout.tile_cols, columns)
        row_matrices = (
            pos_shared - neg_shared,
            (pos64 - neg64) * totals,
            pos64 * pos_shared - neg64 * neg_shared,
        )  # stacked along the inner dimension: one product for the three row terms
        self._buffer("row_matrix", torch.cat(row_matrices, dim=1).float())
        if self.exact:  # both sides: [2, tiles_in * planes, tile_rows, out]
            self._buffer("sides", torch.stack([states_pos, states_neg]).float())
        else:  # r+ + r- and r+ - r- (the bilinear term's matrices)
            self._buffer("sum_difference", torch.stack([pos64 + neg64, pos64 - neg64]).float())
        sharing = column_sharing_matrix(rows)
        eigenvalues, eigenvectors = torch.linalg.eigh(sharing)
        terms = min(WIRE_SPECTRAL_TERMS, rows)
        self._buffer("column_matrix", sharing.float())
        self._buffer("eigenvalues", eigenvalues[-terms:].float())
        self._buffer("eigenvectors", eigenvectors[:, -terms:].t().contiguous().float())

    def _buffer(self, name: str, tensor: Tensor) -> None:
        self.register_buffer(name, tensor.contiguous(), persistent=False)

    # ------------------------------------------------------------------ first order
    def first_order_terms(self, tile_levels: Tensor, tiles: int, planes: int) -> FirstOrderTerms:
        """The first-order correction's coefficients for DAC levels ``tile_levels``
        [tiles_in * count * tile_rows] (tile-major), once per block of inputs (module doc)."""
        rows = self.layout.tile_rows

        def coefficients(lut: Tensor) -> Tensor:  # [terms, tiles, count, rows]
            return lut.index_select(-1, tile_levels).view(lut.shape[0], tiles, -1, rows)

        row = coefficients(self.row_lut).permute(1, 2, 0, 3).flatten(2)  # [tiles, count, 3 rows]
        low, low_slope, diff, diff_slope = coefficients(self.curve_lut).unbind(0)
        count = low.shape[1]
        scale = self.resistance * self.steps_per_ampere
        shared_low, shared_slope = low @ self.column_matrix, low_slope @ self.column_matrix
        linear = (diff * shared_slope + diff_slope * shared_low).mul_(-scale)
        # Bilinear column term: rows of e_m D' (weighted by -lambda_m r steps / 2) and of e_m D.
        vectors = self.eigenvectors  # [terms, rows]
        terms = vectors.shape[0]
        weights = (self.eigenvalues * (-0.5 * scale)).view(terms, 1)  # minus: a loss
        left = diff_slope.unsqueeze(2) * (vectors * weights)
        right = diff.unsqueeze(2) * vectors
        pair = torch.cat([left, right], dim=2).reshape(tiles, count * 2 * terms, rows)
        return FirstOrderTerms(
            linear.reshape(-1),
            repeat_per_plane(row.neg_(), planes),
            repeat_per_plane(pair, planes),
            terms,
        )

    def add_first_order_(self, steps: Tensor, terms: FirstOrderTerms, block: slice) -> None:
        """In place: add the row terms and the bilinear column term of the first-order IR-drop
        correction to ``steps`` [tiles_in * planes, count, block columns] (the linear column
        term, `FirstOrderTerms.linear`, goes into the mean product's coefficients)."""
        steps.baddbmm_(terms.row, self.row_matrix[:, :, block])
        batches, count, width = steps.shape
        # (a.r+)(b.r+) - (a.r-)(b.r-) = ((a.s)(b.d) + (a.d)(b.s)) / 2, s = r+ + r-, d = r+ - r-
        sums, differences = (
            torch.bmm(terms.pair, matrix[:, :, block]).view(batches, count, 2, terms.terms, width)
            for matrix in self.sum_difference
        )
        for term in range(terms.terms):
            steps.addcmul_(sums[:, :, 0, term], differences[:, :, 1, term])
            steps.addcmul_(differences[:, :, 0, term], sums[:, :, 1, term])

    # ------------------------------------------------------------------------ exact
    def exact_read(
        self, tile_levels: Tensor, tiles: int, planes: int, block: slice
    ) -> tuple[Tensor, Tensor | None]:
        """Exact column steps and read-noise variance (steps^2; None without read noise),
        each [tiles_in * planes, count, block columns], by the nodal solve of every array of
        the column ``block`` (which must start and end on output-tile edges)."""
        layout = self.layout
        rows, width = layout.tile_rows, block.stop - block.start
        if block.start % layout.tile_cols or (
            block.stop % layout.tile_cols and block.stop != layout.out_features
        ):
            raise ValueError(f"exact_read: column block {block} cuts an output tile.")
        voltages = self.volts.index_select(0, tile_levels).view(tiles, 1, -1, rows, 1)
        present = (tile_levels != self.volts.shape[0] - 1).view(tiles, 1, -1, rows, 1)
        count = voltages.shape[2]
        states = self.sides[:, :, :, block].double()  # [2, batches, rows, width]
        states = states.view(2, tiles, planes, 1, rows, width)
        mean = torch.empty(tiles, planes, count, width, dtype=torch.float64, device=states.device)
        variance = torch.zeros_like(mean) if self.noise_model is not None else None
        chunk = max(1, EXACT_BLOCK_ELEMENTS // (2 * tiles * planes * rows * width))
        for start in range(0, count, chunk):
            inputs = slice(start, min(start + chunk, count))
            # [2, tiles, planes, chunk, rows, width]: both sides of every array at once.
            volts = voltages[:, :, inputs].unsqueeze(0)
            mask = present[:, :, inputs].unsqueeze(0).double()
            voltage = self.solve(volts, states, mask, width)
            current, _ = self._currents(voltage, states, mask)
            mean[:, :, inputs] = (current[0] - current[1]).sum(-2)
            if variance is not None:
                noise = self.noise_model.coefficient(voltage) * current.abs() * mask
                variance[:, :, inputs] = noise.sum(-2).sum(0)
        steps = self.steps_per_ampere
        mean = (mean * steps).view(tiles * planes, count, width).float()
        if variance is not None:
            variance = (variance * steps**2).view(tiles * planes, count, width).float()
        return mean, variance

    def _currents(self, voltage: Tensor, states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Cell currents I(u, r) and differential conductances dI/du, zero where absent."""
        low, high, low_slope, high_slope = curves_and_slopes(self.cells, voltage)
        current = torch.lerp(low, high, states) * mask
        slope = torch.lerp(low_slope, high_slope, states) * mask
        return current, slope

    def solve(self, volts: Tensor, states: Tensor, mask: Tensor, width: int) -> Tensor:
        """Cell voltages u (float64, broadcast shape of the inputs, [..., rows, width]) of
        arrays with row drive ``volts`` [..., rows, 1], states [..., rows, width] and present
        rows ``mask``: Newton on the nodal equations, PCG per step (module doc)."""
        resistance, tile_cols = self.resistance, self.layout.tile_cols
        shape = torch.broadcast_shapes(volts.shape, states.shape, mask.shape)
        drive = volts.expand(shape)

        def precondition(x_row: Tensor, x_col: Tensor) -> tuple[Tensor, Tensor]:
            row = row_sharing(x_row, tile_cols, width) * resistance
            return row, column_sharing(x_col) * resistance

        def wire_currents(row: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
            inverse_row = row_sharing_inverse(row, tile_cols, width) / resistance
            return inverse_row, column_sharing_inverse(col) / resistance

        current, _ = self._currents(drive, states, mask)
        row_drop, col_drop = precondition(current, current)
        scale = float(current.abs().max()) or 1.0
        for _ in range(NEWTON_MAX_STEPS):
            voltage = drive - row_drop - col_drop
            current, slope = self._currents(voltage, states, mask)
            wire_row, wire_col = wire_currents(row_drop, col_drop)
            residual = (current - wire_row, current - wire_col)  # -F
            if max(float(r.abs().max()) for r in residual) <= NEWTON_TOLERANCE * scale:
                return voltage

            def jacobian(x_row: Tensor, x_col: Tensor, slope: Tensor = slope):
                row, col = wire_currents(x_row, x_col)
                shared = slope * (x_row + x_col)
                return row + shared, col + shared

            step_row, step_col = _conjugate_gradients(jacobian, precondition, residual)
            row_drop, col_drop = row_drop + step_row, col_drop + step_col
        raise RuntimeError(
            f"Exact wire solve did not converge in {NEWTON_MAX_STEPS} Newton steps "
            f"(wire_resistance={resistance!r} ohm, tile_rows={self.layout.tile_rows}); use a "
            "smaller wire_resistance or tile, or wire_solver='first_order'."
        )


def _conjugate_gradients(apply, precondition, rhs: tuple[Tensor, Tensor]):
    """Solve A x = rhs for every array at once (A SPD; inner products over the last two
    dims of both halves), preconditioned; returns the pair x."""

    def dot(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
        return (a[0] * b[0]).sum((-2, -1), keepdim=True) + (a[1] * b[1]).sum((-2, -1), True)

    x = (torch.zeros_like(rhs[0]), torch.zeros_like(rhs[1]))
    residual = rhs
    z = precondition(*residual)
    direction = z
    rz = dot(residual, z)
    start = rz.abs().amax()
    for _ in range(CG_MAX_STEPS):
        if float(rz.abs().amax()) <= CG_TOLERANCE**2 * float(start):
            return x
        product = apply(*direction)
        curvature = dot(direction, product)
        step = torch.where(curvature != 0, rz / curvature, torch.zeros_like(rz))
        x = tuple(xi + step * di for xi, di in zip(x, direction, strict=True))
        residual = tuple(ri - step * pi for ri, pi in zip(residual, product, strict=True))
        z = precondition(*residual)
        rz_next = dot(residual, z)
        ratio = torch.where(rz != 0, rz_next / rz, torch.zeros_like(rz))
        direction = tuple(zi + ratio * di for zi, di in zip(z, direction, strict=True))
        rz = rz_next
    return x

"""`CellArray`: a vector of Synaptogen ReRAM cells in torch (float32, any device).

Statistically equivalent to the reference package's ``CellArrayCPU``, ``applyVoltage``, ``I``
and ``Iread`` (see `params` for the model). Switching rules for one pulse of U volts, all
decided from the cells' state before the pulse:

- SET: a cell not in LRS with U <= US goes to LRS: r from its LRS feature, and its reset
  threshold becomes its UR feature.
- RESET: a cell not in HRS with U > its reset threshold resets. A reset that begins in LRS
  starts a new cycle first (a VAR step draws new features HRS, US, LRS, UR). At U >= Umax the
  cell reaches its HRS fully; below Umax the reset is partial: the cell's current at U follows
  ``a |Umax - U|^η + c``, the curve through (threshold, current when the reset began) and
  (Umax, current at the cycle's HRS). Either way the reset threshold becomes U.

Fresh cells are in HRS (r from their first cycle's HRS), as in the original Julia Synaptogen.
The Python port (the ``synaptogen`` package) starts them in neither state, leaves their reset
curve uninitialized and, until the first new cycle of any cell, aliases their reset threshold
with their UR feature (a reset of fresh cells at U overwrites UR with U). Wherever the port is
well defined (any pulse sequence that starts with a SET), the two agree statistically.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from speechbrain_memristor.physics.noise import read_noise_variance
from speechbrain_memristor.physics.params import (
    HRS,
    LRS,
    N_FEATURES,
    UR,
    US,
    DeviceParams,
    load_device_params,
)

CPU_BLOCK_CELLS = 1 << 16
"""Cells created or advanced to a new cycle per block on CPU: bounds temporaries (about 200 B
per cell) to a few MB, which stay in cache and are reused by the allocator."""


class CellArray:
    """n Synaptogen cells held as float32 tensors on one torch device.

    Args:
        n: number of cells (> 0).
        params: model constants; default: the parameters installed with ``synaptogen``.
        var_order: VAR order p when ``params`` is None (default 10); otherwise it must be
            None or equal ``params.var_order``.
        generator: torch.Generator for every random draw (creation, new cycles, read noise);
            None uses torch's global generator. Same generator state -> identical cells.
        device: where the cells live; default: the generator's device, else CPU.

    Memory per cell (``bytes_per_cell``): features HRS, US, LRS, UR (16 B), device-to-device
    offsets and scales (32 B), state r, reset threshold and reset slope (12 B), the LRS and
    HRS flags (2 B), and the VAR history of standard normal feature vectors. The history holds
    only the current cycle's vector (16 B) until some cell starts a new cycle, then p vectors
    (16 p B): 78 B per fresh cell, 222 B per cycled cell at p = 10 (the reference keeps
    4 (p + 1) history rows, masks and buffers: about 280 B at p = 10).

    The properties return state tensors without copying: treat them as read-only snapshots (a
    later pulse may update them in place or replace them).
    """

    def __init__(
        self,
        n: int,
        params: DeviceParams | None = None,
        var_order: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise ValueError(
                f"CellArray: n={n!r} is invalid; the number of cells must be an integer >= 1."
            )
        n = int(n)
        if params is None:
            params = load_device_params(None, 10 if var_order is None else var_order)
        elif var_order is not None and var_order != params.var_order:
            raise ValueError(
                f"CellArray: var_order={var_order} contradicts params.var_order="
                f"{params.var_order}; pass var_order=None or load params with that order."
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"CellArray: generator must be a torch.Generator, got {generator!r}.")
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        device = torch.device(device)
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"CellArray: generator is on {generator.device} but device={device}; "
                "create the generator on the cells' device."
            )
        self.params = params
        self.device = device
        self.generator = generator
        self._n = n
        self._gamma = params.gamma.to(device)
        self._var_innovation = params.var_innovation.to(device)  # [4, 4]
        self._var_lags = params.var_lag_matrices.to(device)  # [p, 4, 4], lag 1 first

        # History: ring buffer [n, 4 slots] of the cells' standard normal feature vectors, the
        # current cycle's in slot `_newest_slot` and older ones in the slots before it
        # (cyclically). One slot until some cell starts a new cycle (see _start_new_cycle).
        self._history = torch.empty(n, N_FEATURES, device=device)
        self._newest_slot = 0
        self._offset_scale = torch.empty(n, 2 * N_FEATURES, device=device)  # μ, σ per cell
        self._features = torch.empty(N_FEATURES, n, device=device)  # HRS, US, LRS, UR
        # Cells processed per block: bounds temporaries on CPU; one block on accelerators.
        self._block_cells = CPU_BLOCK_CELLS if device.type == "cpu" else n
        for start in range(0, n, self._block_cells):
            self._create(slice(start, min(start + self._block_cells, n)))
        self._state = params.state_from_resistance(self._features[HRS])
        self._reset_threshold = self._features[UR].clone()  # V
        # Slope a of the partial-reset current (A / V^η), set when a reset from LRS starts.
        self._reset_slope = torch.zeros(n, device=device)
        self._in_lrs = torch.zeros(n, dtype=torch.bool, device=device)
        self._in_hrs = torch.ones(n, dtype=torch.bool, device=device)

    def _create(self, cells: slice) -> None:
        """Draw the first cycle and the device-to-device (μ, σ) of the cells in ``cells``."""
        params = self.params
        count = cells.stop - cells.start
        normals = torch.randn(count, 3 * N_FEATURES, generator=self.generator, device=self.device)
        # First cycle: the VAR step from an all-zero history is the innovation term alone.
        normal_features = self._var_innovation @ normals[:, :N_FEATURES].T  # [4, count]
        self._history[cells] = normal_features.T
        # (μ, σ) = mean_k + L_k z for a mixture component k drawn per cell: all K candidates
        # from one matrix product, then each cell's row picked.
        n_components, size, _ = params.gmm_cholesky.shape
        weights = params.gmm_weights.to(self.device)
        boundaries = (torch.cumsum(weights, 0) / weights.sum())[:-1]
        uniform = torch.rand(count, generator=self.generator, device=self.device)
        component = (uniform[:, None] > boundaries).sum(1)
        factors = params.gmm_cholesky.reshape(n_components * size, size).to(self.device)
        candidates = (normals[:, N_FEATURES:] @ factors.T).view(count, n_components, size)
        candidates.add_(params.gmm_means.to(self.device))
        rows = torch.arange(0, count * n_components, n_components, device=self.device)
        offset_scale = self._offset_scale[cells]
        torch.index_select(candidates.view(-1, size), 0, rows.add_(component), out=offset_scale)
        self._features_from(normal_features, offset_scale, out=self._features[:, cells])

    # ----------------------------------------------------------------------------- views
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (
            f"CellArray(n={self._n}, var_order={self.params.var_order}, device={self.device}, "
            f"in_lrs={int(self._in_lrs.sum())}, in_hrs={int(self._in_hrs.sum())})"
        )

    @property
    def r(self) -> Tensor:
        """[n] state variable r (0: LLRS curve, 1: HHRS curve)."""
        return self._state

    @property
    def hrs(self) -> Tensor:
        """[n] high resistance of the current cycle, ohms."""
        return self._features[HRS]

    @property
    def lrs(self) -> Tensor:
        """[n] low resistance of the current cycle, ohms."""
        return self._features[LRS]

    @property
    def us(self) -> Tensor:
        """[n] set threshold of the current cycle, volts (a set needs U <= US)."""
        return self._features[US]

    @property
    def ur(self) -> Tensor:
        """[n] reset threshold feature of the current cycle, volts."""
        return self._features[UR]

    @property
    def in_lrs(self) -> Tensor:
        """[n] bool: the cell was set and has not been reset since."""
        return self._in_lrs

    @property
    def in_hrs(self) -> Tensor:
        """[n] bool: the cell is fresh, or was fully reset and has not been set since."""
        return self._in_hrs

    @property
    def bytes_per_cell(self) -> int:
        """Bytes of per-cell state currently held (see the class docstring)."""
        tensors = (self._history, self._offset_scale, self._features, self._state)
        tensors += (self._reset_threshold, self._reset_slope, self._in_lrs, self._in_hrs)
        return sum(t.numel() * t.element_size() for t in tensors) // self._n

    # ------------------------------------------------------------------------ operations
    def apply_voltage(self, u: Tensor | float, cells: Tensor | None = None) -> None:
        """Apply one pulse of u volts (a scalar or [n], one per cell); cells may switch.

        ``cells``: optional ascending int64 indices of the only cells that see the pulse (u
        then a scalar or one voltage per index); the others see nothing. Same result as the
        pulse on every cell with 0 V for the others (0 V switches no cell whose US < 0 < its
        reset threshold, which holds for the fitted parameters), at a cost that grows with
        the number of indices.
        """
        if cells is not None:
            self._apply_to(cells, u)
            return
        u = self._voltages(u, "apply_voltage")
        params = self.params
        set_mask = (u <= self._features[US]) & ~self._in_lrs
        reset_mask = (u > self._reset_threshold) & ~self._in_hrs
        new_cycle_mask = reset_mask & self._in_lrs
        if bool(set_mask.any()):
            self._state = torch.where(
                set_mask, params.state_from_resistance(self._features[LRS]), self._state
            )
            self._reset_threshold = torch.where(set_mask, self._features[UR], self._reset_threshold)
            self._in_lrs |= set_mask
            self._in_hrs &= ~set_mask
        if not bool(reset_mask.any()):
            return
        full_mask = reset_mask & (u >= params.u_max)
        partial_mask = reset_mask & ~full_mask
        new_cycles = int(new_cycle_mask.sum())
        any_partial = bool(partial_mask.any())
        if new_cycles > 0:
            everyone = new_cycles == self._n
            self._start_new_cycle(None if everyone else new_cycle_mask.nonzero().squeeze(1))
            if any_partial:
                self._start_reset_curve((new_cycle_mask & partial_mask).nonzero().squeeze(1))
        self._in_lrs &= ~reset_mask
        if any_partial:
            self._partial_reset(u, partial_mask)
        self._reset_threshold = torch.where(reset_mask, u, self._reset_threshold)
        if bool(full_mask.any()):
            self._in_hrs |= full_mask
            self._state = torch.where(
                full_mask, params.state_from_resistance(self._features[HRS]), self._state
            )

    def take(self, cells: Tensor) -> CellArray:
        """A new CellArray of copies of the cells at indices ``cells`` (same device-to-device
        parameters, cycle history, features and state; same generator). Pulses on it leave
        this array unchanged: use it to switch a few cells without the cost of this array's
        size (write-verify re-cycles the failing cells this way)."""
        cells = torch.as_tensor(cells, dtype=torch.int64, device=self.device)
        if cells.ndim != 1 or cells.numel() == 0:
            raise ValueError(
                f"CellArray.take: cells must be non-empty 1-D indices, got shape {cells.shape}."
            )
        subset = object.__new__(CellArray)
        subset.params, subset.device, subset.generator = self.params, self.device, self.generator
        subset._n = int(cells.numel())
        subset._gamma, subset._var_innovation = self._gamma, self._var_innovation
        subset._var_lags = self._var_lags
        subset._history = self._history.index_select(0, cells)
        subset._newest_slot = self._newest_slot
        subset._offset_scale = self._offset_scale.index_select(0, cells)
        subset._features = self._features.index_select(1, cells)
        subset._block_cells = self._block_cells if self.device.type == "cpu" else subset._n
        for name in ("_state", "_reset_threshold", "_reset_slope", "_in_lrs", "_in_hrs"):
            setattr(subset, name, getattr(self, name).index_select(0, cells))
        return subset

    def _apply_to(self, cells: Tensor, u: Tensor | float) -> None:
        """`apply_voltage` on the cells at ascending indices ``cells`` only."""
        cells = torch.as_tensor(cells, dtype=torch.int64, device=self.device)
        if cells.ndim != 1:
            raise ValueError(
                f"CellArray.apply_voltage: cells must be 1-D indices, got {cells.shape}."
            )
        if cells.numel() == 0:
            return
        u = torch.as_tensor(u).detach().to(self.device, torch.float32)
        if u.ndim > 1 or (u.ndim == 1 and u.shape[0] != cells.shape[0]):
            raise ValueError(
                f"CellArray.apply_voltage: u has shape {tuple(u.shape)}; pass a scalar or one "
                f"voltage per index ({cells.shape[0]})."
            )
        if not bool(torch.isfinite(u).all()):
            raise ValueError("CellArray.apply_voltage: u holds NaN or infinite values.")
        u = u.expand(cells.shape)
        params = self.params
        set_mask = (u <= self._features[US, cells]) & ~self._in_lrs[cells]
        reset_mask = (u > self._reset_threshold[cells]) & ~self._in_hrs[cells]
        set_cells = cells[set_mask]
        if set_cells.numel() > 0:
            self._state[set_cells] = params.state_from_resistance(self._features[LRS, set_cells])
            self._reset_threshold[set_cells] = self._features[UR, set_cells]
            self._in_lrs[set_cells] = True
            self._in_hrs[set_cells] = False
        reset_cells = cells[reset_mask]
        if reset_cells.numel() == 0:
            return
        u_reset = u[reset_mask]
        full = u_reset >= params.u_max
        new_cycle = self._in_lrs[reset_cells]
        if bool(new_cycle.any()):
            self._start_new_cycle(reset_cells[new_cycle])
            self._start_reset_curve(reset_cells[new_cycle & ~full])
        self._in_lrs[reset_cells] = False
        partial_cells = reset_cells[~full]
        if partial_cells.numel() > 0:
            distance = (params.u_max - u_reset[~full]).abs().pow_(params.eta)
            target = torch.addcmul(
                self._hrs_current_at_u_max(partial_cells),
                self._reset_slope[partial_cells],
                distance,
            )
            self._state[partial_cells] = params.state_from_current(target, u_reset[~full])
        self._reset_threshold[reset_cells] = u_reset
        full_cells = reset_cells[full]
        if full_cells.numel() > 0:
            self._in_hrs[full_cells] = True
            self._state[full_cells] = params.state_from_resistance(self._features[HRS, full_cells])

    def current(self, u: Tensor | float) -> Tensor:
        """[n] noise-free current (A) at u volts (a scalar or [n]); the cells do not switch."""
        return self.params.cell_current(self._state, self._voltages(u, "current"))

    def read(self, u: Tensor | float, bandwidth: float = 1e8, temperature: float = 300.0) -> Tensor:
        """[n] current (A) at u volts with Johnson and shot noise, a fresh sample per call.

        ``bandwidth`` in Hz, ``temperature`` in kelvin (see `noise.read_noise_variance`).
        """
        u = self._voltages(u, "read")
        current = self.params.cell_current(self._state, u)
        std = read_noise_variance(current, u, bandwidth, temperature).sqrt_()
        noise = torch.randn(self._n, generator=self.generator, device=self.device)
        return torch.addcmul(current, std, noise)

    # --------------------------------------------------------------------------- helpers
    def _voltages(self, u: Tensor | float, method: str) -> Tensor:
        """u as a float32 tensor on the cells' device, 0-dim or [n], checked finite."""
        if isinstance(u, bool):
            raise TypeError(f"CellArray.{method}: u must be volts, got the bool {u!r}.")
        voltages = torch.as_tensor(u).detach().to(self.device, torch.float32)
        if voltages.ndim > 1 or (voltages.ndim == 1 and voltages.shape[0] != self._n):
            raise ValueError(
                f"CellArray.{method}: u has shape {tuple(voltages.shape)}; pass a scalar or a "
                f"1-D tensor of {self._n} voltages (one per cell)."
            )
        if not bool(torch.isfinite(voltages).all()):
            bad = int((~torch.isfinite(voltages)).sum())
            raise ValueError(
                f"CellArray.{method}: u holds {bad} NaN or infinite value(s); pass finite volts."
            )
        return voltages

    def _features_from(self, normal_features: Tensor, offset_scale: Tensor, out: Tensor) -> None:
        """Write into ``out`` [4, m] the features y = μ + σ Γ(x) (HRS in ohms).

        ``normal_features``: [4, m] standard normal vectors x; ``offset_scale``: [m, 8] (μ, σ).
        """
        out.copy_(self._gamma[:, :1].expand_as(out))
        for degree in range(1, self._gamma.shape[1]):
            torch.addcmul(self._gamma[:, degree, None], out, normal_features, out=out)
        offset_scale = offset_scale.T
        out.mul_(offset_scale[N_FEATURES:]).add_(offset_scale[:N_FEATURES])
        out[HRS].mul_(math.log(10.0)).exp_()  # from log10 ohms

    def _start_new_cycle(self, cells: Tensor | None) -> None:
        """One VAR step for the cells at indices ``cells`` (ascending; None: all cells): new
        history entries and features."""
        slots = self._var_lags.shape[0]
        if self._history.shape[1] < N_FEATURES * slots:  # first new cycle: open all slots
            history = torch.zeros(self._n, N_FEATURES * slots, device=self.device)
            history[:, :N_FEATURES] = self._history
            self._history, self._newest_slot = history, 0
        # Lag matrix for each physical slot: slot b holds lag (newest_slot - b) mod p + 1.
        lag_of_slot = [(self._newest_slot - slot) % slots for slot in range(slots)]
        slot_matrix = self._var_lags[lag_of_slot].permute(1, 0, 2).reshape(N_FEATURES, -1)
        if cells is None:  # advance the ring: the oldest slot becomes the newest
            newest = self._slot((self._newest_slot + 1) % slots)
            for start in range(0, self._n, self._block_cells):
                block = slice(start, min(start + self._block_cells, self._n))
                normal_features = self._var_step(self._history[block], slot_matrix)
                self._history[block, newest] = normal_features
                features = self._features[:, block]
                normal_features = normal_features.T.contiguous()
                self._features_from(normal_features, self._offset_scale[block], out=features)
            self._newest_slot = (self._newest_slot + 1) % slots
            return
        newest = self._slot(self._newest_slot)
        for block in cells.split(self._block_cells):
            history = self._history.index_select(0, block)
            normal_features = self._var_step(history, slot_matrix)
            # Only these cells advance: shift their vectors one slot back within the ring.
            if slots > 1:
                self._history[:, :-N_FEATURES].index_copy_(0, block, history[:, N_FEATURES:])
                self._history[:, -N_FEATURES:].index_copy_(0, block, history[:, :N_FEATURES])
            self._history[:, newest].index_copy_(0, block, normal_features)
            features = torch.empty(N_FEATURES, block.numel(), device=self.device)
            offset_scale = self._offset_scale.index_select(0, block)
            self._features_from(normal_features.T.contiguous(), offset_scale, out=features)
            self._features.index_copy_(1, block, features)

    def _var_step(self, history: Tensor, slot_matrix: Tensor) -> Tensor:
        """[m, 4] next standard normal feature vectors of m cells with history [m, 4 p]."""
        innovation = torch.randn(
            N_FEATURES, history.shape[0], generator=self.generator, device=self.device
        )
        # (the innovation is drawn feature-major: that small product is several times faster)
        return torch.addmm((self._var_innovation @ innovation).T, history, slot_matrix.T)

    @staticmethod
    def _slot(slot: int) -> slice:
        return slice(N_FEATURES * slot, N_FEATURES * (slot + 1))

    def _hrs_current_at_u_max(self, cells: Tensor | slice) -> Tensor:
        """Current (A) at Umax of the cells at ``cells`` once in their cycle's HRS."""
        params = self.params
        state = params.state_from_resistance(self._features[HRS, cells])
        return params.cell_current(state, torch.tensor(params.u_max, device=self.device))

    def _start_reset_curve(self, cells: Tensor) -> None:
        """Fix the partial-reset curve of the cells at ``cells``, whose reset begins now.

        The curve a |Umax - U|^η + c passes through (reset threshold, present current) and
        reaches the cycle's HRS current c at Umax.
        """
        if cells.numel() == 0:
            return  # no partial reset begins in LRS
        params = self.params
        threshold = self._reset_threshold[cells]
        start_current = params.cell_current(self._state[cells], threshold)
        distance = (params.u_max - threshold).abs().pow_(params.eta)
        slope = (start_current - self._hrs_current_at_u_max(cells)) / distance
        self._reset_slope.index_copy_(0, cells, slope)

    def _partial_reset(self, u: Tensor, partial_mask: Tensor) -> None:
        """Move cells in ``partial_mask`` along their reset curve to the current at U = u."""
        params = self.params
        distance = (params.u_max - u).abs().pow_(params.eta)
        target = torch.addcmul(self._hrs_current_at_u_max(slice(None)), self._reset_slope, distance)
        self._state = torch.where(partial_mask, params.state_from_current(target, u), self._state)

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
from collections.abc import Callable
from dataclasses import dataclass, replace

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
# Default write-verify windows (`verify_window`): a cell holding 1 must lie below this quantile
# of the LRS resistance of the calibration cells, a cell holding 0 above this quantile of
# their HRS resistance (4.94 kohm and 36.5 kohm for the default parameters at U0 = 0.2 V).
VERIFY_LRS_QUANTILE = 0.95
VERIFY_HRS_QUANTILE = 0.05
# Stuck-at fault codes (`CellModel.program`'s ``stuck``).
FREE, STUCK_LRS, STUCK_HRS = 0, 1, 2


@dataclass(frozen=True)
class ProgrammingStats:
    """What programming some cells took (one chunk or a whole chip; ``+`` adds them).

    Pulses: ``cycle_pulses`` (random initial cycles), ``reset_pulses`` and ``set_pulses``
    (programming and verify re-cycling); ``verify_reads`` (one per cell and verify read).
    ``attempts[k]``: cells that verified at attempt k + 1 (empty without write-verify);
    ``unverified``: cells still outside their window after the last attempt; ``stuck_lrs`` /
    ``stuck_hrs``: cells with stuck-at faults (they get and count pulses like the others).
    """

    cells: int = 0
    cycle_pulses: int = 0
    reset_pulses: int = 0
    set_pulses: int = 0
    verify_reads: int = 0
    attempts: tuple[int, ...] = ()
    unverified: int = 0
    stuck_lrs: int = 0
    stuck_hrs: int = 0

    def __add__(self, other: ProgrammingStats) -> ProgrammingStats:
        length = max(len(self.attempts), len(other.attempts))
        padded = [a + (0,) * (length - len(a)) for a in (self.attempts, other.attempts)]
        return ProgrammingStats(
            cells=self.cells + other.cells,
            cycle_pulses=self.cycle_pulses + other.cycle_pulses,
            reset_pulses=self.reset_pulses + other.reset_pulses,
            set_pulses=self.set_pulses + other.set_pulses,
            verify_reads=self.verify_reads + other.verify_reads,
            attempts=tuple(a + b for a, b in zip(*padded, strict=True)),
            unverified=self.unverified + other.unverified,
            stuck_lrs=self.stuck_lrs + other.stuck_lrs,
            stuck_hrs=self.stuck_hrs + other.stuck_hrs,
        )

    @property
    def pulses(self) -> int:
        """Programming pulses of every kind (verify reads excluded)."""
        return self.cycle_pulses + self.reset_pulses + self.set_pulses

    def energy(self, hardware: HardwareConfig) -> float:
        """First-order programming energy (J): pulses and verify reads at the configured costs."""
        return (
            self.pulses * hardware.program_pulse_energy
            + self.verify_reads * hardware.verify_read_energy
        )

    def time(self, hardware: HardwareConfig) -> float:
        """First-order programming time (s), one cell at a time (an upper bound)."""
        return (
            self.pulses * hardware.program_pulse_time
            + self.verify_reads * hardware.verify_read_time
        )


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

    def program(
        self,
        bits: Tensor,
        hardware: HardwareConfig,
        generator: torch.Generator,
        cycle_voltages: Tensor | None = None,
        stuck: Tensor | None = None,
    ) -> tuple[Tensor, ProgrammingStats]:
        """States r (float32 [n]) of fresh cells programmed to ``bits`` (bool [n]) on the device
        of ``bits`` (``generator``, ``cycle_voltages`` and ``stuck`` on it too), and what it took.

        ``cycle_voltages``: float32 [initial_cycles, n] voltages of the initial cycles (None:
        each cell draws its own from ``generator``); ``stuck``: int8 [n] stuck-at codes FREE,
        STUCK_LRS, STUCK_HRS (None: no faults). With ``hardware.write_verify`` the cells are
        then verified and re-cycled (`_verify`).
        """
        count = bits.shape[0]
        stats = ProgrammingStats(
            cells=count,
            cycle_pulses=count * hardware.initial_cycles,
            reset_pulses=count,
            set_pulses=int(bits.sum()),
        )
        present, recycle = self._switch(bits, hardware, generator, cycle_voltages, stuck)
        if hardware.write_verify:
            histogram, unverified, reads, resets, sets = self._verify(
                bits, hardware, present, recycle
            )
            stats = replace(
                stats,
                verify_reads=reads,
                attempts=histogram,
                unverified=unverified,
                reset_pulses=stats.reset_pulses + resets,
                set_pulses=stats.set_pulses + sets,
            )
        if stuck is not None:
            stats = replace(
                stats,
                stuck_lrs=int((stuck == STUCK_LRS).sum()),
                stuck_hrs=int((stuck == STUCK_HRS).sum()),
            )
        return present(None), stats

    def _switch(
        self,
        bits: Tensor,
        hardware: HardwareConfig,
        generator: torch.Generator,
        cycle_voltages: Tensor | None,
        stuck: Tensor | None,
    ) -> tuple[Callable[[Tensor | None], Tensor], Callable[[Tensor], tuple[int, int]]]:
        """Program fresh cells (initial cycles, reset, set); returns ``present(indices)``, the
        present states of those cells (None: all; stuck cells included), and
        ``recycle(indices)``, which re-cycles cells and returns its (reset, set) pulse counts."""
        raise NotImplementedError

    def resistance_conductance(self, states: Tensor, voltage: float) -> Tensor:
        """I(U, r) / U (S) of cells in ``states`` at ``voltage`` (1/R at the verify voltage)."""
        volts = torch.tensor(voltage, dtype=torch.float32, device=states.device)
        low, high = self.low(volts), self.high(volts)
        return torch.addcmul(low.expand_as(states), states, high - low) / voltage

    def _verify(
        self,
        bits: Tensor,
        hardware: HardwareConfig,
        states: Callable[[Tensor | None], Tensor],
        recycle: Callable[[Tensor], tuple[int, int]],
    ) -> tuple[tuple[int, ...], int, int, int, int]:
        """Write-verify: read, re-cycle the cells outside their window, up to
        ``verify_max_attempts`` attempts. ``states(indices)`` gives present states (None: all cells),
        ``recycle(indices)`` re-cycles cells (returns (reset, set) pulse counts).
        Returns (attempts histogram, unverified, verify reads, reset pulses, set pulses)."""
        voltage, lrs_max, hrs_min = verify_window(hardware)
        low_conductance, high_conductance = 1.0 / hrs_min, 1.0 / lrs_max
        candidates = None  # the first read covers every cell
        histogram = []
        reads = resets = sets = 0
        for attempt in range(hardware.verify_max_attempts):
            conductance = self.resistance_conductance(states(candidates), voltage)
            held = bits if candidates is None else bits[candidates]
            reads += held.numel()
            ok = torch.where(held, conductance >= high_conductance, conductance <= low_conductance)
            failing = (~ok).nonzero().squeeze(1)
            histogram.append(held.numel() - failing.numel())
            candidates = failing if candidates is None else candidates[failing]
            if candidates.numel() == 0 or attempt == hardware.verify_max_attempts - 1:
                break
            reset_count, set_count = recycle(candidates)
            resets += reset_count
            sets += set_count
        histogram += [0] * (hardware.verify_max_attempts - len(histogram))
        return tuple(histogram), int(candidates.numel()), reads, resets, sets

    def bit_conductance(self) -> float:
        """Conductance difference (S) of a typical bit-1 and bit-0 cell (for calibration)."""
        raise NotImplementedError


class SynaptogenCells(CellModel):
    """Synaptogen ReRAM cells: nonlinear bound curves, statistical programming."""

    def low(self, voltage: Tensor) -> Tensor:
        return self.params.i_llrs(voltage)

    def high(self, voltage: Tensor) -> Tensor:
        return self.params.i_hhrs(voltage)

    def _switch(self, bits, hardware, generator, cycle_voltages, stuck):
        """Create the cells, apply ``initial_cycles`` random pulses U(-2, 2) V (or
        ``cycle_voltages``), reset at ``reset_voltage``, then apply ``set_voltage`` to the cells
        holding 1. Stuck cells hold the state of their first cycle's
        LRS (STUCK_LRS) or of the fresh cell's HRS (STUCK_HRS) whatever the pulses do."""
        count = bits.shape[0]
        cells = CellArray(
            count, params=self.params, var_order=hardware.device_var_order, generator=generator
        )
        fixed = stuck_mask = None
        if stuck is not None:
            stuck_mask = stuck != FREE
            lrs_state = self.params.state_from_resistance(cells.lrs)
            fixed = torch.where(stuck == STUCK_LRS, lrs_state, cells.r)
        for cycle in range(hardware.initial_cycles):
            if cycle_voltages is None:
                pulses = torch.rand(count, generator=generator, device=bits.device) * 2 - 1
                cells.apply_voltage(pulses * INITIAL_CYCLE_VOLTAGE)
            else:
                cells.apply_voltage(cycle_voltages[cycle])
        cells.apply_voltage(torch.full((count,), hardware.reset_voltage, device=bits.device))
        cells.apply_voltage(torch.where(bits, hardware.set_voltage, 0.0))

        states = cells.r
        # Re-cycled cells live in `failing`, a copy of the cells that failed the first read
        # (later failures are a subset of them): switching them costs what they number.
        failing: dict[str, object] = {}

        def present(indices: Tensor | None = None) -> Tensor:
            current = states if indices is None else states[indices]
            if fixed is None:
                return current
            if indices is None:
                return torch.where(stuck_mask, fixed, current)
            return torch.where(stuck_mask[indices], fixed[indices], current)

        def recycle(indices: Tensor) -> tuple[int, int]:
            """Set the cells holding 0 (in HRS), reset all (a new cycle), set those holding 1."""
            nonlocal states
            if not failing:
                failing["indices"], failing["cells"] = indices, cells.take(indices)
                states = states.clone()
            subset: CellArray = failing["cells"]
            local = torch.searchsorted(failing["indices"], indices)
            holding = bits[indices]
            subset.apply_voltage(hardware.set_voltage, cells=local[~holding])
            subset.apply_voltage(hardware.reset_voltage, cells=local)
            subset.apply_voltage(hardware.set_voltage, cells=local[holding])
            states[indices] = subset.r[local]
            return indices.numel(), indices.numel()

        return present, recycle

    def bit_conductance(self) -> float:
        """1/R_LRS - 1/R_HRS of the median resistances of CALIBRATION_CELLS fresh cells."""
        return _median_bit_conductance(self.params.path, self.params.var_order)


class IdealCells(CellModel):
    """Ideal switches: L(U) = G_LLRS U, H = 0; a 1 bit at r = 0, a 0 bit at r = 1."""

    def low(self, voltage: Tensor) -> Tensor:
        return voltage * float(self.params.g_llrs)

    def high(self, voltage: Tensor) -> Tensor:
        return torch.zeros_like(voltage)

    def _switch(self, bits, hardware, generator, cycle_voltages, stuck):
        """Deterministic; stuck cells at r = 0 (LRS) or r = 1 (HRS); re-cycling changes
        nothing, so only stuck cells can fail write-verify."""
        del hardware, generator, cycle_voltages
        states = torch.where(bits, 0.0, 1.0)
        if stuck is not None:
            states = torch.where(stuck == STUCK_LRS, 0.0, states)
            states = torch.where(stuck == STUCK_HRS, 1.0, states)
        return (
            lambda indices: states if indices is None else states[indices],
            lambda indices: (indices.numel(), indices.numel()),
        )

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


def verify_window(hardware: HardwareConfig) -> tuple[float, float, float]:
    """(verify voltage V, LRS maximum ohms, HRS minimum ohms) of ``hardware``'s write-verify:
    the configured values, or the defaults (U0; VERIFY_LRS_QUANTILE of the LRS and
    VERIFY_HRS_QUANTILE of the HRS resistance U / I(U) of CALIBRATION_CELLS fresh cells)."""
    params = device_params(hardware)
    voltage = params.u0 if hardware.verify_voltage is None else hardware.verify_voltage
    lrs_max, hrs_min = hardware.verify_lrs_max_ohms, hardware.verify_hrs_min_ohms
    if lrs_max is None or hrs_min is None:
        default_lrs, default_hrs = _default_verify_window(params.path, params.var_order, voltage)
        lrs_max = default_lrs if lrs_max is None else lrs_max
        hrs_min = default_hrs if hrs_min is None else hrs_min
    return voltage, lrs_max, hrs_min


@functools.lru_cache(maxsize=16)
def _default_verify_window(params_path: str, var_order: int, voltage: float) -> tuple[float, float]:
    params = load_device_params(params_path, var_order)
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    cells = CellArray(CALIBRATION_CELLS, params=params, var_order=var_order, generator=generator)
    volts = torch.tensor(voltage, dtype=torch.float64)
    resistances = []
    for feature in (cells.lrs, cells.hrs):
        state = params.state_from_resistance(feature).double()
        current = params.cell_current(state, volts)
        resistances.append(volts / current)
    lrs_max = float(torch.quantile(resistances[0], VERIFY_LRS_QUANTILE))
    # HRS cells above r* carry a negative current (R beyond any window): treat as infinite.
    hrs = torch.where(resistances[1] > 0, resistances[1], torch.inf)
    hrs_min = float(torch.quantile(hrs, VERIFY_HRS_QUANTILE))
    return lrs_max, hrs_min

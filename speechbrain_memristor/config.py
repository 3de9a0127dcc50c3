"""Hardware configuration of a simulated memristor crossbar accelerator.

`HardwareConfig` is one validated dataclass shared by every hardware-aware layer. It is
constructible from YAML (``!new:speechbrain_memristor.config.HardwareConfig``) and from named
presets (``HardwareConfig.preset("paper")``; recipes use `HardwareConfig.for_recipe`, where a
null key keeps the preset's value). Every invalid value fails at construction with a message
naming the field, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Version of the saved form of HardwareConfig (`HardwareConfig.to_dict` with
# `CONFIG_VERSION` saved beside it). Bump it when a field is added; `from_saved` fills fields
# missing from older saves with their defaults.
CONFIG_VERSION = 6  # 2: initial_cycle_mode, write-verify, stuck-at faults, programming costs
# 3: wire_resistance, wire_solver, dac_mode; 4: programming_device; 5: output_bits, attention_bits
# 6: dac_encoding

READ_NOISE_MODES = ("off", "physical", "synaptogenml")
DAC_GRIDS = ("symmetric", "synaptogenml")
OBSERVERS = ("minmax", "moving_average")
CELL_MODELS = ("synaptogen", "ideal")
INITIAL_CYCLE_MODES = ("per_cell", "per_array")
PROGRAMMING_DEVICES = ("cpu", "weights")
WIRE_SOLVERS = ("first_order", "exact")
DAC_MODES = ("parallel", "bit_serial")
DAC_ENCODINGS = ("amplitude", "pulse_width")
# `HardwareConfig.for_recipe`: the word for an ideal ADC in a recipe's ADC keys.
IDEAL_ADC = "ideal"
ADC_FIELDS = ("adc_precision_bits", "adc_range_bits")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"HardwareConfig.{field}={value!r} is invalid: {allowed}.")


def _check_int(field: str, value: Any, low: int, high: int | None) -> None:
    allowed = f"expected an integer in [{low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, value, allowed)
    if value < low or (high is not None and value > high):
        _fail(field, value, allowed)


def _check_float(
    field: str, value: Any, low: float, high: float, low_open: bool, high_open: bool = False
) -> float:
    """``value`` as a finite float within the bounds (open or closed), else a ValueError."""
    bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, value, f"expected a number in {bounds}")
    number = float(value)
    above_low = number > low if low_open else number >= low
    below_high = number < high if high_open else number <= high
    if not (math.isfinite(number) and above_low and below_high):
        _fail(field, value, f"expected a finite number in {bounds}")
    return number


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(field, value, f"expected one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class HardwareConfig:
    """Settings of the simulated crossbar hardware (units in the field comments).

    Weights are quantized per tensor, symmetric, to integers in [-(2^(b-1)-1), 2^(b-1)-1]
    (b = ``weight_bits``); the sign selects the positive or negative cell of a differential pair
    and the magnitude is split into b-1 binary bit planes. Inputs x are quantized by a
    ``dac_bits`` DAC with the input quantizer's scale s = max|x| / Q_a, Q_a = 2^(d-1)-1
    (``dac_qmax``), on one of two code grids (``dac_grid``):

    - "symmetric": codes clamp(round(x / s), -Q_a, Q_a) (2^d - 1 levels), applied as the
      voltages ``code / Q_a * input_voltage``;
    - "synaptogenml" (the authors' SynaptogenML library, used by the "paper" presets): codes
      clamp(round(x / s * 2^(d-1) / Q_a), -2^(d-1), 2^(d-1)) (2^d + 1 levels, step 1/2^(d-1) of
      the full scale: 257 levels for 8 bits), applied as ``code / 2^(d-1) * input_voltage``.

    Both grids span the same input range +-s Q_a onto +-input_voltage and the layer rescales
    the read by weight_scale * s * Q_a; ``fake_quant`` rounds inputs onto the same grid as the
    chip (value code * s * Q_a / the grid's largest code). Each tile's column current
    difference is multiplied by ``current_scale`` (value per ampere) and converted by an ADC
    with step 2^-adc_precision_bits, clipped to +-2^(adc_range_bits-1); ``None`` for both ADC
    fields means an ideal converter (no rounding, no clipping).

    ``current_scale=None`` calibrates the scale from the device model so that one bit-1 cell
    pair at full input voltage gives the value 1: 1 / (input_voltage * (G_LRS - G_HRS)) with the
    median LRS and HRS conductances (at the model's reference voltage U0 = 0.2 V) of a fixed
    sample of model cells, about 8.0e3 for the default parameters (the authors use 8020). With
    ``cell_model="ideal"`` it is 1 / (input_voltage * G_LLRS).

    ``cell_model="ideal"`` replaces Synaptogen cells by ideal switches: linear I-V, a 1 bit at
    the LLRS conductance (r = 0) and a 0 bit not conducting (r = 1). With ``read_noise="off"``
    and no ADC, analog execution then reproduces ``fake_quant`` up to float rounding.

    ``read_noise``: "off"; "physical" (Johnson 4 kB T BW |I/U| plus shot 2 q |I| BW per cell and
    read, with ``bandwidth`` and ``temperature``); "synaptogenml" (the constants of the authors'
    SynaptogenML library: bandwidth 1e-8 Hz and Euler's number in place of the electron charge,
    ``bandwidth`` is then ignored; noise is still drawn independently per read and sample).

    Programming: optional ``initial_cycles`` random pulses U(-2, 2) V, a reset pulse at
    ``reset_voltage`` (V, > 0), then a set pulse at ``set_voltage`` (V, < 0) on cells holding 1.
    ``seed`` seeds every chip together with the layer name. ``initial_cycle_mode``:
    "per_cell" draws each cell's own random voltage per pulse; "per_array" (the authors'
    SynaptogenML behaviour) draws ONE voltage per pulse shared by all cells of an array (one
    bit plane, bitline side, input-row tile and output-column tile).

    Write-verify (``write_verify``, off by default): after programming every cell is read at
    ``verify_voltage`` (V; None: the device model's U0 = 0.2 V), R = U / I(U); a cell holding 1
    must have R <= ``verify_lrs_max_ohms``, a cell holding 0 R >= ``verify_hrs_min_ohms``.
    Cells outside their window are re-cycled (set if in HRS, reset, set again if they hold 1:
    a new cycle-to-cycle draw) and read again, up to ``verify_max_attempts`` programming
    attempts in all; cells still outside are left as they are and counted. None for a window
    derives it from the device statistics (`physics.cell_models.verify_window`): the 95th
    percentile of the LRS and the 5th percentile of the HRS resistance of a fixed sample of
    fresh model cells at the verify voltage: 4.94 kohm and 36.5 kohm for the default
    parameters at 0.2 V (first attempt: about 5 % of the cells fail).

    Stuck-at faults: per chip a fraction ``stuck_lrs_rate`` of the cells is stuck in LRS (the
    LRS state of the cell's first cycle, as if formed and never reset) and ``stuck_hrs_rate``
    in HRS (the fresh cell's HRS state, never set), drawn from the chip seed; they ignore
    programming and verify pulses (which are still applied and counted).

    Programming cost (first-order, reported per layer by `studies.report`, not simulated):
    every SET/RESET/initial-cycle pulse costs ``program_pulse_energy`` J and
    ``program_pulse_time`` s, every verify read ``verify_read_energy`` J and
    ``verify_read_time`` s; the time assumes one cell at a time (an upper bound: a row-parallel
    write divides it by the cells written at once). Defaults: 100 ns and 10 pJ per pulse,
    within the ranges reviewed by H.-S. P. Wong et al., "Metal-Oxide RRAM", Proc. IEEE 100(6),
    2012 (switching pulses from below 10 ns to about 100 ns, switching energies from below
    1 pJ to tens of pJ; 2 V at ~50-100 uA for 100 ns is 10-20 pJ); a verify read like a cell
    read: 100 ns (ISAAC's read cycle, above) and 1 pJ (0.2 V x ~45 uA x 100 ns for an LRS
    cell, rounded up for the sense amplifier).

    ``dac_mode``: "parallel" (default) applies each input code c as one voltage
    c / M * input_voltage; "bit_serial" applies it bit by bit, as in ISAAC: the DAC code's
    magnitude bits (B = bit length of M: 7 for the symmetric 8-bit grid, 8 for the authors')
    are B read pulses, least significant first, each of sign(c) * input_voltage where the
    bit is 1 and 0 V where it is 0 (sign-magnitude: negative inputs drive negative pulses, so
    both polarities stay within +-input_voltage as in the parallel mode). Every pulse is a
    separate read with its own ADC conversions per plane, tile and column; the digital
    periphery adds the converted bit reads with weights 2^b / M.

    ``dac_encoding`` (cost figures only, `studies.report`): how the parallel DAC encodes a code
    c in time and voltage. "amplitude" (default; the read simulated here): the voltage
    c / M * input_voltage for the whole ``cell_read_time``; "pulse_width": the full
    sign(c) * input_voltage for |c| / M of ``cell_read_time`` (the read window, and so the
    latency, is the longest pulse: unchanged; time-domain inputs, the usual alternative to
    amplitude DACs). The default is the encoding the simulated read applies. The simulated
    read stays the amplitude-encoded one (a pulse-width read's charge would be linear in c).
    With inputs measured (`studies.report.measure_inputs`) the report's cell-read energy is
    sum over cells of V I(V, r) t per read at each cell's actual voltage V and duration t;
    without, every cell is charged the full window at input_voltage (an upper bound).

    ``programming_device``: where the device model programs a layer's chip. "cpu" (default):
    on the CPU, then moved to the weights' device, so that a chip is the same on every device
    type and published numbers do not depend on the GPU; "weights": on the device of the
    layer's weights (a GPU programs much faster, in chunks that bound its memory, but draws
    CUDA's random numbers: another chip of the same statistics).

    Wire resistance (IR drop, `crossbar.wires`): every segment of a row or column line between
    two cells (and between the driver or the sense amplifier and the first cell) has
    ``wire_resistance`` ohms; 0 (the default) is ideal wiring, today's read bit for bit. A
    realistic value is about 1 ohm: wire resistances of 0.5 to 3.0 ohm per cell are studied in
    "A Parasitic Resistance-Adapted Programming Scheme for Memristor Crossbar-Based
    Neuromorphic Computing Systems", Materials 12(24):4097, 2019 (doi 10.3390/ma12244097); a
    22 nm copper line (resistivity about 4.4e-8 ohm m, 22 nm x 44 nm) over a 4F = 88 nm cell
    pitch is about 4 ohm. ``wire_solver``: "first_order" (linearized around the ideal
    operating point; stays in matrix products, accurate while wire_resistance * G_LRS *
    tile_rows^2 is small, see README) or "exact" (iterative nodal solve, slow: small studies).

    Quantization-aware training: ``observer`` ("minmax" or "moving_average" with
    ``observer_momentum``) calibrates the DAC input range; ``adc_in_training`` also emulates
    the per-tile per-plane ADC of ideal cells in ``fake_quant``. Two options of the authors'
    public QAT configs, off (None) by default: ``output_bits`` quantizes each mapped layer's
    output (bias included) onto a symmetric grid of 2^b - 1 levels with its own range observer
    (the same ``observer``), in ``fake_quant`` (straight-through) and after the analog read (the
    authors keep that quantizer after converting a layer to memristors); ``attention_bits``
    fake-quantizes both operands of every activation x activation product of a supported
    attention module (SpeechBrain's RelPosMHAXL: QK^T, the positional term QP^T and AV) per
    tensor, symmetric, at the current tensor's range (`layers.attention`).

    Cost figures (used only by `speechbrain_memristor.studies.report`; first-order estimates, not
    simulated): an ADC conversion costs ``adc_energy_per_step`` * 2^(p + r) joules (a Walden
    figure of merit; p + r bits cover the ADC's range), a DAC conversion
    ``dac_energy_per_step`` * 2^dac_bits joules, a cell read ``cell_read_time`` * U * I(U, r)
    at the full-scale input voltage, and one read of a layer's tiles (all in parallel, including
    conversion) takes ``tile_read_latency`` seconds. Defaults and their public sources:
    ``adc_energy_per_step`` 10 fJ per conversion step, within the range of the Walden figures of
    merit of low- and medium-resolution SAR ADCs in B. Murmann's "ADC Performance Survey
    1997-2024" (best designs about 1 fJ, many 5-50 fJ; ISAAC's 8-bit 1.28 GS/s ADC at 2 mW is
    about 6 fJ per step); ``dac_energy_per_step`` 0.2 pJ, from the 1-bit DACs of the ISAAC
    accelerator (Shafiee et al., ISCA 2016: 1024 DACs per in-situ multiply-accumulate unit at
    4 mW and a 100 ns cycle, about 0.4 pJ per 1-bit conversion, i.e. 2 steps). Scaling that
    exponentially to the paper's 8-bit DAC (51 pJ per conversion) is pessimistic but shows why
    ISAAC feeds inputs bit-serially; ``cell_read_time`` and
    ``tile_read_latency`` 100 ns, ISAAC's crossbar read cycle.
    """

    weight_bits: int = 3
    dac_bits: int = 8
    input_voltage: float = 0.6
    dac_grid: str = "symmetric"
    dac_mode: str = "parallel"  # parallel | bit_serial
    dac_encoding: str = "amplitude"  # amplitude | pulse_width (parallel DAC; cost figures only)
    adc_precision_bits: int | None = 4
    adc_range_bits: int | None = 4
    current_scale: float | None = None
    tile_rows: int = 128
    tile_cols: int = 128
    read_noise: str = "physical"
    bandwidth: float = 1e8
    temperature: float = 300.0
    device_params: str | None = None
    device_var_order: int = 10
    cell_model: str = "synaptogen"
    set_voltage: float = -2.0
    reset_voltage: float = 2.0
    initial_cycles: int = 0
    initial_cycle_mode: str = "per_cell"  # per_cell | per_array (one pulse per array)
    write_verify: bool = False
    verify_max_attempts: int = 5  # programming attempts per cell, the first included
    verify_lrs_max_ohms: float | None = None  # ohms; None: from the device statistics
    verify_hrs_min_ohms: float | None = None  # ohms; None: from the device statistics
    verify_voltage: float | None = None  # V; None: the device model's U0 (0.2 V)
    stuck_lrs_rate: float = 0.0  # fraction of cells stuck in LRS
    stuck_hrs_rate: float = 0.0  # fraction of cells stuck in HRS
    programming_device: str = "cpu"  # cpu | weights (the device the layer's weights are on)
    wire_resistance: float = 0.0  # ohms per row or column segment (0: ideal wiring)
    wire_solver: str = "first_order"  # first_order | exact
    seed: int = 0
    observer: str = "minmax"
    observer_momentum: float = 0.01
    adc_in_training: bool = False
    output_bits: int | None = None  # None: layer outputs not quantized; the authors use 8
    attention_bits: int | None = None  # None: QK^T and AV operands not quantized
    adc_energy_per_step: float = 1e-14  # J per ADC conversion step (Walden figure of merit)
    dac_energy_per_step: float = 2e-13  # J per DAC conversion step
    cell_read_time: float = 1e-7  # s, duration of one cell read
    tile_read_latency: float = 1e-7  # s, one parallel read of a layer's tiles
    program_pulse_energy: float = 1e-11  # J per SET/RESET/initial-cycle pulse
    program_pulse_time: float = 1e-7  # s per programming pulse
    verify_read_energy: float = 1e-12  # J per verify read of one cell
    verify_read_time: float = 1e-7  # s per verify read of one cell

    def __post_init__(self) -> None:
        self._check_converters()
        self._check_cells()
        self._check_programming()
        self._check_training()
        self._check_costs()

    def _set_float(
        self, field: str, low: float, high: float, low_open: bool, high_open: bool = False
    ) -> None:
        """Validates float field ``field`` (`_check_float`) and stores it as a float."""
        number = _check_float(field, getattr(self, field), low, high, low_open, high_open)
        object.__setattr__(self, field, number)

    def _check_converters(self) -> None:
        """Weight and DAC precision, input voltage, ADC and current scale."""
        _check_int("weight_bits", self.weight_bits, 2, 8)
        _check_int("dac_bits", self.dac_bits, 2, 16)
        self._set_float("input_voltage", 0.0, 1.0, True)
        _check_choice("dac_grid", self.dac_grid, DAC_GRIDS)
        _check_choice("dac_mode", self.dac_mode, DAC_MODES)
        _check_choice("dac_encoding", self.dac_encoding, DAC_ENCODINGS)
        if (self.adc_precision_bits is None) != (self.adc_range_bits is None):
            _fail(
                "adc_precision_bits",
                (self.adc_precision_bits, self.adc_range_bits),
                "set adc_precision_bits and adc_range_bits both to integers, or both to None "
                "for an ideal ADC",
            )
        if self.adc_precision_bits is not None:
            _check_int("adc_precision_bits", self.adc_precision_bits, 0, 16)
            _check_int("adc_range_bits", self.adc_range_bits, 1, 24)
        if self.current_scale is not None:
            self._set_float("current_scale", 0.0, math.inf, True, True)

    def _check_cells(self) -> None:
        """Tiles, read noise and the device model."""
        _check_int("tile_rows", self.tile_rows, 0, None)
        _check_int("tile_cols", self.tile_cols, 0, None)
        _check_choice("read_noise", self.read_noise, READ_NOISE_MODES)
        self._set_float("bandwidth", 0.0, math.inf, True, True)
        self._set_float("temperature", 0.0, math.inf, True, True)
        if self.device_params is not None:
            if not isinstance(self.device_params, (str, os.PathLike)):
                _fail("device_params", self.device_params, "expected a path or None")
            path = os.fspath(self.device_params)
            if not os.path.isfile(path):
                _fail("device_params", path, "file not found; give a Synaptogen parameter JSON")
            object.__setattr__(self, "device_params", path)
        _check_int("device_var_order", self.device_var_order, 1, 10)
        _check_choice("cell_model", self.cell_model, CELL_MODELS)
        self._set_float("wire_resistance", 0.0, 1e3, False)
        _check_choice("wire_solver", self.wire_solver, WIRE_SOLVERS)

    def _check_programming(self) -> None:
        """Programming pulses and the chip seed."""
        self._set_float("set_voltage", -10.0, 0.0, False, True)
        self._set_float("reset_voltage", 0.0, 10.0, True)
        _check_int("initial_cycles", self.initial_cycles, 0, None)
        _check_choice("initial_cycle_mode", self.initial_cycle_mode, INITIAL_CYCLE_MODES)
        _check_choice("programming_device", self.programming_device, PROGRAMMING_DEVICES)
        if not isinstance(self.write_verify, bool):
            _fail("write_verify", self.write_verify, "expected true or false")
        _check_int("verify_max_attempts", self.verify_max_attempts, 1, 1000)
        for window in ("verify_lrs_max_ohms", "verify_hrs_min_ohms"):
            if getattr(self, window) is not None:
                self._set_float(window, 0.0, math.inf, True, True)
        if None not in (self.verify_lrs_max_ohms, self.verify_hrs_min_ohms) and not (
            self.verify_lrs_max_ohms < self.verify_hrs_min_ohms
        ):
            _fail(
                "verify_lrs_max_ohms",
                self.verify_lrs_max_ohms,
                f"expected below verify_hrs_min_ohms={self.verify_hrs_min_ohms!r} (the LRS "
                "window must lie below the HRS window)",
            )
        if self.verify_voltage is not None:
            # Positive and below every reset threshold (UR >= about 0.3 V): a read, not a pulse.
            self._set_float("verify_voltage", 0.0, 0.3, True)
        for rate in ("stuck_lrs_rate", "stuck_hrs_rate"):
            self._set_float(rate, 0.0, 1.0, False, True)
        if self.stuck_lrs_rate + self.stuck_hrs_rate >= 1.0:
            _fail(
                "stuck_hrs_rate",
                self.stuck_hrs_rate,
                f"expected stuck_lrs_rate + stuck_hrs_rate < 1 (stuck_lrs_rate="
                f"{self.stuck_lrs_rate!r})",
            )
        _check_int("seed", self.seed, 0, 2**63 - 1)

    def _check_training(self) -> None:
        """Quantization-aware training settings."""
        _check_choice("observer", self.observer, OBSERVERS)
        self._set_float("observer_momentum", 0.0, 1.0, True)
        if not isinstance(self.adc_in_training, bool):
            _fail("adc_in_training", self.adc_in_training, "expected true or false")
        for bits in ("output_bits", "attention_bits"):
            if getattr(self, bits) is not None:
                _check_int(bits, getattr(self, bits), 2, 16)

    def _check_costs(self) -> None:
        """Energy and time figures of the cost estimates."""
        for cost in ("adc_energy_per_step", "dac_energy_per_step"):
            self._set_float(cost, 0.0, 1e-6, False)
        for cost in ("program_pulse_energy", "verify_read_energy"):
            self._set_float(cost, 0.0, 1e-6, False)
        for duration in ("cell_read_time", "tile_read_latency"):
            self._set_float(duration, 0.0, 1.0, False)
        for duration in ("program_pulse_time", "verify_read_time"):
            self._set_float(duration, 0.0, 1.0, False)

    @property
    def weight_qmax(self) -> int:
        """Largest weight integer, 2^(weight_bits-1) - 1."""
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def dac_qmax(self) -> int:
        """Q_a = 2^(dac_bits-1) - 1: the input quantizer's integer range (scale = max|x| / Q_a,
        layer rescale weight_scale * scale * Q_a) and the symmetric grid's largest code."""
        return 2 ** (self.dac_bits - 1) - 1

    @property
    def dac_max_code(self) -> int:
        """Largest DAC code, applied as +input_voltage: Q_a on the "symmetric" grid,
        2^(dac_bits-1) on the "synaptogenml" grid."""
        return self.dac_qmax if self.dac_grid == "symmetric" else 2 ** (self.dac_bits - 1)

    @property
    def bit_planes(self) -> int:
        """Number of magnitude bit planes, weight_bits - 1."""
        return self.weight_bits - 1

    @property
    def has_adc(self) -> bool:
        """False for an ideal (non-quantizing, non-clipping) ADC."""
        return self.adc_precision_bits is not None

    def replace(self, **changes: Any) -> HardwareConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (YAML/JSON friendly); saved with `CONFIG_VERSION`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(
        cls, fields: Mapping[str, Any], version: int | None = None, source: str = "a saved run"
    ) -> HardwareConfig:
        """The config saved as ``fields`` (`to_dict`) with ``version`` (None: saved before
        versioning). Fields the save lacks (added later) take their defaults, which is
        logged; a field this version does not know is an error naming it."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"Hardware config from {source} has unknown field(s) {unknown} (saved with "
                f"config version {version}, this package reads version {CONFIG_VERSION}); "
                "update speechbrain-memristor, or remove the fields."
            )
        missing = sorted(known - set(fields))
        if missing:
            logger.info(
                "Hardware config from %s (config version %s) lacks %s: using the defaults.",
                source,
                version,
                ", ".join(f"{name}={getattr(cls, name)!r}" for name in missing),
            )
        return cls(**dict(fields))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> HardwareConfig:
        """A named configuration, optionally with fields overridden.

        - "default": the field defaults (physical read noise, calibrated scale, ADC p4/r4).
        - "paper": the authors' settings: 3-bit weights, 8-bit DAC at 0.6 V on their
          257-level grid (``dac_grid="synaptogenml"``), ADC p4/r4 ("reasonable"), 128 x 128
          tiles, current_scale 8020, SynaptogenML noise constants, and their initial cycles
          (``initial_cycle_mode="per_array"``, used when ``initial_cycles`` > 0).
        - "paper_high_precision": "paper" with the ADC at p8/r10.
        - "noiseless": Synaptogen cells, no read noise, ideal ADC: isolates programming
          spread, HRS leakage and I-V nonlinearity.
        - "ideal": ideal cells, no read noise, ideal ADC: reproduces fake_quant.
        """
        if name not in PRESETS:
            raise ValueError(
                f"Unknown HardwareConfig preset {name!r}; choose one of {', '.join(PRESETS)}."
            )
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def for_recipe(cls, preset: str, **fields: Any) -> HardwareConfig:
        """The preset ``preset`` with a recipe's hardware keys ``fields`` applied.

        The recipe rule (unlike `preset`, where every override wins, None included): a field
        given as None (``null`` in YAML, the recipe keys' default) keeps the preset's value;
        any other value overrides it. For ``adc_precision_bits`` and ``adc_range_bits`` the
        word `IDEAL_ADC` ("ideal") asks for an ideal ADC (None in the config); give it for
        both, or for one where the preset's ADC is already ideal. Invalid values raise a
        ValueError naming the field, the value and the allowed values.
        """
        unknown = sorted(set(fields) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(
                f"HardwareConfig.for_recipe got unknown field(s) {unknown}; give HardwareConfig "
                f"fields: {', '.join(FIELD_NAMES)}."
            )
        if preset not in PRESETS:
            cls.preset(preset)  # raises the error listing the preset names
        changes = {name: value for name, value in fields.items() if value is not None}
        for name in ADC_FIELDS:
            if isinstance(changes.get(name), str):
                if changes[name] != IDEAL_ADC:
                    _fail(
                        name,
                        changes[name],
                        f"expected an integer, {IDEAL_ADC!r} for an ideal ADC, or null to keep "
                        f"the value of preset {preset!r}",
                    )
                changes[name] = None
        _check_adc_pair(preset, fields, {**PRESETS[preset], **changes})
        try:
            return cls.preset(preset, **changes)
        except ValueError as error:
            given = ", ".join(
                f"{name}={value!r}" for name, value in fields.items() if value is not None
            )
            raise ValueError(
                f"{str(error).rstrip('.')} (hardware preset {preset!r} with the recipe keys "
                f"{given or 'all null'}; a null key keeps the preset's value)."
            ) from None


_PAPER = {
    "weight_bits": 3,
    "dac_bits": 8,
    "input_voltage": 0.6,
    "dac_grid": "synaptogenml",
    "initial_cycle_mode": "per_array",
    "adc_precision_bits": 4,
    "adc_range_bits": 4,
    "tile_rows": 128,
    "tile_cols": 128,
    "current_scale": 8020.0,
    "read_noise": "synaptogenml",
}


def _check_adc_pair(preset: str, given: Mapping[str, Any], resolved: Mapping[str, Any]) -> None:
    """The recipe's ADC fields resolve to two integers or to an ideal ADC (both None)."""
    values = {name: resolved.get(name, FIELD_DEFAULTS[name]) for name in ADC_FIELDS}
    if (values["adc_precision_bits"] is None) == (values["adc_range_bits"] is None):
        return
    precision, range_bits = (
        f"{name}={given[name]!r}"
        if given.get(name) is not None
        else f"{name}={values[name]!r} (kept from preset {preset!r})"
        for name in ADC_FIELDS
    )
    raise ValueError(
        f"HardwareConfig.{precision} with {range_bits} is invalid: set adc_precision_bits and "
        f"adc_range_bits both to integers, or both to {IDEAL_ADC!r} for an ideal ADC."
    )


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": _PAPER,
    "paper_high_precision": {**_PAPER, "adc_precision_bits": 8, "adc_range_bits": 10},
    "noiseless": {"read_noise": "off", "adc_precision_bits": None, "adc_range_bits": None},
    "ideal": {
        "cell_model": "ideal",
        "read_noise": "off",
        "adc_precision_bits": None,
        "adc_range_bits": None,
    },
}

FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(HardwareConfig))
FIELD_DEFAULTS: dict[str, Any] = {
    field.name: field.default for field in dataclasses.fields(HardwareConfig)
}

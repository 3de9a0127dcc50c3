"""Hardware report of a converted model: inventory, first-order cost, per-layer analog error.

`hardware_report(model)` lists every mapped weight matrix (one `HardwareMatmul`) with

- its crossbar matrix [out x in] and weight count, bit planes, physical tiles (each bit plane
  is a differential pair of ``tile_rows`` x ``tile_cols`` arrays, rows = inputs, the last tile
  zero-padded), cells (2 per weight and plane; padding excluded) split into LRS cells (holding
  1, SET to low resistance) and HRS cells (holding 0), and tile utilization
  (cells / tile capacity);
- per input vector of the layer (one frame): DAC conversions (one per driven row of each
  differential tile pair: planes x tiles_out x in), ADC conversions (one per column, plane and
  input tile: planes x tiles_in x out) and cell reads (every cell once);
- energy and latency per input vector from the per-operation costs in `HardwareConfig`
  (see its docstring for the figures and sources): ADC and DAC energy per conversion, cell
  read energy summed over the programmed cells, and ``tile_read_latency`` per layer (a
  layer's tiles read in parallel, layers one after another). The cell read energy is
  measured where the report runs the model (`measuring_inputs`; `report_from_run` with
  utterances): per read, cell and pulse w V I(V, r) ``cell_read_time`` at the DAC levels
  actually applied (``dac_encoding``: amplitude V = c / M U, w = 1; pulse width V = sign(c) U,
  w = |c| / M; bit-serial: one pulse of sign(c) U per 1 bit), averaged over the input
  vectors; otherwise ``cell_read_time * U * I(U, r)`` for every cell and pulse at the
  full-scale voltage U (an upper bound for real inputs);
- programming of the layer's chip (once, not per frame; `ProgrammingStats`): write-verify
  attempts histogram, cells never verified, stuck-at cells (stuck LRS / stuck HRS), pulses,
  verify reads, and the programming energy and time from ``program_pulse_energy``,
  ``program_pulse_time``, ``verify_read_energy`` and ``verify_read_time`` (one cell at a
  time: an upper bound on time).

Bit-serial inputs (``dac_mode="bit_serial"``) take B read pulses per input vector (B = input
bits, `ChipInventory.pulses`): B times the conversions, cell reads (unmeasured: each pulse at
the full voltage, an upper bound) and latency, with 1-bit DAC conversions (2 steps of
``dac_energy_per_step``). Energy per multiply-accumulate (one per weight and input vector)
is reported beside the totals, and the last row is a digital baseline: the same MACs at
DIGITAL_MAC_ENERGY.

These are FIRST-ORDER ESTIMATES: no wires, buffers, digital shift-and-add, control or data
movement; ADC energy follows a Walden figure of merit over p + r bits. Use them to compare
settings, not as a chip's datasheet.

Each row also shows the layer's own settings: the `HardwareConfig` fields in which its config
(`HardwareMatmul.hardware`, which every count and cost above uses) differs from the base
config (per-layer settings, ``layer_hardware``), or "-".

`layer_errors(model, run)` measures, with forward hooks, each layer's relative RMS error of
its output in another execution mode (default analog) against its fake_quant output on the
same inputs: sqrt(sum (y - y_fq)^2 / sum y_fq^2) over everything ``run`` feeds the model.
Each layer sees the fake_quant model's activations, so the figure is the layer's own error,
not errors accumulated from earlier layers. It is exactly zero in fake_quant execution.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    LAYER_FIELDS,
    Model,
    describe_differences,
    hardware_differences,
    hardware_layers,
    hardware_matmuls,
)
from speechbrain_memristor.crossbar.chip import Crossbar
from speechbrain_memristor.crossbar.layout import magnitude_bit_planes
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import Execution, check_execution
from speechbrain_memristor.physics.cell_models import ProgrammingStats, cell_model
from speechbrain_memristor.util.atomic import write_atomic
from speechbrain_memristor.util.tables import csv_table, markdown_table

# Digital baseline: energy of one 8-bit integer multiply-accumulate, 0.2 pJ (multiply) +
# 0.03 pJ (add) in 45 nm CMOS at 0.9 V (M. Horowitz, "Computing's energy problem (and what we
# can do about it)", ISSCC 2014); arithmetic only, no memory access or data movement.
DIGITAL_MAC_ENERGY = 0.23e-12
DIGITAL_BASELINE = "digital 8-bit MAC, 45 nm (Horowitz 2014)"

FIRST_ORDER_NOTE = (
    "Energy and latency are first-order estimates from per-operation costs (HardwareConfig "
    "adc_energy_per_step, dac_energy_per_step, cell_read_time, tile_read_latency): converters "
    "and cell reads only, no wires, buffers, digital logic or data movement. Cell reads: "
    "V I(V, r) per cell at each read's voltage and pulse length (dac_encoding) averaged over "
    "the inputs the report evaluated, else the full window at full scale (an upper bound; "
    "grouped convolutions always). Programming "
    "energy and time (once per chip): program_pulse_energy/time per pulse and "
    "verify_read_energy/time per verify read, one cell at a time. pJ/MAC: energy per "
    "weight and input vector; last row: the same MACs on digital hardware at "
    f"{DIGITAL_MAC_ENERGY * 1e12:.2f} pJ per 8-bit MAC ({DIGITAL_BASELINE}, arithmetic only)."
)


@dataclass(frozen=True)
class LayerInventory:
    """Hardware of one mapped weight matrix; counts per input vector, energy in joules,
    latency in seconds (None: not estimated, e.g. ADC energy of an ideal ADC)."""

    name: str
    out_features: int
    in_features: int
    weights: int
    bit_planes: int
    tiles: int
    capacity: int
    cells: int
    lrs_cells: int
    hrs_cells: int
    utilization: float
    dac_conversions: int
    adc_conversions: int
    cell_reads: int
    dac_energy: float
    adc_energy: float | None
    cell_energy: float
    energy: float | None
    latency: float
    relative_error: float | None = None
    # fields of the layer's config that differ from the report's base config
    hardware_changes: dict = field(default_factory=dict)
    # programming of the layer's chip (`ProgrammingStats`): write-verify attempts histogram
    # (cells verified at attempt 1, 2, ...; empty without write-verify), cells never verified,
    # stuck-at cells, pulses, verify reads, first-order programming energy (J) and time (s)
    programming_attempts: tuple[int, ...] = ()
    unverified_cells: int = 0
    stuck_lrs_cells: int = 0
    stuck_hrs_cells: int = 0
    programming_pulses: int = 0
    verify_reads: int = 0
    programming_energy: float = 0.0
    programming_time: float = 0.0


SUMMED = (
    "weights",
    "tiles",
    "capacity",
    "cells",
    "lrs_cells",
    "hrs_cells",
    "dac_conversions",
    "adc_conversions",
    "cell_reads",
    "dac_energy",
    "adc_energy",
    "cell_energy",
    "energy",
    "latency",
    "unverified_cells",
    "stuck_lrs_cells",
    "stuck_hrs_cells",
    "programming_pulses",
    "verify_reads",
    "programming_energy",
    "programming_time",
)


@dataclass(frozen=True)
class HardwareReport:
    """Per-layer inventory and the totals over layers (per frame: one vector per layer)."""

    layers: tuple[LayerInventory, ...]
    base: dict | None = None  # the base HardwareConfig fields the layers' settings differ from

    def total(self) -> dict[str, float | int | None]:
        """Sums of the SUMMED fields (None where a layer has None) and overall utilization."""
        totals: dict[str, float | int | None] = {}
        for key in SUMMED:
            values = [getattr(layer, key) for layer in self.layers]
            totals[key] = None if None in values else sum(values)
        totals["utilization"] = totals["cells"] / totals["capacity"]
        histograms = [layer.programming_attempts for layer in self.layers]
        length = max(map(len, histograms))
        totals["programming_attempts"] = tuple(
            sum(h[k] for h in histograms if k < len(h)) for k in range(length)
        )
        return totals

    def digital_baseline(self) -> dict[str, float | int | str]:
        """The model's MACs per frame (one per weight) at DIGITAL_MAC_ENERGY (J)."""
        weights = sum(layer.weights for layer in self.layers)
        return {
            "source": DIGITAL_BASELINE,
            "weights": weights,
            "energy_per_mac": DIGITAL_MAC_ENERGY,
            "energy": weights * DIGITAL_MAC_ENERGY,
        }

    def to_dict(self) -> dict:
        return {
            "note": FIRST_ORDER_NOTE,
            "hardware": self.base,
            "layers": [asdict(layer) for layer in self.layers],
            "total": self.total(),
            "digital_baseline": self.digital_baseline(),
        }

    def rows(self) -> list[list[str]]:
        """Table rows (layers, the total, the digital baseline) as formatted strings, matching
        `COLUMNS`."""
        rows = [_format_row(asdict(layer), layer.name) for layer in self.layers]
        rows.append(_format_row(self.total(), "total"))
        baseline = self.digital_baseline()
        row = [""] * len(COLUMNS)
        row[COLUMNS.index("layer")] = DIGITAL_BASELINE
        row[COLUMNS.index("weights")] = str(baseline["weights"])
        row[COLUMNS.index("energy nJ")] = f"{baseline['energy'] * 1e9:.4g}"
        row[COLUMNS.index("pJ/MAC")] = f"{DIGITAL_MAC_ENERGY * 1e12:.3g}"
        rows.append(row)
        return rows

    def markdown(self, title: str = "Hardware report") -> str:
        return f"# {title}\n\n{FIRST_ORDER_NOTE}\n\n" + markdown_table(COLUMNS, self.rows())

    def csv(self) -> str:
        return csv_table(COLUMNS, self.rows())

    def write(self, folder: str | os.PathLike, stem: str = "hardware_report") -> dict[str, Path]:
        """Write ``<stem>.{md,csv,json}`` atomically in ``folder``; returns the paths."""
        folder = Path(folder)
        return {
            "md": write_atomic(folder / f"{stem}.md", self.markdown()),
            "csv": write_atomic(folder / f"{stem}.csv", self.csv()),
            "json": write_atomic(
                folder / f"{stem}.json", json.dumps(self.to_dict(), indent=2) + "\n"
            ),
        }


COLUMNS = (
    "layer",
    "matrix (out x in)",
    "hardware",
    "weights",
    "planes",
    "tiles",
    "capacity",
    "cells",
    "LRS cells",
    "HRS cells",
    "utilization %",
    "DAC conv.",
    "ADC conv.",
    "cell reads",
    "DAC nJ",
    "ADC nJ",
    "cells nJ",
    "energy nJ",
    "pJ/MAC",
    "latency ns",
    "rel. RMS error",
    "verify attempts (1/2/...)",
    "unverified",
    "stuck LRS",
    "stuck HRS",
    "prog. pulses",
    "verify reads",
    "prog. nJ",
    "prog. us",
)


def _format_row(values: Mapping, name: str) -> list[str]:
    def nanojoules(key: str) -> str:
        value = values[key]
        return "n/a" if value is None else f"{value * 1e9:.4g}"

    matrix = (
        f"{values['out_features']} x {values['in_features']}" if "out_features" in values else ""
    )
    error = values.get("relative_error")
    changes = values.get("hardware_changes")
    return [
        name,
        matrix,
        "" if changes is None else describe_differences(changes),
        str(values["weights"]),
        str(values.get("bit_planes", "")),
        str(values["tiles"]),
        str(values["capacity"]),
        str(values["cells"]),
        str(values["lrs_cells"]),
        str(values["hrs_cells"]),
        f"{100 * values['utilization']:.1f}",
        str(values["dac_conversions"]),
        str(values["adc_conversions"]),
        str(values["cell_reads"]),
        nanojoules("dac_energy"),
        nanojoules("adc_energy"),
        nanojoules("cell_energy"),
        nanojoules("energy"),
        "n/a" if values["energy"] is None else f"{values['energy'] / values['weights'] * 1e12:.3g}",
        f"{values['latency'] * 1e9:.4g}",
        "" if error is None else f"{error:.4g}",
        "/".join(map(str, values.get("programming_attempts", ()))),
        str(values.get("unverified_cells", 0)),
        str(values.get("stuck_lrs_cells", 0)),
        str(values.get("stuck_hrs_cells", 0)),
        str(values.get("programming_pulses", 0)),
        str(values.get("verify_reads", 0)),
        f"{values.get('programming_energy', 0.0) * 1e9:.4g}",
        f"{values.get('programming_time', 0.0) * 1e6:.4g}",
    ]


def mapped_matrices(model: Model) -> Iterator[tuple[HardwareMatmul, Tensor]]:
    """(matmul, crossbar weight [out, in]) of every mapped matrix of ``model``."""
    for _, layer in hardware_layers(model):
        yield from layer.projections()


def adc_conversion_energy(hardware: HardwareConfig) -> float | None:
    """Joules per ADC conversion: adc_energy_per_step * 2^(p + r) (None for an ideal ADC)."""
    if not hardware.has_adc:
        return None
    bits = hardware.adc_precision_bits + hardware.adc_range_bits
    return hardware.adc_energy_per_step * 2.0**bits


def dac_conversion_energy(hardware: HardwareConfig) -> float:
    """Joules per DAC conversion: dac_energy_per_step * 2^dac_bits (2^1 for the 1-bit row
    drivers of bit-serial inputs)."""
    bits = 1 if hardware.dac_mode == "bit_serial" else hardware.dac_bits
    return hardware.dac_energy_per_step * 2.0**bits


@contextmanager
def measuring_inputs(model: Model) -> Iterator[None]:
    """Inside the block, every analog read of a mapped matrix's chip (`Crossbar`) counts its
    DAC levels per input row (`Crossbar.count_inputs`, from zero at each chip's first read
    here; a chip is programmed first where needed). The counts stay on the chips afterwards,
    and `hardware_report` then charges the measured cell-read energy (`measured_cell_energy`)
    instead of the full-scale bound. Grouped convolutions' chips count nothing (bound kept)."""
    started: list[Crossbar] = []

    def hook(matmul: HardwareMatmul, args, kwargs) -> None:
        if matmul.execution != Execution.ANALOG:
            return
        matmul.ensure_programmed(args[1] if len(args) > 1 else kwargs["weight"])
        chip = matmul.chip
        if isinstance(chip, Crossbar) and not any(chip is seen for seen in started):
            chip.count_inputs()
            started.append(chip)

    handles = [
        matmul.register_forward_pre_hook(hook, with_kwargs=True)
        for matmul in hardware_matmuls(model)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for chip in started:
            chip.counting_inputs = False


def measured_cell_energy(chip: Crossbar) -> float:
    """Cell-read energy (J) per input vector of ``chip`` over the inputs it counted
    (`Crossbar.count_inputs`): sum over reads, rows i and their cells of
    w V I(V, r) ``cell_read_time`` / vectors, with per DAC code c (M = ``dac.max_code``, U =
    ``input_voltage``) V = c / M U, w = 1 (amplitude encoding); V = sign(c) U, w = |c| / M
    (pulse width); V = sign(c) U, w = the number of 1 bits of |c| (bit-serial pulses)."""
    hardware = chip.hardware
    codes = chip.dac.level_codes().double()
    full = hardware.input_voltage * codes.sign()
    if hardware.dac_mode == "bit_serial":
        magnitude = codes.abs().long()
        bits = torch.arange(chip.dac.pulse_bits)
        volts, weights = full, ((magnitude.unsqueeze(1) >> bits) & 1).sum(1).double()
    elif hardware.dac_encoding == "pulse_width":
        volts, weights = full, codes.abs() / chip.dac.max_code
    else:
        volts, weights = codes / chip.dac.max_code * hardware.input_voltage, torch.ones_like(codes)
    cells = cell_model(hardware)
    low, high = cells.low(volts).double(), cells.high(volts).double()
    power_low, power_diff = weights * volts * low, weights * volts * (high - low)  # per level
    counts = chip.input_levels  # [in, levels]
    cells_per_row = 2 * chip.planes * chip.layout.out_features
    low_part = cells_per_row * (counts.sum(0) @ power_low)
    diff_part = (chip.row_state_sums().cpu() @ counts) @ power_diff
    return float(low_part + diff_part) * hardware.cell_read_time / chip.input_vectors


@torch.no_grad()
def layer_inventory(
    matmul: HardwareMatmul,
    weight: Tensor,
    relative_error: float | None = None,
    base: HardwareConfig | None = None,
) -> LayerInventory:
    """Inventory of one mapped matrix, from its own config ``matmul.hardware`` (``base``: the
    config its settings are compared with; None: none shown). The cell energy needs
    programmed states: the layer's chip when it holds ``weight``, else a chip programmed for
    the report alone (seed: the layer's chip seed) and not kept; the layer is left as it was."""
    hardware = matmul.hardware
    counts = matmul.inventory(weight)
    out_features, in_features = counts.out_features, counts.in_features
    magnitudes = matmul.weight_quantizer.integers(weight).detach().abs().cpu()
    lrs_cells = int(magnitude_bit_planes(magnitudes, hardware.bit_planes).sum())

    chip = matmul.chip if matmul.is_programmed_for(weight) else matmul.build_chip(weight)
    if getattr(chip, "input_vectors", 0):
        cell_energy = measured_cell_energy(chip)
    else:  # no measured inputs: every cell, every pulse, the full window at full scale U
        voltage = torch.tensor(hardware.input_voltage, dtype=torch.float64)
        cells = cell_model(hardware)
        low, high = float(cells.low(voltage)), float(cells.high(voltage))
        current_sum = counts.cells * low + chip.state_sum() * (high - low)
        pulses = counts.pulses * hardware.cell_read_time * hardware.input_voltage
        cell_energy = pulses * current_sum

    dac_energy = counts.dac_conversions * dac_conversion_energy(hardware)
    per_conversion = adc_conversion_energy(hardware)
    adc_energy = None if per_conversion is None else counts.adc_conversions * per_conversion
    return LayerInventory(
        name=matmul.name,
        out_features=out_features,
        in_features=in_features,
        weights=counts.weights,
        bit_planes=counts.bit_planes,
        tiles=counts.arrays,
        capacity=counts.capacity,
        cells=counts.cells,
        lrs_cells=lrs_cells,
        hrs_cells=counts.cells - lrs_cells,
        utilization=counts.utilization,
        dac_conversions=counts.dac_conversions,
        adc_conversions=counts.adc_conversions,
        cell_reads=counts.cell_reads,
        dac_energy=dac_energy,
        adc_energy=adc_energy,
        cell_energy=cell_energy,
        energy=None if adc_energy is None else dac_energy + adc_energy + cell_energy,
        latency=counts.pulses * hardware.tile_read_latency,
        relative_error=relative_error,
        hardware_changes={} if base is None else hardware_differences(base, hardware),
        **_programming_fields(chip.programming, hardware),
    )


def _programming_fields(stats: ProgrammingStats | None, hardware: HardwareConfig) -> dict:
    """LayerInventory's programming fields from a chip's statistics (None: all zero)."""
    if stats is None:
        return {}
    return {
        "programming_attempts": stats.attempts,
        "unverified_cells": stats.unverified,
        "stuck_lrs_cells": stats.stuck_lrs,
        "stuck_hrs_cells": stats.stuck_hrs,
        "programming_pulses": stats.pulses,
        "verify_reads": stats.verify_reads,
        "programming_energy": stats.energy(hardware),
        "programming_time": stats.time(hardware),
    }


def hardware_report(
    model: Model, errors: Mapping[str, float] | None = None, base: HardwareConfig | None = None
) -> HardwareReport:
    """Inventory of every mapped matrix of ``model`` (the model's chips are not changed).

    ``errors``: per-layer relative errors (from `layer_errors`) to include, by layer name.
    ``base``: the config each layer's own settings are shown against (None: the config most
    layers have, seed aside; a MemristorHook's ``hardware`` for a hook's model).
    """
    errors = errors or {}
    matrices = list(mapped_matrices(model))
    if not matrices:
        raise ValueError("The model has no converted layers; call convert(model, hardware) first.")
    base = base or most_common_config([matmul.hardware for matmul, _ in matrices])
    layers = tuple(
        layer_inventory(matmul, weight, errors.get(matmul.name), base)
        for matmul, weight in matrices
    )
    return HardwareReport(layers, base.to_dict())


def most_common_config(configs: list[HardwareConfig]) -> HardwareConfig:
    """The config most of ``configs`` share (seed aside; ties: the first)."""
    keys = [tuple(getattr(config, name) for name in LAYER_FIELDS) for config in configs]
    key = Counter(keys).most_common(1)[0][0]
    return configs[keys.index(key)]


def _root_modules(model: Model) -> list[torch.nn.Module]:
    return [model] if isinstance(model, torch.nn.Module) else list(model.values())


@torch.no_grad()
def layer_errors(
    model: Model, run: Callable[[], object], execution: str = "analog"
) -> dict[str, float]:
    """Relative RMS error {layer name: value} of each layer's output in ``execution`` against
    its fake_quant output on the same inputs, over everything ``run()`` feeds ``model``.

    The model runs in fake_quant and eval mode while ``run`` executes; a forward hook on every
    `HardwareMatmul` recomputes its output in ``execution``. Modes and training flags are
    restored afterwards. A layer ``run`` never reaches is missing from the result.
    """
    check_execution(execution)
    matmuls = hardware_matmuls(model)
    modes = [matmul.execution for matmul in matmuls]
    roots = _root_modules(model)
    training = [(module, module.training) for root in roots for module in root.modules()]
    squared_error: dict[str, float] = {}
    squared_reference: dict[str, float] = {}
    inside = []

    def hook(matmul: HardwareMatmul, args, kwargs, output: Tensor) -> None:
        if inside:  # the recomputation below calls this matmul again
            return
        inside.append(matmul)
        try:
            matmul.execution = execution
            other = matmul(*args, **kwargs)
        finally:
            matmul.execution = Execution.FAKE_QUANT
            inside.pop()
        reference = output.detach().double()
        difference = other.detach().double() - reference
        name = matmul.name
        squared_error[name] = squared_error.get(name, 0.0) + float(difference.square().sum())
        squared_reference[name] = squared_reference.get(name, 0.0) + float(reference.square().sum())

    handles = [matmul.register_forward_hook(hook, with_kwargs=True) for matmul in matmuls]
    try:
        for root in roots:
            root.eval()
        for matmul in matmuls:
            matmul.execution = Execution.FAKE_QUANT
        run()
    finally:
        for handle in handles:
            handle.remove()
        for matmul, mode in zip(matmuls, modes, strict=True):
            matmul.execution = mode
        for module, flag in training:
            module.training = flag
    return {name: _relative(squared_error[name], squared_reference[name]) for name in squared_error}


def _relative(squared_error: float, squared_reference: float) -> float:
    """sqrt(error / reference); 0 for no error, inf for an error against an all-zero output."""
    if squared_error == 0.0:
        return 0.0
    return math.sqrt(squared_error / squared_reference) if squared_reference > 0 else math.inf


def report_trained_run(
    hparams_file: str | os.PathLike,
    run_folder: str | os.PathLike,
    overrides: Mapping[str, object],
    train_script: str | os.PathLike,
    split: str = "test",
    utterances: int = 4,
    out: str | os.PathLike | None = None,
) -> tuple[HardwareReport, dict[str, Path]]:
    """The hardware report of a trained recipe run (its study checkpoint, `runs`; per-layer
    settings: ``overrides["layer_hardware"]``, else the run's own), with the per-layer analog
    error on the first ``utterances`` of ``split`` (0: skipped), written to
    ``out`` (default: the run folder). Returns the report and the written paths."""
    from speechbrain_memristor.studies.runs import (
        TrainedRun,
        forward_examples,
        load_trained_brain,
        split_examples,
    )

    run = TrainedRun.load(run_folder)
    overrides = dict(overrides)
    if run.layer_hardware:  # the run's own per-layer settings unless others are given
        overrides.setdefault("layer_hardware", run.layer_hardware)
    brain, hparams = load_trained_brain(hparams_file, run, overrides, train_script)
    model = brain.memristor.model
    errors = None
    if utterances > 0:
        examples = split_examples(hparams, split, utterances)
        torch.manual_seed(0)
        with measuring_inputs(model):  # the cell-read energy of these inputs
            errors = layer_errors(model, lambda: forward_examples(brain, examples))
    report = hardware_report(model, errors, base=brain.memristor.hardware)
    return report, report.write(out or run.folder)

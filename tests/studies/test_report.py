"""Hardware report: exact inventory counts, first-order costs, per-layer analog error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls
from speechbrain_memristor.crossbar.chip import Crossbar
from speechbrain_memristor.physics.cell_models import device_params
from speechbrain_memristor.studies.report import (
    COLUMNS,
    DIGITAL_BASELINE,
    DIGITAL_MAC_ENERGY,
    hardware_report,
    layer_errors,
    measured_cell_energy,
    measuring_inputs,
)


def integer_weights(out_features: int, in_features: int, qmax: int, seed: int) -> torch.Tensor:
    """Integers in [-qmax, qmax] with qmax present, so that per-tensor quantization with
    scale max|w| / qmax returns exactly these integers from weight = integers * 0.01."""
    generator = torch.Generator().manual_seed(seed)
    integers = torch.randint(-qmax, qmax + 1, (out_features, in_features), generator=generator)
    integers[0, 0] = qmax
    return integers


def model_with_integers(hardware: HardwareConfig) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """Linear 200 -> 130 and a pointwise Conv1d 130 -> 10 holding known weight integers."""
    model = torch.nn.Sequential(torch.nn.Linear(200, 130), torch.nn.Conv1d(130, 10, 1))
    qmax = hardware.weight_qmax
    integers = [integer_weights(130, 200, qmax, 0), integer_weights(10, 130, qmax, 1)]
    with torch.no_grad():
        model[0].weight.copy_(integers[0] * 0.01)
        model[1].weight.copy_((integers[1] * 0.01).unsqueeze(-1))
    convert(model, hardware, "fake_quant", include=["*"])
    return model, integers


def popcount(integers: torch.Tensor) -> int:
    return sum(bin(abs(value)).count("1") for value in integers.flatten().tolist())


def test_inventory_counts_are_exact_with_tile_padding():
    hardware = HardwareConfig(weight_bits=3, tile_rows=128, tile_cols=64, cell_model="ideal")
    model, integers = model_with_integers(hardware)
    linear, conv = hardware_report(model).layers
    planes = 2  # 3-bit weights: 2 magnitude planes
    # Linear [130 x 200]: inputs in ceil(200/128) = 2 row tiles, outputs in ceil(130/64) = 3.
    assert (linear.out_features, linear.in_features, linear.weights) == (130, 200, 26000)
    assert linear.bit_planes == planes
    assert linear.tiles == 2 * planes * 2 * 3  # positive and negative array per plane
    assert linear.capacity == linear.tiles * 128 * 64
    assert linear.cells == linear.cell_reads == 2 * planes * 200 * 130
    assert linear.utilization == pytest.approx(104000 / (24 * 128 * 64))
    assert linear.dac_conversions == planes * 3 * 200
    assert linear.adc_conversions == planes * 2 * 130
    assert linear.lrs_cells == popcount(integers[0])
    assert linear.hrs_cells == linear.cells - linear.lrs_cells
    # Conv1d [10 x 130]: 2 row tiles (the second holds 2 rows), 1 column tile.
    assert conv.tiles == 2 * planes * 2 * 1
    assert conv.cells == 2 * planes * 130 * 10
    assert (conv.dac_conversions, conv.adc_conversions) == (planes * 130, planes * 2 * 10)
    assert conv.lrs_cells == popcount(integers[1])

    untiled = HardwareConfig(weight_bits=3, tile_rows=0, tile_cols=0, cell_model="ideal")
    linear = hardware_report(model_with_integers(untiled)[0]).layers[0]
    assert linear.tiles == 2 * planes and linear.utilization == 1.0


def test_energy_and_latency_follow_the_configured_costs():
    hardware = HardwareConfig(
        weight_bits=4,
        adc_precision_bits=4,
        adc_range_bits=6,
        dac_bits=8,
        cell_model="ideal",
        adc_energy_per_step=2e-15,
        dac_energy_per_step=3e-16,
        cell_read_time=5e-8,
        tile_read_latency=2e-7,
    )
    model, integers = model_with_integers(hardware)
    report = hardware_report(model)
    volts = hardware.input_voltage
    g_lrs = device_params(hardware).g_llrs
    for layer, weight_integers in zip(report.layers, integers, strict=True):
        assert layer.adc_energy == pytest.approx(layer.adc_conversions * 2e-15 * 2**10)
        assert layer.dac_energy == pytest.approx(layer.dac_conversions * 3e-16 * 2**8)
        # Ideal cells: a 1 conducts U * G_LLRS, a 0 nothing; every cell read once at full scale.
        expected = 5e-8 * volts * popcount(weight_integers) * volts * g_lrs
        assert layer.cell_energy == pytest.approx(expected, rel=1e-5)
        assert layer.energy == pytest.approx(layer.adc_energy + layer.dac_energy + expected)
        assert layer.latency == 2e-7
    total = report.total()
    assert total["energy"] == pytest.approx(sum(layer.energy for layer in report.layers))
    assert total["latency"] == pytest.approx(4e-7)

    # Bit-serial inputs: 7 pulses (8-bit symmetric DAC), each with its conversions and cell
    # reads at full voltage, 1-bit DACs (2 steps), 7 read cycles.
    serial = hardware_report(model_with_integers(hardware.replace(dac_mode="bit_serial"))[0])
    for layer, parallel in zip(serial.layers, report.layers, strict=True):
        assert layer.adc_conversions == 7 * parallel.adc_conversions
        assert layer.dac_conversions == 7 * parallel.dac_conversions
        assert layer.dac_energy == pytest.approx(layer.dac_conversions * 3e-16 * 2)
        assert layer.cell_energy == pytest.approx(7 * parallel.cell_energy)
        assert layer.latency == pytest.approx(7 * 2e-7)
    baseline = report.digital_baseline()
    weights = sum(layer.weights for layer in report.layers)
    assert baseline["energy"] == pytest.approx(weights * DIGITAL_MAC_ENERGY)
    row = report.rows()[-2]  # the total; pJ/MAC = energy / weights
    assert float(row[COLUMNS.index("pJ/MAC")]) == pytest.approx(
        total["energy"] / weights * 1e12, rel=1e-2
    )

    ideal_adc = hardware.replace(adc_precision_bits=None, adc_range_bits=None)
    layer = hardware_report(model_with_integers(ideal_adc)[0]).layers[0]
    assert layer.adc_energy is None and layer.energy is None


def test_layer_error_is_zero_in_fake_quant_and_positive_in_analog():
    torch.manual_seed(0)
    inputs = torch.randn(32, 200)
    model = torch.nn.Sequential(
        torch.nn.Linear(200, 130), torch.nn.ReLU(), torch.nn.Linear(130, 10)
    )
    convert(model, HardwareConfig.preset("paper"), "fake_quant", include=["*"])
    model.train()

    def run() -> None:
        model(inputs)

    assert layer_errors(model, run, "fake_quant") == {"0": 0.0, "2": 0.0}
    analog = layer_errors(model, run)
    # Synaptogen cells (HRS leakage, spread, nonlinearity), read noise and a 4-bit ADC: a few
    # percent of output RMS; a broken comparison gives 0 or O(1).
    assert set(analog) == {"0", "2"}
    assert all(0.005 < error < 0.5 for error in analog.values())
    # Measured 0.087 and 0.071 (over chip and input seeds 0-4: 0.087-0.090 and 0.067-0.092).
    assert all(0.04 < error < 0.15 for error in analog.values()), analog
    # Ideal cells without noise and ADC reproduce fake_quant up to float rounding.
    for matmul in hardware_matmuls(model):
        matmul.hardware = HardwareConfig.preset("ideal")
    assert all(error < 1e-5 for error in layer_errors(model, run).values())
    # Modes and training flags are restored.
    assert {matmul.execution for matmul in hardware_matmuls(model)} == {"fake_quant"}
    assert all(module.training for module in model.modules())


def test_report_files_agree(tmp_path):
    hardware = HardwareConfig(weight_bits=3, cell_model="ideal")
    model, _ = model_with_integers(hardware)
    errors = {"0": 0.25}
    report = hardware_report(model, errors)
    paths = report.write(tmp_path)
    document = json.loads(paths["json"].read_text())
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [row["layer"] for row in rows] == ["0", "1", "total", DIGITAL_BASELINE]
    assert [layer["cells"] for layer in document["layers"]] == [int(r["cells"]) for r in rows[:2]]
    assert (
        int(rows[2]["cells"])
        == document["total"]["cells"]
        == sum(layer.cells for layer in report.layers)
    )
    assert rows[0]["rel. RMS error"] == "0.25" and rows[1]["rel. RMS error"] == ""
    markdown = paths["md"].read_text()
    assert (
        "first-order estimates" in markdown and markdown.count("\n| ") == 6
    )  # header, separator, 2 layers, total, digital baseline


def test_report_shows_programming_statistics_without_programming_the_model(tmp_path):
    hardware = HardwareConfig(
        weight_bits=3, write_verify=True, stuck_lrs_rate=0.01, stuck_hrs_rate=0.02
    )
    model, integers = model_with_integers(hardware)
    report = hardware_report(model)
    assert all(matmul.chip is None for matmul in hardware_matmuls(model))  # temporary chips
    for layer, weight_integers in zip(report.layers, integers, strict=True):
        chip = next(m for m in hardware_matmuls(model) if m.name == layer.name).build_chip(
            torch.as_tensor(weight_integers * 0.01, dtype=torch.float32)
        )
        stats = chip.programming  # the same chip as the report's (same seed)
        assert layer.programming_attempts == stats.attempts and len(stats.attempts) == 5
        assert sum(layer.programming_attempts) + layer.unverified_cells == layer.cells
        assert (layer.stuck_lrs_cells, layer.stuck_hrs_cells) == (stats.stuck_lrs, stats.stuck_hrs)
        # ~1 % and ~2 % of the cells stuck; wrongly stuck cells never verify.
        assert 0.003 < layer.stuck_lrs_cells / layer.cells < 0.02
        assert 0.01 < layer.stuck_hrs_cells / layer.cells < 0.03
        assert layer.unverified_cells >= stats.stuck_hrs * 0.2
        assert layer.programming_pulses == stats.pulses > 2 * layer.lrs_cells
        assert layer.verify_reads == stats.verify_reads > layer.cells
        assert layer.programming_energy == pytest.approx(
            stats.pulses * hardware.program_pulse_energy
            + stats.verify_reads * hardware.verify_read_energy
        )
        assert layer.programming_time == pytest.approx(
            stats.pulses * hardware.program_pulse_time
            + stats.verify_reads * hardware.verify_read_time
        )
    total = report.total()
    assert total["stuck_lrs_cells"] == sum(layer.stuck_lrs_cells for layer in report.layers)
    assert total["programming_attempts"] == tuple(
        map(sum, zip(*(layer.programming_attempts for layer in report.layers), strict=True))
    )
    rows = list(csv.DictReader(report.write(tmp_path)["csv"].open()))
    assert rows[0]["stuck LRS"] == str(report.layers[0].stuck_lrs_cells)
    assert rows[0]["unverified"] == str(report.layers[0].unverified_cells)
    assert rows[0]["verify attempts (1/2/...)"] == "/".join(
        map(str, report.layers[0].programming_attempts)
    )
    # Without write-verify and faults: no histogram, nothing unverified or stuck.
    plain = hardware_report(model_with_integers(HardwareConfig(weight_bits=3))[0]).layers[0]
    assert plain.programming_attempts == () and plain.unverified_cells == 0
    assert (plain.stuck_lrs_cells, plain.stuck_hrs_cells, plain.verify_reads) == (0, 0, 0)
    assert plain.programming_pulses == plain.cells + plain.lrs_cells  # reset all, set the ones


def brute_force_cell_energy(chip, codes: torch.Tensor) -> float:
    """Per input vector: sum over every read pulse and cell of w V I(V, r) cell_read_time,
    cell by cell in float64 from the chip's own states and the configured I-V curves (numpy),
    for integer DAC codes [N, in]: amplitude V = c / M U for the whole window; pulse width
    V = sign(c) U for |c| / M of it; bit-serial one pulse of sign(c) U per 1 bit of |c|."""
    hardware = chip.hardware
    params = device_params(hardware)
    if hardware.cell_model == "ideal":
        low, high = np.array([float(params.g_llrs), 0.0]), np.array([0.0])
    else:
        low, high = params.llrs_coeffs.double().numpy(), params.hhrs_coeffs.double().numpy()
    layout, planes = chip.layout, chip.planes
    total = chip.total.double().view(layout.tiles_in, planes, layout.tile_rows, -1)
    difference = chip.difference.double().view(layout.tiles_in, planes, layout.tile_rows, -1)
    sides = [(total + difference) / 2, (total - difference) / 2]  # r+ and r-
    states = [
        side.permute(1, 0, 2, 3).reshape(planes, -1, layout.out_features)[:, : layout.in_features]
        for side in sides
    ]
    states = np.stack([state.numpy() for state in states])  # [2, planes, in, out]
    top, volts = chip.dac.max_code, hardware.input_voltage
    energy = 0.0
    for code in codes.double().numpy():
        sign, magnitude = np.sign(code), np.abs(code)
        if hardware.dac_mode == "bit_serial":
            pulses = [(sign * volts, (magnitude.astype(int) >> b) & 1) for b in range(8)]
        elif hardware.dac_encoding == "pulse_width":
            pulses = [(sign * volts, magnitude / top)]
        else:
            pulses = [(code / top * volts, np.ones_like(code))]
        for voltage, weight in pulses:
            u = voltage[None, None, :, None]
            current = (1 - states) * np.polyval(low, u) + states * np.polyval(high, u)
            energy += float((weight[None, None, :, None] * u * current).sum())
    return energy * hardware.cell_read_time / codes.shape[0]


@pytest.mark.parametrize("cell", ["synaptogen", "ideal"])
@pytest.mark.parametrize("mode", [{}, {"dac_encoding": "pulse_width"}, {"dac_mode": "bit_serial"}])
def test_measured_cell_energy_is_the_per_cell_sum_for_each_encoding(cell, mode):
    """A tiny chip (2 row tiles, the second padded; 3 bit planes) and tiny inputs: the energy
    from the counted DAC levels equals the brute-force per-cell, per-pulse sum; zero inputs
    cost no cell-read energy in every encoding (0 V, or pulses of zero length)."""
    hardware = HardwareConfig(
        weight_bits=4, tile_rows=8, tile_cols=4, cell_model=cell, read_noise="off", **mode
    )
    weights = integer_weights(6, 11, hardware.weight_qmax, seed=5).float()
    chip = Crossbar.program(weights, 1.0, hardware, chip_seed=2)
    generator = torch.Generator().manual_seed(6)
    codes = torch.randint(-127, 128, (5, 11), generator=generator).float()
    codes[0] = 127  # full scale and zero inputs in the same batch
    codes[1] = 0
    chip.count_inputs()
    chip.read(codes[:2])
    chip.read(codes[2:])
    assert chip.input_vectors == 5
    expected = brute_force_cell_energy(chip, codes)
    assert expected > 0
    assert measured_cell_energy(chip) == pytest.approx(expected, rel=1e-9)
    chip.count_inputs()
    chip.read(torch.zeros(3, 11))
    assert measured_cell_energy(chip) == 0.0


def test_report_charges_the_measured_inputs_of_an_analog_run():
    """`measuring_inputs` around `layer_errors` (the report's own analog run): each layer's
    reported cell energy is the measured one, below the full-scale bound (which the report
    keeps without measured inputs); amplitude encoding (V I(V) ~ (c / M)^2) costs less than
    pulse width (~ |c| / M) on the same inputs."""
    torch.manual_seed(0)
    inputs = torch.randn(16, 200)
    energies = {}
    for encoding in ("amplitude", "pulse_width"):
        model = torch.nn.Sequential(
            torch.nn.Linear(200, 130), torch.nn.ReLU(), torch.nn.Linear(130, 10)
        )
        hardware = HardwareConfig.preset("paper", dac_encoding=encoding)
        convert(model, hardware, "fake_quant", include=["*"])
        model.train()
        bound = hardware_report(model).layers
        with measuring_inputs(model):
            layer_errors(model, lambda model=model: model(inputs))
        measured = hardware_report(model).layers
        for layer, unmeasured, matmul in zip(measured, bound, hardware_matmuls(model), strict=True):
            assert matmul.chip.input_vectors == 16 and not matmul.chip.counting_inputs
            assert layer.cell_energy == measured_cell_energy(matmul.chip)
            assert 0 < layer.cell_energy < unmeasured.cell_energy
        energies[encoding] = [layer.cell_energy for layer in measured]
    assert all(a < p for a, p in zip(energies["amplitude"], energies["pulse_width"], strict=True))

"""Wire resistance (IR drop): the exact and first-order reads against a dense nodal solve.

The oracle assembles the full nodal system of one array (2 R C unknowns: a row and a column
node per cell, the row driven at its left end, the column grounded below its last row) from
per-segment stamps, and solves it by Newton's method with a dense float64 linear solve and the
I-V polynomials' derivatives from numpy: nothing shared with `crossbar.wires` but the device
polynomials.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.chip import Crossbar
from speechbrain_memristor.crossbar.layout import to_tile_major
from speechbrain_memristor.physics.cell_models import device_params
from speechbrain_memristor.physics.noise import read_noise_model

IDEAL_ADC = {"adc_precision_bits": None, "adc_range_bits": None}


def curves(hardware: HardwareConfig):
    """(I(u, r), dI/du) of the configured cells as numpy functions (float64)."""
    params = device_params(hardware)
    if hardware.cell_model == "ideal":
        low = np.array([float(params.g_llrs), 0.0])
        high = np.array([0.0])
    else:
        low = params.llrs_coeffs.double().numpy()
        high = params.hhrs_coeffs.double().numpy()
    low_d, high_d = np.polyder(low), np.polyder(high)

    def current(u, r):
        return (1 - r) * np.polyval(low, u) + r * np.polyval(high, u)

    def slope(u, r):
        return (1 - r) * np.polyval(low_d, u) + r * np.polyval(high_d, u)

    return current, slope


def dense_nodal_solve(states, volts, present, resistance, hardware):
    """Cell voltages u [R, C] (float64) of one array: Newton on the assembled nodal system."""
    current, slope = curves(hardware)
    rows, cols = states.shape
    g = 1.0 / resistance
    n = rows * cols

    def a(i, j):
        return i * cols + j

    def b(i, j):
        return n + i * cols + j

    wires = np.zeros((2 * n, 2 * n))
    drive = np.zeros(2 * n)
    for i in range(rows):
        for j in range(cols):
            # Row segment to the left: the driver (j = 0) or the previous cell's row node.
            wires[a(i, j), a(i, j)] += g
            if j == 0:
                drive[a(i, j)] += g * volts[i]
            else:
                wires[a(i, j), a(i, j - 1)] -= g
                wires[a(i, j - 1), a(i, j - 1)] += g
                wires[a(i, j - 1), a(i, j)] -= g
            # Column segment below: the next cell's column node or the virtual ground.
            wires[b(i, j), b(i, j)] += g
            if i < rows - 1:
                wires[b(i, j), b(i + 1, j)] -= g
                wires[b(i + 1, j), b(i + 1, j)] += g
                wires[b(i + 1, j), b(i, j)] -= g
    mask = np.repeat(present[:, None], cols, axis=1).astype(float)
    x = np.concatenate([np.repeat(volts[:, None], cols, axis=1).ravel(), np.zeros(n)])
    for _ in range(50):
        u = (x[:n] - x[n:]).reshape(rows, cols)
        cell = (current(u, states) * mask).ravel()
        conductance = (slope(u, states) * mask).ravel()
        residual = wires @ x - drive + np.concatenate([cell, -cell])
        jacobian = wires.copy()
        index = np.arange(n)
        jacobian[index, index] += conductance
        jacobian[index, n + index] -= conductance
        jacobian[n + index, index] -= conductance
        jacobian[n + index, n + index] += conductance
        step = np.linalg.solve(jacobian, -residual)
        x += step
        if np.abs(step).max() < 1e-15:
            break
    return (x[:n] - x[n:]).reshape(rows, cols)


def random_states(planes, rows, cols, seed):
    """States like programmed cells: bits near 0 (LRS), others near 1 (HRS), some extreme."""
    generator = torch.Generator().manual_seed(seed)
    bits = torch.rand(planes, rows, cols, generator=generator) < 0.4
    low = torch.rand(planes, rows, cols, generator=generator) * 0.15
    high = 0.8 + torch.rand(planes, rows, cols, generator=generator) * 0.25
    return torch.where(bits, low, high)


def random_inputs(count, features, qmax, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-qmax, qmax + 1, (count, features), generator=generator).float()


def chip_of(states_pos, states_neg, hardware):
    return Crossbar(states_pos, states_neg, 1.0, hardware, read_seed=3)


def oracle_read(states_pos, states_neg, codes, hardware, resistance):
    """Noise-free values [N, out] of the dense nodal solve of every array (ideal ADC), and the
    per-cell voltages {(side, plane, tile_in, tile_out, n): u}."""
    planes, in_features, out_features = states_pos.shape
    rows, cols = hardware.tile_rows, hardware.tile_cols
    params_scale = chip_of(states_pos, states_neg, hardware).current_scale
    current, _ = curves(hardware)
    volts = codes.double().numpy() * hardware.input_voltage / hardware.dac_max_code
    values = np.zeros((codes.shape[0], out_features))
    voltages = {}
    for side, states in enumerate((states_pos, states_neg)):
        sign = 1.0 if side == 0 else -1.0
        for k in range(planes):
            for t_in in range(0, in_features, rows):
                for t_out in range(0, out_features, cols):
                    block = states[k, t_in : t_in + rows, t_out : t_out + cols].double().numpy()
                    used = block.shape[0]
                    padded = np.zeros((rows, block.shape[1]))
                    padded[:used] = block
                    present = np.arange(rows) < used
                    for n in range(codes.shape[0]):
                        drive = np.zeros(rows)
                        drive[:used] = volts[n, t_in : t_in + rows]
                        u = dense_nodal_solve(padded, drive, present, resistance, hardware)
                        voltages[side, k, t_in, t_out, n] = u
                        column = (current(u, padded) * present[:, None]).sum(0)
                        values[n, t_out : t_out + cols] += sign * 2**k * column * params_scale
    return values, voltages


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("resistance", [0.1, 1.0, 10.0])
def test_exact_solve_matches_dense_nodal_solve(size, resistance):
    """The PCG-Newton solve gives the dense solve's cell voltages to 1e-10 V (float64) and
    column currents to 1e-9 relative, for random states and drives (absent rows included)."""
    hardware = HardwareConfig(
        tile_rows=size, tile_cols=size, wire_resistance=resistance, wire_solver="exact"
    )
    current, _ = curves(hardware)
    states = random_states(2, size, size, seed=size)
    chip = chip_of(states, states.flip(0), hardware)
    generator = torch.Generator().manual_seed(resistance.__hash__() % 1000)
    for trial in range(3):
        volts = (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1) * 0.6
        present = torch.ones(size, dtype=torch.bool)
        present[size - 1 - trial :] = trial == 0  # later trials: the last rows absent
        volts = torch.where(present, volts, 0.0)
        state = states[trial % 2].double()
        u = chip.wires.solve(
            volts.view(size, 1), state, present.view(size, 1).double(), size
        ).numpy()
        expected = dense_nodal_solve(
            state.numpy(), volts.numpy(), present.numpy(), resistance, hardware
        )
        assert np.abs(u - expected)[present.numpy()].max() < 1e-10
        columns = (current(u, state.numpy()) * present.numpy()[:, None]).sum(0)
        reference = (current(expected, state.numpy()) * present.numpy()[:, None]).sum(0)
        np.testing.assert_allclose(columns, reference, rtol=1e-9, atol=1e-9 * abs(reference).max())


@pytest.mark.parametrize("cell_model", ["synaptogen", "ideal"])
def test_exact_read_matches_dense_oracle_through_tiles_and_planes(cell_model):
    """The whole exact read (two input tiles, one padded; two output tiles, one narrower; two
    planes; shift-and-add) equals the oracle to float32 precision (1e-5 of the largest value)."""
    hardware = HardwareConfig(
        tile_rows=8,
        tile_cols=8,
        wire_resistance=2.0,
        wire_solver="exact",
        read_noise="off",
        cell_model=cell_model,
        **IDEAL_ADC,
    )
    states_pos, states_neg = random_states(2, 13, 11, seed=1), random_states(2, 13, 11, seed=2)
    codes = random_inputs(3, 13, hardware.dac_qmax, seed=4)
    values = chip_of(states_pos, states_neg, hardware).read(codes).double().numpy()
    expected, _ = oracle_read(states_pos, states_neg, codes, hardware, 2.0)
    assert np.abs(values - expected).max() < 1e-5 * np.abs(expected).max()


def test_zero_wire_resistance_is_todays_read_bit_for_bit():
    """wire_resistance 0 (the default) builds no circuit and reads exactly as without the field,
    noise and ADC included; an explicit 0 with either solver changes nothing."""
    weights = random_inputs(24, 40, 3, seed=0)
    codes = random_inputs(6, 40, 127, seed=1)
    reads = []
    for extra in ({}, {"wire_resistance": 0.0}, {"wire_resistance": 0.0, "wire_solver": "exact"}):
        hardware = HardwareConfig(tile_rows=16, tile_cols=16, **extra)
        chip = Crossbar.program(weights, 1.0, hardware, chip_seed=5)
        assert chip.wires is None
        reads.append(chip.read(codes))
    assert torch.equal(reads[0], reads[1]) and torch.equal(reads[0], reads[2])


def brute_force_variance(states, volts, hardware):
    """Closed-form-free column variance sum_i a(u) |I(u, r)| [C] at cell voltages u [R, C]."""
    current, _ = curves(hardware)
    model = read_noise_model(hardware)
    coefficient = model.coefficient(torch.from_numpy(volts)).numpy()
    return (coefficient * np.abs(current(volts, states))).sum(0)


def test_exact_variance_is_a_abs_current_at_the_solved_voltages():
    """With noise on, the exact read's per-column variance is sum a(u) |I(u)| of both sides at
    the oracle's voltages (to 1e-6), and tends to today's closed form as r -> 0."""
    size = 8
    for resistance in (3.0, 1e-9):
        hardware = HardwareConfig(
            tile_rows=size, tile_cols=size, wire_resistance=resistance, wire_solver="exact"
        )
        states_pos, states_neg = random_states(1, size, size, 7), random_states(1, size, size, 8)
        hardware = hardware.replace(weight_bits=2)
        chip = chip_of(states_pos, states_neg, hardware)
        codes = random_inputs(1, size, hardware.dac_qmax, seed=9)
        levels = (codes + chip.dac.level_offset).to(torch.int32).view(-1)
        _, variance = chip.wires.exact_read(levels, 1, 1, slice(0, size))
        volts = codes.double().numpy()[0] * hardware.input_voltage / hardware.dac_qmax
        present = np.ones(size, dtype=bool)
        expected = 0.0
        for states in (states_pos[0], states_neg[0]):
            state = states.double().numpy()
            u = dense_nodal_solve(state, volts, present, resistance, hardware)
            expected = expected + brute_force_variance(state, u, hardware)
        steps = (chip.current_scale / chip.adc.step) ** 2
        np.testing.assert_allclose(variance[0, 0].double().numpy(), expected * steps, rtol=1e-6)


def test_exact_noisy_read_has_the_solved_mean_and_variance():
    """4000 noisy exact reads of one input (ideal ADC): the sample mean lies within 5 standard
    errors of the noise-free exact read, and the sample variance within 5 standard errors
    (sqrt(2 / n) relative for a Gaussian) of the exact variance."""
    size, reads = 8, 4000
    hardware = HardwareConfig(
        tile_rows=size, tile_cols=size, wire_resistance=3.0, wire_solver="exact", **IDEAL_ADC
    )
    hardware = hardware.replace(weight_bits=2, read_noise="physical")
    states_pos, states_neg = random_states(1, size, size, 10), random_states(1, size, size, 11)
    chip = chip_of(states_pos, states_neg, hardware)
    codes = random_inputs(1, size, hardware.dac_qmax, seed=12)
    levels = (codes + chip.dac.level_offset).to(torch.int32).view(-1)
    mean, variance = chip.wires.exact_read(levels, 1, 1, slice(0, size))
    samples = chip.read(codes.expand(reads, size)).double()
    std = variance[0, 0].double().sqrt()
    assert ((samples.mean(0) - mean[0, 0]).abs() < 5 * std / reads**0.5).all()
    ratio = samples.var(0) / variance[0, 0].double()
    assert ((ratio - 1).abs() < 5 * (2 / reads) ** 0.5).all()


def first_order_errors(size, resistance, seed=0, count=4):
    """(relative error of the first-order read, relative error of its IR-drop correction)
    against the exact read on one size x size tile (2 planes, noise off, ideal ADC)."""
    base = HardwareConfig(
        tile_rows=size, tile_cols=size, read_noise="off", weight_bits=3, **IDEAL_ADC
    )
    states_pos = random_states(2, size, size, seed)
    states_neg = random_states(2, size, size, seed + 1)
    codes = random_inputs(count, size, base.dac_qmax, seed + 2)
    ideal = chip_of(states_pos, states_neg, base).read(codes).double()
    reads = {}
    for solver in ("first_order", "exact"):
        hardware = base.replace(wire_resistance=resistance, wire_solver=solver)
        reads[solver] = chip_of(states_pos, states_neg, hardware).read(codes).double()
    error = (reads["first_order"] - reads["exact"]).norm()
    return float(error / reads["exact"].norm()), float(error / (reads["exact"] - ideal).norm())


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("resistance", [0.1, 0.3, 1.0])
def test_first_order_read_is_close_where_the_linearization_holds(size, resistance):
    """Where r G_LRS N^2 <= 0.06 (G_LRS about 1 / 4.5 kohm; N = 16, r = 1 ohm is the largest
    here), the first-order IR-drop correction is within 15 % of the exact one and the read
    within 0.5 % (README's table: the error grows like (r G N^2)^2, the correction like
    r G N^2); the states are programmed-like (40 % bits in LRS) and inputs full-range."""
    read_error, correction_error = first_order_errors(size, resistance)
    assert correction_error < 0.15
    assert read_error < 5e-3


def test_first_order_noise_is_todays_noise():
    """With read noise on (ideal ADC), a first-order read minus its noise-free value equals
    today's noisy read minus its noise-free value: the same samples and closed-form variance."""
    weights = random_inputs(20, 24, 3, seed=3)
    codes = random_inputs(5, 24, 127, seed=4)
    deltas = []
    for resistance in (0.0, 1.0):
        hardware = HardwareConfig(tile_rows=16, tile_cols=16, wire_resistance=resistance)
        hardware = hardware.replace(**IDEAL_ADC)
        chip = Crossbar.program(weights, 1.0, hardware, chip_seed=1)
        noisy = chip.read(codes)
        chip.noise_model = None
        deltas.append(noisy - chip.read(codes))
    torch.testing.assert_close(deltas[0], deltas[1], rtol=0, atol=1e-4)


def test_precomputed_matrices_are_tile_major():
    """The exact solver's per-side states and the first-order read's sum and difference
    matrix are the chip's states, tile-major."""
    states_pos, states_neg = random_states(2, 13, 11, seed=1), random_states(2, 13, 11, seed=2)
    hardware = HardwareConfig(tile_rows=8, tile_cols=8, wire_resistance=1.0)
    chip = chip_of(states_pos, states_neg, hardware.replace(wire_solver="exact"))
    assert torch.equal(chip.wires.sides[0], to_tile_major(states_pos, chip.layout))
    assert torch.equal(chip.wires.sides[1], to_tile_major(states_neg, chip.layout))
    chip = chip_of(states_pos, states_neg, hardware)
    matrix = chip.wires.sum_difference
    assert torch.equal(matrix[0], to_tile_major(states_pos + states_neg, chip.layout))
    assert torch.equal(matrix[1], chip.difference)

"""Bit-serial inputs against a brute-force per-bit, per-cell simulation.

Each input code's magnitude bits are applied as separate reads of +-input_voltage pulses; the
oracle computes every pulse's per-cell currents and variances from the device model
(`test_crossbar.brute_force_columns` with a 1-bit DAC), converts each pulse's column values
with the ADC and adds them with weights 2^b / M.
"""

from __future__ import annotations

import pytest
import torch
from test_crossbar import (
    brute_force_columns,
    brute_force_values,
    random_codes,
    random_weight_int,
    reference_current_scale,
)

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.crossbar.read import ideal_read

IDEAL_ADC = {"adc_precision_bits": None, "adc_range_bits": None}


def pulses_of(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[bits, N, in] sign(c) * bit b of |c|, written out per bit."""
    magnitude = codes.abs().long()
    return torch.stack([((magnitude // 2**b) % 2).float() * codes.sign() for b in range(bits)])


def brute_force_bit_serial(chip, codes, hardware):
    """(values [N, out], per output the smallest distance of its pre-ADC values to a rounding
    boundary, in ADC steps [N, out]; mean and variance per bit before the ADC [bits, N,
    planes, tiles, out])."""
    bits = hardware.dac_max_code.bit_length()
    pulse_hardware = hardware.replace(dac_bits=2, dac_mode="parallel", dac_grid="symmetric")
    pulses = pulses_of(codes, bits)
    total, nearest, means, variances = 0.0, None, [], []
    for b in range(bits):
        mean, variance = brute_force_columns(*chip.states(), pulses[b], pulse_hardware)
        values, boundary = brute_force_values(mean, hardware)
        total = total + values * 2.0**b / hardware.dac_max_code
        closest = boundary.amin((1, 2))
        nearest = closest if nearest is None else torch.minimum(nearest, closest)
        means.append(mean)
        variances.append(variance)
    return total, nearest, torch.stack(means), torch.stack(variances)


@pytest.mark.parametrize("grid", ["symmetric", "synaptogenml"])
@pytest.mark.parametrize("adc", [{}, IDEAL_ADC])
def test_noise_free_bit_serial_read_equals_brute_force(grid, adc):
    """Noise off: with an ideal ADC equal to float error (1e-5 relative); with the ADC p4/r4
    identical ADC codes wherever the oracle's pre-ADC values lie > 1e-4 steps from a rounding boundary
    (float32 error is about 1e-6 steps), which is nearly every output."""
    hardware = HardwareConfig(
        dac_mode="bit_serial", dac_grid=grid, read_noise="off", tile_rows=32, **adc
    )
    weights = random_weight_int(24, 70, hardware.weight_qmax, seed=1)
    chip = Crossbar.program(weights, 1.0, hardware, chip_seed=2)
    codes = random_codes(5, 70, hardware.dac_max_code, seed=3)
    values = chip.read(codes, input_scale=hardware.dac_max_code / hardware.dac_qmax).double()
    expected, nearest, _, _ = brute_force_bit_serial(chip, codes, hardware)
    if adc:
        torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)
    else:
        clear = nearest > 1e-4
        assert clear.float().mean() > 0.9
        # One ADC code of the least significant pulse moves a value by 2^-4 / M = 4.9e-4; the
        # float32 shift-and-add of identical codes stays within 1e-5: identical codes.
        torch.testing.assert_close(values[clear], expected[clear], rtol=0, atol=1e-5)


def test_noisy_bit_serial_read_mean_and_variance():
    """Physical noise, ideal ADC, 4000 reads of one input: per column the z-score of the sample
    mean against sum_b w_b mean_b is < 6, and the sample variance against sum_b w_b^2 var_b
    (independent noise per pulse) is within 6 standard deviations sqrt(2 / (K - 1)) = 2.2 %
    (a Gaussian's sample variance), 40 columns."""
    hardware = HardwareConfig(dac_mode="bit_serial", read_noise="physical", **IDEAL_ADC)
    weights = random_weight_int(40, 150, hardware.weight_qmax, seed=4)
    chip = Crossbar.program(weights, 1.0, hardware, chip_seed=5)
    codes = random_codes(1, 150, hardware.dac_max_code, seed=6)
    _, _, means, variances = brute_force_bit_serial(chip, codes, hardware)
    bits, planes = means.shape[0], means.shape[2]
    scale = reference_current_scale(hardware)
    bit = (2.0 ** torch.arange(bits, dtype=torch.float64) / hardware.dac_max_code).view(-1, 1, 1, 1)
    plane = (2.0 ** torch.arange(planes, dtype=torch.float64)).view(1, -1, 1, 1)
    mean = (means[:, 0] * bit * plane * scale).sum((0, 1, 2))
    variance = (variances[:, 0] * (bit * plane * scale) ** 2).sum((0, 1, 2))
    reads = 4000
    samples = chip.read(codes.expand(reads, -1)).double()
    z = (samples.mean(0) - mean) / (variance / reads).sqrt()
    assert z.abs().max() < 6
    spread = (2 / (reads - 1)) ** 0.5
    assert ((samples.var(0) / variance) - 1).abs().max() < 6 * spread


@pytest.mark.parametrize("grid", ["symmetric", "synaptogenml"])
def test_ideal_bit_serial_chip_and_ideal_read_reproduce_fake_quant(grid):
    """Ideal cells, no noise, ideal ADC: the bit-serial chip and `ideal_read` give
    sum_i (c_i / M) w_int (the fake_quant product) to float error."""
    hardware = HardwareConfig.preset("ideal", dac_mode="bit_serial", dac_grid=grid)
    weights = random_weight_int(30, 50, hardware.weight_qmax, seed=7)
    scale = torch.tensor(0.03)
    inputs = torch.randn(6, 50) * 2
    codes = torch.clamp(
        torch.round(inputs / scale / (hardware.dac_qmax / hardware.dac_max_code)),
        -hardware.dac_max_code,
        hardware.dac_max_code,
    )
    expected = (codes / hardware.dac_max_code) @ weights.t()
    chip = Crossbar.program(weights, 1.0, hardware, chip_seed=0)
    torch.testing.assert_close(chip.read(inputs, scale), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ideal_read(inputs, scale, weights, hardware), expected, rtol=1e-5, atol=1e-5
    )


def test_bit_serial_ideal_read_converts_every_pulse():
    """With the ADC, `ideal_read` in bit-serial mode rounds every pulse's read (sum of weights
    2^b / M of integer multiples of the ADC step), unlike one rounding of the parallel read."""
    hardware = HardwareConfig(dac_mode="bit_serial", adc_precision_bits=0, adc_range_bits=8)
    weights = random_weight_int(8, 20, hardware.weight_qmax, seed=8)
    codes = random_codes(4, 20, hardware.dac_max_code, seed=9)
    values = ideal_read(codes, 1.0, weights, hardware)
    pulses = pulses_of(codes, 7)
    planes = torch.stack([((weights.abs().long() >> k) & 1) * weights.sign() for k in range(2)])
    expected = sum(
        2.0**b / 127 * sum(2.0**k * (pulses[b] @ planes[k].t().float()) for k in range(2))
        for b in range(7)
    )  # integer pulse reads: an ADC of step 1 leaves them unchanged
    torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-6)

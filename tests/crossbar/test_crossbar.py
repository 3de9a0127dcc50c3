"""Crossbar mapping, programming and the closed-form analog read against brute-force oracles.

The oracle computes every cell's current I = (1 - r) L(u) + r H(u) from the device model's
curves and every cell's noise variance with the device model's noise formula, as an explicit
[batch, planes, in, out] tensor, and sums it per input tile: no closed form involved.
"""

import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from synaptogen import synaptogen as reference

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.crossbar import read as crossbar_read
from speechbrain_memristor.crossbar.layout import (
    TileLayout,
    from_tile_major,
    magnitude_bit_planes,
    signed_bit_planes,
    to_tile_major,
)
from speechbrain_memristor.crossbar.periphery import AnalogToDigitalConverter
from speechbrain_memristor.physics.calibration import calibrated_current_scale
from speechbrain_memristor.physics.cell_models import device_params
from speechbrain_memristor.physics.cells import CellArray
from speechbrain_memristor.physics.noise import (
    ELECTRON_CHARGE,
    SYNAPTOGENML_BANDWIDTH,
    SYNAPTOGENML_CHARGE,
    ZERO_VOLTAGE_REPLACEMENT,
    read_noise_model,
    read_noise_variance,
    shot_and_johnson_coefficient,
)
from speechbrain_memristor.util.seeding import stable_seed

# The authors' SynaptogenML read-noise constants, written out here (not imported from the code
# under test): a bandwidth of 1e-8 Hz and Euler's number in place of the electron charge.
AUTHORS_BANDWIDTH = 1e-8
AUTHORS_CHARGE = 2.718281828459045  # math.e


@functools.lru_cache(maxsize=4)
def median_bit_conductance(var_order: int) -> float:
    """1/R_LRS - 1/R_HRS of the median resistances of 2^16 fresh cells (seed 0), recomputed
    from the device model rather than taken from `calibrated_current_scale`."""
    params = device_params(HardwareConfig(device_var_order=var_order))
    generator = torch.Generator().manual_seed(0)
    cells = CellArray(2**16, params=params, var_order=var_order, generator=generator)
    return float(1.0 / cells.lrs.double().median() - 1.0 / cells.hrs.double().median())


def reference_current_scale(hardware: HardwareConfig) -> float:
    """Value per ampere of column current, recomputed in the test: 1 / (U_in * G_bit)."""
    if hardware.current_scale is not None:
        return hardware.current_scale
    if hardware.cell_model == "ideal":
        return 1.0 / (hardware.input_voltage * float(device_params(hardware).g_llrs))
    return 1.0 / (hardware.input_voltage * median_bit_conductance(hardware.device_var_order))


def test_authors_noise_constants_and_current_scale_are_pinned():
    assert SYNAPTOGENML_BANDWIDTH == AUTHORS_BANDWIDTH == 1e-8
    assert SYNAPTOGENML_CHARGE == AUTHORS_CHARGE == math.e
    for hardware in (HardwareConfig(), HardwareConfig(input_voltage=0.3, cell_model="ideal")):
        assert calibrated_current_scale(hardware) == pytest.approx(
            reference_current_scale(hardware), rel=1e-6
        )


def random_codes(rows: int, columns: int, qmax: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-qmax, qmax + 1, (rows, columns), generator=generator).float()


def random_weight_int(out_features: int, in_features: int, qmax: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (out_features, in_features)
    return torch.randint(-qmax, qmax + 1, shape, generator=generator).float()


def brute_force_columns(r_pos, r_neg, codes, hardware):
    """Per-tile column current differences and noise variances, float64 [N, planes, tiles, out].

    Explicit per-cell currents (device-model curves, in float32 like the device) and per-cell
    variances (device-model noise formula at the read voltage, 0 V read as 1e-12 V).
    """
    params = device_params(hardware)
    volts = codes.float() * torch.tensor(hardware.input_voltage / hardware.dac_qmax)
    noise_volts = torch.where(volts == 0, ZERO_VOLTAGE_REPLACEMENT, volts)

    def currents(states, voltage):
        u = voltage[:, None, :, None]  # [N, 1, in, 1]
        if hardware.cell_model == "ideal":
            low, high = u * float(params.g_llrs), torch.zeros_like(u)
        else:
            low, high = params.i_llrs(u), params.i_hhrs(u)
        return (1 - states) * low + states * high  # [N, planes, in, out] per cell

    difference = currents(r_pos, volts).double() - currents(r_neg, volts).double()
    if hardware.read_noise == "off":
        variance = torch.zeros_like(difference)
    else:
        bandwidth, charge = hardware.bandwidth, ELECTRON_CHARGE
        if hardware.read_noise == "synaptogenml":
            bandwidth, charge = AUTHORS_BANDWIDTH, AUTHORS_CHARGE
        u = noise_volts[:, None, :, None].expand_as(difference)
        variance = sum(
            read_noise_variance(
                currents(states, noise_volts), u, bandwidth, hardware.temperature, charge
            ).double()
            for states in (r_pos, r_neg)
        )
    layout = TileLayout.from_config(r_pos.shape[1], r_pos.shape[2], hardware)
    tiles = [
        slice(t * layout.tile_rows, (t + 1) * layout.tile_rows) for t in range(layout.tiles_in)
    ]
    means = torch.stack([difference[:, :, rows].sum(2) for rows in tiles], dim=2)
    variances = torch.stack([variance[:, :, rows].sum(2) for rows in tiles], dim=2)
    return means, variances


def brute_force_values(means, hardware):
    """ADC and shift-and-add of brute-force column currents (float64): values [N, out] and the
    distance of each pre-ADC value to the nearest rounding boundary, in ADC steps."""
    adc = AnalogToDigitalConverter.from_config(hardware)
    scaled = means * reference_current_scale(hardware) / adc.step
    boundary_distance = (scaled - scaled.floor() - 0.5).abs()
    codes = adc.convert_(means.clone(), reference_current_scale(hardware))
    planes = means.shape[1]
    weights = (2.0 ** torch.arange(planes, dtype=torch.float64)) * adc.step
    return torch.einsum("nkto,k->no", codes, weights), boundary_distance


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_planes_round_trip_every_width(bits):
    planes = bits - 1
    magnitudes = torch.arange(0, 2**planes)
    bits_tensor = magnitude_bit_planes(magnitudes, planes)
    assert bits_tensor.shape == (planes, 2**planes)
    powers = 2 ** torch.arange(planes).unsqueeze(1)
    assert torch.equal((bits_tensor.long() * powers).sum(0), magnitudes)
    weight_int = random_weight_int(9, 7, 2**planes - 1, seed=bits)
    signed = signed_bit_planes(weight_int, planes)  # [planes, in, out]
    recomposed = (signed * (2.0 ** torch.arange(planes)).view(-1, 1, 1)).sum(0)
    assert torch.equal(recomposed, weight_int.t())
    with pytest.raises(ValueError, match="magnitudes"):
        magnitude_bit_planes(torch.tensor([2**planes]), planes)


def test_tile_major_round_trip_with_padding():
    layout = TileLayout(in_features=300, out_features=70, tile_rows=128, tile_cols=32)
    assert (layout.tiles_in, layout.tiles_out, layout.padded_in) == (3, 3, 384)
    matrix = torch.randn(2, 300, 70)
    tiled = to_tile_major(matrix, layout)
    assert tiled.shape == (6, 128, 70)
    for plane in range(2):  # padded rows of the last tile hold no cells
        assert torch.equal(tiled[2 * 2 + plane, 44:], torch.zeros(84, 70))
    assert torch.equal(tiled[1 * 2 + 1, 5, 3], matrix[1, 128 + 5, 3])  # batch tile * planes + k
    assert torch.equal(from_tile_major(tiled, layout), matrix)


def program(hardware, out_features=40, in_features=300, seed=7):
    weight_int = random_weight_int(out_features, in_features, hardware.weight_qmax, seed)
    return weight_int, Crossbar.program(weight_int, 0.1, hardware, chip_seed=seed)


def test_programmed_states_follow_bits_and_seed():
    hardware = HardwareConfig(read_noise="off")
    weight_int, chip = program(hardware)
    r_pos, r_neg = chip.states()
    assert r_pos.shape == r_neg.shape == (2, 300, 40)
    bits = signed_bit_planes(weight_int, 2)
    set_cells = torch.cat([r_pos[bits > 0], r_neg[bits < 0]])
    reset_cells = torch.cat([r_pos[bits <= 0], r_neg[bits >= 0]])
    # LRS states sit near r = 0 and HRS states near r = 0.7-0.9: the populations separate.
    assert set_cells.max() < reset_cells.min()
    assert chip.inventory().cells == 2 * 2 * 300 * 40 and chip.inventory().array_pairs == 2 * 3 * 1
    same = Crossbar.program(weight_int, 0.1, hardware, chip_seed=7)
    assert all(torch.equal(a, b) for a, b in zip(same.states(), chip.states(), strict=True))
    other = Crossbar.program(weight_int, 0.1, hardware, chip_seed=8)
    assert not torch.equal(other.states()[0], r_pos)


def test_programmed_state_distributions_match_reference_package(monkeypatch):
    """Programmed LRS/HRS states follow the synaptogen package given reset and set pulses.

    Two-sample KS test on 20k cells each: at p = 1e-6 the critical distance is ~0.03, while a
    wrong pulse sequence or state bookkeeping shifts whole populations (LRS vs HRS states are
    disjoint). Fresh cells start in HRS here and in no state in the reference, so the
    reference gets the explicit reset pulse first (its initial cycles are not well defined)."""
    hardware = HardwareConfig(weight_bits=2, read_noise="off")
    weight_int = torch.ones(100, 200)  # every positive cell set, every negative cell reset
    chip = Crossbar.program(weight_int, 1.0, hardware, chip_seed=3)
    r_pos, r_neg = (states.flatten().numpy() for states in chip.states())

    rng = np.random.default_rng(11)
    normal = lambda *a, **k: rng.standard_normal(*a, dtype=np.float32, **k)  # noqa: E731
    monkeypatch.setattr(reference, "randn", normal)
    monkeypatch.setattr(reference, "rand", lambda *a, **k: rng.random(*a, dtype=np.float32, **k))
    cells = reference.CellArrayCPU(20000)
    reference.applyVoltage(cells, np.float32(hardware.reset_voltage))
    hrs = cells.r.copy()
    reference.applyVoltage(cells, np.float32(hardware.set_voltage))
    lrs = cells.r.copy()
    assert stats.ks_2samp(r_pos, lrs).pvalue > 1e-6
    assert stats.ks_2samp(r_neg, hrs).pvalue > 1e-6


def test_initial_cycles_change_the_chip_deterministically():
    hardware = HardwareConfig(read_noise="off", initial_cycles=2)
    weight_int, chip = program(hardware)
    _, again = program(hardware)
    _, uncycled = program(hardware.replace(initial_cycles=0))
    assert torch.equal(chip.states()[0], again.states()[0])
    assert not torch.equal(chip.states()[0], uncycled.states()[0])
    bits = signed_bit_planes(weight_int, 2)
    r_pos, r_neg = chip.states()
    assert torch.cat([r_pos[bits > 0], r_neg[bits < 0]]).max() < 0.5  # set cells in LRS


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # 3 bits, 128-row tiles (300 rows: last tile partial), ADC p4/r4
        {
            "weight_bits": 4,
            "tile_rows": 64,
            "tile_cols": 16,
            "adc_precision_bits": 2,
            "adc_range_bits": 2,
        },
        {
            "tile_rows": 0,
            "tile_cols": 0,
            "dac_bits": 4,
            "adc_precision_bits": 6,
            "adc_range_bits": 4,
        },
        {"cell_model": "ideal"},
    ],
)
def test_noise_off_read_equals_brute_force(overrides):
    """Before the ADC: equal up to float error. After: identical codes, except values within
    1e-3 step of a rounding boundary, where float32 summation order may legitimately decide."""
    hardware = HardwareConfig(read_noise="off", **overrides)
    weight_int, chip = program(hardware)
    codes = random_codes(16, 300, hardware.dac_qmax, seed=1)
    codes[0] = hardware.dac_qmax  # full-scale row: saturates the ADC
    codes[1] = 0
    means, _ = brute_force_columns(*chip.states(), codes, hardware)

    ideal = hardware.replace(adc_precision_bits=None, adc_range_bits=None)
    ideal_chip = Crossbar(*chip.states(), 0.1, ideal, read_seed=0)
    expected_ideal, _ = brute_force_values(means, ideal)
    assert torch.allclose(ideal_chip.read(codes).double(), expected_ideal, rtol=1e-5, atol=1e-4)

    expected, distance = brute_force_values(means, hardware)
    actual = chip.read(codes).double()
    decisive = (distance > 1e-3).all(dim=(1, 2))  # [N, out] no near-boundary conversion
    assert decisive.float().mean() > 0.95
    assert torch.equal(actual[decisive], expected[decisive])
    adc = AnalogToDigitalConverter.from_config(hardware)
    if adc.range_bits is not None:  # the full-scale row exercises clipping
        scaled = means * reference_current_scale(hardware)
        assert (scaled.abs() > 2.0 ** (adc.range_bits - 1)).any()


def sample_statistics(chip, codes_row, reads):
    samples = chip.read(codes_row.expand(reads, -1)).double()
    return samples.mean(0), samples.var(0)


def expected_statistics(chip, codes_row, hardware):
    """Mean and variance of the shift-and-added ideal-ADC output from brute-force columns."""
    means, variances = brute_force_columns(*chip.states(), codes_row[None], hardware)
    scale = reference_current_scale(hardware)
    plane = (2.0 ** torch.arange(means.shape[1], dtype=torch.float64)).view(1, -1, 1, 1)
    mean = (means * plane * scale).sum((1, 2))[0]
    variance = (variances * plane**2 * scale**2).sum((1, 2))[0]
    return mean, variance


def assert_statistics_match(chip, codes_row, hardware, reads=4000):
    """Sample mean and variance over ``reads`` independent reads against the oracle.

    Mean: z-score < 6 per column (Gaussian, known variance). Variance: s^2/sigma^2 ~
    chi2(K-1)/(K-1) with std sqrt(2/(K-1)) = 2.2 % per column; per column within 6 std
    (13 %), averaged over the 40 independent columns within 6 std (2.1 %)."""
    mean, variance = expected_statistics(chip, codes_row, hardware)
    sample_mean, sample_variance = sample_statistics(chip, codes_row, reads)
    z = (sample_mean - mean) / (variance / reads).sqrt()
    assert z.abs().max() < 6
    ratio = sample_variance / variance
    spread = (2 / (reads - 1)) ** 0.5
    assert (ratio - 1).abs().max() < 6 * spread
    assert abs(ratio.mean() - 1) < 6 * spread / len(ratio) ** 0.5


@pytest.mark.parametrize("noise", ["physical", "synaptogenml"])
def test_noisy_read_mean_and_variance_match_brute_force(noise):
    hardware = HardwareConfig(read_noise=noise, adc_precision_bits=None, adc_range_bits=None)
    _, chip = program(hardware)
    codes_row = random_codes(1, 300, hardware.dac_qmax, seed=2)[0]
    codes_row[:20] = 0  # zero inputs still carry Johnson noise (read at 1e-12 V)
    assert_statistics_match(chip, codes_row, hardware)


def reference_r_star_range(hardware):
    """(min, max) over the DAC's voltages of r*(u) = L(u) / (L(u) - H(u)), from the synaptogen
    package's P_LLRS / P_HHRS polynomials in float64 (0 V read as 1e-12 V, like the chip)."""
    assert hardware.device_params is None and hardware.cell_model == "synaptogen"
    params = reference.default_params
    qmax = hardware.dac_qmax
    volts = np.arange(-qmax, qmax + 1) * (hardware.input_voltage / qmax)
    volts[qmax] = 1e-12
    hhrs, llrs = params.HHRS.astype(np.float64), params.LLRS.astype(np.float64)
    low = reference.Imix(0.0, volts, hhrs, llrs)
    high = reference.Imix(1.0, volts, hhrs, llrs)
    r_star = low / (low - high)
    assert np.isfinite(r_star).all()
    return float(r_star.min()), float(r_star.max())


@pytest.mark.parametrize("dac_bits", [8, 4, 3])
def test_rare_threshold_is_the_smallest_r_star_over_dac_levels(dac_bits):
    """At 8 and 4 DAC bits the smallest r* lies at a small positive voltage, at 3 bits at the
    zero level (read as 1e-12 V); the largest is at -0.6 V in every case. States U(0.85, 0.95)
    straddle both, so the count tells min from max (and from a threshold missing the 0 V level)."""
    hardware = HardwareConfig(read_noise="synaptogenml", dac_bits=dac_bits)
    generator = torch.Generator().manual_seed(dac_bits)
    r_pos, r_neg = 0.85 + 0.1 * torch.rand(2, 2, 130, 20, generator=generator)
    chip = Crossbar(r_pos, r_neg, 1.0, hardware, read_seed=0)
    smallest, largest = reference_r_star_range(hardware)
    assert 0.885 < smallest < 0.895 and 0.905 < largest < 0.915
    assert chip.rare_threshold == pytest.approx(smallest, rel=1e-6)
    paired = torch.stack([r_pos, r_neg]).double()
    assert chip.rare_cell_count == int((paired > smallest).sum())
    assert int((paired > largest).sum()) < 0.9 * chip.rare_cell_count


@pytest.mark.parametrize("noise, std_rtol", [("synaptogenml", 1e-5), ("physical", 1e-3)])
def test_noisy_read_with_unit_samples_is_mean_plus_brute_force_std(noise, std_rtol, monkeypatch):
    """Every Gaussian sample patched to 1 (or 0): the read returns, per tile, plane and column,
    exactly mean + sqrt(variance) (or the mean), shift-added. Compared with the brute-force
    per-cell oracle (every cell's a(u) |I(u, r)| summed per column, tile and plane), so the
    closed-form variance, including the sparse correction of cells above r*, is checked
    deterministically at float precision rather than statistically. States U(0, 1): about
    11 % of the cells lie above r*; 2 planes, 3 tiles (the last partial), zero inputs (read at
    1e-12 V), full-scale rows of both signs and 3 column blocks of 16, 16 and 8 columns.

    Tolerances (measured errors in brackets): mean and mean + std within rtol 1e-5 plus atol
    1e-4 of the oracle (2e-5 absolute, values ~12). The std part is (read with 1) - (read with
    0); float32 cancellation against the mean leaves ~5e-6 absolute error, against std parts of
    ~1.5 (synaptogenml: rtol 1e-5 [3.8e-6]) or ~0.04 (physical: rtol 1e-3 [1.4e-4]). Without
    the rare-cell correction the std part is off by 0.9-1.7 %, 10x the looser tolerance."""
    hardware = HardwareConfig(
        read_noise=noise, weight_bits=3, adc_precision_bits=None, adc_range_bits=None
    )
    generator = torch.Generator().manual_seed(12)
    r_pos, r_neg = torch.rand(2, 2, 300, 40, generator=generator)
    chip = Crossbar(r_pos, r_neg, 1.0, hardware, read_seed=0)
    assert chip.rare_cell_count > 2000
    codes = random_codes(6, 300, hardware.dac_qmax, seed=13)
    codes[0], codes[1] = hardware.dac_qmax, -hardware.dac_qmax
    codes[2, :60] = 0
    monkeypatch.setattr(crossbar_read, "READ_BLOCK_ELEMENTS", 6 * 6 * 16)

    means, variances = brute_force_columns(r_pos, r_neg, codes, hardware)  # [N, k, tiles, out]
    scale = reference_current_scale(hardware)
    plane = (2.0 ** torch.arange(2, dtype=torch.float64)).view(1, -1, 1, 1)
    expected_mean = (means * scale * plane).sum((1, 2))
    expected_std = (variances.sqrt() * scale * plane).sum((1, 2))

    def constant_samples(value):
        def normal_(tensor, mean=0.0, std=1.0, *, generator=None):
            del mean, std, generator
            return tensor.fill_(value)

        return normal_

    monkeypatch.setattr(torch.Tensor, "normal_", constant_samples(1.0))
    plus_std = chip.read(codes).double()
    monkeypatch.setattr(torch.Tensor, "normal_", constant_samples(0.0))
    mean_only = chip.read(codes).double()
    monkeypatch.undo()

    assert torch.allclose(mean_only, expected_mean, rtol=1e-5, atol=1e-4)
    assert torch.allclose(plus_std, expected_mean + expected_std, rtol=1e-5, atol=1e-4)
    assert torch.allclose(plus_std - mean_only, expected_std, rtol=std_rtol, atol=1e-6)

    # Sensitivity: the std part without the correction of the cells above r* (the linear
    # formula's variance) differs from the exact one far beyond std_rtol.
    volts = codes * torch.tensor(hardware.input_voltage / hardware.dac_qmax)
    volts = torch.where(volts == 0, ZERO_VOLTAGE_REPLACEMENT, volts)[:, None, :, None]
    params = device_params(hardware)
    low, high = params.i_llrs(volts), params.i_hhrs(volts)
    model = read_noise_model(hardware)
    linear = sum(
        (model.coefficient(volts) * volts.sign() * ((1 - r) * low + r * high)).double()
        for r in (r_pos, r_neg)
    )
    tiles = [slice(0, 128), slice(128, 256), slice(256, 300)]
    linear = torch.stack([linear[:, :, rows].sum(2) for rows in tiles], dim=2)
    linear_std = (linear.clamp_min(0).sqrt() * scale * plane).sum((1, 2))
    assert ((linear_std / expected_std - 1).abs().max()) > 10 * std_rtol


@pytest.mark.parametrize("weight_bits, block_elements", [(2, None), (3, 6 * 256 * 16)])
def test_cells_above_r_star_get_exact_variance(weight_bits, block_elements, monkeypatch):
    """States drawn U(0.7, 1): a third of the cells exceed r* (about 0.89-0.90), where |I| is not
    linear in r. The exact variance differs from the linear extrapolation by far more than the
    test's tolerance (checked below), so a missing or wrong sparse correction fails. The second
    case has two planes (plane 1's variance weighs 4x plane 0's, so a correction added to the
    wrong plane fails) and read blocks of 16 columns (3 column blocks: each block must take
    exactly its own slice of the sorted rare cells)."""
    if block_elements is not None:  # 3 tiles x 2 planes x 256 rows x 16 columns
        monkeypatch.setattr(crossbar_read, "READ_BLOCK_ELEMENTS", block_elements)
    hardware = HardwareConfig(
        read_noise="synaptogenml",
        weight_bits=weight_bits,
        adc_precision_bits=None,
        adc_range_bits=None,
    )
    generator = torch.Generator().manual_seed(5)
    planes = hardware.bit_planes
    r_pos, r_neg = 0.7 + 0.3 * torch.rand(2, planes, 300, 40, generator=generator)
    chip = Crossbar(r_pos, r_neg, 1.0, hardware, read_seed=1)
    assert chip.rare_cell_count > 6000 * planes
    assert chip.rare_cell_count == int((torch.stack([r_pos, r_neg]) > chip.rare_threshold).sum())
    # The threshold is the smallest r* over the DAC's voltages, computed independently with the
    # synaptogen package's bound curves (0.8892 here; the largest r*, 0.9108, would leave out
    # the 7 % of cells in between).
    smallest, largest = reference_r_star_range(hardware)
    assert chip.rare_threshold == pytest.approx(smallest, rel=1e-6)
    paired = torch.stack([r_pos, r_neg]).double()
    assert chip.rare_cell_count == int((paired > smallest).sum())
    assert int((paired > largest).sum()) < 0.85 * chip.rare_cell_count
    codes_row = random_codes(1, 300, hardware.dac_qmax, seed=3)[0]
    assert_statistics_match(chip, codes_row, hardware)

    # Sensitivity: the linear formula sign(u) I(u, r) for every cell (no correction) is off by
    # about 40 %, far more than the 2 % tolerance on the mean variance ratio above.
    _, exact = expected_statistics(chip, codes_row, hardware)
    volts = codes_row * torch.tensor(hardware.input_voltage / hardware.dac_qmax)
    volts = torch.where(volts == 0, ZERO_VOLTAGE_REPLACEMENT, volts)
    params = device_params(hardware)
    low, high = params.i_llrs(volts)[:, None], params.i_hhrs(volts)[:, None]
    coefficient = (
        shot_and_johnson_coefficient(
            volts, AUTHORS_BANDWIDTH, hardware.temperature, charge=AUTHORS_CHARGE
        )[:, None]
        * volts.sign()[:, None]
    )
    plane_weights = 4.0 ** torch.arange(planes).view(-1, 1)  # (2^k)^2: variance per plane
    linear = sum(
        (plane_weights * (coefficient * ((1 - r) * low + r * high)).sum(1)).sum(0)
        for r in (r_pos, r_neg)
    )
    scale = reference_current_scale(hardware)
    assert ((linear.double() * scale**2 / exact - 1).abs().mean()) > 0.2


def test_read_noise_is_fresh_per_read_and_reproducible():
    hardware = HardwareConfig(
        read_noise="synaptogenml", adc_precision_bits=None, adc_range_bits=None
    )
    weight_int, chip = program(hardware)
    codes = random_codes(2, 300, hardware.dac_qmax, seed=4)
    first, second = chip.read(codes), chip.read(codes)
    assert not torch.equal(first, second)
    replica = Crossbar.program(weight_int, 0.1, hardware, chip_seed=7)
    assert torch.equal(replica.read(codes), first)
    assert chip.read_seed == stable_seed(7, "read")


def test_read_blocks_do_not_change_noise_free_values(monkeypatch):
    """Rows and columns cut into many small blocks (3 tiles x 2 planes, 7 rows, 16 or 64
    columns) give the values of one block up to float32 summation order (ideal ADC, so that
    no rounding boundary can amplify it): blocking only schedules the same sums."""
    hardware = HardwareConfig(
        read_noise="off", weight_bits=3, adc_precision_bits=None, adc_range_bits=None
    )
    _, chip = program(hardware, out_features=200)
    codes = random_codes(20, 300, hardware.dac_qmax, seed=8)
    whole = chip.read(codes)
    monkeypatch.setattr(crossbar_read, "READ_BLOCK_ROWS", 7)
    for columns in (16, 70):  # 70 is cut to 64, a multiple of READ_BLOCK_COLUMN_MULTIPLE
        monkeypatch.setattr(crossbar_read, "READ_BLOCK_ELEMENTS", 6 * 7 * columns)
        assert torch.allclose(chip.read(codes), whole, rtol=1e-5, atol=1e-4)


def test_read_rejects_wrong_shape():
    _, chip = program(HardwareConfig(read_noise="off"))
    with pytest.raises(ValueError, match="300"):
        chip.read(torch.zeros(3, 299))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device present")
def test_cuda_read_matches_cpu():
    hardware = HardwareConfig(read_noise="off")
    _, chip = program(hardware)
    codes = random_codes(32, 300, hardware.dac_qmax, seed=6)
    cpu = chip.read(codes)
    gpu = chip.to("cuda").read(codes.cuda()).cpu()
    assert (gpu != cpu).float().mean() < 0.01  # identical except rare float-boundary codes
    # ... and those differ by whole ADC steps, at most one step per conversion (one code of a
    # (tile, plane) conversion decided the other way moves the shift-added value by 2^k steps).
    steps = (gpu - cpu).abs() / chip.adc.step
    assert torch.equal(steps, steps.round())
    assert steps.max() <= chip.layout.tiles_in * (2**chip.planes - 1)
    noisy = Crossbar(*chip.to("cpu").states(), 0.1, hardware.replace(read_noise="physical"), 0)
    assert noisy.to("cuda").read(codes.cuda()).isfinite().all()

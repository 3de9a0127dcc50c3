"""The DAC code grids: symmetric, and the authors' SynaptogenML grid of the "paper" presets.

The authors' DAC (SynaptogenML): codes round(x / s * 2^(d-1) / (2^(d-1)-1)) clamped to
[-2^(d-1), 2^(d-1)] (s = max|x| / (2^(d-1)-1), the input quantizer's scale), the voltage
code / 2^(d-1) * V_max, and the output rescaled by weight_scale * s * (2^(d-1)-1). The oracle
below computes the chip's ADC values from those formulas and the device curves of the
`synaptogen` package in float64, one current per cell: no project code on the path.
"""

import numpy as np
import pytest
import torch
from synaptogen import synaptogen as reference

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.crossbar.periphery import DigitalToAnalogConverter
from speechbrain_memristor.crossbar.read import ideal_read
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.layers.quantizers import ActivationQuantizer

# Exact ties x.5 of x / s * 128 / 127 for s = 1 (x = (2k + 1) * 127 / 256 is exact in float32,
# and so is x / (127 / 128)) and their half-to-even codes (torch.round).
TIE_CODES = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.5, -127.5])
TIE_EXPECTED = [0.0, 2.0, 2.0, -0.0, -2.0, 126.0, 128.0, -128.0]


def authors_codes(x: np.ndarray, scale: float, dac_bits: int = 8) -> np.ndarray:
    """The authors' DAC codes, float64."""
    full = 2 ** (dac_bits - 1)
    return np.clip(np.round(x / scale * full / (full - 1)), -full, full)


def test_config_validates_the_grid_and_the_paper_presets_use_the_authors_grid():
    assert HardwareConfig().dac_grid == "symmetric"
    for name in ("paper", "paper_high_precision"):
        assert HardwareConfig.preset(name).dac_grid == "synaptogenml"
    for name in ("default", "noiseless", "ideal"):
        assert HardwareConfig.preset(name).dac_grid == "symmetric"
    assert HardwareConfig.for_recipe("paper", dac_grid=None).dac_grid == "synaptogenml"
    assert HardwareConfig.for_recipe("paper", dac_grid="symmetric").dac_grid == "symmetric"
    with pytest.raises(ValueError, match=r"dac_grid='authors'.*'symmetric', 'synaptogenml'"):
        HardwareConfig(dac_grid="authors")
    config = HardwareConfig.preset("paper")
    assert HardwareConfig.from_saved(config.to_dict()) == config
    assert (config.dac_qmax, config.dac_max_code) == (127, 128)
    assert (HardwareConfig().dac_qmax, HardwareConfig().dac_max_code) == (127, 127)


def test_authors_grid_codes_and_voltages_at_the_edges():
    dac = DigitalToAnalogConverter.from_config(HardwareConfig.preset("paper"))
    assert (dac.max_code, dac.input_qmax, dac.levels, dac.level_offset) == (128, 127, 257, 128)
    assert dac.steps_per_code == 127 / 128
    volts = dac.level_voltages()
    assert volts.shape == (257,) and volts.dtype == torch.float32
    full_scale = torch.tensor(0.6, dtype=torch.float32)
    assert volts[0] == -full_scale and volts[-1] == full_scale and volts[128] == 0
    # Step 1/128 of the full scale, exactly (0.6 / 128 is fl(0.6) / 128).
    assert torch.equal(volts, torch.arange(-128, 129, dtype=torch.float32) / 128 * full_scale)
    # Every code is reached: x = code * 127/128 quantizer steps (scale 1) maps onto it.
    codes = torch.arange(-128, 129, dtype=torch.float32)
    assert torch.equal(dac.integers(codes * (127 / 128), 1.0), codes)
    # Ties round half to even, the sign of zero kept; the ends clamp at +-128.
    ties = dac.integers(TIE_CODES * (127 / 128), 1.0)
    assert ties.tolist() == TIE_EXPECTED
    assert torch.equal(ties.signbit(), TIE_CODES.signbit())
    beyond = torch.tensor([127.0, -127.0, 127.7, 128.0, 1e6, -1e6])
    assert dac.integers(beyond, 1.0).tolist() == [128.0, -128.0, 128.0, 128.0, 128.0, -128.0]
    # With the quantizer's scale s = max|x| / 127, the largest input applies +-V exactly.
    x = torch.tensor([-3.0, 1.5, 0.0, 2.9])
    scale = torch.tensor(3.0) / 127
    assert dac.integers(x, scale).tolist() == authors_codes(x.numpy(), float(scale)).tolist()
    assert dac.integers(x, scale)[0] == -128
    # 3 bits: codes -4..4 (9 levels), step 0.6 / 4 V.
    small = DigitalToAnalogConverter.from_config(HardwareConfig.preset("paper", dac_bits=3))
    assert (small.max_code, small.input_qmax, small.levels) == (4, 3, 9)
    assert torch.allclose(small.level_voltages(), torch.linspace(-0.6, 0.6, 9))
    assert small.integers(torch.tensor([3.0, 1.0, -2.6, 9.0]), 1.0).tolist() == [4, 1, -3, 4]


def test_symmetric_grid_is_unchanged():
    dac = DigitalToAnalogConverter.from_config(HardwareConfig())
    assert (dac.max_code, dac.input_qmax, dac.levels, dac.level_offset) == (127, 127, 255, 127)
    assert dac.steps_per_code == 1.0
    volts = dac.level_voltages()
    assert volts[0] == -torch.tensor(0.6) and volts[-1] == torch.tensor(0.6)
    step = torch.tensor(0.6 / 127, dtype=torch.float32)
    assert torch.equal(volts, torch.arange(-127, 128, dtype=torch.float32) * step)
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 50
    assert torch.equal(dac.integers(values, 0.37), torch.div(values, 0.37).round().clamp(-127, 127))


def random_states(planes, in_features, out_features, seed):
    """States of cells programmed to sparse random bits: bit-1 cells near LRS (r in [0, 0.1]),
    bit-0 cells near HRS (r in [0.8, 1]), a bit 1 on at most one cell of each pair."""
    generator = torch.Generator().manual_seed(seed)
    shape = (planes, in_features, out_features)
    bits = (torch.rand(shape, generator=generator) < 0.12).float()
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, 1.0, -1.0)
    lrs = 0.1 * torch.rand(2, *shape, generator=generator)
    hrs = 0.8 + 0.2 * torch.rand(2, *shape, generator=generator)
    pos_one, neg_one = bits * (sign > 0), bits * (sign < 0)
    r_pos = pos_one * lrs[0] + (1 - pos_one) * hrs[0]
    r_neg = neg_one * lrs[1] + (1 - neg_one) * hrs[1]
    return r_pos, r_neg


def authors_adc_values(r_pos, r_neg, x, scale, hardware):
    """The chip's shift-added ADC values from the authors' formulas, float64 [N, out], the
    smallest distance of each output's conversions to an ADC rounding boundary (in steps) and
    the fraction of conversions clipped at the ADC range.

    DAC codes and voltages, cell currents (1 - r) P_LLRS(u) + r P_HHRS(u) from the synaptogen
    package's polynomials, positive minus negative per tile and plane, times current_scale,
    ADC round to 2^-p and clip to +-2^(r-1), shift-and-add over planes, sum over tiles."""
    params = reference.default_params
    hhrs, llrs = params.HHRS.astype(np.float64), params.LLRS.astype(np.float64)
    full = 2 ** (hardware.dac_bits - 1)
    volts = authors_codes(x.double().numpy(), float(scale), hardware.dac_bits) / full
    volts = volts * hardware.input_voltage  # [N, in]
    u = volts[:, None, :, None]  # [N, 1, in, 1]
    pos, neg = r_pos.double().numpy()[None], r_neg.double().numpy()[None]
    cells = reference.Imix(pos, u, hhrs, llrs) - reference.Imix(neg, u, hhrs, llrs)
    rows = hardware.tile_rows
    tiles = [cells[:, :, t : t + rows].sum(2) for t in range(0, cells.shape[2], rows)]
    columns = np.stack(tiles, axis=2) * hardware.current_scale  # [N, planes, tiles, out]
    steps = columns * 2.0**hardware.adc_precision_bits
    limit = 2.0 ** (hardware.adc_precision_bits + hardware.adc_range_bits - 1)
    codes = np.clip(np.round(steps), -limit, limit)
    distance = np.abs(steps - np.floor(steps) - 0.5).min(axis=(1, 2))  # [N, out]
    plane_weights = 2.0 ** np.arange(columns.shape[1])
    values = np.einsum("nkto,k->no", codes, plane_weights) * 2.0**-hardware.adc_precision_bits
    clipped = float((np.abs(steps) > limit).mean())
    return torch.from_numpy(values), torch.from_numpy(distance), clipped


def grid_inputs(rows, in_features, scale, seed):
    """Inputs whose codes are known away from DAC ties: code + U(-0.45, 0.45), times the
    input step s * 127/128; full-scale rows of both signs and clamped inputs beyond +-128."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-128, 129, (rows, in_features), generator=generator).float()
    offsets = 0.9 * torch.rand(rows, in_features, generator=generator) - 0.45
    x = (codes + offsets) * (scale * 127 / 128)
    x[0], x[1] = 128 * scale * 127 / 128, -128 * scale * 127 / 128  # +-V on every row
    x[2, :50] = 0.0
    x[3, :40] = torch.linspace(129, 300, 40) * scale  # beyond the range: clamp at +-128
    return x


def patch_zero_samples(monkeypatch):
    def normal_(tensor, mean=0.0, std=1.0, *, generator=None):
        del mean, std, generator
        return tensor.fill_(0.0)

    monkeypatch.setattr(torch.Tensor, "normal_", normal_)


@pytest.mark.parametrize("noise", ["off", "zero_samples"])
def test_paper_chip_gives_the_authors_adc_codes(noise, monkeypatch):
    """A chip built from given states with the paper preset (ADC 4/4, current_scale 8020,
    3-bit weights: 2 planes; 3 input tiles, the last partial) returns the ADC values of the
    authors' formulas: identical, except outputs with a conversion within 1e-3 step of a
    rounding boundary (float32 against float64 may decide those either way; under 5 %).
    ``zero_samples``: the paper's SynaptogenML read noise with every Gaussian sample 0."""
    hardware = HardwareConfig.preset("paper")
    if noise == "off":
        hardware = hardware.replace(read_noise="off")
    else:
        patch_zero_samples(monkeypatch)
    assert hardware.dac_grid == "synaptogenml" and hardware.current_scale == 8020.0
    r_pos, r_neg = random_states(hardware.bit_planes, 300, 40, seed=3)
    chip = Crossbar(r_pos, r_neg, 0.05, hardware, read_seed=0)
    assert chip.mean_lut.shape == (258,)  # 257 DAC levels and the padded-row entry
    scale = 2.3 / 127
    x = grid_inputs(16, 300, scale, seed=4)
    expected, distance, clipped = authors_adc_values(r_pos, r_neg, x, scale, hardware)
    actual = chip.read(x, torch.tensor(scale)).double()
    decisive = distance > 1e-3
    assert decisive.float().mean() > 0.95
    assert torch.equal(actual[decisive], expected[decisive])
    assert 0.005 < clipped < 0.5  # the ADC range (+-8) clips some conversions (full-scale rows)
    # Sensitivity: the symmetric grid on the same cells and inputs gives other values.
    symmetric = Crossbar(r_pos, r_neg, 0.05, hardware.replace(dac_grid="symmetric"), 0)
    other = symmetric.read(x, torch.tensor(scale)).double()
    assert (other != actual).float().mean() > 0.1


def test_paper_layer_output_is_the_authors_rescaled_adc_values():
    """End to end through the layer: the analog output equals the authors' ADC values of the
    layer's own chip, times weight_scale * s * 127, plus the bias (noise off)."""
    hardware = HardwareConfig.preset("paper", read_noise="off")
    torch.manual_seed(0)
    layer = MemristorLinear.from_linear(torch.nn.Linear(200, 24), hardware, "fake_quant")
    x = torch.randn(12, 200)
    layer.train()
    layer(x)
    layer.eval()
    layer.execution = "analog"
    y = layer(x)
    chip, quantizer = layer.matmul.chip, layer.matmul.input_quantizer
    scale = float(quantizer.scale())
    assert scale == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
    expected, distance, _ = authors_adc_values(*chip.states(), x, scale, hardware)
    weight_scale = float(layer.weight.detach().abs().max()) / 3
    assert chip.weight_scale == pytest.approx(weight_scale, rel=1e-6)
    expected = expected * (weight_scale * scale * 127) + layer.bias.detach().double()
    decisive = distance > 1e-3
    assert decisive.float().mean() > 0.9
    assert torch.allclose(y.double()[decisive], expected[decisive], rtol=1e-5, atol=1e-6)


def test_fake_quant_rounds_onto_the_chips_grid():
    """With the authors' grid the input fake quantizer returns code * s * 127 / 128 for the
    chip's DAC codes (every one of the 257 reachable, the largest input kept exactly)."""
    hardware = HardwareConfig(dac_grid="synaptogenml")
    quantizer = ActivationQuantizer(hardware).train()
    x = torch.cat([torch.linspace(-2.0, 2.0, 5001), torch.tensor([2.0, -1.999])])
    values = quantizer(x)
    scale = quantizer.scale()
    codes = torch.from_numpy(authors_codes(x.double().numpy(), float(scale))).float()
    assert torch.equal(quantizer.dac.integers(x, scale), codes)
    assert torch.equal(values, codes * scale * (127 / 128))
    assert codes.unique().numel() == 257 and values.abs().max() == x.abs().max()
    symmetric = ActivationQuantizer(HardwareConfig()).train()
    assert (symmetric(x) != values).float().mean() > 0.5  # a different grid
    # Straight-through gradient inside the range +-s * 127, zero outside.
    quantizer.eval()
    probe = torch.tensor([-2.5, -1.0, 0.3, 2.0, 2.1], requires_grad=True)
    quantizer(probe).sum().backward()
    assert probe.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_ideal_analog_reproduces_fake_quant_on_the_authors_grid():
    """Ideal cells, no noise, no ADC: the analog layer equals fake_quant up to float rounding
    on the authors' grid too (like the symmetric grid's test in tests/layers)."""
    hardware = HardwareConfig.preset("ideal", dac_grid="synaptogenml")
    torch.manual_seed(0)
    layer = MemristorLinear.from_linear(torch.nn.Linear(200, 24), hardware, "fake_quant")
    x = torch.randn(3, 10, 200)
    layer.train()
    reference_values = layer(x)
    layer.eval()
    layer.execution = "analog"
    assert torch.allclose(layer(x), reference_values, rtol=1e-5, atol=1e-5)
    # ... while fake_quant on the symmetric grid (same calibration) is another function.
    layer.matmul.hardware = hardware.replace(dac_grid="symmetric")
    layer.execution = "fake_quant"
    close = torch.isclose(layer(x), reference_values, rtol=1e-5, atol=1e-5)
    assert close.float().mean() < 0.5


def test_adc_emulation_uses_the_authors_grid():
    """ideal_read (the ADC emulation of QAT) on the authors' grid: per tile and plane
    sum_i code_i / 128 * sign(w) bit_k(|w|), ADC p2/r3, shift-added, computed here in float64.
    Those sums are multiples of 1/128, so ADC ties (x.5 steps) are frequent; ideal_read
    computes them exactly and matches everywhere. A chip of ideal cells matches wherever no
    conversion lies within 1e-3 step of a tie (its float32 currents decide ties either way)."""
    hardware = HardwareConfig.preset(
        "ideal", dac_grid="synaptogenml", adc_precision_bits=2, adc_range_bits=3
    )
    generator = torch.Generator().manual_seed(2)
    weight_int = torch.randint(-3, 4, (24, 300), generator=generator).float()
    inputs = torch.randn(32, 300, generator=generator)
    scale = inputs.abs().max() / 127
    codes = authors_codes(inputs.double().numpy(), float(scale))
    w = weight_int.double().numpy()
    planes = np.stack([np.sign(w) * ((np.abs(w).astype(int) >> k) & 1) for k in range(2)])
    tiles = [slice(t, t + 128) for t in range(0, 300, 128)]
    sums = np.stack(  # [N, planes, tiles, out]
        [np.einsum("ni,koi->nko", codes[:, rows] / 128, planes[:, :, rows]) for rows in tiles],
        axis=2,
    )
    steps = sums * 4
    adc = np.clip(np.round(steps), -16, 16)
    expected = torch.from_numpy(np.einsum("nkto,k->no", adc, [1.0, 2.0]) / 4)
    assert (np.abs(steps - np.floor(steps) - 0.5) < 1e-9).mean() > 0.02  # 1 in 32: ties

    emulated = ideal_read(inputs, scale, weight_int, hardware)
    assert torch.equal(emulated.double(), expected)
    chip = Crossbar.program(weight_int, 1.0, hardware, chip_seed=0)
    analog = chip.read(inputs, scale).double()
    far = torch.from_numpy((np.abs(steps - np.floor(steps) - 0.5) > 1e-3).all(axis=(1, 2)))
    assert far.float().mean() > 0.5
    assert torch.allclose(analog[far], expected[far], rtol=0, atol=1e-5)
    symmetric = ideal_read(inputs, scale, weight_int, hardware.replace(dac_grid="symmetric"))
    assert (symmetric.double() != expected).float().mean() > 0.1

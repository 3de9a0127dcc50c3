"""Grouped and depthwise convolutions mapped group-wise (`crossbar.grouped`, `GroupedConvMatmul`).

Oracles: the dense `Crossbar` (itself tested against brute-force per-cell simulations) built
from the same states, either as today's block-diagonal matrix or as one chip per group.
"""

import math

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, coverage
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.crossbar.grouped import (
    GroupedCrossbar,
    GroupedInventory,
    GroupPacking,
    stack_groups,
)
from speechbrain_memristor.layers.conv import MemristorConv1d, MemristorConv2d
from speechbrain_memristor.studies.report import hardware_report

NOISELESS = HardwareConfig(read_noise="off", adc_precision_bits=None, adc_range_bits=None)


def random_states(planes, groups, rows, cols, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (planes, groups, rows, cols)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


def block_diagonal(states, off_block):
    """[planes, G, K, n] -> [planes, G K, G n] with ``off_block`` off the diagonal blocks."""
    planes, groups, rows, cols = states.shape
    full = torch.full((planes, groups * rows, groups * cols), off_block)
    for g in range(groups):
        full[:, g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] = states[:, g]
    return full


def patches_batch(count, groups, rows, seed=1):
    return torch.randn(count, groups * rows, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("groups", "rows", "cols", "tile_rows"), [(6, 5, 1, 128), (4, 9, 3, 4)])
def test_group_wise_chip_equals_block_diagonal_chip_on_the_same_states(
    groups, rows, cols, tile_rows
):
    # Noise off, ideal ADC: the off-block cells of the block-diagonal chip hold r+ = r-
    # (no current difference), so both chips compute the same column values; only the order
    # of float sums differs. tile_rows 4 < K = 9 cuts each group into 3 row chunks.
    hardware = NOISELESS.replace(tile_rows=tile_rows)
    planes = hardware.bit_planes
    pos, neg = random_states(planes, groups, rows, cols)
    grouped = GroupedCrossbar(pos, neg, 0.5, hardware, read_seed=3)
    dense = Crossbar(block_diagonal(pos, 0.7), block_diagonal(neg, 0.7), 0.5, hardware, 3)
    inputs = patches_batch(40, groups, rows)
    scale = inputs.abs().max() / hardware.dac_qmax
    torch.testing.assert_close(grouped.read(inputs, scale), dense.read(inputs, scale))
    for got, want in zip(grouped.states(), (pos, neg), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("read_noise", "dac_mode"),
    [("off", "parallel"), ("off", "bit_serial"), ("physical", "parallel")],
)
def test_group_wise_read_is_one_chip_per_group_with_adc_and_noise(read_noise, dac_mode):
    # Each group on its own chip [n, K] with the same states and tiles: identical means and
    # ADC (exactly the same partial sums per row chunk), identical noise statistics.
    # With noise: an ideal ADC, so that the noise (smaller than an ADC step here) shows.
    adc = (3, 4) if read_noise == "off" else (None, None)
    hardware = HardwareConfig(
        read_noise=read_noise,
        tile_rows=8,
        adc_precision_bits=adc[0],
        adc_range_bits=adc[1],
        dac_mode=dac_mode,
    )
    groups, rows, cols = 3, 12, 2
    kernel = torch.randint(-3, 4, (groups * cols, rows))
    chip = GroupedCrossbar.program(kernel, 0.1, hardware, chip_seed=11, groups=groups)
    pos, neg = chip.states()
    singles = [Crossbar(pos[:, g], neg[:, g], 0.1, hardware, read_seed=g) for g in range(groups)]
    inputs = patches_batch(1, groups, rows).expand(3000 if read_noise != "off" else 1, -1)
    scale = inputs.abs().max() / hardware.dac_qmax
    got = chip.read(inputs.contiguous(), scale).view(inputs.shape[0], groups, cols)
    want = torch.stack(
        [
            single.read(inputs[:, g * rows : (g + 1) * rows].contiguous(), scale)
            for g, single in enumerate(singles)
        ],
        1,
    )
    if read_noise == "off":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        return
    # 3000 reads: means within 6 standard errors (std / sqrt(3000) each, two samples), stds
    # within 15 % (the std of a std estimate is ~ 1/sqrt(2 x 3000) = 1.3 %: > 10 sigma).
    bound = 6 * torch.sqrt(2 * want.var(0) / inputs.shape[0])
    assert ((got.mean(0) - want.mean(0)).abs() <= bound).all()
    spread_got, spread_want = got.std(0), want.std(0)
    assert (spread_want > 0).all()
    assert ((spread_got - spread_want).abs() <= 0.15 * spread_want).all()


def test_wire_resistance_is_refused_with_the_fix():
    pos, neg = random_states(2, 3, 4, 1)
    with pytest.raises(ValueError, match=r"wire_resistance=2.0 .*layer_hardware"):
        GroupedCrossbar(pos, neg, 1.0, HardwareConfig(wire_resistance=2.0), read_seed=0)


def test_packing_inventory_counts_weights_not_channels_squared():
    hardware = HardwareConfig()  # 128 x 128 tiles, 3-bit weights: 2 planes
    # A depthwise Conformer convolution: 384 channels, kernel 31.
    inventory = GroupedInventory.of(384, 384, 31, hardware)
    assert inventory.weights == 384 * 31
    assert inventory.cells == 384 * 31 * 2 * hardware.bit_planes
    packing = GroupPacking.from_config(384, 384, 31, hardware)
    assert packing.groups_per_tile == 4  # 4 x 31 rows <= 128, 4 columns
    assert packing.tiles == 96
    assert inventory.arrays == 2 * hardware.bit_planes * 96
    assert inventory.utilization == pytest.approx(inventory.cells / (inventory.arrays * 128 * 128))
    assert inventory.adc_conversions == hardware.bit_planes * 384
    serial = GroupedInventory.of(384, 384, 31, hardware.replace(dac_mode="bit_serial"))
    bits = (2 ** (hardware.dac_bits - 1) - 1).bit_length()  # max code 127: 7 pulses
    assert serial.pulses == bits and serial.adc_conversions == bits * inventory.adc_conversions
    assert serial.cell_reads == bits * inventory.cells and serial.cells == inventory.cells
    # A group too large for one tile gets its own tiles: 2 row chunks x 2 column tiles.
    big = GroupPacking.from_config(2, 2 * 200, 150, hardware)
    assert (big.tiles_in, big.tiles_out, big.groups_per_tile, big.tiles) == (2, 2, 1, 8)
    assert stack_groups(torch.arange(12).view(4, 3), 2).tolist() == [
        [0, 1, 2, 6, 7, 8],
        [3, 4, 5, 9, 10, 11],
    ]


@pytest.mark.parametrize(
    ("layer_class", "settings", "shape"),
    [
        (MemristorConv1d, dict(in_channels=8, out_channels=8, kernel_size=5, groups=8), (2, 8, 30)),
        (
            MemristorConv1d,
            dict(in_channels=6, out_channels=9, kernel_size=3, groups=3, stride=2),
            (2, 6, 17),
        ),
        (
            MemristorConv2d,
            dict(in_channels=4, out_channels=6, kernel_size=3, groups=2),
            (2, 4, 7, 6),
        ),
    ],
)
def test_layer_modes_and_adc_emulation(layer_class, settings, shape):
    torch.manual_seed(5)
    conv = layer_class._torch_class(padding=1, **settings)
    x = torch.randn(shape)
    ideal = HardwareConfig.preset("ideal")
    layer = layer_class.from_conv(conv, ideal, "fake_quant", "dw")
    layer.train()
    layer(x)  # calibrates
    layer.eval()
    with torch.no_grad():
        fake_quant = layer(x)
        layer.execution = "analog"
        analog = layer(x)
    torch.testing.assert_close(analog, fake_quant, rtol=1e-4, atol=1e-5)
    # adc_in_training: fake_quant's forward value is the ideal group-wise chip with that ADC.
    with_adc = ideal.replace(adc_precision_bits=2, adc_range_bits=3, adc_in_training=True)
    layer.matmul.hardware = with_adc
    with torch.no_grad():
        analog_adc = layer(x)
        layer.execution = "fake_quant"
        emulated = layer(x)
    torch.testing.assert_close(emulated, analog_adc, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(analog_adc, fake_quant, atol=1e-3)  # the ADC does something


def test_report_and_conversion_count_group_wise_cells():
    torch.manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(16, 16, 7, padding=3, groups=16), torch.nn.Conv1d(16, 8, 1)
    )
    hardware = HardwareConfig()
    planned = coverage(model, hardware, include=["*"])
    per_weight = 2 * hardware.bit_planes
    assert planned.cells == (16 * 7 + 8 * 16) * per_weight
    convert(model, hardware, "fake_quant", include=["*"])
    model(torch.randn(1, 16, 12))
    report = hardware_report(model)
    depthwise = next(layer for layer in report.layers if layer.name == "0")
    assert depthwise.cells == 16 * 7 * per_weight
    assert (depthwise.out_features, depthwise.in_features) == (16, 7)
    assert depthwise.tiles == 2 * hardware.bit_planes * math.ceil(16 / (128 // 7))
    assert depthwise.lrs_cells + depthwise.hrs_cells == depthwise.cells

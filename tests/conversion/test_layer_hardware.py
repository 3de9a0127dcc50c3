"""Per-layer hardware (convert's layer_hardware): a YAML-built Conformer with two overrides
(configs, conversion log, hardware report and checkpoint agree), pattern order, per-matrix
configs inside one attention module, and the errors."""

import logging
import re

import pytest
import torch
from test_convert import ctc_forward, load_yaml, paper_names, toy_batch

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    LAYER_FIELDS,
    check_layer_hardware,
    convert,
    hardware_differences,
    hardware_layers,
    hardware_matmuls,
    layer_configs,
    name_selects,
    set_chip_seed,
    set_execution,
)
from speechbrain_memristor.crossbar import ChipInventory
from speechbrain_memristor.studies.report import COLUMNS, hardware_report

LAYER_HARDWARE = {
    "*.mha_layer.out_proj": {"adc_precision_bits": 6, "adc_range_bits": 6},
    "*.ffn_module1.*": {"weight_bits": 3},
}
OUT_PROJ_CHANGES = "adc_precision_bits=6, adc_range_bits=6"


def expected_config(name: str, hardware: HardwareConfig) -> HardwareConfig:
    if name.endswith(".mha_layer.out_proj"):
        return hardware.replace(adc_precision_bits=6, adc_range_bits=6)
    if ".ffn_module1." in name:
        return hardware.replace(weight_bits=3)
    return hardware


def log_rows(caplog) -> dict[str, dict[str, str]]:
    """The conversion log table: {layer: {column: cell}} (columns are 2+ spaces apart)."""
    [message] = [r.getMessage() for r in caplog.records if "Memristor conversion" in r.message]
    lines = message.splitlines()[1:]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_yaml_conformer_with_two_overrides_maps_expected_configs(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="speechbrain_memristor.convert"):
        hparams = load_yaml("layer_hardware_conformer.yaml")
    model, hardware = hparams["converted"], hparams["hardware"]
    assert hparams["layer_hardware"] == LAYER_HARDWARE
    configs = layer_configs(model)
    assert set(configs) == paper_names("1.")  # the mapping itself is unchanged
    for name, config in configs.items():
        assert config == expected_config(name, hardware), name
    assert sum(config.adc_precision_bits == 6 for config in configs.values()) == 2
    assert sum(config.weight_bits == 3 for config in configs.values()) == 4

    # The conversion log: each mapped layer's own settings, cells from its own config.
    rows = log_rows(caplog)
    shapes = {}
    for name, row in rows.items():
        out_features, in_features = map(int, row["matrix (out x in)"].split(" x "))
        shapes[name] = (out_features, in_features)
        if name not in configs:
            assert (row["mapping"], row["cells"], row["hardware"]) == ("digital", "-", "-")
            continue
        config = configs[name]
        cells = ChipInventory.of(out_features, in_features, config).cells
        assert row["mapping"] == "hardware" and row["cells"] == f"{cells:,}", name
        expected = {
            "adc_precision_bits": OUT_PROJ_CHANGES,
            "weight_bits": "weight_bits=3",
        }
        changed = hardware_differences(hardware, config)
        assert row["hardware"] == (expected[next(iter(changed))] if changed else "-"), name
    # 3-bit weights: 2 planes instead of 3, so two thirds of the 4-bit cells.
    ffn1 = "1.encoder.layers.0.ffn_module1.1.ffn.0"
    ffn2 = "1.encoder.layers.0.ffn_module2.1.ffn.0"
    assert shapes[ffn1] == shapes[ffn2]
    assert 3 * int(rows[ffn1]["cells"].replace(",", "")) == 2 * int(
        rows[ffn2]["cells"].replace(",", "")
    )

    # The hardware report: the same per-layer settings and cells.
    report = hardware_report(model)
    assert report.base == hardware.to_dict()  # the config most layers share
    assert {layer.name for layer in report.layers} == set(configs)
    for layer in report.layers:
        assert layer.hardware_changes == hardware_differences(hardware, configs[layer.name])
        assert f"{layer.cells:,}" == rows[layer.name]["cells"]
        assert layer.bit_planes == configs[layer.name].weight_bits - 1
    table = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in report.rows()}
    for name in configs:
        assert table[name]["hardware"] == rows[name]["hardware"]
    assert table["total"]["hardware"] == ""
    assert OUT_PROJ_CHANGES in report.markdown()
    assert report.to_dict()["layers"][0]["hardware_changes"] is not None
    assert hardware_report(model, base=configs[ffn1]).layers[0].hardware_changes != {}

    # Modes still work with mixed per-layer configs; chips follow each layer's config.
    feats, lengths, _ = toy_batch()
    model.train()
    ctc_forward(model, feats, lengths)  # calibrates the input quantizers
    model.eval()
    set_execution(model, "analog")
    with torch.no_grad():
        assert torch.isfinite(ctc_forward(model, feats, lengths)).all()
    for matmul in hardware_matmuls(model):
        assert matmul.chip.hardware == configs[matmul.name]
    # A new chip seed keeps every per-layer field.
    set_chip_seed(model, 3)
    for name, config in layer_configs(model).items():
        assert config == expected_config(name, hardware).replace(seed=3)


def test_hook_checkpoint_holds_the_mapping_and_each_layer_config(tmp_path):
    hardware = HardwareConfig(weight_bits=4, tile_rows=16, tile_cols=16, seed=7)
    hook = MemristorHook(hardware, layer_hardware=LAYER_HARDWARE)
    hook.convert({"model": load_yaml("conformer_ctc.yaml")["model"]})
    set_chip_seed(hook.model, 9)  # as an evaluation leaves it: saved with the hook's seed
    hook.save(tmp_path / "memristor.ckpt")
    saved = torch.load(tmp_path / "memristor.ckpt")
    assert saved["layer_hardware"] == LAYER_HARDWARE
    assert set(saved["layer_configs"]) == paper_names("model.1.")
    for name, fields in saved["layer_configs"].items():
        assert fields == expected_config(name, hardware).to_dict(), name


def test_later_patterns_win_and_type_patterns_select():
    model = load_yaml("conformer_ctc.yaml")["model"]
    hardware = HardwareConfig(tile_rows=16, tile_cols=16)
    convert(
        model,
        hardware,
        layer_hardware={
            "*": {"dac_bits": 6, "adc_precision_bits": "ideal", "adc_range_bits": "ideal"},
            "*.layers.1.*": {"dac_bits": 7},
            "type:Conv1d": {"dac_bits": 5, "adc_precision_bits": 3, "adc_range_bits": 5},
        },
    )
    for name, config in layer_configs(model).items():
        conv = name.endswith("bottleneck.0")  # the pointwise Conv1d
        dac_bits = 5 if conv else (7 if ".layers.1." in name else 6)
        adc = (3, 5) if conv else (None, None)
        assert config.dac_bits == dac_bits, name
        assert (config.adc_precision_bits, config.adc_range_bits) == adc, name


def test_each_matrix_of_one_attention_module_gets_its_own_config():
    model = load_yaml("conformer_ctc.yaml", {"attention_type": "regularMHA"})["model"]
    hardware = HardwareConfig(tile_rows=16, tile_cols=16)
    convert(model, hardware, layer_hardware={"*.att.out_proj": {"adc_range_bits": 8}})
    configs = layer_configs(model)
    out_proj = "1.encoder.layers.0.mha_layer.att.out_proj"
    assert configs[out_proj] == hardware.replace(adc_range_bits=8)
    assert configs["1.encoder.layers.0.mha_layer.att.in_proj_weight"] == hardware


def unconverted():
    return load_yaml("conformer_ctc.yaml")["model"]


@pytest.mark.parametrize(
    ("layer_hardware", "expected"),
    [
        # a pattern that selects nothing: named, with close names
        ({"*.ffn_modul1.*": {"dac_bits": 6}}, ["'*.ffn_modul1.*'", "Close names: ffn_module1"]),
        # a pattern that selects only layers that stay digital
        ({"*.linear_pos": {"dac_bits": 6}}, ["'*.linear_pos'", "stay digital", "linear_pos"]),
        # an unknown field: named, a suggestion and the valid fields
        (
            {"*.out_proj": {"adc_bit": 6}},
            ["'*.out_proj'", "unknown field 'adc_bit'", "adc_precision_bits", "tile_rows"],
        ),
        # seed is global
        ({"*.out_proj": {"seed": 3}}, ["'*.out_proj'", "'seed'", "global seed", "layer's name"]),
        # invalid values: the pattern, the layer and the field
        (
            {"*.ffn_module1.*": {"weight_bits": 12}},
            ["'*.ffn_module1.*'", "'1.encoder.layers.0.ffn_module1.1.ffn.0'", "weight_bits=12"],
        ),
        (
            {"*": {"dac_bits": 6}, "*.out_proj": {"adc_range_bits": None}},
            ["'*.out_proj'", "'1.encoder.layers.0.mha_layer.out_proj'", "adc_precision_bits"],
        ),
    ],
)
def test_layer_hardware_errors_name_the_problem(layer_hardware, expected):
    model = unconverted()
    with pytest.raises(ValueError) as error:
        convert(model, HardwareConfig(), layer_hardware=layer_hardware)
    message = str(error.value)
    for part in expected:
        assert part in message, (part, message)
    assert not list(hardware_layers(model))  # nothing converted on an error


def test_unknown_field_error_lists_the_per_layer_fields():
    with pytest.raises(ValueError) as error:
        check_layer_hardware({"*": {"bogus": 1}})
    assert all(name in str(error.value) for name in LAYER_FIELDS)
    assert "seed" not in LAYER_FIELDS


@pytest.mark.parametrize(
    "layer_hardware",
    [["*.out_proj"], {"*.out_proj": 6}, {"": {"dac_bits": 6}}, {3: {"dac_bits": 6}}],
)
def test_malformed_layer_hardware_is_a_type_error(layer_hardware):
    with pytest.raises(TypeError, match="layer_hardware"):
        check_layer_hardware(layer_hardware)


def test_name_selects_matches_names_and_containing_modules():
    name = "enc.layers.0.ffn_module1.1.ffn.0"
    assert name_selects("*.ffn_module1", name) and name_selects("*.ffn_module1.*", name)
    assert name_selects("enc", name) and name_selects(name, name)
    assert not name_selects("*.ffn_module2", name) and not name_selects("type:Linear", name)

"""HardwareConfig: defaults, presets, validation messages, copies, YAML construction."""

import pytest
from hyperpyyaml import load_hyperpyyaml

from speechbrain_memristor.config import PRESETS, HardwareConfig


def test_defaults_match_contract():
    config = HardwareConfig()
    assert (config.weight_bits, config.dac_bits, config.input_voltage) == (3, 8, 0.6)
    assert (config.adc_precision_bits, config.adc_range_bits) == (4, 4)
    assert (config.tile_rows, config.tile_cols, config.read_noise) == (128, 128, "physical")
    assert (config.set_voltage, config.reset_voltage, config.initial_cycles) == (-2.0, 2.0, 0)
    assert config.current_scale is None and config.observer == "minmax"
    assert (config.weight_qmax, config.dac_qmax, config.bit_planes) == (3, 127, 2)


def test_paper_presets():
    paper = HardwareConfig.preset("paper")
    assert (paper.weight_bits, paper.dac_bits, paper.input_voltage) == (3, 8, 0.6)
    assert (paper.adc_precision_bits, paper.adc_range_bits) == (4, 4)
    assert (paper.tile_rows, paper.tile_cols) == (128, 128)
    assert paper.current_scale == 8020.0 and paper.read_noise == "synaptogenml"
    high = HardwareConfig.preset("paper_high_precision", seed=5)
    assert (high.adc_precision_bits, high.adc_range_bits, high.seed) == (8, 10, 5)
    ideal = HardwareConfig.preset("ideal")
    assert ideal.cell_model == "ideal" and ideal.read_noise == "off" and not ideal.has_adc
    for name in PRESETS:
        assert isinstance(HardwareConfig.preset(name), HardwareConfig)


def test_unknown_preset_names_choices():
    with pytest.raises(ValueError, match="paper_high_precision"):
        HardwareConfig.preset("papr")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("weight_bits", 1),
        ("weight_bits", 9),
        ("weight_bits", 3.0),
        ("weight_bits", True),
        ("dac_bits", 17),
        ("input_voltage", 0.0),
        ("input_voltage", 1.5),
        ("input_voltage", "0.6"),
        ("adc_precision_bits", -1),
        ("adc_range_bits", 0),
        ("current_scale", -8020.0),
        ("current_scale", float("inf")),
        ("tile_rows", -128),
        ("read_noise", "thermal"),
        ("bandwidth", 0.0),
        ("temperature", float("nan")),
        ("device_params", "/nonexistent/params.json"),
        ("device_var_order", 11),
        ("cell_model", "pcm"),
        ("set_voltage", 1.0),
        ("reset_voltage", -2.0),
        ("initial_cycles", -1),
        ("seed", -3),
        ("observer", "percentile"),
        ("observer_momentum", 0.0),
        ("adc_in_training", "yes"),
    ],
)
def test_invalid_values_name_field_and_value(field, value):
    with pytest.raises(ValueError) as error:
        HardwareConfig(**{field: value})
    message = str(error.value)
    assert field in message and repr(value) in message


def test_adc_fields_set_together():
    with pytest.raises(ValueError, match="adc_precision_bits"):
        HardwareConfig(adc_precision_bits=None)
    ideal_adc = HardwareConfig(adc_precision_bits=None, adc_range_bits=None)
    assert not ideal_adc.has_adc


def test_replace_validates_and_to_dict_round_trips():
    config = HardwareConfig(weight_bits=5, tile_rows=0, bandwidth=1)
    assert isinstance(config.bandwidth, float)
    assert HardwareConfig(**config.to_dict()) == config
    assert config.replace(seed=3).seed == 3 and config.seed == 0
    with pytest.raises(ValueError, match="dac_bits"):
        config.replace(dac_bits=1)


def test_constructible_from_yaml():
    hparams = load_hyperpyyaml(
        """
hardware: !new:speechbrain_memristor.config.HardwareConfig
    weight_bits: 4
    read_noise: "off"
    bandwidth: 1.0e+8
    adc_precision_bits: null
    adc_range_bits: null
"""
    )
    hardware = hparams["hardware"]
    assert hardware.weight_bits == 4 and hardware.read_noise == "off" and not hardware.has_adc

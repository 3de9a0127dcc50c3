"""HardwareConfig: defaults, presets, validation messages, copies, YAML construction, saved
configs of other versions and the recipe rule (`HardwareConfig.for_recipe`)."""

import logging

import pytest
from hyperpyyaml import load_hyperpyyaml

from speechbrain_memristor.config import CONFIG_VERSION, IDEAL_ADC, PRESETS, HardwareConfig


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
        ("wire_resistance", -1.0),
        ("wire_resistance", float("inf")),
        ("wire_solver", "spice"),
        ("dac_mode", "serial"),
        ("dac_encoding", "pwm"),
        ("programming_device", "gpu"),
        ("output_bits", 1),
        ("output_bits", 17),
        ("output_bits", 8.0),
        ("attention_bits", 1),
        ("attention_bits", "8"),
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


def test_from_saved_fills_fields_missing_from_older_saves(caplog):
    saved = HardwareConfig.preset("paper", seed=4).to_dict()
    del saved["tile_read_latency"], saved["observer"]  # as saved before these fields existed
    with caplog.at_level(logging.INFO, logger="speechbrain_memristor.config"):
        config = HardwareConfig.from_saved(saved, version=None, source="old.ckpt")
    assert config == HardwareConfig.preset("paper", seed=4)
    messages = [record for record in caplog.records if record.levelno == logging.INFO]
    assert len(messages) == 1
    text = messages[0].getMessage()
    assert "old.ckpt" in text and "tile_read_latency=1e-07" in text and "observer='minmax'" in text


def test_version_2_saves_load_with_ideal_wires_and_parallel_inputs():
    """A save from before wire resistance and bit-serial inputs reads as today's hardware."""
    saved = HardwareConfig.preset("paper").to_dict()
    for name in (
        "wire_resistance",
        "wire_solver",
        "dac_mode",
        "programming_device",
        "output_bits",
        "attention_bits",
        "dac_encoding",
    ):
        del saved[name]
    config = HardwareConfig.from_saved(saved, version=2, source="v2.ckpt")
    assert config == HardwareConfig.preset("paper")
    assert (config.wire_resistance, config.dac_mode) == (0.0, "parallel")
    assert config.programming_device == "cpu"
    assert (config.output_bits, config.attention_bits) == (None, None)  # the QAT options off
    assert config.dac_encoding == "amplitude"


def test_from_saved_rejects_unknown_fields():
    saved = {**HardwareConfig().to_dict(), "crossbar_colour": "blue"}
    with pytest.raises(ValueError, match="crossbar_colour") as error:
        HardwareConfig.from_saved(saved, version=CONFIG_VERSION + 1, source="new.ckpt")
    assert "new.ckpt" in str(error.value) and "update speechbrain-memristor" in str(error.value)


def test_from_saved_current_version_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="speechbrain_memristor.config"):
        config = HardwareConfig.from_saved(HardwareConfig().to_dict(), CONFIG_VERSION)
    assert config == HardwareConfig() and not caplog.records


def test_preset_overrides_win_none_included():
    # Python semantics of `preset`: every override wins, None included (an ideal ADC here).
    config = HardwareConfig.preset("paper", adc_precision_bits=None, adc_range_bits=None)
    assert not config.has_adc and config.read_noise == "synaptogenml"


def test_for_recipe_null_keeps_the_preset():
    keep = dict.fromkeys(("adc_precision_bits", "adc_range_bits", "read_noise", "seed"))
    assert HardwareConfig.for_recipe("ideal", weight_bits=3, **keep) == HardwareConfig.preset(
        "ideal"
    )
    assert HardwareConfig.for_recipe("paper", dac_bits=6) == HardwareConfig.preset(
        "paper", dac_bits=6
    )
    ideal_adc = HardwareConfig.for_recipe(
        "paper", adc_precision_bits=IDEAL_ADC, adc_range_bits="ideal"
    )
    assert ideal_adc == HardwareConfig.preset("paper", adc_precision_bits=None, adc_range_bits=None)
    with_adc = HardwareConfig.for_recipe("ideal", adc_precision_bits=6, adc_range_bits=6)
    assert (with_adc.adc_precision_bits, with_adc.adc_range_bits, with_adc.cell_model) == (
        6,
        6,
        "ideal",
    )


@pytest.mark.parametrize(
    ("preset", "fields", "expected"),
    [
        ("paper", {"adc_range_bits": "none"}, "adc_range_bits='none'"),
        ("paper", {"adc_precision_bits": "ideal"}, "adc_range_bits=4 (kept from preset 'paper')"),
        ("paper", {"tile_cols": 0.5}, "tile_cols=0.5"),
        ("paper", {"tile_size": 64}, "unknown field(s) ['tile_size']"),
        ("papr", {}, "choose one of default, paper"),
    ],
)
def test_for_recipe_errors_name_field_value_and_fix(preset, fields, expected):
    with pytest.raises(ValueError) as error:
        HardwareConfig.for_recipe(preset, **fields)
    assert expected in str(error.value)

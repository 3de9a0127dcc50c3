"""The TED-LIUM 2 recipe's hparams files: the hardware their keys build, and the shared block.

The real files are loaded with hyperpyyaml as train.py loads them (the model shrunk by
overrides, which does not touch the hardware, so that each load takes a fraction of a second).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.studies.runs import TrainedRun
from speechbrain_memristor.studies.sweep import Sweep, SweepError, parse_grid

HPARAMS = Path(__file__).resolve().parents[2] / "recipes/TEDLIUM2/ASR/conformer/hparams"
RECIPE_FILES = ("conformer_ctc.yaml", "demo_conformer_ctc.yaml")
TINY_MODEL = {"d_model": 48, "nhead": 2, "num_encoder_layers": 1, "d_ffn": 96, "kernel_size": 7}
HARDWARE_KEYS = (
    "hardware_preset",
    "weight_bits",
    "adc_precision_bits",
    "adc_range_bits",
    "read_noise",
    "hardware_seed",
    "dac_bits",
    "dac_grid",
    "tile_size",
    "initial_cycles",
    "device_params",
    "initial_cycle_mode",
    "write_verify",
    "verify_max_attempts",
    "verify_lrs_max_ohms",
    "verify_hrs_min_ohms",
    "verify_voltage",
    "stuck_lrs_rate",
    "stuck_hrs_rate",
    "wire_resistance",
    "wire_solver",
    "dac_mode",
    "dac_encoding",
)
PROGRAMMING_KEYS = {
    "initial_cycle_mode": "per_array",
    "write_verify": True,
    "verify_max_attempts": 3,
    "verify_lrs_max_ohms": 5000.0,
    "verify_hrs_min_ohms": 40000.0,
    "verify_voltage": 0.1,
    "stuck_lrs_rate": 0.001,
    "stuck_hrs_rate": 0.002,
    "wire_resistance": 0.5,
    "wire_solver": "exact",
    "dac_mode": "bit_serial",
    "dac_encoding": "pulse_width",
}


def load(name: str, **overrides) -> dict:
    """The hparams of recipe file ``name`` with ``overrides`` (as on the command line)."""
    with open(HPARAMS / name, encoding="utf-8") as stream:
        return load_hyperpyyaml(stream, {"data_folder": "/tmp/x", **TINY_MODEL, **overrides})


@pytest.fixture(params=RECIPE_FILES)
def recipe(request) -> str:
    return request.param


def test_defaults_are_the_paper_preset_unchanged(recipe):
    hparams = load(recipe)
    assert hparams["hardware_preset"] == "paper" and hparams["weight_bits"] == 3
    for key in HARDWARE_KEYS[2:]:
        assert hparams[key] is None, key  # every other hardware key keeps the preset's value
    hardware = hparams["hardware"]
    # The hardware these files built before the null rule (paper preset, explicit keys).
    before = HardwareConfig.preset(
        "paper",
        weight_bits=3,
        adc_precision_bits=4,
        adc_range_bits=4,
        read_noise="synaptogenml",
        seed=0,
        dac_bits=8,
        dac_grid="synaptogenml",  # the authors' 257-level DAC grid
        tile_rows=128,
        tile_cols=128,
        initial_cycles=0,
        device_params=None,
    )
    assert hardware == before == HardwareConfig.preset("paper")
    assert load(recipe, hardware_preset="paper", weight_bits=3)["hardware"] == before
    assert (hardware.current_scale, hardware.read_noise, hardware.cell_model) == (
        8020.0,
        "synaptogenml",
        "synaptogen",
    )
    assert load(recipe, weight_bits=4)["hardware"] == HardwareConfig.preset("paper", weight_bits=4)
    stem = recipe.removesuffix(".yaml")
    assert hparams["output_folder"] == f"results/{stem}/fake_quant_3bit/1234"


@pytest.mark.parametrize("preset", ["ideal", "noiseless", "default", "paper_high_precision"])
def test_preset_means_what_it_says(recipe, preset):
    hardware = load(recipe, hardware_preset=preset)["hardware"]
    # weight_bits: 3 is the recipe's one non-null default (3 in every preset, too).
    assert hardware == HardwareConfig.preset(preset, weight_bits=3) == HardwareConfig.preset(preset)


def test_ideal_and_noiseless_presets(recipe):
    ideal = load(recipe, hardware_preset="ideal")["hardware"]
    assert (ideal.cell_model, ideal.read_noise, ideal.has_adc) == ("ideal", "off", False)
    assert (ideal.adc_precision_bits, ideal.adc_range_bits, ideal.current_scale) == (
        None,
        None,
        None,
    )
    noiseless = load(recipe, hardware_preset="noiseless")["hardware"]
    assert (noiseless.cell_model, noiseless.read_noise, noiseless.has_adc) == (
        "synaptogen",
        "off",
        False,
    )


def test_programming_keys_override_the_preset(recipe):
    hardware = load(recipe, **PROGRAMMING_KEYS)["hardware"]
    assert hardware == HardwareConfig.preset("paper", **PROGRAMMING_KEYS)
    assert load(recipe, write_verify=False)["hardware"] == HardwareConfig.preset("paper")


def test_paper_qat_option_keys_reach_the_hardware(recipe):
    """output_bits / attention_bits: null (the default) keeps them off, a value sets them."""
    assert load(recipe)["hardware"].output_bits is None
    hardware = load(recipe, output_bits=8, attention_bits=3)["hardware"]
    assert hardware == HardwareConfig.preset("paper", output_bits=8, attention_bits=3)


def test_explicit_keys_override_the_preset(recipe, tmp_path):
    hardware = load(recipe, hardware_preset="ideal", adc_precision_bits=6, adc_range_bits=6)[
        "hardware"
    ]
    assert hardware == HardwareConfig.preset("ideal", adc_precision_bits=6, adc_range_bits=6)
    params = tmp_path / "params.json"
    params.write_text("{}")
    every_key = {
        "weight_bits": 4,
        "adc_precision_bits": 5,
        "adc_range_bits": 7,
        "read_noise": "physical",
        "hardware_seed": 9,
        "dac_bits": 6,
        "dac_grid": "symmetric",
        "tile_size": 64,
        "initial_cycles": 2,
        "device_params": str(params),
    }
    hparams = load(recipe, **every_key)
    assert hparams["hardware"] == HardwareConfig.preset(
        "paper",
        weight_bits=4,
        adc_precision_bits=5,
        adc_range_bits=7,
        read_noise="physical",
        seed=9,
        dac_bits=6,
        dac_grid="symmetric",
        tile_rows=64,
        tile_cols=64,
        initial_cycles=2,
        device_params=str(params),
    )
    assert hparams["output_folder"].endswith("/fake_quant_4bit/1234")


def test_ideal_adc_word(recipe):
    hardware = load(recipe, adc_precision_bits="ideal", adc_range_bits="ideal")["hardware"]
    assert hardware == HardwareConfig.preset("paper", adc_precision_bits=None, adc_range_bits=None)
    assert not hardware.has_adc and hardware.read_noise == "synaptogenml"
    # One word is enough where the preset's ADC is already ideal.
    noiseless = load(recipe, hardware_preset="noiseless", adc_range_bits="ideal")["hardware"]
    assert noiseless == HardwareConfig.preset("noiseless")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"adc_precision_bits": "four"}, ["adc_precision_bits='four'", "'ideal'", "null"]),
        ({"adc_precision_bits": "ideal"}, ["adc_precision_bits='ideal'", "adc_range_bits=4"]),
        (
            {"hardware_preset": "noiseless", "adc_precision_bits": 4},
            ["adc_precision_bits=4", "adc_range_bits=None", "'noiseless'", "'ideal'"],
        ),
        ({"tile_size": -8}, ["tile_rows=-8", "expected an integer", "tile_cols=-8"]),
        ({"read_noise": "loud"}, ["read_noise='loud'", "'synaptogenml'"]),
        ({"weight_bits": 12}, ["weight_bits=12", "[2, 8]"]),
        ({"dac_bits": "ideal"}, ["dac_bits='ideal'", "[2, 16]"]),
        ({"dac_grid": "authors"}, ["dac_grid='authors'", "'symmetric', 'synaptogenml'"]),
        ({"hardware_preset": "papr"}, ["'papr'", "paper_high_precision"]),
        ({"output_bits": 1}, ["output_bits=1", "[2, 16]"]),
        ({"attention_bits": "four"}, ["attention_bits='four'", "[2, 16]"]),
    ],
)
def test_invalid_values_fail_clearly(overrides, expected):
    with pytest.raises(ValueError) as error:
        load("demo_conformer_ctc.yaml", **overrides)
    message = str(error.value)
    for part in expected:
        assert part in message, (part, message)


def test_both_files_share_the_included_hardware_block():
    for name in RECIPE_FILES:
        text = (HPARAMS / name).read_text(encoding="utf-8")
        assert "!include:hardware.yaml" in text
        assert "!apply:speechbrain_memristor.HardwareConfig" not in text, name
        assert "!new:speechbrain_memristor.brain.MemristorHook" not in text, name
    overrides = {"hardware_preset": "ideal", "dac_bits": 6, "execution": "analog", "num_chips": 3}
    full, demo = (load(name, **overrides) for name in RECIPE_FILES)
    assert full["hardware"] == demo["hardware"]
    for hparams in (full, demo):
        hook = hparams["memristor"]
        assert isinstance(hook, MemristorHook) and hook.hardware is hparams["hardware"]
        assert (hook.chips, hook.test_execution, hook.compare) == (
            3,
            "analog",
            ("digital", "fake_quant"),
        )
        # find_hook takes the one MemristorHook among the top-level values.
        assert sum(isinstance(value, MemristorHook) for value in hparams.values()) == 1


def paper_sweep(tmp_path, grid: dict, folder: str = "sweep") -> Sweep:
    """A sweep of a (never trained) 3-bit paper-preset run over ``grid`` on the demo recipe."""
    run = TrainedRun(
        tmp_path / "run", tmp_path / "run" / "save", HardwareConfig.preset("paper").to_dict()
    )
    return Sweep(
        hparams=HPARAMS / "demo_conformer_ctc.yaml",
        runs=[run],
        grid=parse_grid(grid),
        out_dir=tmp_path / folder,
        overrides={"data_folder": str(tmp_path), **TINY_MODEL},
    )


def built_hardware(sweep: Sweep) -> list[HardwareConfig]:
    """The HardwareConfig the recipe builds from each point's command line."""
    built = []
    for point in sweep.points:
        hparams_file, run_opts, overrides = sb.parse_arguments(sweep.command(point)[2:])
        assert run_opts["test_only"]
        with open(hparams_file, encoding="utf-8") as stream:
            built.append(load_hyperpyyaml(stream, overrides)["hardware"])
    return built


def test_sweep_ideal_adc_point_builds_an_ideal_adc(tmp_path):
    """A grid point adc=ideal reaches the recipe as the ideal-ADC word, not as null."""
    sweep = paper_sweep(tmp_path, {"adc": "ideal,8/10", "read_noise": "off"})
    built = built_hardware(sweep)
    assert '--adc_precision_bits="ideal"' in sweep.command(sweep.points[0])
    assert built == [
        HardwareConfig.preset(
            "paper", adc_precision_bits=None, adc_range_bits=None, read_noise="off"
        ),
        HardwareConfig.preset("paper", adc_precision_bits=8, adc_range_bits=10, read_noise="off"),
    ]


def test_sweep_dac_grid_axis_reaches_the_recipe(tmp_path):
    """A grid axis dac_grid sets the recipe's dac_grid key: each point builds its grid."""
    sweep = paper_sweep(tmp_path, {"dac_grid": "symmetric,synaptogenml"})
    assert built_hardware(sweep) == [
        HardwareConfig.preset("paper", dac_grid="symmetric"),
        HardwareConfig.preset("paper", dac_grid="synaptogenml"),
    ]
    with pytest.raises(SweepError, match="dac_grid='authors'"):
        paper_sweep(tmp_path, {"dac_grid": "authors"}, "bad")


def test_sweep_programming_axes_reach_the_recipe(tmp_path):
    """Grid axes write_verify, initial_cycle_mode and the stuck-at rates set the recipe keys;
    an invalid combination is rejected before any evaluation."""
    grid = {
        "write_verify": "true,false",
        "initial_cycle_mode": "per_array",
        "stuck_lrs_rate": "0.01",
        "stuck_hrs_rate": "0,0.02",
    }
    built = built_hardware(paper_sweep(tmp_path, grid))
    expected = [
        HardwareConfig.preset(
            "paper",
            write_verify=verify,
            initial_cycle_mode="per_array",
            stuck_lrs_rate=0.01,
            stuck_hrs_rate=hrs,
        )
        for verify in (True, False)
        for hrs in (0.0, 0.02)
    ]
    assert built == expected
    with pytest.raises(SweepError, match="stuck_lrs_rate \\+ stuck_hrs_rate < 1"):
        paper_sweep(tmp_path, {"stuck_lrs_rate": "0.6", "stuck_hrs_rate": "0.5"}, "bad")
    with pytest.raises(SweepError, match="write_verify='maybe'"):
        parse_grid({"write_verify": "maybe"})


def test_sweep_qat_option_and_programming_device_axes_reach_the_recipe(tmp_path):
    """Grid axes output_bits, attention_bits (``off``: not quantized) and programming_device
    set the recipe keys of the same names: each point builds its config; invalid values are
    rejected before any evaluation, naming the field, the value and what is allowed."""
    grid = {"output_bits": "off,8", "attention_bits": "3", "programming_device": "cpu,weights"}
    sweep = paper_sweep(tmp_path, grid)
    assert built_hardware(sweep) == [
        HardwareConfig.preset(
            "paper", output_bits=bits, attention_bits=3, programming_device=device
        )
        for bits in (None, 8)
        for device in ("cpu", "weights")
    ]
    assert "--output_bits=null" in sweep.command(sweep.points[0])
    for bad, expected in (
        ({"output_bits": "1"}, ["output_bits=1", "expected an integer in [2, 16]"]),
        ({"attention_bits": "17"}, ["attention_bits=17", "[2, 16]"]),
        ({"programming_device": "gpu"}, ["programming_device='gpu'", "'cpu', 'weights'"]),
    ):
        with pytest.raises(SweepError) as error:
            paper_sweep(tmp_path, bad, "bad")
        for part in expected:
            assert part in str(error.value), (part, str(error.value))
    with pytest.raises(SweepError) as error:
        parse_grid({"attention_bits": "four", "output_bits": "8,eight"})
    message = str(error.value)
    assert "attention_bits='four'" in message and "output_bits='eight'" in message
    assert "expected an integer number of bits, or off" in message

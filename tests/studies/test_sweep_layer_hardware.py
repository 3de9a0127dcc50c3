"""Sweeps over per-layer settings: FIELD@PATTERN axes, their validation, and the one
layer_hardware override a point passes to the real recipe hparams (the command parsed as
train.py parses it, the hparams loaded and the hook converting the recipe's modules), and one
real point through the command line."""

from __future__ import annotations

import json

import pytest
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from test_sweep import trained_run  # noqa: F401 (a fixture: a tiny trained recipe run)

from speechbrain_memristor.app.cli import main
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import layer_configs
from speechbrain_memristor.studies.runs import TrainedRun, bundled_recipe
from speechbrain_memristor.studies.sweep import Sweep, SweepError, parse_grid, plan_points

HPARAMS = bundled_recipe() / "hparams" / "demo_conformer_ctc.yaml"
TINY_MODEL = {"d_model": 48, "nhead": 2, "num_encoder_layers": 1, "d_ffn": 96, "kernel_size": 7}
OUT_PROJ = "encoder.transformer.encoder.layers.0.mha_layer.out_proj"
FFN1 = "encoder.transformer.encoder.layers.0.ffn_module1.1.ffn.0"
LAYERS = (OUT_PROJ, FFN1, "encoder.transformer.encoder.layers.0.ffn_module2.1.ffn.0")


def make_run(tmp_path, layers=LAYERS) -> TrainedRun:
    folder = tmp_path / "run"
    return TrainedRun(folder, folder / "save", HardwareConfig.preset("paper").to_dict(), layers)


def recipe_hparams(sweep: Sweep, point) -> dict:
    """The recipe's hparams as train.py would load them for ``point``."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sweep.command(point)[2:])
    assert run_opts["test_only"]
    with open(hparams_file, encoding="utf-8") as stream:
        return load_hyperpyyaml(stream, overrides)


def test_field_at_pattern_axis_reaches_the_recipe_as_layer_hardware(tmp_path):
    given = {"*.ffn_module1.*": {"weight_bits": 4}, "*.mha_layer.out_proj": {"dac_bits": 6}}
    sweep = Sweep(
        hparams=HPARAMS,
        runs=[make_run(tmp_path)],
        grid=parse_grid({"adc@*.mha_layer.out_proj": "6/8,ideal", "adc": "4/4"}),
        out_dir=tmp_path / "sweep",
        overrides={"data_folder": str(tmp_path), **TINY_MODEL, "layer_hardware": given},
    )
    assert [point.settings for point in sweep.points] == [
        {
            "adc_precision_bits@*.mha_layer.out_proj": precision,
            "adc_range_bits@*.mha_layer.out_proj": range_bits,
            "adc_precision_bits": 4,
            "adc_range_bits": 4,
            "weight_bits": 3,
        }
        for precision, range_bits in ((6, 8), (None, None))
    ]
    wanted = [
        {
            "*.ffn_module1.*": {"weight_bits": 4},
            # the point's fields win, its patterns come after the given ones
            "*.mha_layer.out_proj": {
                "dac_bits": 6,
                "adc_precision_bits": precision,
                "adc_range_bits": range_bits,
            },
        }
        for precision, range_bits in ((6, 8), (None, None))
    ]
    assert [point.layer_hardware() for point in sweep.points] == wanted
    assert [point.hardware_changes() for point in sweep.points] == [
        {"adc_precision_bits": 4, "adc_range_bits": 4, "weight_bits": 3}
    ] * 2
    assert len({point.identifier for point in sweep.points}) == 2
    command = sweep.command(sweep.points[0])
    assert f"--layer_hardware={json.dumps(wanted[0])}" in command
    assert not any("@" in argument.partition("=")[0] for argument in command)

    base = HardwareConfig.preset("paper", adc_precision_bits=4, adc_range_bits=4)
    expected_out_proj = [
        base.replace(dac_bits=6, adc_precision_bits=6, adc_range_bits=8),
        base.replace(dac_bits=6, adc_precision_bits=None, adc_range_bits=None),  # ideal ADC
    ]
    for point, out_proj, layer_hardware in zip(
        sweep.points, expected_out_proj, wanted, strict=True
    ):
        hparams = recipe_hparams(sweep, point)
        hook = hparams["memristor"]
        assert hook.layer_hardware == layer_hardware and hparams["hardware"] == base
        hook.convert(hparams["modules"])
        configs = layer_configs(hook.model)
        assert configs[OUT_PROJ] == out_proj
        assert configs[FFN1] == base.replace(weight_bits=4)
        assert configs[LAYERS[2]] == base


def test_point_configs_are_validated_before_any_evaluation(tmp_path):
    run = make_run(tmp_path)
    # adc_range_bits@... ideal against a 4-bit precision: invalid for the layers it selects.
    with pytest.raises(SweepError) as error:
        plan_points(parse_grid({"adc_range_bits@*.out_proj": "ideal"}), [run])
    assert "'*.out_proj'" in str(error.value) and "adc_precision_bits" in str(error.value)
    # both ADC fields ideal is fine; so is adc@PATTERN
    plan_points(parse_grid({"adc@*.out_proj": "ideal,8/8"}), [run])
    # a pattern that selects none of the run's mapped layers
    with pytest.raises(SweepError) as error:
        plan_points(parse_grid({"dac_bits@*.ffn_modul1.*": "6"}), [run])
    assert "'*.ffn_modul1.*'" in str(error.value) and "selects none" in str(error.value)
    # a run saved before per-layer settings (no layer names): only values are checked
    plan_points(parse_grid({"dac_bits@*.ffn_modul1.*": "6"}), [make_run(tmp_path, ())])
    # invalid given layer_hardware, and one point's value out of range
    with pytest.raises(SweepError) as error:
        plan_points(parse_grid({"dac_bits@*": "6,40"}), [run], {"*": {"seed": 1}})
    message = str(error.value)
    assert "'seed'" in message and "dac_bits=40" in message
    # any other per-layer HardwareConfig field, read as YAML
    [point] = plan_points(parse_grid({"input_voltage@*.out_proj": "0.5"}), [run])
    assert point.layer_hardware() == {"*.out_proj": {"input_voltage": 0.5}}
    [point] = plan_points(parse_grid({"tile_size@*.out_proj": "32"}), [run])
    assert point.layer_hardware() == {"*.out_proj": {"tile_rows": 32, "tile_cols": 32}}


@pytest.mark.parametrize(
    ("axis", "expected"),
    [
        ("hardware_seed@*.out_proj", ["'hardware_seed' cannot be set per layer", "seeds"]),
        ("seed@*.out_proj", ["'seed' cannot be set per layer"]),
        ("num_chips@*.out_proj", ["'num_chips' cannot be set per layer"]),
        ("adc_bits@*.out_proj", ["'adc_bits' cannot be set per layer", "adc_range_bits"]),
        ("adc_range_bits@", ["empty layer pattern"]),
    ],
)
def test_invalid_per_layer_axes_are_named(axis, expected):
    with pytest.raises(SweepError) as error:
        parse_grid({axis: "4"})
    for part in expected:
        assert part in str(error.value), (part, str(error.value))


def test_adc_axis_and_its_fields_for_one_pattern_conflict(tmp_path):
    grid = parse_grid({"adc@*.out_proj": "4/4", "adc_range_bits@*.out_proj": "6"})
    with pytest.raises(SweepError, match="adc@"):
        plan_points(grid, [make_run(tmp_path)])
    # different patterns do not conflict
    plan_points(
        parse_grid({"adc@*.out_proj": "4/4", "adc_range_bits@*.ffn_module1": "4"}),
        [make_run(tmp_path)],
    )


def test_cli_sweep_point_runs_the_recipe_with_layer_hardware(
    trained_run,  # noqa: F811 (the fixture imported above)
    tmp_path,
    capsys,
):
    """One real point (a test-only recipe run): a FIELD@PATTERN axis and a given
    layer_hardware reach the recipe's hook; its table and log show the per-layer settings."""
    run = TrainedRun.load(trained_run)
    assert OUT_PROJ in run.layers and run.layer_hardware == {}
    out = tmp_path / "sweep"
    given = '{"*.ffn_module1.*": {"dac_bits": 6}}'
    code = main(
        ["sweep", str(HPARAMS), "--run", str(trained_run), "--out", str(out)]
        + ["--grid", "adc@*.mha_layer.out_proj=8/8", "--grid", "num_chips=1"]
        + ["--set", f"layer_hardware={given}"]
        + [f"--set={key}={value}" for key, value in TINY_MODEL.items()]
    )
    assert code == 0, capsys.readouterr().err
    [row] = json.loads((out / "sweep.json").read_text())["rows"]
    assert row["settings"]["adc_range_bits@*.mha_layer.out_proj"] == 8
    assert row["layer_hardware"]["*.mha_layer.out_proj"] == {
        "adc_precision_bits": 8,
        "adc_range_bits": 8,
    }
    folder = out / "points" / row["point"]
    wanted = {
        "*.ffn_module1.*": {"dac_bits": 6},
        "*.mha_layer.out_proj": {"adc_precision_bits": 8, "adc_range_bits": 8},
    }
    assert json.loads((folder / "memristor_test.json").read_text())["layer_hardware"] == wanted
    assert json.loads((folder / "point.json").read_text())["layer_hardware"] == wanted
    log = (folder / "sweep_log.txt").read_text()
    assert any(
        OUT_PROJ in line and line.rstrip().endswith("adc_precision_bits=8, adc_range_bits=8")
        for line in log.splitlines()
    ), log[-3000:]
    assert any(FFN1 in line and line.rstrip().endswith("dac_bits=6") for line in log.splitlines())
    assert "adc_range_bits@*.mha_layer.out_proj" in (out / "sweep.md").read_text()


def test_points_default_to_the_runs_own_layer_hardware(tmp_path):
    own = {"*.ffn_module1.*": {"weight_bits": 4}}
    run = TrainedRun(
        tmp_path / "run", tmp_path / "run" / "save", HardwareConfig().to_dict(), LAYERS, own
    )
    grid = parse_grid({"dac_bits@*.out_proj": "6"})
    [point] = plan_points(grid, [run])  # none given: the run's own
    assert point.layer_hardware() == {**own, "*.out_proj": {"dac_bits": 6}}
    [point] = plan_points(grid, [run], {})  # given empty: none
    assert point.layer_hardware() == {"*.out_proj": {"dac_bits": 6}}
    [point] = plan_points(parse_grid({"dac_bits": "6"}), [run])
    assert point.layer_hardware() == own

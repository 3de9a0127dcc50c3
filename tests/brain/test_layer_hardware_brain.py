"""Per-layer hardware through a real SpeechBrain Brain: layer_hardware is applied at
conversion, saved in every checkpoint (the mapping and each layer's config), re-applied after
recovery and in a --test_only evaluation, recorded in the result table, read by TrainedRun,
and a checkpoint with other per-layer settings is reported on load."""

import logging

import pytest
import torch
from test_brain import CTCBrain, fit, load_hparams, make_brain, read_tables, toy_dataset

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.convert import hardware_matmuls, layer_configs
from speechbrain_memristor.studies.runs import TrainedRun

LAYER_HARDWARE = {
    "*.mha_layer.out_proj": {"adc_precision_bits": 6, "adc_range_bits": 6},
    "*.ffn_module1.*": {"weight_bits": 3},
}


def with_hook(hparams, layer_hardware):
    """``hparams`` whose MemristorHook (the one the Brain finds) has ``layer_hardware``."""
    fixture = hparams["memristor"]
    hparams["memristor"] = MemristorHook(
        hparams["hardware"],
        train_execution=fixture.train_execution,
        test_execution=fixture.test_execution,
        chips=fixture.chips,
        compare=fixture.compare,
        layer_hardware=layer_hardware,
    )
    return hparams


def expected(name, hardware):
    if name.endswith(".mha_layer.out_proj"):
        return hardware.replace(adc_precision_bits=6, adc_range_bits=6)
    if ".ffn_module1." in name:
        return hardware.replace(weight_bits=3)
    return hardware


def check_layers(model, hardware, seed=None):
    configs = layer_configs(model)
    assert any(name.endswith(".mha_layer.out_proj") for name in configs)
    for name, config in configs.items():
        wanted = expected(name, hardware)
        assert config == (wanted if seed is None else wanted.replace(seed=seed)), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One QAT epoch with per-layer hardware, checkpointed."""
    folder = tmp_path_factory.mktemp("layer_hardware")
    hparams = with_hook(load_hparams(folder, epochs=1), LAYER_HARDWARE)
    brain = make_brain(CTCBrain, hparams)
    check_layers(brain.memristor.model, hparams["hardware"])  # applied at conversion
    fit(brain, hparams)
    return folder, hparams, brain


def test_checkpoint_saves_the_mapping_and_each_layer_config(trained):
    folder, hparams, brain = trained
    [checkpoint] = hparams["checkpointer"].find_checkpoints()
    saved = torch.load(checkpoint.paramfiles["memristor"])
    assert saved["layer_hardware"] == LAYER_HARDWARE
    configs = layer_configs(brain.memristor.model)
    assert set(saved["layer_configs"]) == set(configs)
    for name, fields in saved["layer_configs"].items():
        assert fields == expected(name, hparams["hardware"]).to_dict(), name
    # Studies read them from the run's checkpoint.
    run = TrainedRun.load(folder)
    assert run.layer_hardware == LAYER_HARDWARE and set(run.layers) == set(configs)


def test_recovery_and_test_only_evaluation_keep_layer_hardware(trained, caplog):
    folder, hparams, _ = trained
    fresh = with_hook(load_hparams(folder, seed=5), LAYER_HARDWARE)  # other initial weights
    brain = make_brain(CTCBrain, fresh, test_only=True)
    with caplog.at_level(logging.INFO, logger="speechbrain_memristor.brain.hook"):
        fit(brain, fresh)  # --test_only: no training
        brain.evaluate(toy_dataset(1, count=3), min_key="WER", test_loader_kwargs={"batch_size": 3})
    assert not [r for r in caplog.records if "Per-layer hardware" in r.getMessage()]
    model = brain.memristor.model
    best = fresh["checkpointer"].find_checkpoint(min_key="WER")
    for key, value in torch.load(best.paramfiles["model"]).items():
        assert torch.equal(fresh["model"].state_dict()[key], value)  # recovered
    # Evaluated on the chips of seeds 11 and 12 with each layer's own settings.
    check_layers(model, fresh["hardware"], seed=fresh["hardware"].seed)
    for matmul in hardware_matmuls(model):
        assert matmul.chip is not None and matmul.chip.hardware.weight_bits == (
            matmul.hardware.weight_bits
        )
        assert matmul.chip.hardware.adc_range_bits == matmul.hardware.adc_range_bits
    document, rows, _ = read_tables(folder)
    assert document["layer_hardware"] == LAYER_HARDWARE
    assert [run["seed"] for run in document["runs"] if run["execution"] == "analog"] == [11, 12]


def test_loading_a_checkpoint_with_other_layer_settings_logs_the_difference(trained, caplog):
    folder = trained[0]
    other = {"*.mha_layer.out_proj": {"adc_precision_bits": 5, "adc_range_bits": 6}}
    hparams = with_hook(load_hparams(folder, seed=6), other)
    brain = make_brain(CTCBrain, hparams, test_only=True)
    with caplog.at_level(logging.INFO, logger="speechbrain_memristor.brain.hook"):
        brain.checkpointer.recover_if_possible()
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "Per-layer hardware (layer_hardware) differs" in messages
    assert "'adc_precision_bits': 5" in messages  # the mapping now
    out_proj = "enc.transformer.encoder.layers.0.mha_layer.out_proj"
    ffn = "enc.transformer.encoder.layers.0.ffn_module1.1.ffn.0"
    assert f"{out_proj}: own settings saved {{'adc_precision_bits': 6" in messages
    assert f"{ffn}: own settings saved {{'weight_bits': 3}}, now -" in messages
    # The current settings are the ones in use: the checkpoint does not change them.
    configs = layer_configs(brain.memristor.model)
    assert configs[out_proj].adc_precision_bits == 5 and configs[ffn].weight_bits == 4

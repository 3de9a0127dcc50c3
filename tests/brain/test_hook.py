"""MemristorHook arguments, saved hardware versions, and the Brain's use of public hooks only."""

from __future__ import annotations

import logging

import pytest
import speechbrain as sb
import torch
from test_brain import CTCBrain, CTCRecipe, fit, load_hparams, make_brain

from speechbrain_memristor.brain import MemristorBrain, MemristorHook
from speechbrain_memristor.config import CONFIG_VERSION, HardwareConfig


def test_execution_with_explicit_stage_modes_is_an_error():
    hardware = HardwareConfig()
    with pytest.raises(ValueError, match=r"execution='analog' and train_execution='digital'"):
        MemristorHook(hardware, execution="analog", train_execution="digital")
    with pytest.raises(ValueError, match=r"and test_execution='fake_quant'"):
        MemristorHook(hardware, execution="analog", test_execution="fake_quant")
    hook = MemristorHook(hardware, execution="digital")
    assert (hook.train_execution, hook.test_execution) == ("digital", "digital")
    hook = MemristorHook(hardware, execution="analog")
    assert (hook.train_execution, hook.test_execution) == ("fake_quant", "analog")
    hook = MemristorHook(hardware, test_execution="fake_quant")
    assert (hook.train_execution, hook.valid_execution) == ("fake_quant", "fake_quant")


def test_the_brain_overrides_no_private_speechbrain_method():
    private = [
        name
        for name in vars(MemristorBrain)
        if name.startswith("_") and not name.startswith("__") and hasattr(sb.Brain, name)
    ]
    assert private == []


class SuperCallingBrain(CTCRecipe, MemristorBrain):
    """A recipe whose stage hooks call super(): the hook still acts once per stage."""

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        MemristorBrain.on_stage_start(self, stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        super().on_stage_end(stage, stage_loss, epoch)
        MemristorBrain.on_stage_end(self, stage, stage_loss, epoch)


@pytest.mark.parametrize("brain_class", [CTCBrain, SuperCallingBrain])
def test_quantizers_are_merged_once_per_epoch(tmp_path, monkeypatch, brain_class):
    merges = []
    original = MemristorHook.synchronize_quantizers

    def counting(self):
        merges.append(self)
        original(self)

    monkeypatch.setattr(MemristorHook, "synchronize_quantizers", counting)
    hparams = load_hparams(tmp_path, epochs=2)
    brain = make_brain(brain_class, hparams)
    fit(brain, hparams)
    assert len(merges) == 2  # two epochs, one merge at the end of each training stage
    assert brain.executions == {sb.Stage.TRAIN: {"fake_quant"}, sb.Stage.VALID: {"fake_quant"}}


def saved_hook_state(tmp_path):
    hook = MemristorHook(HardwareConfig(weight_bits=4), include=["*"])
    hook.convert({"net": torch.nn.Sequential(torch.nn.Linear(4, 4))})
    path = tmp_path / "memristor.ckpt"
    hook.save(path)
    return hook, path


def test_saved_hardware_carries_its_version_and_older_saves_load(tmp_path, caplog):
    hook, path = saved_hook_state(tmp_path)
    saved = torch.load(path)
    assert saved["hardware_version"] == CONFIG_VERSION
    assert saved["hardware"] == hook.hardware.to_dict()
    older = dict(saved, hardware={k: v for k, v in saved["hardware"].items() if k != "dac_bits"})
    del older["hardware_version"]
    torch.save(older, path)
    with caplog.at_level(logging.INFO):
        hook.load(path)
    assert "lacks dac_bits=8: using the defaults" in caplog.text


def test_an_unknown_saved_hardware_field_is_an_error(tmp_path):
    hook, path = saved_hook_state(tmp_path)
    saved = torch.load(path)
    saved["hardware"]["crossbar_magic"] = 1
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['crossbar_magic'\]"):
        hook.load(path)


def test_the_hook_passes_its_cell_budget_to_the_conversion(caplog):
    # A 16 -> 8 Linear at the default 3-bit weights needs 16 * 8 * 2 * 2 = 512 cells: a budget
    # of 100 must warn and name the layer, the default budget (a few times the weights) must not.
    def hooked(max_cells):
        hook = MemristorHook(HardwareConfig(), include=["net.layer"], max_cells=max_cells)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            hook.convert({"net": _net()})
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert not hooked(None)
    (warning,) = hooked(100)
    assert "creates 512 cells, more than max_cells=100" in warning and "net.layer" in warning


def _net() -> torch.nn.Module:
    net = torch.nn.Module()
    net.layer = torch.nn.Linear(16, 8)
    return net

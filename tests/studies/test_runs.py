"""Studies leave the model as they found it, and every study uses the same checkpoint of a run."""

from __future__ import annotations

import time

import torch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls, set_execution
from speechbrain_memristor.studies.report import hardware_report
from speechbrain_memristor.studies.runs import study_checkpoint

HARDWARE = HardwareConfig(weight_bits=3, tile_rows=16, tile_cols=16, seed=4)


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.Linear(12, 5))
    convert(model, HARDWARE, "fake_quant", include=["*"])
    return model


def test_the_report_programs_no_chip_on_the_model_and_keeps_existing_ones():
    model = small_model()
    first = hardware_report(model)
    assert all(matmul.chip is None for matmul in hardware_matmuls(model))
    set_execution(model, "analog")
    model.eval()
    model(torch.randn(3, 20))
    chips = [matmul.chip for matmul in hardware_matmuls(model)]
    second = hardware_report(model)
    assert [matmul.chip for matmul in hardware_matmuls(model)] == chips  # the same objects
    # The report's temporary chip is the one the model programs: same seed, same cell energy.
    assert second == first


def test_study_checkpoint_is_the_lowest_wer_else_the_newest(tmp_path):
    checkpointer = Checkpointer(tmp_path / "unscored", {"w": torch.nn.Linear(1, 1)})
    assert study_checkpoint(checkpointer) is None
    older = checkpointer.save_checkpoint(meta={"epoch": 1})
    time.sleep(0.01)
    newer = checkpointer.save_checkpoint(meta={"epoch": 2})
    assert study_checkpoint(checkpointer).path == newer.path != older.path

    checkpointer = Checkpointer(tmp_path / "scored", {"w": torch.nn.Linear(1, 1)})
    best = checkpointer.save_checkpoint(meta={"WER": 20.0})
    time.sleep(0.01)
    checkpointer.save_checkpoint(meta={"WER": 30.0})
    time.sleep(0.01)
    checkpointer.save_checkpoint(meta={"epoch": 3})  # newest, but without a WER
    assert study_checkpoint(checkpointer).path == best.path
    assert study_checkpoint(checkpointer).path == checkpointer.find_checkpoint(min_key="WER").path

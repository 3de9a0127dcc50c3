"""Trained recipe runs: which checkpoint a study uses, its hardware, and its Brain.

A run is a recipe's output folder: ``save/CKPT+*`` checkpoints (each with the MemristorHook's
``memristor.ckpt``), ``hyperparams.yaml`` and the result tables. Every study (report, sweep)
uses the same checkpoint of a run, chosen by `TrainedRun.load`: the one with the lowest dev
WER (the checkpoint the recipe itself evaluates, ``min_key="WER"``), or the newest when no
checkpoint records a WER.

The bundled TED-LIUM 2 recipe lies in the source checkout (``recipes/``); `bundled_recipe`
finds it, with a clear error for an installation without it.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataio import read_audio
from speechbrain.utils.checkpoints import Checkpoint, Checkpointer

from speechbrain_memristor.brain import MemristorBrain
from speechbrain_memristor.config import HardwareConfig

BUNDLED_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "TEDLIUM2" / "ASR" / "conformer"
CHECKPOINT_METRIC = "WER"
SPLIT_CSV_KEYS = {"dev": "valid_csv", "test": "test_csv"}


class RunError(ValueError):
    """A run folder or recipe cannot be used (the message says why and what to give)."""


def bundled_recipe() -> Path:
    """The folder of the bundled TED-LIUM 2 Conformer recipe (train.py, hparams/)."""
    if not (BUNDLED_RECIPE / "train.py").is_file():
        raise RunError(
            f"The bundled TED-LIUM 2 recipe is not at {BUNDLED_RECIPE}. Install the project from "
            "its source checkout (pip install -e .), or give your recipe's train.py."
        )
    return BUNDLED_RECIPE


def study_checkpoint(checkpointer: Checkpointer) -> Checkpoint | None:
    """The checkpoint studies use: lowest dev WER, else the newest (None: no checkpoint)."""
    checkpoints = checkpointer.list_checkpoints()
    scored = [c for c in checkpoints if CHECKPOINT_METRIC in c.meta]
    if scored:
        return min(scored, key=lambda c: (c.meta[CHECKPOINT_METRIC], -c.meta["unixtime"]))
    return max(checkpoints, key=lambda c: c.meta["unixtime"], default=None)


@dataclass(frozen=True)
class TrainedRun:
    """A trained recipe run: its folder, study checkpoint and the hardware saved with it
    (``layers``: names of its mapped matrices; ``layer_hardware``: its per-layer settings;
    both empty for checkpoints saved before per-layer settings existed)."""

    folder: Path
    checkpoint: Path
    hardware: dict[str, Any]
    layers: tuple[str, ...] = ()
    layer_hardware: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def weight_bits(self) -> int:
        return int(self.hardware["weight_bits"])

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TrainedRun:
        """Reads the MemristorHook state (``memristor.ckpt``) of the study checkpoint."""
        folder = Path(folder).resolve()
        checkpoint = study_checkpoint(Checkpointer(folder / "save"))
        saved = None if checkpoint is None else checkpoint.path / "memristor.ckpt"
        if saved is None or not saved.is_file():
            raise RunError(
                f"Run {folder} has no checkpoint with hardware state (save/CKPT+*/memristor.ckpt); "
                "give the output folder of a run trained with the memristor recipe."
            )
        state = torch.load(saved, map_location="cpu", weights_only=False)
        hardware = HardwareConfig.from_saved(
            state["hardware"], state.get("hardware_version"), source=str(saved)
        )
        return cls(
            folder,
            checkpoint.path,
            hardware.to_dict(),
            tuple(state.get("layer_configs", {})),
            dict(state.get("layer_hardware", {})),
        )

    def recipe_value(self, key: str) -> str | None:
        """A top-level value of the run's resolved ``hyperparams.yaml`` (None if absent)."""
        path = self.folder / "hyperparams.yaml"
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=yaml.BaseLoader) or {}
        value = data.get(key)
        return value if isinstance(value, str) else None

    def data_overrides(self) -> dict[str, str]:
        """The run's ``data_folder`` and ``prepared_folder``, to evaluate on the same data."""
        values = {key: self.recipe_value(key) for key in ("data_folder", "prepared_folder")}
        return {key: value for key, value in values.items() if value is not None}


def load_trained_brain(
    hparams_file: str | os.PathLike, run: TrainedRun, overrides: dict, train_script: str | Path
) -> tuple[MemristorBrain, dict]:
    """The recipe's Brain (the one MemristorBrain subclass in ``train_script``) on the CPU with
    the run's study checkpoint loaded, in eval mode; and its hparams."""
    recipe_overrides = {**run.data_overrides(), **overrides, "output_folder": str(run.folder)}
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, recipe_overrides)
    spec = importlib.util.spec_from_file_location("memristor_recipe", train_script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, MemristorBrain)
        and value is not MemristorBrain
    ]
    if len(classes) != 1:
        raise RunError(f"{train_script} must define exactly one MemristorBrain subclass.")
    brain = classes[0](
        modules=hparams["modules"],
        opt_class=hparams.get("opt_class"),
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=hparams["checkpointer"],
    )
    checkpoint = brain.checkpointer.find_checkpoint(
        ckpt_predicate=lambda c: c.path == run.checkpoint
    )
    brain.checkpointer.load_checkpoint(checkpoint)
    brain.modules.eval()
    return brain, hparams


def split_examples(hparams: dict, split: str, count: int) -> list[dict]:
    """The first ``count`` utterances (``id``, ``sig``) of a prepared split (dev or test)."""
    if split not in SPLIT_CSV_KEYS:
        raise RunError(f"split={split!r} is invalid; choose dev or test.")
    with open(hparams[SPLIT_CSV_KEYS[split]], encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))[:count]
    return [{"id": row["ID"], "sig": read_audio(row["wav"])} for row in rows]


def forward_examples(brain: MemristorBrain, examples: list[dict]) -> None:
    """Run the Brain's test forward pass on each example (a batch of one)."""
    from speechbrain.dataio.batch import PaddedBatch

    for example in examples:
        brain.compute_forward(PaddedBatch([example]), sb.Stage.TEST)

"""Hardware sweeps without retraining: evaluate trained runs on a grid of hardware settings.

A sweep takes a recipe (its ``train.py`` and hparams file, plus the overrides the runs were
trained with), one or more trained runs (output folders with ``save/`` checkpoints, one per
weight precision) and a grid of hardware overrides. Every grid point is one test-only run of
the recipe in ``analog`` execution on one split, in its own folder
``<out>/points/<id>/`` (``id`` a hash of the point's settings) whose ``save`` links to the
trained run's checkpoints; the recipe writes ``memristor_<split>.json`` there. A point whose
table exists is finished and is never evaluated again, so an interrupted sweep resumes where
it stopped. Finally ``sweep.{csv,json,md}`` and plots are written to ``<out>``. Points run
one or several at a time (`Sweep.run`), or shared by the ranks of a torchrun job
(`Sweep.run_on_ranks`); the results are read from the points' tables in grid order, so they
are the same either way.

Grid axes (`AXES`): ``adc`` (pairs ``p/r``, or ``ideal``), ``adc_precision_bits``,
``adc_range_bits`` (integers, ``null`` for an ideal ADC), ``dac_bits``, ``dac_grid``
(``symmetric`` or ``synaptogenml``), ``tile_size``, ``read_noise``, ``device_params`` (a
Synaptogen JSON path), ``initial_cycles``, ``initial_cycle_mode`` (``per_cell`` or
``per_array``), ``write_verify`` (``true``/``false``), ``verify_max_attempts``,
``verify_lrs_max_ohms`` and ``verify_hrs_min_ohms`` (ohms, ``null`` for the defaults),
``stuck_lrs_rate``, ``stuck_hrs_rate``, ``wire_resistance`` (ohms per segment),
``wire_solver`` (``first_order`` or ``exact``), ``dac_mode`` (``parallel`` or
``bit_serial``), ``dac_encoding`` (``amplitude`` or ``pulse_width``),
``programming_device`` (``cpu`` or ``weights``), ``output_bits`` and
``attention_bits`` (bits, or ``off``), ``num_chips``, ``hardware_seed``, ``weight_bits``
(only the precisions the given runs were trained for, read from their checkpoints). The
grid is the product of the axes. Every point is validated (a `HardwareConfig` is built for
it) before any evaluation starts, and all problems are reported at once.

Per-layer axes ``FIELD@PATTERN`` (e.g. ``adc_range_bits@*.out_proj``) vary a field for the
layers a pattern selects (the patterns of `speechbrain_memristor.convert`): FIELD is one of the
hardware axes above except ``hardware_seed`` (``adc@PATTERN`` sets both ADC fields,
``tile_size@PATTERN`` both tile sizes) or any other per-layer `HardwareConfig` field (its value
read as YAML). A point passes them to the recipe as one ``layer_hardware`` mapping (pattern ->
fields, JSON), after the per-layer settings given with the overrides (``layer_hardware``;
by default the run's own, saved in its checkpoint); for a pattern in both, the point's fields
win. Where the run's checkpoint names its mapped
layers, each name pattern must select one of them, and every layer's resulting config must be
valid.

The recipe must expose these axes as top-level hparams keys (``adc`` sets
``adc_precision_bits`` and ``adc_range_bits``; an ideal ADC is passed as the word ``ideal``,
since a null hardware key keeps the recipe preset's value), plus ``execution``, ``compare``,
``test_splits``, ``output_folder``, ``data_folder``, ``prepared_folder`` and ``layer_hardware``
(passed to the MemristorHook), like the TED-LIUM 2 recipe does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from speechbrain_memristor.brain.results import EvaluationTable, table_stem
from speechbrain_memristor.config import ADC_FIELDS, IDEAL_ADC, HardwareConfig
from speechbrain_memristor.convert import LAYER_FIELDS, check_layer_hardware, name_selects
from speechbrain_memristor.studies.plots import plot_sweep
from speechbrain_memristor.studies.runs import TrainedRun, bundled_recipe
from speechbrain_memristor.util.atomic import write_atomic
from speechbrain_memristor.util.processes import run_logged, single_process_environment
from speechbrain_memristor.util.stats import STATISTICS
from speechbrain_memristor.util.tables import csv_table, markdown_table, setting_text

logger = logging.getLogger(__name__)

SPLITS = ("dev", "test")
NULL_WORDS = ("null", "none", "~", "ideal")
# Recipe keys the sweep sets itself; user overrides must not name them.
MANAGED_KEYS = ("output_folder", "execution", "compare", "test_splits")
# The recipe key of per-layer settings; ``FIELD@PATTERN`` axes add to it.
LAYER_HARDWARE_KEY = "layer_hardware"
LAYER_SEPARATOR = "@"


# Under torchrun: how long a rank may wait for the others (a rank's share of points can take
# hours), and how often rank 0 counts finished points for the progress bar.
RANK_TIMEOUT = timedelta(days=7)
PROGRESS_POLL_SECONDS = 1.0


class SweepError(ValueError):
    """A sweep cannot run as asked (the message lists every problem and its fix)."""


def _integer(text: str) -> int:
    return int(text)


def _optional_integer(text: str) -> int | None:
    return None if text.lower() in NULL_WORDS else int(text)


def _adc_pair(text: str | Sequence[str]) -> tuple[int | None, int | None]:
    """``p/r`` (or a [p, r] list) -> (p, r); ``ideal``/``null`` -> (None, None)."""
    if isinstance(text, str) and text.lower() in NULL_WORDS:
        return (None, None)
    parts = text.split("/") if isinstance(text, str) else list(text)
    if len(parts) != 2:
        raise ValueError("expected PRECISION/RANGE bits like 4/4, or ideal")
    return (int(parts[0]), int(parts[1]))


def _bits_or_off(text: str | int | None) -> int | None:
    """Bits of an optional quantizer: an integer, or ``off``/``null`` (None: not quantized)."""
    if text is None or (isinstance(text, str) and text.lower() in (*NULL_WORDS, "off")):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected an integer number of bits, or off") from None


def _boolean(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    words = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
    if str(text).lower() not in words:
        raise ValueError("expected true or false")
    return words[str(text).lower()]


def _optional_float(text: str | float | None) -> float | None:
    if text is None or (isinstance(text, str) and text.lower() in NULL_WORDS):
        return None
    return float(text)


def _path(text: str) -> str | None:
    return None if text.lower() in NULL_WORDS else os.path.abspath(text)


@dataclass(frozen=True)
class Axis:
    """A grid axis: how to parse one value and which HardwareConfig fields it sets."""

    parse: Callable[[Any], Any]
    hardware_fields: tuple[str, ...]


AXES: dict[str, Axis] = {
    "adc": Axis(_adc_pair, ("adc_precision_bits", "adc_range_bits")),
    "adc_precision_bits": Axis(_optional_integer, ("adc_precision_bits",)),
    "adc_range_bits": Axis(_optional_integer, ("adc_range_bits",)),
    "dac_bits": Axis(_integer, ("dac_bits",)),
    "dac_grid": Axis(str, ("dac_grid",)),
    "tile_size": Axis(_integer, ("tile_rows", "tile_cols")),
    "read_noise": Axis(str, ("read_noise",)),
    "device_params": Axis(_path, ("device_params",)),
    "initial_cycles": Axis(_integer, ("initial_cycles",)),
    "initial_cycle_mode": Axis(str, ("initial_cycle_mode",)),
    "write_verify": Axis(_boolean, ("write_verify",)),
    "verify_max_attempts": Axis(_integer, ("verify_max_attempts",)),
    "verify_lrs_max_ohms": Axis(_optional_float, ("verify_lrs_max_ohms",)),
    "verify_hrs_min_ohms": Axis(_optional_float, ("verify_hrs_min_ohms",)),
    "stuck_lrs_rate": Axis(float, ("stuck_lrs_rate",)),
    "stuck_hrs_rate": Axis(float, ("stuck_hrs_rate",)),
    "wire_resistance": Axis(float, ("wire_resistance",)),
    "wire_solver": Axis(str, ("wire_solver",)),
    "dac_mode": Axis(str, ("dac_mode",)),
    "dac_encoding": Axis(str, ("dac_encoding",)),
    "programming_device": Axis(str, ("programming_device",)),
    "output_bits": Axis(_bits_or_off, ("output_bits",)),
    "attention_bits": Axis(_bits_or_off, ("attention_bits",)),
    "hardware_seed": Axis(_integer, ("seed",)),
    "num_chips": Axis(_integer, ()),
    "weight_bits": Axis(_integer, ("weight_bits",)),
}


def _yaml_value(text: Any) -> Any:
    return yaml.safe_load(text) if isinstance(text, str) else text


def split_layer_axis(axis: str) -> tuple[str, str | None]:
    """``FIELD@PATTERN`` -> (FIELD, PATTERN); a plain axis -> (axis, None)."""
    name, separator, pattern = axis.partition(LAYER_SEPARATOR)
    return (name, pattern) if separator else (axis, None)


def axis_of(axis: str) -> Axis:
    """The `Axis` of a grid key: one of `AXES`, or ``FIELD@PATTERN`` (module doc); raises a
    ValueError saying what is allowed."""
    name, pattern = split_layer_axis(axis)
    if pattern is None:
        if axis in AXES:
            return AXES[axis]
        raise ValueError(
            f"unknown grid axis {axis!r}; choose from {', '.join(AXES)}, or FIELD@PATTERN for "
            "the layers a pattern selects"
        )
    per_layer = [
        key
        for key, value in AXES.items()
        if value.hardware_fields and "seed" not in value.hardware_fields
    ]
    if not pattern:
        raise ValueError(f"grid axis {axis!r} has an empty layer pattern after {LAYER_SEPARATOR!r}")
    if name in per_layer:
        return AXES[name]
    if name in LAYER_FIELDS:
        return Axis(_yaml_value, (name,))
    raise ValueError(
        f"grid axis {axis!r}: {name!r} cannot be set per layer; choose FIELD from the axes "
        f"{', '.join(per_layer)}, or any other HardwareConfig field except seed (seeds and "
        "num_chips are global)"
    )


def parse_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Axis -> parsed values from strings (command line) or YAML scalars/lists.

    A value may be a list or one comma-separated string (``"2,4,8"``). Raises `SweepError`
    listing every unknown axis and unparsable value.
    """
    parsed: dict[str, list[Any]] = {}
    problems = []
    for axis, raw in grid.items():
        try:
            parse = axis_of(axis).parse
        except ValueError as error:
            problems.append(str(error))
            continue
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        if not items:
            problems.append(f"grid axis {axis!r} has no values")
        values = []
        for item in items:
            item = item.strip() if isinstance(item, str) else item
            try:
                values.append(parse(item))
            except (TypeError, ValueError) as error:
                problems.append(f"grid {axis}={item!r} cannot be read: {error}")
        parsed[axis] = list(dict.fromkeys(values))  # drop repeats, keep order
    if problems:
        raise SweepError("Invalid grid:\n- " + "\n- ".join(problems))
    return parsed


def load_grid_file(path: str | os.PathLike) -> dict[str, Any]:
    """The axis mapping of a YAML grid file (every scalar read as a string, like the CLI)."""
    with open(path, encoding="utf-8") as stream:
        data = yaml.load(stream, Loader=yaml.BaseLoader)
    if not isinstance(data, dict):
        raise SweepError(f"Grid file {path} must hold a mapping of axis: [values], got {data!r}.")
    return data


def reference_wers(folder: Path, split: str) -> dict[str, float]:
    """WER of each non-analog execution (digital, fake_quant) in a run's own result table
    for ``split`` (empty if the run has none)."""
    table = EvaluationTable.read(folder, split)
    return {} if table is None else table.reference_metrics()


@dataclass(frozen=True)
class SweepRanks:
    """This process's place in a torchrun job: ``rank`` of ``world_size``, ``local_rank`` on
    its machine."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SweepRanks | None:
        """The ranks torchrun announces (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; default:
        this process's environment); None outside torchrun or for a single process."""
        environ = os.environ if environ is None else environ
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return None
        world_size = int(environ["WORLD_SIZE"])
        if world_size < 2:
            return None
        rank = int(environ["RANK"])
        return cls(rank, world_size, int(environ.get("LOCAL_RANK", rank)))


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: recipe overrides (top-level hparams keys) and the run to evaluate."""

    settings: dict[str, Any]  # axis -> value (adc expanded), weight_bits always included
    run: TrainedRun
    # per-layer settings given for every point (pattern -> fields), before the point's own
    base_layer_hardware: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def identifier(self) -> str:
        document: dict[str, Any] = {"settings": self.settings, "run": str(self.run.folder)}
        if self.base_layer_hardware:
            document[LAYER_HARDWARE_KEY] = self.base_layer_hardware
        canonical = json.dumps(document, sort_keys=True)
        return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:12]

    def hardware_changes(self) -> dict[str, Any]:
        """HardwareConfig fields this point sets for every layer."""
        changes = {}
        for key, value in self.settings.items():
            if split_layer_axis(key)[1] is None:
                for name in AXES[key].hardware_fields:
                    changes[name] = value
        return changes

    def layer_hardware(self) -> dict[str, dict[str, Any]]:
        """The point's per-layer settings (pattern -> fields): the given ones, then the
        point's ``FIELD@PATTERN`` settings (for a pattern in both, moved last, the point's
        fields win)."""
        merged = {pattern: dict(fields) for pattern, fields in self.base_layer_hardware.items()}
        for key, value in self.settings.items():
            pattern = split_layer_axis(key)[1]
            if pattern is None:
                continue
            fields = merged.pop(pattern, {})
            for name in axis_of(key).hardware_fields:
                fields[name] = value
            merged[pattern] = fields
        return merged


def _expand(settings: dict[str, Any]) -> dict[str, Any]:
    """``adc`` (p, r) -> adc_precision_bits, adc_range_bits (also ``adc@PATTERN``)."""
    expanded = {}
    for key, value in settings.items():
        name, pattern = split_layer_axis(key)
        if name != "adc":
            expanded[key] = value
            continue
        suffix = "" if pattern is None else f"{LAYER_SEPARATOR}{pattern}"
        expanded[f"adc_precision_bits{suffix}"], expanded[f"adc_range_bits{suffix}"] = value
    return expanded


def plan_points(
    grid: Mapping[str, list[Any]],
    runs: Sequence[TrainedRun],
    layer_hardware: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SweepPoint]:
    """Every point of the grid product, validated; `SweepError` lists all problems.

    ``weight_bits`` values pick the run trained for them; without that axis every run is
    swept. ``layer_hardware``: per-layer settings for every point (before its ``FIELD@PATTERN``
    ones); None: each run's own (saved in its checkpoint). Each point's HardwareConfig (the
    run's saved config with the point's changes) and its per-layer configs must be valid.
    """
    problems = []
    try:
        given_layer_hardware = None
        if layer_hardware is not None:
            given_layer_hardware = check_layer_hardware(layer_hardware)
    except (TypeError, ValueError) as error:
        problems.append(str(error))
        given_layer_hardware = {}
    for pattern in (None, *{split_layer_axis(axis)[1] for axis in grid} - {None}):
        suffix = "" if pattern is None else f"{LAYER_SEPARATOR}{pattern}"
        if f"adc{suffix}" in grid and (
            {f"adc_precision_bits{suffix}", f"adc_range_bits{suffix}"} & set(grid)
        ):
            problems.append(
                f"use either the adc{suffix} axis or adc_precision_bits{suffix}/"
                f"adc_range_bits{suffix}, not both"
            )
    by_bits: dict[int, TrainedRun] = {}
    for run in runs:
        if run.weight_bits in by_bits:
            problems.append(
                f"runs {by_bits[run.weight_bits].folder} and {run.folder} both hold "
                f"{run.weight_bits}-bit checkpoints; give one run per weight precision"
            )
        by_bits[run.weight_bits] = run
    bits_values = grid.get("weight_bits", list(by_bits))
    for bits in bits_values:
        if bits not in by_bits:
            trained = ", ".join(map(str, sorted(by_bits))) or "none"
            problems.append(
                f"weight_bits={bits}: no given run was trained for it (checkpoints hold "
                f"{trained} bits); evaluating other weight bits needs a run trained for them"
            )
    for chips in grid.get("num_chips", []):
        if chips < 1:
            problems.append(f"num_chips={chips} is invalid: expected an integer >= 1")

    axes = [axis for axis in grid if axis != "weight_bits"]
    points = []
    for bits in (bits for bits in bits_values if bits in by_bits):
        run = by_bits[bits]
        for combination in itertools.product(*(grid[axis] for axis in axes)):
            settings = _expand(dict(zip(axes, combination, strict=True)))
            settings["weight_bits"] = bits
            base_layer_hardware = (
                run.layer_hardware if given_layer_hardware is None else given_layer_hardware
            )
            point = SweepPoint(settings, run, base_layer_hardware)
            try:
                hardware = _hardware(run.hardware, point.hardware_changes())
                _check_layers(hardware, point.layer_hardware(), run)
            except (TypeError, ValueError) as error:
                problems.append(f"point {settings}: {error}")
            points.append(point)
    if problems:
        raise SweepError("Invalid sweep:\n- " + "\n- ".join(problems))
    return points


def _hardware(saved: Mapping[str, Any], changes: Mapping[str, Any]) -> HardwareConfig:
    return HardwareConfig(**{**saved, **changes})


def _check_layers(
    hardware: HardwareConfig, layer_hardware: dict[str, dict[str, Any]], run: TrainedRun
) -> None:
    """Per-layer settings on ``hardware``: each pattern's fields must give a valid config; where
    the run's checkpoint names its layers, each name pattern must select one and every
    layer's resulting config must be valid (``type:`` patterns are checked by the recipe)."""
    layer_hardware = check_layer_hardware(layer_hardware)
    for pattern, fields in layer_hardware.items():
        try:
            hardware.replace(**fields)
        except (TypeError, ValueError) as error:
            raise ValueError(f"layer_hardware pattern {pattern!r}: {error}") from None
    if not run.layers:
        return
    names = [pattern for pattern in layer_hardware if not pattern.startswith("type:")]
    for pattern in names:
        if not any(name_selects(pattern, layer) for layer in run.layers):
            raise ValueError(
                f"layer_hardware pattern {pattern!r} selects none of the {len(run.layers)} "
                f"mapped layers of run {run.folder} (e.g. {run.layers[0]})"
            )
    for layer in run.layers:
        changes: dict[str, Any] = {}
        for pattern in names:
            if name_selects(pattern, layer):
                changes.update(layer_hardware[pattern])
        try:
            hardware.replace(**changes)
        except (TypeError, ValueError) as error:
            raise ValueError(f"layer {layer!r}: {error}") from None


def _recipe_value(key: str, value: Any) -> Any:
    """A point's setting as the recipe's top-level key wants it: there a null hardware key
    keeps the preset's value, so an ideal ADC (None) is asked for with the word IDEAL_ADC."""
    if value is None and key in ADC_FIELDS:
        return IDEAL_ADC
    return value


def _override(value: Any) -> str:
    """A value as a YAML override understood by SpeechBrain (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, str | os.PathLike):
        return json.dumps(os.fspath(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_override(item) for item in value) + "]"
    if isinstance(value, Mapping):  # a JSON (flow YAML) mapping
        return json.dumps({str(key): _json_value(item) for key, item in value.items()})
    return json.dumps(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_value(item) for key, item in value.items()}
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@dataclass
class Sweep:
    """A sweep of trained ``runs`` over ``grid`` on ``split``, written to ``out_dir``.

    Arguments:
        hparams: the recipe's hparams file (the one the runs were trained with).
        runs: trained run folders (one per weight precision).
        grid: axis -> values (`parse_grid` output).
        out_dir: sweep folder (points, tables, plots).
        split: ``dev`` or ``test``.
        overrides: further recipe overrides for every point (those the runs were trained
            with, e.g. model sizes); ``data_folder``/``prepared_folder`` default to the runs'.
        float_run: optional float baseline run folder, whose own table gives the float WER.
        train_script: the recipe's train.py (default: the bundled TED-LIUM 2 recipe's).
    """

    hparams: Path
    runs: list[TrainedRun]
    grid: dict[str, list[Any]]
    out_dir: Path
    split: str = "test"
    overrides: dict[str, Any] | None = None
    float_run: Path | None = None
    train_script: Path = field(default_factory=lambda: bundled_recipe() / "train.py")

    def __post_init__(self) -> None:
        problems = []
        if self.split not in SPLITS:
            problems.append(f"split={self.split!r} is invalid; choose one of {', '.join(SPLITS)}")
        if not Path(self.hparams).is_file():
            problems.append(f"hparams file {self.hparams} not found")
        if not Path(self.train_script).is_file():
            problems.append(f"recipe script {self.train_script} not found")
        clashes = sorted(set(self.overrides or {}) & (set(MANAGED_KEYS) | set(AXES)))
        if clashes:
            problems.append(
                f"overrides {clashes} are set by the sweep itself; put hardware settings in "
                "the grid (a one-value axis for a fixed setting)"
            )
        if not self.runs:
            problems.append("no trained run given")
        if problems:
            raise SweepError("Invalid sweep:\n- " + "\n- ".join(problems))
        self.points = plan_points(
            self.grid, self.runs, (self.overrides or {}).get(LAYER_HARDWARE_KEY)
        )

    def point_folder(self, point: SweepPoint) -> Path:
        return self.out_dir / "points" / point.identifier

    def table_path(self, point: SweepPoint) -> Path:
        return Path(f"{table_stem(self.point_folder(point), self.split)}.json")

    def is_done(self, point: SweepPoint) -> bool:
        return self.table_path(point).is_file()

    def command(self, point: SweepPoint) -> list[str]:
        """The recipe command evaluating ``point`` (test only, analog, one split)."""
        overrides: dict[str, Any] = point.run.data_overrides()
        overrides.update(self.overrides or {})
        overrides.update(
            {
                key: _recipe_value(key, value)
                for key, value in point.settings.items()
                if split_layer_axis(key)[1] is None
            }
        )
        layer_hardware = point.layer_hardware()
        if layer_hardware or LAYER_HARDWARE_KEY in overrides:
            overrides[LAYER_HARDWARE_KEY] = layer_hardware
        overrides.update(
            {
                "output_folder": self.point_folder(point),
                "execution": "analog",
                "compare": [],
                "test_splits": [self.split],
            }
        )
        command = [sys.executable, str(self.train_script), str(Path(self.hparams).resolve())]
        command += [f"--{key}={_override(value)}" for key, value in overrides.items()]
        return [*command, "--test_only"]

    def evaluate(self, point: SweepPoint, device: str | None = None) -> None:
        """Run the recipe for ``point`` in its folder (checkpoints linked from the run), on
        ``device`` (e.g. ``cuda:1``; None: the recipe's default)."""
        folder = self.point_folder(point)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(
            folder / "point.json",
            json.dumps(
                {
                    "settings": point.settings,
                    "run": str(point.run.folder),
                    "split": self.split,
                    LAYER_HARDWARE_KEY: point.layer_hardware(),
                },
                indent=2,
            )
            + "\n",
        )
        link = folder / "save"
        if not link.is_symlink():
            link.symlink_to(point.run.folder / "save", target_is_directory=True)
        log_path = folder / "sweep_log.txt"
        command = self.command(point) + ([] if device is None else [f"--device={device}"])
        status = run_logged(
            command,
            log_path,
            cwd=Path(self.train_script).parent,
            echo=False,
            env=single_process_environment(),  # a point is never a rank of a torchrun sweep
        )
        if status != 0 or not self.is_done(point):
            raise SweepError(
                f"Point {point.settings} failed (exit status {status}); see "
                f"{log_path}. Fix it and rerun: finished points are kept."
            )

    def run(
        self,
        evaluate: Callable[[SweepPoint], None] | None = None,
        workers: int = 1,
        devices: Sequence[str] | None = None,
    ) -> dict | None:
        """Evaluate every unfinished point, then write tables and plots; returns the results.

        ``workers`` points run at once (each a recipe process); with ``devices`` (e.g.
        ``["cuda:0", "cuda:1"]``) each worker slot runs its points on one of them, dealt round
        robin. A failed point lets the others finish, then raises (finished points are kept).
        ``evaluate`` replaces `Sweep.evaluate` (e.g. to observe evaluations; it gets the point
        only). The results do not depend on ``workers``: each point is its own process and the
        tables are read in grid order. Under torchrun (`SweepRanks`) the ranks share the
        points (`run_on_ranks`); only rank 0 writes and returns the results (None elsewhere).
        """
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise SweepError(f"workers={workers!r} is invalid: expected an integer >= 1.")
        ranks = SweepRanks.from_environment()
        if ranks is not None:
            return self.run_on_ranks(ranks, evaluate, workers, devices)
        pending = [point for point in self.points if not self.is_done(point)]
        self._log_plan(pending, workers)
        progress = tqdm(total=len(pending), desc="sweep points", unit="point", disable=not pending)
        with progress:
            self._evaluate_points(pending, evaluate, workers, devices, lambda: progress.update(1))
        return self.write_results()

    def run_on_ranks(
        self,
        ranks: SweepRanks,
        evaluate: Callable[[SweepPoint], None] | None = None,
        workers: int = 1,
        devices: Sequence[str] | None = None,
    ) -> dict | None:
        """`run` as one rank of a torchrun job: rank 0 lists the unfinished points (so every
        rank deals the same list), rank k evaluates points k, k + W, ... of it (``workers`` at
        a time, on ``devices``; default: ``cuda:LOCAL_RANK`` where CUDA is present, else the
        recipe's default), each a recipe process as in a serial sweep. The ranks meet in a gloo
        group (joined here unless one is initialized) only to share that list and, at the
        end, their failures; rank 0 counts finished points from their tables for the progress
        bar and alone writes the results, read from the tables in grid order as a serial
        sweep does (None is returned on the other ranks). A failed point lets every rank
        finish its share, then every rank raises, rank 0 naming every failure."""
        joined = not torch.distributed.is_initialized()
        if joined:
            torch.distributed.init_process_group("gloo", timeout=RANK_TIMEOUT)
        try:
            listed = [[index for index, point in enumerate(self.points) if not self.is_done(point)]]
            torch.distributed.broadcast_object_list(listed, src=0)
            pending = [self.points[index] for index in listed[0]]
            share = pending[ranks.rank :: ranks.world_size]
            if devices is None and torch.cuda.is_available():
                devices = [f"cuda:{ranks.local_rank % torch.cuda.device_count()}"]
            if ranks.rank == 0:
                self._log_plan(pending, workers, ranks.world_size)
            gathered: list[list[str | None]] = []

            def evaluate_share() -> None:
                failure = None
                try:
                    self._evaluate_points(share, evaluate, workers, devices, lambda: None, ranks)
                except Exception as error:  # reported after the gather below
                    failure = f"rank {ranks.rank}: {error}"
                failures: list[str | None] = [None] * ranks.world_size
                torch.distributed.all_gather_object(failures, failure)
                gathered.append(failures)

            worker = threading.Thread(target=evaluate_share, name="sweep rank share")
            worker.start()
            show = ranks.rank == 0 and bool(pending)
            with tqdm(
                total=len(pending), desc="sweep points", unit="point", disable=not show
            ) as bar:
                while worker.is_alive():
                    worker.join(PROGRESS_POLL_SECONDS)
                    bar.update(sum(map(self.is_done, pending)) - bar.n)
        finally:
            if joined:
                torch.distributed.destroy_process_group()
        if not gathered:
            raise SweepError(
                f"rank {ranks.rank}: the ranks could not exchange their outcome (another rank "
                "stopped?); finished points are kept: rerun the sweep to resume."
            )
        failures = gathered[0]
        reported = failures if ranks.rank == 0 else failures[ranks.rank : ranks.rank + 1]
        reported = [failure for failure in reported if failure is not None]
        if reported:
            raise SweepError(
                "Sweep points failed (finished points are kept; rerun to resume):\n- "
                + "\n- ".join(reported)
            )
        return self.write_results() if ranks.rank == 0 else None

    def _log_plan(self, pending: Sequence[SweepPoint], workers: int, ranks: int = 1) -> None:
        logger.info(
            "Sweep: %d points, %d finished, %d to evaluate (%d at a time on each of %d ranks)",
            len(self.points),
            len(self.points) - len(pending),
            len(pending),
            workers,
            ranks,
        )

    def _evaluate_points(
        self,
        points: Sequence[SweepPoint],
        evaluate: Callable[[SweepPoint], None] | None,
        workers: int,
        devices: Sequence[str] | None,
        finished: Callable[[], None],
        ranks: SweepRanks | None = None,
    ) -> None:
        """Evaluate ``points`` ``workers`` at a time (`run`), calling ``finished`` after each;
        raises the first failure once all have run (one worker: at once)."""
        slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(workers):
            slots.put(slot)
        where = "" if ranks is None else f" on rank {ranks.rank}"

        def evaluate_in_a_slot(point: SweepPoint) -> None:
            slot = slots.get()
            try:
                logger.info("Sweep point %s%s: %s", point.identifier, where, point.settings)
                if evaluate is not None:
                    evaluate(point)
                else:
                    self.evaluate(point, devices[slot % len(devices)] if devices else None)
            finally:
                slots.put(slot)

        if workers == 1:
            for point in points:
                evaluate_in_a_slot(point)
                finished()
            return
        failures = []
        with ThreadPoolExecutor(workers) as pool:
            for future in as_completed(pool.submit(evaluate_in_a_slot, point) for point in points):
                finished()
                if future.exception() is not None:
                    failures.append(future.exception())
        if failures:
            raise failures[0]

    def results(self) -> dict:
        """Rows of the finished points (WER summary over chips) and the references."""
        rows = []
        for point in self.points:
            table = EvaluationTable.read(self.point_folder(point), self.split)
            if table is None:
                continue
            summary = table.analog_summary()
            rows.append(
                {
                    "point": point.identifier,
                    "run": str(point.run.folder),
                    "settings": point.settings,
                    "hardware": table.hardware,
                    LAYER_HARDWARE_KEY: table.layer_hardware,
                    "chips": summary["chips"],
                    "seeds": summary["seeds"],
                    "wers": table.metrics("analog"),
                    **{f"wer_{key}": value for key, value in summary["metric"].items()},
                }
            )
        references = {
            str(run.weight_bits): reference_wers(run.folder, self.split) for run in self.runs
        }
        float_wer = None
        if self.float_run is not None:
            float_wer = reference_wers(Path(self.float_run), self.split).get("digital")
        return {
            "split": self.split,
            "grid": self.grid,
            "points": len(self.points),
            "rows": rows,
            "references": references,
            "float_wer": float_wer,
        }

    def write_results(self) -> dict:
        """Write ``sweep.{json,csv,md}`` and the plots for the finished points."""
        results = self.results()
        axes = self.setting_columns()
        write_atomic(self.out_dir / "sweep.json", json.dumps(results, indent=2) + "\n")
        write_atomic(self.out_dir / "sweep.csv", _csv(results, axes))
        write_atomic(self.out_dir / "sweep.md", _markdown(results, axes))
        results["plots"] = [str(path) for path in plot_sweep(results, axes, self.out_dir)]
        return results

    def setting_columns(self) -> list[str]:
        """Setting keys shown per point: weight_bits and every expanded grid axis."""
        columns = ["weight_bits"]
        for point in self.points:
            columns += [key for key in point.settings if key not in columns]
        return columns


WER_STATISTICS = tuple(f"wer_{statistic}" for statistic in STATISTICS)


def _csv(results: dict, axes: list[str]) -> str:
    rows = [
        [
            row["point"],
            *(setting_text(row["settings"].get(axis)) for axis in axes),
            row["chips"],
            *(row[key] for key in WER_STATISTICS),
        ]
        for row in results["rows"]
    ]
    return csv_table(["point", *axes, "chips", *WER_STATISTICS], rows)


def _markdown(results: dict, axes: list[str]) -> str:
    columns = ["point", *axes, "chips", "WER % mean", "std", "min", "max"]
    rows = [
        [
            row["point"],
            *(setting_text(row["settings"].get(axis)) for axis in axes),
            str(row["chips"]),
            *(f"{row[key]:.2f}" for key in WER_STATISTICS),
        ]
        for row in results["rows"]
    ]
    lines = [
        f"# Hardware sweep ({results['split']}, {len(results['rows'])} of "
        f"{results['points']} points finished)",
        "",
        markdown_table(columns, rows).rstrip("\n"),
    ]
    references = [
        f"- {bits}-bit run, {execution}: {wer:.2f}"
        for bits, wers in results["references"].items()
        for execution, wer in wers.items()
    ]
    if results["float_wer"] is not None:
        references.insert(0, f"- float baseline: {results['float_wer']:.2f}")
    if references:
        lines += ["", "References (WER % from the runs' own tables):", "", *references]
    return "\n".join(lines) + "\n"

"""Hardware sweeps without retraining: evaluate trained runs on a grid of hardware settings.

A sweep takes a recipe (its ``train.py`` and hparams file, plus the overrides the runs were
trained with), one or more trained runs (output folders with ``save/`` checkpoints, one per
weight precision) and a grid of hardware overrides. Every grid point is one test-only run of
the recipe in ``analog`` execution on one split, in its own folder
``<out>/points/<id>/`` (``id`` a hash of the point's settings) whose ``save`` links to the
trained run's checkpoints; the recipe writes ``memristor_<split>.json`` there. A point whose
table exists is finished and is never evaluated again, so an interrupted sweep resumes where
it stopped. Finally ``sweep.{csv,json,md}`` and plots are written to ``<out>``.

Grid axes (`AXES`): ``adc`` (pairs ``p/r``, or ``ideal``), ``adc_precision_bits``,
``adc_range_bits`` (integers, ``null`` for an ideal ADC), ``dac_bits``, ``tile_size``,
``read_noise``, ``device_params`` (a Synaptogen JSON path), ``initial_cycles``,
``num_chips``, ``hardware_seed``, ``weight_bits`` (only the precisions the given runs were
trained for, read from their checkpoints). The grid is the product of the axes. Every point
is validated (a `HardwareConfig` is built for it) before any evaluation starts, and all
problems are reported at once.

The recipe must expose these axes as top-level hparams keys (``adc`` sets
``adc_precision_bits`` and ``adc_range_bits``), plus ``execution``, ``compare``,
``test_splits``, ``output_folder``, ``data_folder`` and ``prepared_folder``, like the
TED-LIUM 2 recipe does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from speechbrain_memristor.atomic import write_atomic
from speechbrain_memristor.config import HardwareConfig

logger = logging.getLogger(__name__)

RECIPE_TRAIN_SCRIPT = (
    Path(__file__).resolve().parents[1] / "recipes" / "TEDLIUM2" / "ASR" / "conformer" / "train.py"
)
SPLITS = ("dev", "test")
NULL_WORDS = ("null", "none", "~", "ideal")
# Recipe keys the sweep sets itself; user overrides must not name them.
MANAGED_KEYS = ("output_folder", "execution", "compare", "test_splits")


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
    "tile_size": Axis(_integer, ("tile_rows", "tile_cols")),
    "read_noise": Axis(str, ("read_noise",)),
    "device_params": Axis(_path, ("device_params",)),
    "initial_cycles": Axis(_integer, ("initial_cycles",)),
    "hardware_seed": Axis(_integer, ("seed",)),
    "num_chips": Axis(_integer, ()),
    "weight_bits": Axis(_integer, ("weight_bits",)),
}


def parse_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Axis -> parsed values from strings (command line) or YAML scalars/lists.

    A value may be a list or one comma-separated string (``"2,4,8"``). Raises `SweepError`
    listing every unknown axis and unparsable value.
    """
    parsed: dict[str, list[Any]] = {}
    problems = []
    for axis, raw in grid.items():
        if axis not in AXES:
            problems.append(f"unknown grid axis {axis!r}; choose from {', '.join(AXES)}")
            continue
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        if not items:
            problems.append(f"grid axis {axis!r} has no values")
        values = []
        for item in items:
            item = item.strip() if isinstance(item, str) else item
            try:
                values.append(AXES[axis].parse(item))
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


@dataclass(frozen=True)
class TrainedRun:
    """A trained recipe run: its output folder and the hardware its checkpoint was saved with."""

    folder: Path
    hardware: dict[str, Any]

    @property
    def weight_bits(self) -> int:
        return int(self.hardware["weight_bits"])

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TrainedRun:
        """Reads the MemristorHook state (``memristor.ckpt``) of the newest checkpoint."""
        folder = Path(folder).resolve()
        saved = sorted((folder / "save").glob("CKPT+*/memristor.ckpt"))
        if not saved:
            raise SweepError(
                f"Run {folder} has no checkpoint with hardware state (save/CKPT+*/memristor.ckpt); "
                "give the output folder of a run trained with the memristor recipe."
            )
        state = torch.load(saved[-1], map_location="cpu", weights_only=False)
        return cls(folder, dict(state["hardware"]))

    def recipe_value(self, key: str) -> str | None:
        """A top-level value of the run's resolved ``hyperparams.yaml`` (None if absent)."""
        path = self.folder / "hyperparams.yaml"
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=yaml.BaseLoader) or {}
        value = data.get(key)
        return value if isinstance(value, str) else None


def _read_table(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def reference_wers(folder: Path, split: str) -> dict[str, float]:
    """WER of each non-analog execution (digital, fake_quant) in a run's own result table
    ``memristor_<split>.json`` (empty if the run has none)."""
    table = _read_table(folder / f"memristor_{split}.json")
    references: dict[str, float] = {}
    for run in (table or {}).get("runs", []):
        if run["execution"] != "analog" and run["metric"] is not None:
            references.setdefault(run["execution"], run["metric"])
    return references


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: recipe overrides (top-level hparams keys) and the run to evaluate."""

    settings: dict[str, Any]  # axis -> value (adc expanded), weight_bits always included
    run: TrainedRun

    @property
    def identifier(self) -> str:
        canonical = json.dumps(
            {"settings": self.settings, "run": str(self.run.folder)}, sort_keys=True
        )
        return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:12]

    def hardware_changes(self) -> dict[str, Any]:
        """HardwareConfig fields this point sets."""
        changes = {}
        for key, value in self.settings.items():
            for field in AXES[key].hardware_fields:
                changes[field] = value
        return changes


def _expand(settings: dict[str, Any]) -> dict[str, Any]:
    """``adc`` (p, r) -> adc_precision_bits, adc_range_bits."""
    expanded = dict(settings)
    if "adc" in expanded:
        precision, range_bits = expanded.pop("adc")
        expanded["adc_precision_bits"] = precision
        expanded["adc_range_bits"] = range_bits
    return expanded


def plan_points(grid: Mapping[str, list[Any]], runs: Sequence[TrainedRun]) -> list[SweepPoint]:
    """Every point of the grid product, validated; `SweepError` lists all problems.

    ``weight_bits`` values pick the run trained for them; without that axis every run is
    swept. Each point's HardwareConfig (the run's saved config with the point's changes)
    must be valid.
    """
    problems = []
    if "adc" in grid and ({"adc_precision_bits", "adc_range_bits"} & set(grid)):
        problems.append("use either the adc axis or adc_precision_bits/adc_range_bits, not both")
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
            point = SweepPoint(settings, run)
            try:
                _hardware(run.hardware, point.hardware_changes())
            except (TypeError, ValueError) as error:
                problems.append(f"point {settings}: {error}")
            points.append(point)
    if problems:
        raise SweepError("Invalid sweep:\n- " + "\n- ".join(problems))
    return points


def _hardware(saved: Mapping[str, Any], changes: Mapping[str, Any]) -> HardwareConfig:
    known = {field.name for field in fields(HardwareConfig)}
    return HardwareConfig(**{**{k: v for k, v in saved.items() if k in known}, **changes})


def _override(value: Any) -> str:
    """A value as a YAML override understood by SpeechBrain (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, str | os.PathLike):
        return json.dumps(os.fspath(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_override(item) for item in value) + "]"
    return json.dumps(value)


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
        train_script: the recipe's train.py.
    """

    hparams: Path
    runs: list[TrainedRun]
    grid: dict[str, list[Any]]
    out_dir: Path
    split: str = "test"
    overrides: dict[str, Any] | None = None
    float_run: Path | None = None
    train_script: Path = RECIPE_TRAIN_SCRIPT

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
        self.points = plan_points(self.grid, self.runs)

    def point_folder(self, point: SweepPoint) -> Path:
        return self.out_dir / "points" / point.identifier

    def table_path(self, point: SweepPoint) -> Path:
        return self.point_folder(point) / f"memristor_{self.split}.json"

    def is_done(self, point: SweepPoint) -> bool:
        return self.table_path(point).is_file()

    def command(self, point: SweepPoint) -> list[str]:
        """The recipe command evaluating ``point`` (test only, analog, one split)."""
        run = point.run
        overrides: dict[str, Any] = {
            key: run.recipe_value(key) for key in ("data_folder", "prepared_folder")
        }
        overrides = {key: value for key, value in overrides.items() if value is not None}
        overrides.update(self.overrides or {})
        overrides.update(point.settings)
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

    def evaluate(self, point: SweepPoint) -> None:
        """Run the recipe for ``point`` in its folder (checkpoints linked from the run)."""
        folder = self.point_folder(point)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(
            folder / "point.json",
            json.dumps(
                {"settings": point.settings, "run": str(point.run.folder), "split": self.split},
                indent=2,
            )
            + "\n",
        )
        link = folder / "save"
        if not link.is_symlink():
            link.symlink_to(point.run.folder / "save", target_is_directory=True)
        log_path = folder / "sweep_log.txt"
        command = self.command(point)
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            completed = subprocess.run(
                command,
                cwd=Path(self.train_script).parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if completed.returncode != 0 or not self.is_done(point):
            raise SweepError(
                f"Point {point.settings} failed (exit status {completed.returncode}); see "
                f"{log_path}. Fix it and rerun: finished points are kept."
            )

    def run(self, evaluate: Callable[[SweepPoint], None] | None = None) -> dict:
        """Evaluate every unfinished point, then write tables and plots; returns the results.

        ``evaluate`` replaces `Sweep.evaluate` (e.g. to observe evaluations).
        """
        evaluate = evaluate or self.evaluate
        pending = [point for point in self.points if not self.is_done(point)]
        logger.info(
            "Sweep: %d points, %d finished, %d to evaluate",
            len(self.points),
            len(self.points) - len(pending),
            len(pending),
        )
        for number, point in enumerate(pending, 1):
            logger.info("Sweep point %d/%d: %s", number, len(pending), point.settings)
            evaluate(point)
        return self.write_results()

    def results(self) -> dict:
        """Rows of the finished points (WER summary over chips) and the references."""
        rows = []
        for point in self.points:
            table = _read_table(self.table_path(point))
            if table is None:
                continue
            summary = table["analog_summary"]
            wers = [run["metric"] for run in table["runs"] if run["execution"] == "analog"]
            rows.append(
                {
                    "point": point.identifier,
                    "run": str(point.run.folder),
                    "settings": point.settings,
                    "hardware": table["hardware"],
                    "chips": summary["chips"],
                    "seeds": summary["seeds"],
                    "wers": wers,
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
        results["plots"] = [str(path) for path in plot_results(results, axes, self.out_dir)]
        return results

    def setting_columns(self) -> list[str]:
        """Setting keys shown per point: weight_bits and every expanded grid axis."""
        columns = ["weight_bits"]
        for point in self.points:
            columns += [key for key in point.settings if key not in columns]
        return columns


STATISTICS = ("wer_mean", "wer_std", "wer_min", "wer_max")


def _cell(value: Any) -> str:
    if value is None:
        return "ideal"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _csv(results: dict, axes: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["point", *axes, "chips", *STATISTICS])
    for row in results["rows"]:
        settings = [_cell(row["settings"].get(axis)) for axis in axes]
        writer.writerow([row["point"], *settings, row["chips"], *(row[k] for k in STATISTICS)])
    return buffer.getvalue()


def _markdown(results: dict, axes: list[str]) -> str:
    columns = ["point", *axes, "chips", "WER % mean", "std", "min", "max"]
    lines = [
        f"# Hardware sweep ({results['split']}, {len(results['rows'])} of "
        f"{results['points']} points finished)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    for row in results["rows"]:
        cells = [row["point"], *(_cell(row["settings"].get(axis)) for axis in axes)]
        cells += [str(row["chips"]), *(f"{row[key]:.2f}" for key in STATISTICS)]
        lines.append("| " + " | ".join(cells) + " |")
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


def _line_label(settings: Mapping[str, Any], varying: Iterable[str], skip: set[str]) -> str:
    parts = [f"{key}={_cell(settings[key])}" for key in varying if key not in skip]
    return ", ".join(parts) or "analog"


def _varying(rows: list[dict], axes: list[str]) -> list[str]:
    return [axis for axis in axes if len({repr(row["settings"].get(axis)) for row in rows}) > 1]


def plot_results(results: dict, axes: list[str], folder: Path) -> list[Path]:
    """WER vs ADC precision bits (a line per range setting), WER vs weight bits (with the
    float and fake_quant references), and the spread over chips; PNG files in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = results["rows"]
    if not rows:
        return []
    varying = _varying(rows, axes)
    written = []

    def save(figure, name: str) -> None:
        buffer = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=120)
        plt.close(figure)
        written.append(write_atomic(folder / name, buffer.getvalue()))

    def lines(x_key: str, skip: set[str], with_adc: bool) -> dict[str, list[tuple]]:
        grouped: dict[str, list[tuple]] = {}
        for row in rows:
            x = row["hardware"][x_key]
            if with_adc and x is None:
                continue
            label = _line_label(row["settings"], varying, skip)
            if with_adc:
                label = f"range {row['hardware']['adc_range_bits']} bits" + (
                    f", {label}" if label != "analog" else ""
                )
            grouped.setdefault(label, []).append((x, row["wer_mean"], row["wer_std"]))
        return grouped

    adc_lines = lines("adc_precision_bits", {"adc_precision_bits", "adc_range_bits"}, True)
    if adc_lines:
        figure, axis = plt.subplots(figsize=(6, 4))
        _plot_error_bars(axis, adc_lines, "")
        for row in rows:  # ideal-ADC points have no precision: a horizontal reference each
            if row["hardware"]["adc_precision_bits"] is None:
                label = _line_label(
                    row["settings"], varying, {"adc_precision_bits", "adc_range_bits"}
                )
                suffix = f", {label}" if label != "analog" else ""
                axis.axhline(
                    row["wer_mean"], linestyle=":", color="gray", label=f"ideal ADC{suffix}"
                )
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("ADC precision bits")
        axis.set_ylabel(f"{results['split']} WER (%)")
        axis.set_title("WER vs ADC precision (mean and std over chips)")
        axis.legend(fontsize=7)
        save(figure, "wer_vs_adc_bits.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    _plot_error_bars(axis, lines("weight_bits", {"weight_bits"}, False), "analog: ")
    for execution, style in (("fake_quant", "s--"), ("digital", "^:")):
        points = sorted(
            (int(bits), wers[execution])
            for bits, wers in results["references"].items()
            if execution in wers
        )
        if points:
            xs, values = zip(*points, strict=True)
            axis.plot(xs, values, style, label=f"{execution} (same checkpoint)")
    if results["float_wer"] is not None:
        axis.axhline(results["float_wer"], color="k", linestyle="--", label="float baseline")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("weight bits")
    axis.set_ylabel(f"{results['split']} WER (%)")
    axis.set_title("WER vs weight precision")
    axis.legend(fontsize=7)
    save(figure, "wer_vs_weight_bits.png")

    figure, axis = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 4))
    for index, row in enumerate(rows):
        axis.scatter([index] * len(row["wers"]), row["wers"], color="k", s=12, zorder=3)
        axis.errorbar(index, row["wer_mean"], yerr=row["wer_std"], fmt="o", color="C3", capsize=4)
    labels = [_line_label(row["settings"], varying, set()) for row in rows]
    axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel(f"{results['split']} WER (%)")
    axis.set_title("Spread over chips (dots: chips, red: mean and std)")
    save(figure, "wer_spread_over_chips.png")
    return written


def _plot_error_bars(
    axis, lines: dict[str, list[tuple[int, float, float]]], label_prefix: str
) -> None:
    """One error-bar line per label: (x, WER mean, WER std) points sorted by x."""
    for label, points in sorted(lines.items()):
        xs, means, stds = zip(*sorted(points), strict=True)
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label_prefix + label)

"""The memristor evaluation table: its files, fields and statistics, written and read here.

A recipe's ``MemristorBrain.evaluate`` writes ``memristor_<name>.{md,csv,json}`` in its
experiment folder (``name`` is the split, e.g. ``test``). The JSON document holds:

- ``metric``: the metric's column title (e.g. "WER"), or None when only losses are tabulated;
- ``runs``: one entry per test pass: ``execution``, chip ``seed`` (analog only), ``loss``,
  ``metric``;
- ``analog_summary``: over the analog runs, ``chips``, ``seeds``, and the ``mean``, sample
  ``std`` (n - 1), ``min`` and ``max`` of ``loss`` and of ``metric`` (None without a metric);
  empty when there is no analog run;
- ``hardware`` (the HardwareConfig fields), ``hardware_version``, ``include``, ``exclude``,
  ``layer_hardware`` (per-layer settings: pattern -> field overrides; empty when none).

The Markdown and CSV files show the runs, then the analog statistics as extra rows. Studies
(sweeps, the demo) read tables with `EvaluationTable.read`, never by parsing the files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speechbrain_memristor.util.atomic import write_atomic
from speechbrain_memristor.util.stats import STATISTICS, summary_statistics
from speechbrain_memristor.util.tables import csv_table, markdown_table

TABLE_PREFIX = "memristor_"
ANALOG = "analog"


@dataclass(frozen=True)
class EvaluationRun:
    """One pass over a test set: execution mode, chip seed (analog only), loss, metric."""

    execution: str
    seed: int | None
    loss: float
    metric: float | None


def table_stem(folder: str | os.PathLike, name: str) -> Path:
    """``<folder>/memristor_<name>``: the table's path without its suffix."""
    return Path(folder) / f"{TABLE_PREFIX}{name}"


@dataclass(frozen=True)
class EvaluationTable:
    """Runs of one evaluation and what they ran on (see the module doc)."""

    runs: tuple[EvaluationRun, ...]
    metric_name: str | None = "WER"
    hardware: dict[str, Any] = field(default_factory=dict)
    hardware_version: int | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    layer_hardware: dict[str, dict[str, Any]] = field(default_factory=dict)

    def metrics(self, execution: str) -> list[float]:
        """The metric of every run in ``execution``, in run order."""
        return [run.metric for run in self.runs if run.execution == execution]

    def reference_metrics(self) -> dict[str, float]:
        """Metric of the first run of each non-analog execution (digital, fake_quant)."""
        references: dict[str, float] = {}
        for run in self.runs:
            if run.execution != ANALOG and run.metric is not None:
                references.setdefault(run.execution, run.metric)
        return references

    def analog_summary(self) -> dict[str, Any]:
        """Chips, seeds and the statistics of loss and metric over the analog runs."""
        analog = [run for run in self.runs if run.execution == ANALOG]
        if not analog:
            return {}
        metrics = [run.metric for run in analog]
        return {
            "chips": len(analog),
            "seeds": [run.seed for run in analog],
            "loss": summary_statistics([run.loss for run in analog]),
            "metric": None if None in metrics else summary_statistics(metrics),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric_name,
            "runs": [asdict(run) for run in self.runs],
            "analog_summary": self.analog_summary(),
            "hardware": self.hardware,
            "hardware_version": self.hardware_version,
            "include": self.include,
            "exclude": self.exclude,
            "layer_hardware": self.layer_hardware,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> EvaluationTable:
        return cls(
            runs=tuple(EvaluationRun(**run) for run in document["runs"]),
            metric_name=document.get("metric"),
            hardware=document.get("hardware", {}),
            hardware_version=document.get("hardware_version"),
            include=document.get("include"),
            exclude=document.get("exclude"),
            layer_hardware=document.get("layer_hardware", {}),
        )

    def columns(self) -> list[str]:
        return ["execution", "seed", *([self.metric_name] if self.metric_name else []), "loss"]

    def rows(self) -> list[list[str]]:
        """The runs, then one row per analog statistic (formatted to 4 decimals)."""
        rows = []
        for run in self.runs:
            seed = "" if run.seed is None else str(run.seed)
            metric = [_number(run.metric)] if self.metric_name else []
            rows.append([run.execution, seed, *metric, _number(run.loss)])
        summary = self.analog_summary()
        for statistic in STATISTICS if summary else ():
            metric = [_number(summary["metric"][statistic])] if self.metric_name else []
            rows.append([f"analog {statistic}", "", *metric, _number(summary["loss"][statistic])])
        return rows

    def markdown(self) -> str:
        chips = self.analog_summary().get("chips", 0)
        title = f"# Memristor evaluation ({chips} analog chips)\n\n"
        return title + markdown_table(self.columns(), self.rows())

    def write(self, folder: str | os.PathLike, name: str) -> dict[str, str]:
        """Write ``memristor_<name>.{md,csv,json}`` atomically; returns their paths."""
        stem = table_stem(folder, name)
        paths = {suffix: f"{stem}.{suffix}" for suffix in ("md", "csv", "json")}
        write_atomic(paths["md"], self.markdown())
        write_atomic(paths["csv"], csv_table(self.columns(), self.rows()))
        write_atomic(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        return paths

    @classmethod
    def read(cls, folder: str | os.PathLike, name: str) -> EvaluationTable | None:
        """The table ``memristor_<name>.json`` in ``folder`` (None if it is not there)."""
        path = Path(f"{table_stem(folder, name)}.json")
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"

"""Plots of study results: sweeps over hardware settings and WER by execution mode.

Every plot is a PNG written atomically (`util.plots.save_figure`); each function returns the
paths it wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from speechbrain_memristor.util.plots import pyplot, save_figure
from speechbrain_memristor.util.tables import setting_text

ADC_KEYS = {"adc_precision_bits", "adc_range_bits"}


def _line_label(settings: Mapping[str, Any], varying: Iterable[str], skip: set[str]) -> str:
    parts = [f"{key}={setting_text(settings[key])}" for key in varying if key not in skip]
    return ", ".join(parts) or "analog"


def _varying(rows: list[dict], axes: list[str]) -> list[str]:
    return [axis for axis in axes if len({repr(row["settings"].get(axis)) for row in rows}) > 1]


def _lines(rows: list[dict], varying: list[str], x_key: str, skip: set[str], with_adc: bool):
    """Label -> [(x, WER mean, WER std)] of the rows, one line per other setting."""
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


def _plot_error_bars(
    axis, lines: dict[str, list[tuple[int, float, float]]], label_prefix: str
) -> None:
    """One error-bar line per label: (x, WER mean, WER std) points sorted by x."""
    for label, points in sorted(lines.items()):
        xs, means, stds = zip(*sorted(points), strict=True)
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label_prefix + label)


def _plot_adc_bits(results: dict, varying: list[str], path: Path) -> Path | None:
    """WER against ADC precision bits, a line per range setting; ideal ADCs as references."""
    from matplotlib.ticker import MaxNLocator

    rows = results["rows"]
    adc_lines = _lines(rows, varying, "adc_precision_bits", ADC_KEYS, True)
    if not adc_lines:
        return None
    figure, axis = pyplot().subplots(figsize=(6, 4))
    _plot_error_bars(axis, adc_lines, "")
    for row in rows:  # ideal-ADC points have no precision: a horizontal reference each
        if row["hardware"]["adc_precision_bits"] is None:
            label = _line_label(row["settings"], varying, ADC_KEYS)
            suffix = f", {label}" if label != "analog" else ""
            axis.axhline(row["wer_mean"], linestyle=":", color="gray", label=f"ideal ADC{suffix}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("ADC precision bits")
    axis.set_ylabel(f"{results['split']} WER (%)")
    axis.set_title("WER vs ADC precision (mean and std over chips)")
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def _plot_weight_bits(results: dict, varying: list[str], path: Path) -> Path:
    """WER against weight bits, with the float and fake_quant references."""
    from matplotlib.ticker import MaxNLocator

    figure, axis = pyplot().subplots(figsize=(6, 4))
    lines = _lines(results["rows"], varying, "weight_bits", {"weight_bits"}, False)
    _plot_error_bars(axis, lines, "analog: ")
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
    return save_figure(figure, path)


def _plot_spread(results: dict, varying: list[str], path: Path) -> Path:
    """Every chip's WER per point, with the mean and std."""
    rows = results["rows"]
    figure, axis = pyplot().subplots(figsize=(max(5, 0.8 * len(rows) + 2), 4))
    for index, row in enumerate(rows):
        axis.scatter([index] * len(row["wers"]), row["wers"], color="k", s=12, zorder=3)
        axis.errorbar(index, row["wer_mean"], yerr=row["wer_std"], fmt="o", color="C3", capsize=4)
    labels = [_line_label(row["settings"], varying, set()) for row in rows]
    axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel(f"{results['split']} WER (%)")
    axis.set_title("Spread over chips (dots: chips, red: mean and std)")
    return save_figure(figure, path)


def plot_sweep(results: dict, axes: list[str], folder: Path) -> list[Path]:
    """WER vs ADC precision bits (a line per range setting), WER vs weight bits (with the
    float and fake_quant references), and the spread over chips; PNG files in ``folder``."""
    if not results["rows"]:
        return []
    varying = _varying(results["rows"], axes)
    written = [_plot_adc_bits(results, varying, folder / "wer_vs_adc_bits.png")]
    written.append(_plot_weight_bits(results, varying, folder / "wer_vs_weight_bits.png"))
    written.append(_plot_spread(results, varying, folder / "wer_spread_over_chips.png"))
    return [path for path in written if path is not None]


def plot_wer_by_execution(rows: list[dict], path: Path) -> Path:
    """Bar chart of WER by model and execution (rows with ``model``, ``execution``,
    ``wer_mean``, ``wer_std``, ``wers``); analog rows also show each chip."""
    labels = [f"{row['model']}\n{row['execution']}" for row in rows]
    figure, axes = pyplot().subplots(figsize=(1.8 * len(rows) + 1, 4))
    positions = range(len(rows))
    axes.bar(
        positions,
        [row["wer_mean"] for row in rows],
        yerr=[row["wer_std"] for row in rows],
        capsize=4,
        color=["0.6"] + ["C0"] * (len(rows) - 2) + ["C3"],
    )
    for position, row in zip(positions, rows, strict=True):
        if row["execution"] == "analog":
            axes.scatter([position] * len(row["wers"]), row["wers"], color="k", s=12, zorder=3)
    axes.set_xticks(list(positions), labels)
    axes.set_ylabel("test WER (%)")
    axes.set_title("WER by execution mode (dots: individual chips)")
    return save_figure(figure, path)

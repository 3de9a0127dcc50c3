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


def plot_wer_by_execution(
    rows: list[dict], path: Path, splits: tuple[str, ...] = ("dev", "test"), target: float = 0.1
) -> Path:
    """WER by model and execution (left) and each row's relative WER degradation against the
    float model (right), a bar per split. ``rows``: ``model``, ``execution`` and per split
    ``<split>_wer_mean``, ``<split>_wer_std``, ``<split>_wers``, ``<split>_vs_float``; analog
    rows also show each chip; ``target``: a dashed line at that relative degradation."""
    labels = [f"{row['model']}\n{row['execution']}".replace(" + ", "\n+ ") for row in rows]
    figure, (wer_axis, relative_axis) = pyplot().subplots(
        1, 2, figsize=(2 * (1.1 * len(rows) + 1), 4.5)
    )
    width = 0.8 / len(splits)
    for index, split in enumerate(splits):
        positions = [k + (index - (len(splits) - 1) / 2) * width for k in range(len(rows))]
        wer_axis.bar(
            positions,
            [row[f"{split}_wer_mean"] for row in rows],
            width,
            yerr=[row[f"{split}_wer_std"] for row in rows],
            capsize=3,
            color=f"C{index}",
            label=split,
        )
        for position, row in zip(positions, rows, strict=True):
            if row["execution"] == "analog":
                chips = row[f"{split}_wers"]
                wer_axis.scatter([position] * len(chips), chips, color="k", s=8, zorder=3)
        relative_axis.bar(
            positions,
            [100 * row[f"{split}_vs_float"] for row in rows],
            width,
            color=f"C{index}",
            label=split,
        )
    relative_axis.axhline(100 * target, color="k", linestyle="--", label=f"+{100 * target:g} %")
    for axis in (wer_axis, relative_axis):
        axis.set_xticks(range(len(rows)), labels, fontsize=6)
        axis.legend(fontsize=7)
    wer_axis.set_ylabel("WER (%)")
    wer_axis.set_title("WER by execution (dots: individual chips)")
    relative_axis.set_ylabel("relative WER degradation vs float (%)")
    relative_axis.set_title("Degradation against the float model")
    figure.tight_layout()
    return save_figure(figure, path)

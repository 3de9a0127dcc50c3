"""The one-command demo: synthesized speech -> float and QAT Conformers -> WER on ReRAM chips.

Steps, each resumable (a rerun skips finished steps and SpeechBrain resumes training from its
checkpoints):

1. ``corpus/``: a TED-LIUM release 2 style corpus synthesized with eSpeak NG voices.
2. ``float/``: the recipe's own ``train.py`` trains the demo Conformer CTC in ``digital``
   execution (the float baseline) and writes its test WER.
3. ``qat_<b>bit/``: the same recipe fine-tunes the float model with quantization-aware
   training (``fake_quant``) at ``b``-bit weights and evaluates test WER in ``digital``,
   ``fake_quant`` and ``analog`` execution on several programmed chips.
4. ``qat_<b>bit/hardware_report.{md,csv,json}``: the ``report`` command on the QAT model
   (inventory, first-order energy and latency, per-layer analog error).
5. ``results.{md,csv,json}`` and ``wer_by_execution.png`` in the output folder.

Everything runs in the recipe's own scripts; this module only orchestrates them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from speechbrain_memristor.atomic import write_atomic

logger = logging.getLogger(__name__)

RECIPE_FOLDER = Path(__file__).resolve().parents[1] / "recipes" / "TEDLIUM2" / "ASR" / "conformer"
DEMO_HPARAMS = "hparams/demo_conformer_ctc.yaml"


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and the log to read."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo builds; defaults take about 20 minutes on 2 CPU cores.

    Arguments:
        out_dir: folder for the corpus, the experiments and the result table.
        utterances: synthesized segments over all splits (10 % dev, 10 % test).
        corpus_seed: seed of the synthesized corpus.
        weight_bits: weight precision of the QAT model and the chips (2-8).
        chips: chips programmed for the analog evaluation (seeds 0, 1, ...).
        float_epochs: training epochs of the float baseline.
        qat_epochs: QAT fine-tuning epochs, starting from the float baseline.
        hardware_preset: a `speechbrain_memristor.HardwareConfig.preset` name.
    """

    out_dir: Path = Path("demo_output")
    utterances: int = 1000
    corpus_seed: int = 0
    weight_bits: int = 3
    chips: int = 5
    float_epochs: int = 35
    qat_epochs: int = 5
    hardware_preset: str = "paper"

    def __post_init__(self) -> None:
        # The recipe runs in its own folder: a relative out_dir must mean the caller's folder.
        object.__setattr__(self, "out_dir", Path(self.out_dir).resolve())

    @property
    def float_folder(self) -> Path:
        return self.out_dir / "float"

    @property
    def qat_folder(self) -> Path:
        return self.out_dir / f"qat_{self.weight_bits}bit"


def recipe_train_script() -> Path:
    """The TED-LIUM 2 recipe's train.py of this source checkout."""
    script = RECIPE_FOLDER / "train.py"
    if not script.is_file():
        raise DemoError(
            f"The demo runs the TED-LIUM 2 recipe, but {script} does not exist. Install the "
            "project from its source checkout (pip install -e .) so the recipes/ folder is there."
        )
    return script


def run_recipe(output_folder: Path, overrides: dict[str, object], log_name: str) -> None:
    """Run the recipe's train.py with the demo hparams and ``overrides`` in a fresh process.

    Its console output is shown live and also kept in ``output_folder/<log_name>``.
    """
    command = [sys.executable, str(recipe_train_script()), DEMO_HPARAMS]
    command += [f"--{key}={value}" for key, value in overrides.items()]
    run_logged(command, output_folder / log_name, "The recipe")


def run_logged(command: list[str], log_path: Path, what: str) -> None:
    """Run ``command`` in the recipe folder, showing its output live and keeping it in
    ``log_path``; raise `DemoError` naming ``what`` and the log if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Running: %s", " ".join(command))
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            command,
            cwd=RECIPE_FOLDER,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log_file.write(line)
        returncode = process.wait()
    if returncode != 0:
        raise DemoError(f"{what} failed (exit status {returncode}); see {log_path}.")


def hardware_report(settings: DemoSettings) -> Path:
    """Write (unless done) and return the QAT model's hardware report (Markdown): inventory,
    first-order energy and latency per frame, per-layer analog error on 4 test utterances."""
    report = settings.qat_folder / "hardware_report.md"
    if not report.is_file():
        command = [sys.executable, "-m", "speechbrain_memristor.cli", "report", DEMO_HPARAMS]
        command += ["--run", str(settings.qat_folder), "--split", "test"]
        for key, value in _hardware_overrides(settings).items():
            command += ["--set", f"{key}={value}"]
        run_logged(command, settings.qat_folder / "report_log.txt", "The hardware report")
    return report


def _hardware_overrides(settings: DemoSettings) -> dict[str, object]:
    return {"hardware_preset": settings.hardware_preset, "weight_bits": settings.weight_bits}


def evaluation_table(folder: Path) -> dict | None:
    """The memristor test table a recipe run wrote in ``folder`` (None if not there yet)."""
    path = folder / "memristor_test.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train_and_evaluate(settings: DemoSettings, release: Path) -> tuple[dict, dict]:
    """Float baseline and QAT model, each trained and evaluated unless already done."""
    common = {
        "data_folder": release,
        "prepared_folder": settings.out_dir / "prepared",
        **_hardware_overrides(settings),
    }
    if evaluation_table(settings.float_folder) is None:
        logger.info("Step 2/5: float baseline (digital execution)")
        run_recipe(
            settings.float_folder,
            {
                **common,
                "output_folder": settings.float_folder,
                "execution": "digital",
                "number_of_epochs": settings.float_epochs,
            },
            "recipe_log.txt",
        )
    if evaluation_table(settings.qat_folder) is None:
        logger.info("Step 3/5: %d-bit QAT and analog evaluation", settings.weight_bits)
        run_recipe(
            settings.qat_folder,
            {
                **common,
                "output_folder": settings.qat_folder,
                "execution": "analog",
                "init_from": settings.float_folder / "save",
                "number_of_epochs": settings.qat_epochs,
                "num_chips": settings.chips,
            },
            "recipe_log.txt",
        )
    float_table = evaluation_table(settings.float_folder)
    qat_table = evaluation_table(settings.qat_folder)
    if float_table is None or qat_table is None:
        raise DemoError("A recipe run finished without writing memristor_test.json.")
    return float_table, qat_table


def summarize(settings: DemoSettings, float_table: dict, qat_table: dict) -> dict:
    """Result rows (model, execution, chips, WER mean/std/min/max) and the relative degradation."""
    float_wer = next(run["metric"] for run in float_table["runs"] if run["execution"] == "digital")
    rows = [_row("float", "digital", [float_wer])]
    qat_model = f"QAT {settings.weight_bits}-bit"
    for execution in ("digital", "fake_quant", "analog"):
        values = [run["metric"] for run in qat_table["runs"] if run["execution"] == execution]
        if values:
            rows.append(_row(qat_model, execution, values))
    analog = rows[-1]
    return {
        "settings": {key: str(value) for key, value in asdict(settings).items()},
        "hardware": qat_table["hardware"],
        "rows": rows,
        "float_wer": float_wer,
        "analog_wer_mean": analog["wer_mean"],
        "relative_degradation": (analog["wer_mean"] - float_wer) / float_wer,
        "chip_wers": analog["wers"],
    }


def _row(model: str, execution: str, wers: list[float]) -> dict:
    mean = sum(wers) / len(wers)
    spread = (sum((w - mean) ** 2 for w in wers) / (len(wers) - 1)) ** 0.5 if len(wers) > 1 else 0
    return {
        "model": model,
        "execution": execution,
        "chips": len(wers) if execution == "analog" else "",
        "wer_mean": mean,
        "wer_std": spread,
        "wer_min": min(wers),
        "wer_max": max(wers),
        "wers": wers,
    }


COLUMNS = ("model", "execution", "chips", "wer_mean", "wer_std", "wer_min", "wer_max")


def markdown_table(summary: dict) -> str:
    """The result table as Markdown, with the relative degradation below it."""
    lines = [
        "| model | execution | chips | WER % mean | std | min | max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["rows"]:
        numbers = " | ".join(f"{row[key]:.2f}" for key in COLUMNS[3:])
        lines.append(f"| {row['model']} | {row['execution']} | {row['chips']} | {numbers} |")
    lines.append("")
    lines.append(
        f"Relative WER degradation of analog execution (mean over chips) versus the float "
        f"baseline: {100 * summary['relative_degradation']:+.1f} %"
    )
    return "\n".join(lines) + "\n"


def csv_table(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in summary["rows"]:
        writer.writerow([row[key] for key in COLUMNS])
    return buffer.getvalue()


def plot_wer(summary: dict, path: Path) -> Path:
    """Bar chart of WER by model and execution; analog shows each chip and the std error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    labels = [f"{row['model']}\n{row['execution']}" for row in rows]
    figure, axes = plt.subplots(figsize=(1.8 * len(rows) + 1, 4))
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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())


def run_demo(settings: DemoSettings) -> dict:
    """Run every step (skipping finished ones) and write the results; returns the summary."""
    from speechbrain_memristor.corpus.layout import make_corpus

    logger.info("Step 1/5: synthesized TED-LIUM 2 corpus")
    release = make_corpus(
        settings.out_dir / "corpus", utterances=settings.utterances, seed=settings.corpus_seed
    )
    float_table, qat_table = train_and_evaluate(settings, release)
    logger.info("Step 4/5: hardware report of the QAT model")
    report = hardware_report(settings)
    logger.info("Step 5/5: results")
    summary = summarize(settings, float_table, qat_table)
    summary["hardware_report"] = str(report)
    write_atomic(settings.out_dir / "results.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(settings.out_dir / "results.csv", csv_table(summary))
    write_atomic(settings.out_dir / "results.md", markdown_table(summary))
    plot_wer(summary, settings.out_dir / "wer_by_execution.png")
    return summary

"""The one-command demo: synthesized speech -> float and QAT Conformers -> WER on ReRAM chips.

Steps, each resumable (a rerun skips finished steps and SpeechBrain resumes training from its
checkpoints):

1. ``corpus/``: a TED-LIUM release 2 style corpus synthesized with eSpeak NG voices.
2. ``float/``: the recipe's own ``train.py`` trains the demo Conformer CTC in ``digital``
   execution (the float baseline) and writes its test WER.
3. ``qat_<b>bit/``: the same recipe fine-tunes the float model with quantization-aware
   training (``fake_quant``) at ``b``-bit weights and evaluates test WER in ``digital``,
   ``fake_quant`` and ``analog`` execution on several programmed chips.
4. ``qat_<b>bit/hardware_report.{md,csv,json}``: the hardware report of the QAT model
   (inventory, first-order energy and latency, per-layer analog error), made in process.
5. ``results.{md,csv,json}`` and ``wer_by_execution.png`` in the output folder.

Training and evaluation run in the recipe's own scripts; this module only orchestrates them.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from speechbrain_memristor.brain.results import EvaluationTable
from speechbrain_memristor.studies.plots import plot_wer_by_execution
from speechbrain_memristor.studies.report import report_trained_run
from speechbrain_memristor.studies.runs import RunError, bundled_recipe
from speechbrain_memristor.util.atomic import write_atomic
from speechbrain_memristor.util.processes import run_logged
from speechbrain_memristor.util.stats import summary_statistics
from speechbrain_memristor.util.tables import csv_table
from speechbrain_memristor.util.tables import markdown_table as render_markdown

logger = logging.getLogger(__name__)

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


def recipe_folder() -> Path:
    """The bundled TED-LIUM 2 recipe the demo runs (a `DemoError` if it is missing)."""
    try:
        return bundled_recipe()
    except RunError as error:
        raise DemoError(str(error)) from None


def run_recipe(output_folder: Path, overrides: dict[str, object], log_name: str) -> None:
    """Run the recipe's train.py with the demo hparams and ``overrides`` in a fresh process.

    Its console output is shown live and also kept in ``output_folder/<log_name>``.
    """
    folder = recipe_folder()
    command = [sys.executable, str(folder / "train.py"), DEMO_HPARAMS]
    command += [f"--{key}={value}" for key, value in overrides.items()]
    log_path = output_folder / log_name
    status = run_logged(command, log_path, cwd=folder)
    if status != 0:
        raise DemoError(f"The recipe failed (exit status {status}); see {log_path}.")


def hardware_report(settings: DemoSettings) -> Path:
    """Write (unless done) and return the QAT model's hardware report (Markdown): inventory,
    first-order energy and latency per frame, per-layer analog error on 4 test utterances."""
    report = settings.qat_folder / "hardware_report.md"
    if not report.is_file():
        folder = recipe_folder()
        report_trained_run(
            folder / DEMO_HPARAMS,
            settings.qat_folder,
            _hardware_overrides(settings),
            folder / "train.py",
            split="test",
        )
    return report


def _hardware_overrides(settings: DemoSettings) -> dict[str, object]:
    return {"hardware_preset": settings.hardware_preset, "weight_bits": settings.weight_bits}


def evaluation_table(folder: Path) -> EvaluationTable | None:
    """The memristor test table a recipe run wrote in ``folder`` (None if not there yet)."""
    return EvaluationTable.read(folder, "test")


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


def summarize(
    settings: DemoSettings, float_table: EvaluationTable, qat_table: EvaluationTable
) -> dict:
    """Result rows (model, execution, chips, WER mean/std/min/max) and the relative degradation."""
    float_wer = float_table.metrics("digital")[0]
    rows = [_row("float", "digital", [float_wer])]
    qat_model = f"QAT {settings.weight_bits}-bit"
    for execution in ("digital", "fake_quant", "analog"):
        values = qat_table.metrics(execution)
        if values:
            rows.append(_row(qat_model, execution, values))
    analog = rows[-1]
    return {
        "settings": {key: str(value) for key, value in asdict(settings).items()},
        "hardware": qat_table.hardware,
        "rows": rows,
        "float_wer": float_wer,
        "analog_wer_mean": analog["wer_mean"],
        "relative_degradation": (analog["wer_mean"] - float_wer) / float_wer,
        "chip_wers": analog["wers"],
    }


def _row(model: str, execution: str, wers: list[float]) -> dict:
    statistics = {f"wer_{key}": value for key, value in summary_statistics(wers).items()}
    chips = len(wers) if execution == "analog" else ""
    return {"model": model, "execution": execution, "chips": chips, **statistics, "wers": wers}


COLUMNS = ("model", "execution", "chips", "wer_mean", "wer_std", "wer_min", "wer_max")


def markdown_table(summary: dict) -> str:
    """The result table as Markdown, with the relative degradation below it."""
    rows = [
        [row["model"], row["execution"], row["chips"], *(f"{row[key]:.2f}" for key in COLUMNS[3:])]
        for row in summary["rows"]
    ]
    columns = ("model", "execution", "chips", "WER % mean", "std", "min", "max")
    return render_markdown(columns, rows) + (
        "\nRelative WER degradation of analog execution (mean over chips) versus the float "
        f"baseline: {100 * summary['relative_degradation']:+.1f} %\n"
    )


def run_demo(settings: DemoSettings) -> dict:
    """Run every step (skipping finished ones) and write the results; returns the summary."""
    from speechbrain_memristor.app.corpus.layout import make_corpus

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
    rows = [[row[key] for key in COLUMNS] for row in summary["rows"]]
    write_atomic(settings.out_dir / "results.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(settings.out_dir / "results.csv", csv_table(COLUMNS, rows))
    write_atomic(settings.out_dir / "results.md", markdown_table(summary))
    plot_wer_by_execution(summary["rows"], settings.out_dir / "wer_by_execution.png")
    return summary

"""The one-command demo: synthesized speech -> float, QAT and hardware-aware Conformers -> WER
on ReRAM chips.

Steps, each resumable (a rerun skips finished steps and SpeechBrain resumes training from its
checkpoints):

1. ``corpus/``: a TED-LIUM release 2 style corpus synthesized with eSpeak NG voices.
2. ``float/``: the recipe's own ``train.py`` trains the demo Conformer CTC in ``digital``
   execution (the float baseline) and writes its test WER.
3. ``qat_<b>bit/``: the same recipe fine-tunes the float model with quantization-aware
   training (``fake_quant``) at ``b``-bit weights (the recipe's fine-tuning schedule) and
   evaluates dev and test WER in ``digital``, ``fake_quant`` and ``analog`` execution on
   several programmed chips.
4. ``<method>_<b>bit/``: for each hardware-aware training method (`layers.hardware_aware`),
   the recipe fine-tunes the QAT model further with that method (validated in ``analog`` on
   the recipe's validation chip, never a test chip) and evaluates it the same way.
5. ``qat_<b>bit/hardware_report.{md,csv,json}``: the hardware report of the QAT model
   (inventory, first-order energy and latency, per-layer analog error), made in process.
6. ``results.{md,csv,json}`` and ``wer_by_execution.png`` in the output folder: dev and test
   WER per model and execution, and each row's relative degradation against the float model.

Training and evaluation run in the recipe's own scripts; this module only orchestrates them.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from speechbrain_memristor.brain.results import EvaluationTable
from speechbrain_memristor.layers.hardware_aware import check_training_method
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
SPLITS = ("dev", "test")


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and the log to read."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo builds; defaults take about 29 minutes on 2 CPU cores (README).

    Arguments:
        out_dir: folder for the corpus, the experiments and the result table.
        utterances: synthesized segments over all splits (10 % dev, 10 % test).
        corpus_seed: seed of the synthesized corpus.
        weight_bits: weight precision of the QAT model and the chips (2-8).
        chips: chips programmed for the analog evaluation (seeds 0, 1, ...).
        float_epochs: training epochs of the float baseline.
        qat_epochs: QAT fine-tuning epochs, starting from the float baseline.
        hardware_preset: a `speechbrain_memristor.HardwareConfig.preset` name.
        hardware_aware: hardware-aware training methods, each a fine-tuning stage of the QAT
            model (`layers.hardware_aware.TRAINING_METHODS`; () for none).
        hardware_aware_epochs: epochs of each hardware-aware stage.
        hardware_aware_lr, hardware_aware_warmup_steps: the fine-tuning schedule's peak and
            warm-up of the hardware-aware stages (None: the recipe's finetune_lr and
            finetune_warmup_steps, as for QAT).
    """

    out_dir: Path = Path("demo_output")
    utterances: int = 1000
    corpus_seed: int = 0
    weight_bits: int = 3
    chips: int = 5
    float_epochs: int = 35
    qat_epochs: int = 5
    hardware_preset: str = "paper"
    hardware_aware: tuple[str, ...] = ("chip_in_the_loop", "noise_injection")
    hardware_aware_epochs: int = 2
    hardware_aware_lr: float | None = 1e-4  # chip in the loop, dev WER: 1e-4 beat 5e-4
    hardware_aware_warmup_steps: int | None = 20

    def __post_init__(self) -> None:
        for method in self.hardware_aware:
            try:
                check_training_method(method, "hardware_aware")
            except ValueError as error:
                raise DemoError(str(error)) from None
        # The recipe runs in its own folder: a relative out_dir must mean the caller's folder.
        object.__setattr__(self, "out_dir", Path(self.out_dir).resolve())

    @property
    def float_folder(self) -> Path:
        return self.out_dir / "float"

    @property
    def qat_folder(self) -> Path:
        return self.out_dir / f"qat_{self.weight_bits}bit"

    def hardware_aware_folder(self, method: str) -> Path:
        return self.out_dir / f"{method}_{self.weight_bits}bit"


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


def evaluation_table(folder: Path, split: str = "test") -> EvaluationTable | None:
    """The memristor table of ``split`` a recipe run wrote in ``folder`` (None if not there)."""
    return EvaluationTable.read(folder, split)


def _fine_tune(
    settings: DemoSettings, folder: Path, init_from: Path, epochs: int, common: dict, **extra
) -> None:
    """Fine-tune the model of ``init_from`` in ``folder`` and evaluate it (unless done)."""
    if evaluation_table(folder) is not None:
        return
    run_recipe(
        folder,
        {
            **common,
            "output_folder": folder,
            "execution": "analog",
            "init_from": init_from / "save",
            "number_of_epochs": epochs,
            "num_chips": settings.chips,
            **extra,
        },
        "recipe_log.txt",
    )


def train_and_evaluate(settings: DemoSettings, release: Path) -> dict[str, dict]:
    """Float baseline, QAT model and hardware-aware models, each trained and evaluated unless
    already done; {model label: {split: EvaluationTable}}."""
    common = {
        "data_folder": release,
        "prepared_folder": settings.out_dir / "prepared",
        **_hardware_overrides(settings),
    }
    if evaluation_table(settings.float_folder) is None:
        logger.info("Step 2/6: float baseline (digital execution)")
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
    qat_model = f"QAT {settings.weight_bits}-bit"
    stages = {"float": settings.float_folder, qat_model: settings.qat_folder}
    logger.info("Step 3/6: %d-bit QAT and analog evaluation", settings.weight_bits)
    _fine_tune(settings, settings.qat_folder, settings.float_folder, settings.qat_epochs, common)
    for method in settings.hardware_aware:
        logger.info("Step 4/6: hardware-aware fine-tuning (%s)", method)
        folder = settings.hardware_aware_folder(method)
        epochs = settings.hardware_aware_epochs
        # Validated on the recipe's validation chip: after training on chips, fake_quant
        # WER no longer predicts them (and no test chip picks the checkpoint).
        extra = {"training_method": method, "valid_execution": "analog"}
        for key, value in (
            ("finetune_lr", settings.hardware_aware_lr),
            ("finetune_warmup_steps", settings.hardware_aware_warmup_steps),
        ):
            if value is not None:
                extra[key] = value
        _fine_tune(settings, folder, settings.qat_folder, epochs, common, **extra)
        stages[f"{qat_model} + {method.replace('_', ' ')}"] = folder
    tables = {}
    for model, folder in stages.items():
        tables[model] = {split: evaluation_table(folder, split) for split in SPLITS}
        if None in tables[model].values():
            raise DemoError(f"The recipe run in {folder} wrote no memristor_{{dev,test}}.json.")
    return tables


def summarize(settings: DemoSettings, tables: dict[str, dict]) -> dict:
    """Result rows (model, execution, chips; per split WER mean/std/min/max, the chips' WERs
    and the relative degradation against the float model), and the analog figures of the model
    with the lowest mean analog dev WER (chosen on dev only)."""
    float_tables, *_ = tables.values()
    float_wers = {split: float_tables[split].metrics("digital")[0] for split in SPLITS}
    rows = []
    for model, by_split in tables.items():
        for execution in ("digital",) if model == "float" else ("digital", "fake_quant", "analog"):
            wers = {split: by_split[split].metrics(execution) for split in SPLITS}
            if all(wers.values()):
                rows.append(_row(model, execution, wers, float_wers))
    analog = min(
        (row for row in rows if row["execution"] == "analog"), key=lambda row: row["dev_wer_mean"]
    )
    return {
        "settings": {key: str(value) for key, value in asdict(settings).items()},
        "hardware": by_split["test"].hardware,
        "rows": rows,
        "float_wer": float_wers["test"],
        "float_wer_dev": float_wers["dev"],
        "model": analog["model"],
        "analog_wer_mean": analog["test_wer_mean"],
        "relative_degradation": analog["test_vs_float"],
        "relative_degradation_dev": analog["dev_vs_float"],
        "chip_wers": analog["test_wers"],
    }


def _row(model: str, execution: str, wers: dict, float_wers: dict) -> dict:
    row = {"model": model, "execution": execution, "chips": ""}
    for split in SPLITS:
        statistics = summary_statistics(wers[split])
        row.update({f"{split}_wer_{key}": value for key, value in statistics.items()})
        row[f"{split}_wers"] = wers[split]
        row[f"{split}_vs_float"] = (statistics["mean"] - float_wers[split]) / float_wers[split]
    if execution == "analog":
        row["chips"] = len(wers["test"])
    return row


STATISTICS = ("wer_mean", "wer_std", "wer_min", "wer_max", "vs_float")
COLUMNS = ("model", "execution", "chips") + tuple(
    f"{split}_{key}" for split in SPLITS for key in STATISTICS
)


def markdown_table(summary: dict) -> str:
    """The result table as Markdown (WER mean +- std over chips, relative degradation against
    the float model per split), with the dev-chosen model's analog degradation below it."""
    rows = []
    for row in summary["rows"]:
        cells = [row["model"], row["execution"], row["chips"]]
        for split in SPLITS:
            mean, std = row[f"{split}_wer_mean"], row[f"{split}_wer_std"]
            cells.append(f"{mean:.2f} +- {std:.2f}" if row["chips"] else f"{mean:.2f}")
            cells.append(f"{100 * row[f'{split}_vs_float']:+.1f} %")
        rows.append(cells)
    columns = ("model", "execution", "chips", "dev WER %", "dev vs float")
    columns += ("test WER %", "test vs float")
    return render_markdown(columns, rows) + (
        f"\nBest analog model by dev WER: {summary['model']}; relative WER degradation of its "
        "analog execution (mean over chips) versus the float baseline: "
        f"{100 * summary['relative_degradation']:+.1f} % on test, "
        f"{100 * summary['relative_degradation_dev']:+.1f} % on dev\n"
    )


def run_demo(settings: DemoSettings) -> dict:
    """Run every step (skipping finished ones) and write the results; returns the summary."""
    from speechbrain_memristor.app.corpus.layout import make_corpus

    logger.info("Step 1/6: synthesized TED-LIUM 2 corpus")
    release = make_corpus(
        settings.out_dir / "corpus", utterances=settings.utterances, seed=settings.corpus_seed
    )
    tables = train_and_evaluate(settings, release)
    logger.info("Step 5/6: hardware report of the QAT model")
    report = hardware_report(settings)
    logger.info("Step 6/6: results")
    summary = summarize(settings, tables)
    summary["hardware_report"] = str(report)
    rows = [[row[key] for key in COLUMNS] for row in summary["rows"]]
    write_atomic(settings.out_dir / "results.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(settings.out_dir / "results.csv", csv_table(COLUMNS, rows))
    write_atomic(settings.out_dir / "results.md", markdown_table(summary))
    plot_wer_by_execution(summary["rows"], settings.out_dir / "wer_by_execution.png")
    return summary

"""The TED-LIUM 2 recipe's train.py and the demo orchestration, end to end on a tiny corpus.

Everything runs for real: a synthesized NIST SPHERE corpus, the recipe's prepare script,
SentencePiece, SpeechBrain's Brain in a fresh process per run. The model is shrunk through
command-line overrides so that each run takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_memristor.app import demo
from speechbrain_memristor.app.corpus.layout import make_corpus
from speechbrain_memristor.studies.runs import bundled_recipe

RECIPE_FOLDER = bundled_recipe()
TRAIN_SCRIPT = RECIPE_FOLDER / "train.py"
TINY_MODEL = {
    "d_model": 48,
    "nhead": 2,
    "num_encoder_layers": 1,
    "d_ffn": 96,
    "kernel_size": 7,
    "batch_size": 4,
    "number_of_epochs": 1,
    "num_chips": 2,
}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A 30-utterance synthesized TED-LIUM 2 corpus (24 train, 3 dev, 3 test segments)."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), utterances=30, seed=3, progress=False)


def run_train(release: Path, output: Path, prepared: Path, **overrides) -> None:
    arguments = {
        "data_folder": release,
        "output_folder": output,
        "prepared_folder": prepared,
        **TINY_MODEL,
        **overrides,
    }
    command = [sys.executable, str(TRAIN_SCRIPT), demo.DEMO_HPARAMS]
    command += [f"--{key}={value}" for key, value in arguments.items() if key != "test_only"]
    if overrides.get("test_only"):
        command.append("--test_only")
    completed = subprocess.run(
        command, cwd=RECIPE_FOLDER, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def table(folder: Path, split: str = "test") -> dict:
    return json.loads((folder / f"memristor_{split}.json").read_text())


@pytest.mark.parametrize(
    ("execution", "expected_runs"),
    [
        ("digital", ["fake_quant", "digital"]),
        ("fake_quant", ["digital", "fake_quant"]),
        ("analog", ["digital", "fake_quant", "analog", "analog"]),
    ],
)
def test_train_and_test_only_in_each_execution_mode(release, tmp_path, execution, expected_runs):
    prepared = tmp_path / "prepared"
    output = tmp_path / execution
    run_train(release, output, prepared, execution=execution)
    for split in ("dev", "test"):
        runs = table(output, split)["runs"]
        assert [run["execution"] for run in runs] == expected_runs
        assert all(run["metric"] >= 0.0 for run in runs)
    trained = table(output)
    assert (prepared / "train.csv").is_file()
    assert any(output.glob("save/CKPT+*"))

    # Evaluation only: the checkpoint is recovered, nothing is trained, the same runs come out.
    log_before = (output / "train_log.txt").read_text()
    run_train(release, output, prepared, execution=execution, test_only=True)
    retested = table(output)
    assert [run["execution"] for run in retested["runs"]] == expected_runs
    assert "epoch: 2" not in (output / "train_log.txt").read_text()
    assert (output / "train_log.txt").read_text().startswith(log_before)
    if execution != "analog":
        # Deterministic modes give the same WER from the recovered checkpoint.
        assert [r["metric"] for r in retested["runs"]] == [r["metric"] for r in trained["runs"]]
    else:
        seeds = [run["seed"] for run in retested["runs"] if run["execution"] == "analog"]
        assert seeds == [0, 1]


def test_qat_initializes_from_another_run_and_rejects_an_empty_folder(release, tmp_path):
    prepared = tmp_path / "prepared"
    run_train(release, tmp_path / "float", prepared, execution="digital")
    float_wer = table(tmp_path / "float")["runs"][-1]["metric"]
    # Zero QAT epochs: the evaluated digital model is exactly the float run's best checkpoint.
    run_train(
        release,
        tmp_path / "qat",
        prepared,
        execution="fake_quant",
        number_of_epochs=0,
        init_from=tmp_path / "float" / "save",
    )
    digital_run = next(r for r in table(tmp_path / "qat")["runs"] if r["execution"] == "digital")
    assert digital_run["metric"] == float_wer

    command = [sys.executable, str(TRAIN_SCRIPT), demo.DEMO_HPARAMS]
    command += [
        f"--data_folder={release}",
        f"--output_folder={tmp_path / 'bad'}",
        f"--prepared_folder={prepared}",
        f"--init_from={tmp_path / 'nothing_here'}",
    ]
    command += [f"--{key}={value}" for key, value in TINY_MODEL.items()]
    completed = subprocess.run(command, cwd=RECIPE_FOLDER, capture_output=True, text=True)
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr  # SpeechBrain logs the exception to stdout
    assert "init_from=" in output and "holds no checkpoint" in output


def test_demo_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out (README's default) names the caller's folder
    settings = demo.DemoSettings(
        out_dir=Path("demo"),
        utterances=30,
        float_epochs=1,
        qat_epochs=1,
        chips=2,
        hardware_aware=("chip_in_the_loop", "noise_injection"),
        hardware_aware_epochs=1,
        hardware_aware_lr=1e-4,
    )
    assert settings.out_dir == (tmp_path / "demo").resolve()
    summary = demo.run_demo(settings)
    rows = {(row["model"], row["execution"]): row for row in summary["rows"]}
    models = ["QAT 3-bit", "QAT 3-bit + chip in the loop", "QAT 3-bit + noise injection"]
    expected_rows = [("float", "digital")] + [
        (model, execution) for model in models for execution in ("digital", "fake_quant", "analog")
    ]
    assert list(rows) == expected_rows
    for model in models:
        analog = rows[(model, "analog")]
        assert analog["chips"] == 2
        for split in ("dev", "test"):
            assert len(analog[f"{split}_wers"]) == 2
            assert analog[f"{split}_wer_min"] <= analog[f"{split}_wer_mean"]
            assert analog[f"{split}_wer_mean"] <= analog[f"{split}_wer_max"]
            float_wer = rows[("float", "digital")][f"{split}_wer_mean"]
            expected = (analog[f"{split}_wer_mean"] - float_wer) / float_wer
            assert analog[f"{split}_vs_float"] == pytest.approx(expected)
    best = min(models, key=lambda model: rows[(model, "analog")]["dev_wer_mean"])
    assert summary["model"] == best  # chosen on dev only
    chosen = rows[(best, "analog")]
    assert summary["relative_degradation"] == chosen["test_vs_float"]
    assert summary["relative_degradation_dev"] == chosen["dev_vs_float"]
    assert summary["float_wer"] == rows[("float", "digital")]["test_wer_mean"]
    # Each hardware-aware stage fine-tuned the QAT model with its method.
    for method in settings.hardware_aware:
        log = (settings.hardware_aware_folder(method) / "recipe_log.txt").read_text()
        assert f"--training_method={method}" in log and "--valid_execution=analog" in log
        assert "--finetune_lr=0.0001" in log and "--finetune_warmup_steps=20" in log
        assert f"--init_from={settings.qat_folder / 'save'}" in log
    with pytest.raises(demo.DemoError, match="hardware_aware='chip'"):
        demo.DemoSettings(hardware_aware=("chip",))
    for name in ("results.md", "results.csv", "results.json", "wer_by_execution.png"):
        assert (settings.out_dir / name).stat().st_size > 0
    assert (settings.out_dir / "wer_by_execution.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((settings.out_dir / "results.json").read_text())["rows"] == summary["rows"]
    report = (settings.out_dir / "qat_3bit" / "hardware_report.md").read_text()
    assert summary["hardware_report"].endswith("hardware_report.md")
    assert "encoder" in report and "total" in report.lower()

    # A rerun finds every step done and starts no recipe or report process.
    def fail(*args, **kwargs):
        raise AssertionError("the rerun started a step again")

    monkeypatch.setattr(demo, "run_logged", fail)
    monkeypatch.setattr(demo, "report_trained_run", fail)
    assert demo.run_demo(settings)["rows"] == summary["rows"]

"""Hardware sweeps and the report command on a recipe run trained on a tiny synthesized corpus.

Everything is real: the TED-LIUM 2 recipe trains a tiny Conformer for one epoch (QAT), and each
sweep point is a test-only recipe run in its own process.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechbrain_memristor.app.cli import main
from speechbrain_memristor.app.corpus.layout import make_corpus
from speechbrain_memristor.studies.runs import TrainedRun, bundled_recipe
from speechbrain_memristor.studies.sweep import Sweep, SweepError, parse_grid, plan_points

RECIPE_TRAIN_SCRIPT = bundled_recipe() / "train.py"
HPARAMS = RECIPE_TRAIN_SCRIPT.parent / "hparams" / "demo_conformer_ctc.yaml"
TINY_MODEL = {"d_model": 48, "nhead": 2, "num_encoder_layers": 1, "d_ffn": 96, "kernel_size": 7}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 3-bit QAT run: 1 epoch on 24 synthesized utterances, evaluated on test only."""
    root = tmp_path_factory.mktemp("run")
    release = make_corpus(root / "corpus", utterances=24, seed=3, progress=False)
    output = root / "qat"
    overrides = {
        "data_folder": release,
        "output_folder": output,
        "prepared_folder": root / "prepared",
        "execution": "fake_quant",
        "number_of_epochs": 1,
        "batch_size": 4,
        "test_splits": "[test]",
        **TINY_MODEL,
    }
    command = [sys.executable, str(RECIPE_TRAIN_SCRIPT), str(HPARAMS)]
    command += [f"--{key}={value}" for key, value in overrides.items()]
    completed = subprocess.run(
        command, cwd=RECIPE_TRAIN_SCRIPT.parent, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return output


def make_sweep(run: Path, out_dir: Path, grid: dict) -> Sweep:
    return Sweep(
        hparams=HPARAMS,
        runs=[TrainedRun.load(run)],
        grid=parse_grid(grid),
        out_dir=out_dir,
        overrides=dict(TINY_MODEL),
    )


def test_sweep_resumes_without_evaluating_a_point_twice(trained_run, tmp_path):
    grid = {"adc": "8/10,4/4", "num_chips": "2"}
    sweep = make_sweep(trained_run, tmp_path / "sweep", grid)
    assert [point.settings["adc_precision_bits"] for point in sweep.points] == [8, 4]

    evaluated = []

    def interrupted_after_one(point):
        if evaluated:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C at the second point
        evaluated.append(point.identifier)
        sweep.evaluate(point)

    with pytest.raises(KeyboardInterrupt):
        sweep.run(interrupted_after_one)
    first_table = sweep.table_path(sweep.points[0])
    first_written = first_table.stat().st_mtime_ns

    resumed = make_sweep(trained_run, tmp_path / "sweep", grid)
    evaluated_on_resume = []

    def counting(point):
        evaluated_on_resume.append(point.identifier)
        resumed.evaluate(point)

    results = resumed.run(counting)
    assert evaluated_on_resume == [sweep.points[1].identifier]
    assert first_table.stat().st_mtime_ns == first_written
    assert make_sweep(trained_run, tmp_path / "sweep", grid).run(counting) == results
    assert len(evaluated_on_resume) == 1  # a finished sweep evaluates nothing

    # Tables: one row per point, each the summary of its chips, the hardware actually used.
    rows = results["rows"]
    assert [row["settings"]["adc_range_bits"] for row in rows] == [10, 4]
    for row in rows:
        assert row["hardware"]["adc_precision_bits"] == row["settings"]["adc_precision_bits"]
        assert row["chips"] == 2 and row["seeds"] == [0, 1] and len(row["wers"]) == 2
        assert row["wer_mean"] == pytest.approx(statistics.fmean(row["wers"]))
        assert row["wer_min"] == min(row["wers"]) and row["wer_max"] == max(row["wers"])
    folder = tmp_path / "sweep"
    assert json.loads((folder / "sweep.json").read_text())["rows"] == rows
    table = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["point"] for r in table] == [row["point"] for row in rows]
    assert [float(r["wer_mean"]) for r in table] == [row["wer_mean"] for row in rows]
    assert [r["adc_precision_bits"] for r in table] == ["8", "4"]
    markdown = (folder / "sweep.md").read_text()
    assert "2 of 2 points finished" in markdown and "3-bit run, fake_quant" in markdown
    assert set(results["references"]["3"]) == {"digital", "fake_quant"}
    for name in ("wer_vs_adc_bits.png", "wer_vs_weight_bits.png", "wer_spread_over_chips.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"


def test_invalid_grid_entries_are_rejected_before_any_evaluation(trained_run, tmp_path, capsys):
    run = TrainedRun.load(trained_run)
    assert run.weight_bits == 3
    with pytest.raises(SweepError) as error:
        parse_grid({"adc": "4/4,four/4", "tile_sizes": "64"})
    assert "'four/4'" in str(error.value) and "unknown grid axis 'tile_sizes'" in str(error.value)

    grid = parse_grid({"adc_range_bits": "0,4", "adc_precision_bits": "4", "weight_bits": "3,5"})
    with pytest.raises(SweepError) as error:
        plan_points(grid, [run])
    assert "weight_bits=5" in str(error.value) and "trained for" in str(error.value)
    grid = parse_grid({"adc_range_bits": "0,4", "adc_precision_bits": "4", "read_noise": "loud"})
    with pytest.raises(SweepError) as error:
        plan_points(grid, [run])
    message = str(error.value)
    assert "adc_range_bits=0" in message and "read_noise='loud'" in message

    out = tmp_path / "sweep"
    code = main(
        ["sweep", str(HPARAMS), "--run", str(trained_run), "--out", str(out)]
        + ["--grid", "dac_bits=8,1", "--grid", "num_chips=0"]
    )
    assert code == 1
    assert "dac_bits=1" in capsys.readouterr().err
    assert not (out / "points").exists()  # nothing was evaluated


def test_report_command_on_a_trained_run(trained_run, tmp_path, capsys):
    overrides = [f"--set={key}={value}" for key, value in TINY_MODEL.items()]
    code = main(
        ["report", str(HPARAMS), "--run", str(trained_run), "--out", str(tmp_path)]
        + ["--utterances", "2", *overrides]
    )
    assert code == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "hardware_report.json").read_text())
    layers = document["layers"]
    # One encoder layer of the paper's mapping: 2 + 2 feed-forward linears, the fused in_proj,
    # out_proj, and the two pointwise convolutions.
    assert len(layers) == 8
    assert all(layer["relative_error"] > 0 for layer in layers)
    # Measured 0.130-0.154 over the 8 layers (3-bit weights, the recipe's hardware, 2
    # utterances); a comparison of identical outputs gives 0, a broken mapping O(1).
    errors = [layer["relative_error"] for layer in layers]
    assert all(0.05 < error < 0.4 for error in errors), errors
    assert document["total"]["cells"] == sum(layer["cells"] for layer in layers)
    assert "hardware_report.md" in capsys.readouterr().out


def test_sweep_runs_an_explicitly_given_recipe_script(trained_run, tmp_path, capsys):
    """A copy of the recipe (train.py imports tedlium2_prepare from two folders up, so the
    whole TEDLIUM2 folder is copied), marked so that its runs are recognizable, given to Sweep
    and to the CLI's --train-script: the point runs the copy, in the copy's folder."""
    copy = tmp_path / "recipes" / "TEDLIUM2"
    shutil.copytree(bundled_recipe().parents[1], copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = copy / "ASR" / "conformer" / "train.py"
    source = script.read_text()
    marker = "MARKER: the copied recipe script is running"
    assert "\nimport logging\n" in source
    script.write_text(
        source.replace("\nimport logging\n", f"\nimport logging\nprint({marker!r})\n", 1)
    )
    hparams = script.parent / "hparams" / HPARAMS.name

    grid = {"num_chips": "1"}
    sweep = Sweep(
        hparams=hparams,
        runs=[TrainedRun.load(trained_run)],
        grid=parse_grid(grid),
        out_dir=tmp_path / "sweep",
        overrides=dict(TINY_MODEL),
        train_script=script,
    )
    (point,) = sweep.points
    assert sweep.command(point)[1:3] == [str(script), str(hparams.resolve())]

    overrides = [f"--set={key}={value}" for key, value in TINY_MODEL.items()]
    code = main(
        ["sweep", str(hparams), "--run", str(trained_run), "--out", str(tmp_path / "sweep")]
        + ["--grid", "num_chips=1", "--train-script", str(script), *overrides]
    )
    assert code == 0, capsys.readouterr().err
    log = (sweep.point_folder(point) / "sweep_log.txt").read_text()
    command = log.splitlines()[0].split()
    assert command[1] == str(script) and str(RECIPE_TRAIN_SCRIPT) not in log
    assert marker in log
    assert sweep.is_done(point)  # the same point (settings and run) as planned above
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [row["point"] for row in rows] == [point.identifier]
    assert rows[0]["chips"] == 1 and rows[0]["seeds"] == [0] and len(rows[0]["wers"]) == 1
    table = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [r["point"] for r in table] == [point.identifier]
    assert "1 of 1 points finished" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_two_workers_write_the_serial_sweep_results(trained_run, tmp_path):
    """Points run concurrently (their evaluations overlap in time) and give the same tables
    and results file as a serial sweep."""
    grid = {"adc": "8/10,4/4", "num_chips": "1"}
    serial = make_sweep(trained_run, tmp_path / "serial", grid).run()
    parallel = make_sweep(trained_run, tmp_path / "parallel", grid)
    spans = {}

    def timed(point):
        start = time.monotonic()
        parallel.evaluate(point)
        spans[point.identifier] = (start, time.monotonic())

    results = parallel.run(timed, workers=2)
    (first_start, first_end), (second_start, second_end) = spans.values()
    assert first_start < second_end and second_start < first_end  # they ran at the same time
    assert {key: value for key, value in results.items() if key != "plots"} == {
        key: value for key, value in serial.items() if key != "plots"
    }
    for name in ("sweep.json", "sweep.csv", "sweep.md"):
        assert (tmp_path / "serial" / name).read_text() == (
            tmp_path / "parallel" / name
        ).read_text()
    with pytest.raises(SweepError, match="workers=0 is invalid"):
        parallel.run(workers=0)


def test_sweep_under_torchrun_writes_the_serial_sweep_results(trained_run, tmp_path, monkeypatch):
    """`speechbrain-memristor sweep` under torchrun with 2 ranks (gloo, CPU), resuming a sweep
    with one point finished: each unfinished point is evaluated once, by rank k for the k-th
    (round robin), the finished one by none, and rank 0 writes the serial sweep's files byte
    for byte. torchrun gives its ranks (and so the points' recipe processes) one thread
    unless OMP_NUM_THREADS says otherwise: the serial sweep runs with the same."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grid = {"adc": "8/10,4/4,6/6", "num_chips": "1"}
    serial = make_sweep(trained_run, tmp_path / "serial", grid)
    serial.run()
    ranked = make_sweep(trained_run, tmp_path / "ranked", grid)
    finished = ranked.point_folder(ranked.points[0])
    shutil.copytree(serial.point_folder(serial.points[0]), finished, symlinks=True)
    finished_written = ranked.table_path(ranked.points[0]).stat().st_mtime_ns

    overrides = [f"--set={key}={value}" for key, value in TINY_MODEL.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    # "--": torchrun would read the sweep's --run as an abbreviation of its own --run-path.
    command += ["--nproc_per_node=2", "-m", "speechbrain_memristor.app.cli", "--", "sweep"]
    command += [str(HPARAMS), "--run", str(trained_run), "--out", str(tmp_path / "ranked")]
    command += ["--grid", "adc=8/10,4/4,6/6", "--grid", "num_chips=1", *overrides]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]

    for rank, point in enumerate(ranked.points[1:]):
        assert output.count(f"Sweep point {point.identifier} on rank") == 1, output[-4000:]
        assert f"Sweep point {point.identifier} on rank {rank}:" in output
    assert f"Sweep point {ranked.points[0].identifier}" not in output
    assert ranked.table_path(ranked.points[0]).stat().st_mtime_ns == finished_written
    for name in ("sweep.json", "sweep.csv", "sweep.md"):
        assert (tmp_path / "ranked" / name).read_bytes() == (
            tmp_path / "serial" / name
        ).read_bytes()
    assert output.count("3 of 3 points finished") == 1  # rank 0 alone prints the table

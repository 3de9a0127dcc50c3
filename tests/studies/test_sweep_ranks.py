"""A sweep under torchrun, without a trained run: 2 gloo ranks (torchrun running this file)
share the unfinished points of a grid; a failed point is reported by every rank and no
results are written. (tests/studies/test_sweep.py runs a real sweep under torchrun.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.studies.runs import TrainedRun, bundled_recipe
from speechbrain_memristor.studies.sweep import Sweep, SweepError, SweepRanks, parse_grid
from speechbrain_memristor.util.processes import single_process_environment

WORLD_SIZE = 2
HPARAMS = bundled_recipe() / "hparams" / "demo_conformer_ctc.yaml"


def grid_sweep(folder: Path) -> Sweep:
    """5 points (dac_bits 4..8) of a never-trained 3-bit paper-preset run."""
    run = TrainedRun(
        folder / "run", folder / "run" / "save", HardwareConfig.preset("paper").to_dict()
    )
    grid = parse_grid({"dac_bits": "4,5,6,7,8"})
    return Sweep(hparams=HPARAMS, runs=[run], grid=grid, out_dir=folder / "sweep")


def rank_main(folder: str) -> None:
    """One rank, started by torchrun (this file as its script): `Sweep.run` with an evaluation
    that records which rank evaluates which point, and fails at the grid's point 2."""
    torch.set_num_threads(1)
    sweep = grid_sweep(Path(folder))
    evaluated = []

    def recording(point) -> None:
        index = sweep.points.index(point)
        evaluated.append(index)
        if index == 2:
            raise SweepError(f"point {index} broke")

    try:
        outcome = repr(sweep.run(recording))
    except SweepError as error:
        outcome = f"SweepError: {error}"
    record = {"evaluated": evaluated, "outcome": outcome}
    (Path(folder) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))


def test_ranks_share_the_unfinished_points_and_report_failures(tmp_path):
    sweep = grid_sweep(tmp_path)
    done = sweep.table_path(sweep.points[0])  # point 0 finished before (only its table counts)
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD_SIZE}", __file__, str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # Unfinished: points 1-4, dealt round robin; rank 1 stops at its failed point 2 (one
    # worker), rank 0 finishes its share; point 0 is skipped on both.
    assert first["evaluated"] == [1, 3] and second["evaluated"] == [2]
    # Rank 0 names the other rank's failure, rank 1 its own; nothing was written.
    assert first["outcome"].startswith("SweepError: Sweep points failed")
    assert "rank 1: point 2 broke" in first["outcome"]
    assert "rank 1: point 2 broke" in second["outcome"]
    assert not (tmp_path / "sweep" / "sweep.json").exists()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, None),  # a single process
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, SweepRanks(3, 4, 1)),
    ],
)
def test_torchrun_ranks_from_the_environment(environ, expected):
    assert SweepRanks.from_environment(environ) == expected


def test_a_point_process_does_not_inherit_the_torchrun_rank():
    environ = {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_RUN_ID": "x",
        "OMP_NUM_THREADS": "1",
        "PATH": "/bin",
    }
    assert single_process_environment(environ) == {"OMP_NUM_THREADS": "1", "PATH": "/bin"}


if __name__ == "__main__":
    rank_main(sys.argv[1])

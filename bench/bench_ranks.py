"""Chip-parallel evaluation: the demo's QAT model on N chips, one process vs torchrun ranks.

Runs the recipe's ``--test_only`` analog evaluation of a finished demo (``speechbrain-memristor
demo`` output folder, read only: the checkpoint is copied) twice, with one thread per process
(as torchrun's ranks get): one process, then ``--ranks`` gloo processes on the CPU. Prints the
evaluation times (from the recipe log: first pass to table written, so start-up is excluded),
their ratio, and whether the two tables are identical byte for byte.

    python bench/bench_ranks.py --demo /tmp/demo_out [--chips 4] [--ranks 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "TEDLIUM2" / "ASR" / "conformer"
STAMP = "%Y-%m-%d %H:%M:%S,%f"


def evaluation_seconds(log: Path) -> float:
    """Seconds from the first "Memristor evaluation:" line to the table line of the log."""
    times = [
        datetime.datetime.strptime(line[:23], STAMP)
        for line in log.read_text(encoding="utf-8").splitlines()
        if "Memristor evaluation" in line
    ]
    return (times[-1] - times[0]).total_seconds()


def run(demo: Path, folder: Path, chips: int, ranks: int) -> float:
    """Evaluate the demo's QAT checkpoint in ``folder`` on ``ranks`` processes."""
    shutil.copytree(demo / "qat_3bit" / "save", folder / "save", symlinks=True)
    arguments = [
        "hparams/demo_conformer_ctc.yaml",
        f"--data_folder={demo / 'corpus' / 'TEDLIUM_release2'}",
        f"--prepared_folder={demo / 'prepared'}",
        f"--output_folder={folder}",
        "--execution=analog",
        f"--num_chips={chips}",
        "--test_splits=[test]",
        "--test_only",
        "--device=cpu",
        "--noprogressbar",
    ]
    if ranks == 1:
        command = [sys.executable, "train.py", *arguments]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
        command = [*torchrun, "train.py", *arguments, "--distributed_backend=gloo"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, cwd=RECIPE, env=environment, check=True, capture_output=True)
    return evaluation_seconds(folder / "log.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo output folder")
    parser.add_argument("--chips", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        one, many = Path(scratch) / "one", Path(scratch) / "ranks"
        single = run(args.demo, one, args.chips, 1)
        spread = run(args.demo, many, args.chips, args.ranks)
        identical = all(
            (one / f"memristor_test.{suffix}").read_bytes()
            == (many / f"memristor_test.{suffix}").read_bytes()
            for suffix in ("json", "csv", "md")
        )
    print(f"{args.chips} chips + digital + fake_quant on the demo test split")
    print(f"| processes | evaluation s | ratio |\n| --- | --- | --- |\n| 1 | {single:.1f} | 1.00 |")
    print(f"| {args.ranks} (gloo) | {spread:.1f} | {spread / single:.2f} |")
    print(f"tables identical: {identical}")


if __name__ == "__main__":
    main()

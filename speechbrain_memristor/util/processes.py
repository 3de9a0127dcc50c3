"""Running a command whose output is shown live and kept in a log file; the environment of a
child that must not join its parent's torchrun group."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# What torchrun gives each rank (besides TORCHELASTIC_*): with them a child would take itself
# for a rank of the parent's group.
TORCHRUN_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def single_process_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without torchrun's rank variables, for a child
    that runs as a process of its own (other variables, e.g. ``OMP_NUM_THREADS``, are kept)."""
    environ = os.environ if environ is None else environ
    return {
        key: value
        for key, value in environ.items()
        if key not in TORCHRUN_VARIABLES and not key.startswith("TORCHELASTIC_")
    }


def run_logged(
    command: Sequence[str],
    log_path: str | os.PathLike,
    cwd: str | os.PathLike,
    echo: bool = True,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``command`` in ``cwd`` (with environment ``env``; None: this process's); its output
    goes to ``log_path`` (first line: the command) and, with ``echo``, to stdout as it comes.
    Returns the exit status."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Running: %s", " ".join(map(str, command)))
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write(" ".join(map(str, command)) + "\n")
        log_file.flush()
        process = subprocess.Popen(
            list(map(str, command)),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=None if env is None else dict(env),
        )
        assert process.stdout is not None
        for line in process.stdout:
            if echo:
                sys.stdout.write(line)
            log_file.write(line)
        return process.wait()

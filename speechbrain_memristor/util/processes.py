"""Running a command whose output is shown live and kept in a log file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def run_logged(
    command: Sequence[str], log_path: str | os.PathLike, cwd: str | os.PathLike, echo: bool = True
) -> int:
    """Run ``command`` in ``cwd``; its output goes to ``log_path`` (first line: the command)
    and, with ``echo``, to stdout as it comes. Returns the exit status."""
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
        )
        assert process.stdout is not None
        for line in process.stdout:
            if echo:
                sys.stdout.write(line)
            log_file.write(line)
        return process.wait()

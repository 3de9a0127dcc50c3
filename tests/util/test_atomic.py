"""Atomic writes (`util.atomic`): complete files only, ordinary permissions."""

import os

from speechbrain_memristor.util.atomic import write_atomic


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "results" / "table.md", "| a |\n")
    finally:
        os.umask(mask)
    assert path.read_text() == "| a |\n"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]  # no temporary left

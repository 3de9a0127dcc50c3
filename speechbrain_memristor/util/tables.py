"""Rendering rows of cells as Markdown, CSV or aligned plain-text tables."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

Row = Sequence[object]


def markdown_table(columns: Row, rows: Sequence[Row]) -> str:
    """A Markdown table (header, separator, one line per row), ending with a newline."""
    lines = ["| " + " | ".join(map(str, columns)) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(columns: Row, rows: Sequence[Row]) -> str:
    """CSV text with a header row (``\\n`` line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def setting_text(value: object) -> str:
    """A setting as shown in tables and plot labels: None (an ideal converter) as "ideal",
    floats with up to 4 significant digits (a stuck-cell rate 0.001 stays "0.001")."""
    if value is None:
        return "ideal"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def aligned_table(rows: Sequence[Row]) -> str:
    """Plain-text columns padded to equal width (two spaces apart), for logs."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )

"""What a conversion covers: every parameter of the model counted once, and its cell cost.

`Coverage` sorts every parameter element of the model (shared Parameters once) into: on
crossbars (weight matrices mapped by this or an earlier conversion), digital by choice
(mappable weight matrices the selection left out) and not mappable (everything else: biases,
norms, embeddings, unsupported layers), the last by ``<module type>.<parameter>``. So the
percentages are of the whole model. ``cells`` counts the cells the new selection creates; a
selection needing more than ``max_cells`` (default `CELL_BUDGET_FACTOR` times the cells of the
whole model mapped once at the base hardware, parameter count x 2 x bit planes; reached by
per-layer settings with many more weight bits, or a smaller explicit budget) gets a warning
naming the layers responsible, largest first. Grouped convolutions cost their weights' cells
(group-wise packing, `crossbar.grouped`), so no layer costs more cells than its parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

# Default cell budget: this many times the cells of every model parameter mapped once.
CELL_BUDGET_FACTOR = 3
_LAYER_SUFFIX = r"_l\d+(_reverse)?$"  # torch RNN parameter names: weight_ih_l0_reverse


def parameter_type(module: torch.nn.Module, name: str) -> str:
    """``<module class>.<parameter>`` with layer/direction suffixes dropped (``LSTM.bias_ih``)."""
    return f"{type(module).__name__}.{re.sub(_LAYER_SUFFIX, '', name)}"


@dataclass(frozen=True)
class MatrixCells:
    """Cells one selected matrix needs."""

    name: str
    cells: int


@dataclass(frozen=True)
class Coverage:
    """Parameter elements of the whole model by mapping (module doc), and the new cells."""

    total: int
    mapped: int
    digital_by_choice: int
    not_mappable: dict[str, int]
    matrices: tuple[MatrixCells, ...] = field(default=())

    @property
    def not_mappable_total(self) -> int:
        return sum(self.not_mappable.values())

    @property
    def cells(self) -> int:
        """Cells of the matrices mapped by this conversion."""
        return sum(matrix.cells for matrix in self.matrices)

    def percent(self, count: int) -> str:
        return f"{100 * count / self.total:.1f} %" if self.total else "-"

    def summary(self) -> str:
        """One line: the counts and shares of the whole model."""
        kinds = sorted(self.not_mappable.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{kind} {count:,}" for kind, count in kinds[:6])
        more = f", ... ({len(kinds) - 6} more types)" if len(kinds) > 6 else ""
        return (
            f"{self.mapped:,} of {self.total:,} model parameters on crossbars "
            f"({self.percent(self.mapped)}); {self.digital_by_choice:,} digital by choice "
            f"({self.percent(self.digital_by_choice)}); {self.not_mappable_total:,} not "
            f"mappable ({self.percent(self.not_mappable_total)}"
            f"{': ' + listed + more if listed else ''})"
        )

    def responsible(self, count: int = 5) -> list[MatrixCells]:
        """The ``count`` matrices that cost the most cells, largest first."""
        return sorted(self.matrices, key=lambda matrix: -matrix.cells)[:count]

    def cell_warning(self, max_cells: int) -> str | None:
        """A warning when the new cells exceed ``max_cells``, else None."""
        if self.cells <= max_cells:
            return None
        layers = "; ".join(f"{m.name}: {m.cells:,} cells" for m in self.responsible())
        return (
            f"This selection creates {self.cells:,} cells, more than max_cells={max_cells:,} "
            f"(default {CELL_BUDGET_FACTOR}x the cells of the whole model mapped once). Largest: "
            f"{layers}. Exclude layers, lower their weight_bits in layer_hardware, or pass a "
            "larger max_cells."
        )


def count_coverage(
    roots: Sequence[tuple[str, torch.nn.Module]],
    mapped: Iterable[torch.nn.Parameter],
    mappable: Iterable[torch.nn.Parameter],
    matrices: Sequence[MatrixCells] = (),
) -> Coverage:
    """Sort every parameter of the modules under ``roots``: ``mapped`` (on crossbars),
    ``mappable`` but not mapped (digital by choice), the rest by type."""
    mapped_ids = {id(p) for p in mapped}
    mappable_ids = {id(p) for p in mappable} - mapped_ids
    seen: set[int] = set()
    total = on_chip = by_choice = 0
    other: dict[str, int] = {}
    for _, root in roots:
        for module in root.modules():
            for name, parameter in module._parameters.items():
                if parameter is None or id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                count = parameter.numel()
                total += count
                if id(parameter) in mapped_ids:
                    on_chip += count
                elif id(parameter) in mappable_ids:
                    by_choice += count
                else:
                    kind = parameter_type(module, name)
                    other[kind] = other.get(kind, 0) + count
    return Coverage(total, on_chip, by_choice, other, tuple(matrices))

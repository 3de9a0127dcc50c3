"""`HardwareLayer`: what every hardware-aware layer shares.

A hardware layer owns one `HardwareMatmul` per mapped weight matrix (a Linear or convolution
one, a fused attention module one or two) and exposes them through ``projections()``. The
execution mode, programming and device placement are defined here once, in terms of those
projections.
"""

from __future__ import annotations

from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import check_execution


class HardwareLayer:
    """Mixin of hardware-aware modules (see the module doc)."""

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        """(matmul, crossbar weight [out, in]) of every mapped weight matrix."""
        raise NotImplementedError

    def mapped_parameters(self) -> list[Tensor]:
        """The Parameters whose values the mapped matrices hold (for coverage counts)."""
        return [weight for _, weight in self.projections()]

    def hardware_matmuls(self) -> list[HardwareMatmul]:
        """The `HardwareMatmul` of every mapped weight matrix."""
        return [matmul for matmul, _ in self.projections()]

    @property
    def execution(self) -> str:
        return self.hardware_matmuls()[0].execution

    @execution.setter
    def execution(self, execution: str) -> None:
        mode = check_execution(execution)
        for matmul in self.hardware_matmuls():
            matmul.execution = mode

    def program(self, seed: int | None = None) -> None:
        """Program every mapped matrix onto a fresh chip (seed None: the layer's chip seed)."""
        for matmul, weight in self.projections():
            matmul.program(weight, seed)


def new_matmul(
    hardware: HardwareConfig | None,
    execution: str,
    name: str,
    like: Tensor,
    training: bool = True,
) -> HardwareMatmul:
    """A HardwareMatmul (``hardware`` None: ``HardwareConfig()``) whose quantizer buffers live
    on ``like``'s device, in the given training mode."""
    matmul = HardwareMatmul(hardware or HardwareConfig(), execution=execution, name=name)
    matmul.to(like.device)
    matmul.train(training)
    return matmul

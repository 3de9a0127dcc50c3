"""`MemristorLinear`: a drop-in `torch.nn.Linear` executed digitally, fake-quantized or on a chip."""

from __future__ import annotations

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.layers.base import HardwareLayer, new_matmul
from speechbrain_memristor.layers.matmul import HardwareMatmul


class MemristorLinear(HardwareLayer, torch.nn.Linear):
    """`torch.nn.Linear` whose product runs through a `HardwareMatmul` (``self.matmul``).

    The state_dict keys are those of `torch.nn.Linear` (``weight``, ``bias``); the quantizer
    calibration travels via ``matmul.quantizer_state()``. ``hardware=None`` uses
    ``HardwareConfig()`` defaults. Quantizer buffers live on the weight's device.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        hardware: HardwareConfig | None = None,
        execution: str = "digital",
        name: str = "",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        torch.nn.Linear.__init__(
            self, in_features, out_features, bias=bias, device=device, dtype=dtype
        )
        self.matmul = new_matmul(hardware, execution, name, self.weight)

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        return [(self.matmul, self.weight)]

    def forward(self, input: Tensor) -> Tensor:
        """input [..., in_features] -> [..., out_features]."""
        return self.matmul(input, self.weight, self.bias)

    @classmethod
    def from_linear(
        cls,
        linear: torch.nn.Linear,
        hardware: HardwareConfig | None,
        execution: str = "digital",
        name: str = "",
    ) -> MemristorLinear:
        """A MemristorLinear sharing ``linear``'s weight and bias Parameter objects."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"from_linear expects a torch.nn.Linear, got {type(linear).__name__}.")
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features = linear.in_features
        layer.out_features = linear.out_features
        layer.register_parameter("weight", linear.weight)
        layer.register_parameter("bias", linear.bias)
        layer.matmul = new_matmul(hardware, execution, name, linear.weight)
        layer.train(linear.training)
        return layer

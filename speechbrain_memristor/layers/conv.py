"""`MemristorConv1d` / `MemristorConv2d`: convolutions computed as one matrix product per call.

In ``digital`` mode the layer is exactly its torch parent (same forward, bitwise). Otherwise the
input is padded like torch does (any ``padding_mode``, ``padding="same"`` included), unfolded
into patches (im2col) and multiplied by the flattened kernel through a `HardwareMatmul`:
one crossbar row per (input channel, kernel tap), one column per output channel.

Grouped convolutions (``groups > 1``, depthwise included) use one block-diagonal matrix
[out_channels, in_channels * taps]: each group occupies its own rows and its own columns, so
groups never mix, and the weights are quantized per tensor exactly as for the original kernel.
The cells outside the diagonal blocks exist on the chip and hold 0 (high resistance), so they
leak current and add read noise like any unused cell of a tile. This costs groups times the
cells and read work of the dense kernel: depthwise convolutions are therefore best kept
digital (as in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.layers.base import HardwareLayer, new_matmul
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import Execution


class _HardwareConvolution(HardwareLayer):
    """Mixin for `torch.nn.Conv1d` / `Conv2d` subclasses that own ``matmul: HardwareMatmul``."""

    matmul: HardwareMatmul
    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: str
    _reversed_padding_repeated_twice: list[int]
    _torch_class: type[torch.nn.modules.conv._ConvNd]  # the torch convolution it extends

    def __init__(
        self,
        *args,
        hardware: HardwareConfig | None = None,
        execution: str = "digital",
        name: str = "",
        **kwargs,
    ):
        """The torch convolution's arguments (in_channels, out_channels, kernel_size, stride,
        padding, dilation, groups, bias, padding_mode, device, dtype), then the hardware."""
        self._torch_class.__init__(self, *args, **kwargs)
        self._attach(hardware, execution, name)

    @classmethod
    def from_conv(
        cls,
        conv: torch.nn.modules.conv._ConvNd,
        hardware: HardwareConfig | None,
        execution: str = "digital",
        name: str = "",
    ):
        """A layer with ``conv``'s settings sharing its weight and bias Parameter objects."""
        if not isinstance(conv, cls._torch_class):
            raise TypeError(
                f"{cls.__name__}.from_conv expects a {cls._torch_class.__module__}."
                f"{cls._torch_class.__name__}, got {type(conv).__name__}."
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            hardware=hardware,
            execution=execution,
            name=name,
            device="meta",
        )
        layer.register_parameter("weight", conv.weight)
        layer.register_parameter("bias", conv.bias)
        layer.matmul = new_matmul(hardware, execution, name, conv.weight)  # off the meta device
        layer.train(conv.training)
        return layer

    def _attach(self, hardware: HardwareConfig | None, execution: str, name: str) -> None:
        self.matmul = new_matmul(hardware, execution, name, self.weight)
        # Block-diagonal matrix of a grouped kernel, reused (and updated in place) in analog mode
        # so that the chip is reprogrammed only when the kernel changes.
        self._block_matrix: Tensor | None = None
        self._block_matrix_key: tuple | None = None

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        return [(self.matmul, self.matrix())]

    def mapped_parameters(self) -> list[Tensor]:
        return [self.weight]

    def matrix(self) -> Tensor:
        """The weight as the crossbar matrix [out_channels, in_channels * taps].

        ``groups == 1``: a view of the kernel. Grouped: the block-diagonal matrix (differentiable
        in ``digital``/``fake_quant``; a cached tensor updated in place in ``analog``).
        """
        flat = self.weight.flatten(1)
        if self.groups == 1:
            return flat
        if self.matmul.execution != Execution.ANALOG:
            return torch.block_diag(*flat.chunk(self.groups, dim=0))
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.weight.dtype)
        if self._block_matrix_key != key:
            with torch.no_grad():
                blocks = torch.block_diag(*flat.detach().chunk(self.groups, dim=0))
                cached = self._block_matrix
                if cached is not None and (cached.shape, cached.device, cached.dtype) == (
                    blocks.shape,
                    blocks.device,
                    blocks.dtype,
                ):
                    cached.copy_(blocks)  # same tensor, new version: the chip is reprogrammed
                else:
                    self._block_matrix = blocks
            self._block_matrix_key = key
        return self._block_matrix

    def forward(self, input: Tensor) -> Tensor:
        """input [batch, in_channels, *spatial] (or unbatched) -> [batch, out_channels, *out]."""
        if self.matmul.execution == Execution.DIGITAL:
            return super().forward(input)  # type: ignore[misc]
        spatial_dims = self.weight.dim() - 2
        batched = input.dim() == spatial_dims + 2
        x = input if batched else input.unsqueeze(0)
        pad_mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, self._reversed_padding_repeated_twice, mode=pad_mode)
        kernel = tuple(self.weight.shape[2:])
        stride, dilation = tuple(self.stride), tuple(self.dilation)
        padded = tuple(x.shape[2:])
        out_size = tuple(
            (size - d * (k - 1) - 1) // s + 1
            for size, k, s, d in zip(padded, kernel, stride, dilation, strict=True)
        )
        if spatial_dims == 1:  # F.unfold works on 2-D images: treat a sequence as height 1
            x = x.unsqueeze(2)
            kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        patches = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [B, C_in * taps, P]
        out = self.matmul(patches.transpose(1, 2), self.matrix(), self.bias)  # [B, P, C_out]
        out = out.transpose(1, 2).reshape(x.shape[0], -1, *out_size)
        return out if batched else out.squeeze(0)


class MemristorConv1d(_HardwareConvolution, torch.nn.Conv1d):
    """`torch.nn.Conv1d` whose product runs through a `HardwareMatmul` (``self.matmul``).

    Arguments: those of `torch.nn.Conv1d`, plus ``hardware`` (None: ``HardwareConfig()``
    defaults), ``execution`` and ``name`` (keywords). The state_dict keys are those of
    `torch.nn.Conv1d`. Inputs [batch, in_channels, time] or [in_channels, time].
    """

    _torch_class = torch.nn.Conv1d

    @classmethod
    def from_conv1d(cls, conv, hardware, execution="digital", name="") -> MemristorConv1d:
        """A MemristorConv1d sharing ``conv``'s weight and bias Parameter objects."""
        return cls.from_conv(conv, hardware, execution, name)


class MemristorConv2d(_HardwareConvolution, torch.nn.Conv2d):
    """`torch.nn.Conv2d` whose product runs through a `HardwareMatmul` (``self.matmul``).

    Same conventions as `MemristorConv1d`; inputs [batch, in_channels, height, width] or
    unbatched [in_channels, height, width].
    """

    _torch_class = torch.nn.Conv2d

    @classmethod
    def from_conv2d(cls, conv, hardware, execution="digital", name="") -> MemristorConv2d:
        """A MemristorConv2d sharing ``conv``'s weight and bias Parameter objects."""
        return cls.from_conv(conv, hardware, execution, name)

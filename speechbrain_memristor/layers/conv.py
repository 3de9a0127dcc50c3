"""`MemristorConv1d` / `MemristorConv2d`: convolutions computed as one matrix product per call.

In ``digital`` mode the layer is exactly its torch parent (same forward, bitwise). Otherwise the
input is padded like torch does (any ``padding_mode``, ``padding="same"`` included), unfolded
into patches (im2col) and multiplied by the flattened kernel through a `HardwareMatmul`:
one crossbar row per (input channel, kernel tap), one column per output channel.

Grouped convolutions (``groups > 1``, depthwise included) are mapped group by group
(`GroupedConvMatmul`, `crossbar.grouped`): each group's matrix [out_channels / groups,
in_channels / groups * taps] is placed on tiles on its own (several per tile along the
diagonal when they fit), so cells and read work grow with the kernel's weights. The kernel is
quantized per tensor exactly as a dense one. ``fake_quant`` runs torch's grouped convolution
on the fake-quantized padded input and kernel (the input quantizer observes the padded input);
with ``adc_in_training`` the ADC of the group-wise chip is emulated (`ideal_grouped_read`);
with ``output_bits`` its output is quantized as a dense layer's (`HardwareMatmul`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.grouped import (
    GroupedCrossbar,
    GroupedInventory,
    ideal_grouped_read,
)
from speechbrain_memristor.layers.base import HardwareLayer, new_matmul
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import Execution

_CONVOLUTIONS = {3: F.conv1d, 4: F.conv2d}  # by kernel dimensions


def _patches(x: Tensor, kernel, stride, dilation) -> tuple[Tensor, tuple[int, ...]]:
    """im2col of a padded input [B, C, *spatial]: patches [B, C * taps, P] and the output size."""
    kernel, stride, dilation = tuple(kernel), tuple(stride), tuple(dilation)
    out_size = tuple(
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(x.shape[2:], kernel, stride, dilation, strict=True)
    )
    if len(kernel) == 1:  # F.unfold works on 2-D images: treat a sequence as height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    return F.unfold(x, kernel, dilation=dilation, stride=stride), out_size


class GroupedConvMatmul(HardwareMatmul):
    """The `HardwareMatmul` of a grouped convolution, mapped group-wise (module doc).

    ``forward(x, kernel, bias)`` takes the padded input [B, C_in, *spatial] and the kernel
    [C_out, C_in / groups, *taps] and returns the convolution [B, C_out, *out] (no padding,
    the layer's stride and dilation) in the current mode; the chip is a `GroupedCrossbar`.
    """

    def __init__(
        self,
        hardware: HardwareConfig,
        execution: str,
        name: str,
        groups: int,
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ):
        super().__init__(hardware, execution, name)
        self.groups = groups
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"

    def _convolve(self, x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
        convolution = _CONVOLUTIONS[kernel.dim()]
        return convolution(
            x, kernel, bias, stride=self.stride, dilation=self.dilation, groups=self.groups
        )

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._execution == Execution.DIGITAL:
            return self._convolve(x, weight, bias)
        if self._execution == Execution.FAKE_QUANT:
            y = self._convolve(self.input_quantizer(x), self.weight_quantizer(weight), bias)
            if self.hardware.adc_in_training and self.hardware.has_adc:
                with torch.no_grad():
                    y_adc = self._read(x.detach(), weight, bias, self._ideal_read)
                y = y + (y_adc.to(y.dtype) - y).detach()
        else:
            y = self._analog(x, weight, bias)
        return y if self.output_quantizer is None else self.output_quantizer(y)

    def _ideal_read(self, patches: Tensor, input_scale: Tensor, weight: Tensor) -> Tensor:
        w_int = self.weight_quantizer.integers(weight).flatten(1)
        values = ideal_grouped_read(patches, input_scale, w_int, self.hardware, self.groups)
        return values.mul_(self.weight_quantizer.scale(weight))

    def _chip_read(self, patches: Tensor, input_scale: Tensor, weight: Tensor) -> Tensor:
        assert self.chip is not None
        return self.chip.read(patches, input_scale).mul_(self.chip.weight_scale)

    def _read(self, x: Tensor, weight: Tensor, bias: Tensor | None, read) -> Tensor:
        """The convolution computed by ``read(patches [N, G K], input_scale, kernel)``."""
        input_scale = self.input_quantizer.calibrated_scale(x)
        patches, out_size = _patches(x.float(), weight.shape[2:], self.stride, self.dilation)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        values = read(rows, input_scale, weight).mul_(input_scale * self.hardware.dac_qmax)
        if bias is not None:
            values.add_(bias)
        values = values.view(x.shape[0], -1, weight.shape[0]).transpose(1, 2)
        return values.reshape(x.shape[0], weight.shape[0], *out_size).to(x.dtype)

    @torch.no_grad()
    def _analog(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        self._prepare_analog(x, weight)
        return self._read(x, weight, bias, self._chip_read)

    @torch.no_grad()
    def build_chip(self, weight: Tensor, seed: int | None = None) -> GroupedCrossbar:
        """A group-wise chip programmed with the kernel ``weight`` (see `HardwareMatmul`)."""
        w_int = self.weight_quantizer.integers(weight).flatten(1).cpu()
        return GroupedCrossbar.program(
            w_int,
            self.weight_quantizer.scale(weight).item(),
            self.hardware,
            self.chip_seed(self._program_seed if seed is None else seed),
            self.groups,
        ).to(weight.device)

    def inventory(self, weight: Tensor) -> GroupedInventory:
        """Cells, tiles and conversions of the kernel ``weight`` packed group-wise."""
        return GroupedInventory.of(self.groups, weight.shape[0], weight[0].numel(), self.hardware)


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
        layer.matmul = layer._new_matmul(hardware, execution, name, conv.weight)  # off meta
        layer.train(conv.training)
        return layer

    def _attach(self, hardware: HardwareConfig | None, execution: str, name: str) -> None:
        self.matmul = self._new_matmul(hardware, execution, name, self.weight)

    def _new_matmul(
        self, hardware: HardwareConfig | None, execution: str, name: str, like: Tensor
    ) -> HardwareMatmul:
        """A `HardwareMatmul` (a `GroupedConvMatmul` for ``groups > 1``) on ``like``'s device."""
        if self.groups == 1:
            return new_matmul(hardware, execution, name, like)
        matmul = GroupedConvMatmul(
            hardware or HardwareConfig(), execution, name, self.groups, self.stride, self.dilation
        )
        return matmul.to(like.device)

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        return [(self.matmul, self.matrix())]

    def mapped_parameters(self) -> list[Tensor]:
        return [self.weight]

    def matrix(self) -> Tensor:
        """The weight as its `HardwareMatmul` takes it: the crossbar matrix [out_channels,
        in_channels * taps] (a view of the kernel); grouped: the kernel itself."""
        return self.weight.flatten(1) if self.groups == 1 else self.weight

    def forward(self, input: Tensor) -> Tensor:
        """input [batch, in_channels, *spatial] (or unbatched) -> [batch, out_channels, *out]."""
        if self.matmul.execution == Execution.DIGITAL:
            return super().forward(input)  # type: ignore[misc]
        spatial_dims = self.weight.dim() - 2
        batched = input.dim() == spatial_dims + 2
        x = input if batched else input.unsqueeze(0)
        pad_mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, self._reversed_padding_repeated_twice, mode=pad_mode)
        if self.groups > 1:
            out = self.matmul(x, self.weight, self.bias)
        else:
            patches, out_size = _patches(x, self.weight.shape[2:], self.stride, self.dilation)
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

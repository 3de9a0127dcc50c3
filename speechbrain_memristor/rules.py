"""Conversion rules: per module type, how to find its weight matrices and how to map them.

`convert` walks a model and asks `RULES` (first match wins) about every module. A rule names
the crossbar matrices a module holds (qualified-name suffix and shape [out, in]) and maps the
selected ones, either by replacing the module in its parent (Linear, convolutions) or in place
(attention modules, whose class is swapped; see `layers.attention`). Supporting a new module
type is one new `ConversionRule` in `RULES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.layers.attention import map_in_projection, map_multihead_attention
from speechbrain_memristor.layers.conv import MemristorConv1d, MemristorConv2d
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.layers.recurrent import (
    MemristorGRU,
    MemristorLSTM,
    recurrent_matrix_names,
)


@dataclass(frozen=True)
class MatrixSite:
    """A weight matrix inside a module: name suffix ('' for the module itself), crossbar shape
    [out, in] (grouped convolutions: [out, in per group], ``groups`` of them), and the extra
    containing modules its patterns may name."""

    suffix: str
    shape: tuple[int, int]
    role: str  # which of the module's matrices ("weight", "in_proj", "out_proj")
    kind: str  # the type shown in the conversion log
    extra_scopes: tuple[tuple[str, torch.nn.Module], ...] = ()
    groups: int = 1


class ConversionRule:
    """How one kind of module is found and mapped (see the module doc)."""

    replaces_module = False  # True: the mapped module replaces the original in its parent
    descends = False  # True: the walk also visits the module's children

    def matches(self, module: torch.nn.Module) -> bool:
        raise NotImplementedError

    def sites(self, module: torch.nn.Module, name: str) -> list[MatrixSite]:
        """The mappable matrices of ``module`` (named ``name``)."""
        raise NotImplementedError

    def weight(self, module: torch.nn.Module, role: str) -> Tensor:
        """The Parameter holding the matrix ``role`` of ``module``."""
        del role
        return module.weight

    def map(
        self,
        module: torch.nn.Module,
        names: dict[str, str],
        hardware: dict[str, HardwareConfig],
        execution: str,
    ) -> torch.nn.Module | None:
        """Map the selected matrices (``names``: role -> qualified name) of ``module``, each
        with its own settings (``hardware``: role -> config, the same roles as ``names``);
        returns the replacement module when ``replaces_module``, else None."""
        raise NotImplementedError


class LinearRule(ConversionRule):
    replaces_module = True

    def matches(self, module: torch.nn.Module) -> bool:
        return isinstance(module, torch.nn.Linear)

    def sites(self, module: torch.nn.Module, name: str) -> list[MatrixSite]:
        return [MatrixSite("", tuple(module.weight.shape), "weight", "Linear")]

    def map(self, module, names, hardware, execution):
        return MemristorLinear.from_linear(
            module, hardware["weight"], execution, name=names["weight"]
        )


class ConvolutionRule(ConversionRule):
    """Conv1d / Conv2d: the crossbar matrix is [out_channels, in_channels * taps]; grouped
    ones hold one [out_channels / groups, in_channels / groups * taps] matrix per group,
    mapped group-wise (`crossbar.grouped`)."""

    replaces_module = True

    def __init__(self, torch_class: type, hardware_class: type):
        self.torch_class = torch_class
        self.hardware_class = hardware_class

    def matches(self, module: torch.nn.Module) -> bool:
        return isinstance(module, self.torch_class)

    def sites(self, module: torch.nn.Module, name: str) -> list[MatrixSite]:
        shape = (module.out_channels, module.weight[0].numel())
        kind = self.torch_class.__name__
        return [MatrixSite("", shape, "weight", kind, groups=module.groups)]

    def map(self, module, names, hardware, execution):
        return self.hardware_class.from_conv(
            module, hardware["weight"], execution, name=names["weight"]
        )


class MultiheadAttentionRule(ConversionRule):
    """`torch.nn.MultiheadAttention`: the fused input projection (when Q, K, V share one
    weight) and the output projection, mapped in place."""

    def matches(self, module: torch.nn.Module) -> bool:
        return isinstance(module, torch.nn.MultiheadAttention)

    def sites(self, module: torch.nn.Module, name: str) -> list[MatrixSite]:
        out_proj = module.out_proj
        out_name = f"{name}.out_proj" if name else "out_proj"
        sites = []
        if module._qkv_same_embed_dim:  # else separate Q, K, V weights: stay digital
            sites.append(
                MatrixSite(
                    "in_proj_weight",
                    (3 * module.embed_dim, module.embed_dim),
                    "in_proj",
                    "mha_in_proj",
                )
            )
        sites.append(
            MatrixSite(
                "out_proj",
                tuple(out_proj.weight.shape),
                "out_proj",
                "mha_out_proj",
                ((out_name, out_proj),),
            )
        )
        return sites

    def weight(self, module: torch.nn.Module, role: str) -> Tensor:
        return module.in_proj_weight if role == "in_proj" else module.out_proj.weight

    def map(self, module, names, hardware, execution):
        map_multihead_attention(
            module,
            hardware.get("in_proj", hardware.get("out_proj")),
            execution,
            in_proj_name=names.get("in_proj"),
            out_proj_name=names.get("out_proj"),
            out_proj_hardware=hardware.get("out_proj"),
        )


class InProjectionRule(ConversionRule):
    """A raw 2-D ``in_proj_weight`` Parameter applied with F.linear (SpeechBrain's RelPosMHAXL,
    RoPEMHA), mapped in place; the module's children are visited too."""

    descends = True

    def matches(self, module: torch.nn.Module) -> bool:
        weight = module._parameters.get("in_proj_weight")
        return isinstance(weight, torch.nn.Parameter) and weight.dim() == 2

    def sites(self, module: torch.nn.Module, name: str) -> list[MatrixSite]:
        shape = tuple(module.in_proj_weight.shape)
        return [MatrixSite("in_proj_weight", shape, "in_proj", "in_proj")]

    def weight(self, module: torch.nn.Module, role: str) -> Tensor:
        return module.in_proj_weight

    def map(self, module, names, hardware, execution):
        map_in_projection(module, hardware["in_proj"], execution, names["in_proj"])


class RecurrentRule(ConversionRule):
    """`torch.nn.LSTM` / `torch.nn.GRU` (``proj_size`` 0): every layer and direction's
    ``weight_ih_l{k}[_reverse]`` and ``weight_hh_l{k}[_reverse]``, one crossbar each
    (`layers.recurrent`); the module is replaced by one sharing its Parameters."""

    replaces_module = True

    def __init__(self, torch_class: type, hardware_class: type):
        self.torch_class = torch_class
        self.hardware_class = hardware_class

    def matches(self, module: torch.nn.Module) -> bool:
        return type(module) is self.torch_class and not module.proj_size

    def sites(self, module: torch.nn.Module, name: str) -> list[MatrixSite]:
        kind = self.torch_class.__name__
        return [
            MatrixSite(role, tuple(getattr(module, role).shape), role, f"{kind}_{role[7:9]}")
            for role in recurrent_matrix_names(module)
        ]

    def weight(self, module: torch.nn.Module, role: str) -> Tensor:
        return getattr(module, role)

    def map(self, module, names, hardware, execution):
        return self.hardware_class.from_rnn(module, hardware, execution, names)


RULES: Sequence[ConversionRule] = (
    MultiheadAttentionRule(),
    LinearRule(),
    ConvolutionRule(torch.nn.Conv1d, MemristorConv1d),
    ConvolutionRule(torch.nn.Conv2d, MemristorConv2d),
    InProjectionRule(),
    RecurrentRule(torch.nn.LSTM, MemristorLSTM),
    RecurrentRule(torch.nn.GRU, MemristorGRU),
)
SUPPORTED = (
    "torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, attention modules with a raw "
    "in_proj_weight (RelPosMHAXL, RoPEMHA), torch.nn.MultiheadAttention, torch.nn.LSTM and "
    "torch.nn.GRU (proj_size 0)"
)


def rule_for(module: torch.nn.Module) -> ConversionRule | None:
    """The first rule of `RULES` that matches ``module`` (None: no mappable matrix)."""
    return next((rule for rule in RULES if rule.matches(module)), None)

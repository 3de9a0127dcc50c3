"""Conversion rules (`speechbrain_memristor.rules`) and selection with ``filter_fn``."""

from __future__ import annotations

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_layers
from speechbrain_memristor.layers.conv import MemristorConv1d
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.rules import (
    ConvolutionRule,
    InProjectionRule,
    LinearRule,
    MultiheadAttentionRule,
    rule_for,
)

HARDWARE = HardwareConfig(weight_bits=3, tile_rows=8, tile_cols=8)


class FusedAttention(torch.nn.Module):
    """An attention-like module applying a raw in_proj_weight with F.linear (like RelPosMHAXL)."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = torch.nn.Parameter(torch.randn(3 * dim, dim))
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return self.out(torch.nn.functional.linear(x, self.in_proj_weight)[..., : x.shape[-1]])


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.ModuleDict(
        {
            "proj": torch.nn.Linear(6, 6),
            "conv": torch.nn.Conv1d(6, 6, 1),
            "att": torch.nn.MultiheadAttention(6, 2),
            "fused": FusedAttention(6),
            "norm": torch.nn.LayerNorm(6),
        }
    )


def test_each_module_type_has_one_rule():
    modules = model()
    assert isinstance(rule_for(modules["proj"]), LinearRule)
    assert isinstance(rule_for(modules["conv"]), ConvolutionRule)
    assert isinstance(rule_for(modules["att"]), MultiheadAttentionRule)
    assert isinstance(rule_for(modules["fused"]), InProjectionRule)
    assert rule_for(modules["norm"]) is None
    sites = rule_for(modules["att"]).sites(modules["att"], "att")
    assert [(site.suffix, site.shape, site.kind) for site in sites] == [
        ("in_proj_weight", (18, 6), "mha_in_proj"),
        ("out_proj", (6, 6), "mha_out_proj"),
    ]


def test_filter_fn_alone_decides_when_no_patterns_are_given():
    modules = model()
    seen = []

    def only_linear_layers(module, name):
        seen.append((type(module).__name__, name))
        return isinstance(module, torch.nn.Linear)

    convert(modules, HARDWARE, filter_fn=only_linear_layers)
    mapped = dict(hardware_layers(modules))
    # fused.out is a Linear inside the fused attention module; att.out_proj is called with the
    # attention module that holds it.
    assert set(mapped) == {"proj", "fused.out"}
    assert isinstance(mapped["proj"], MemristorLinear)
    assert ("MultiheadAttention", "att.out_proj") in seen
    assert ("FusedAttention", "fused.in_proj_weight") in seen
    assert ("Conv1d", "conv") in seen


def test_filter_fn_narrows_the_patterns():
    modules = model()
    convert(modules, HARDWARE, include=["*"], filter_fn=lambda module, name: name != "proj")
    mapped = dict(hardware_layers(modules))
    assert set(mapped) == {"conv", "att", "fused", "fused.out"}
    assert isinstance(mapped["conv"], MemristorConv1d)
    assert isinstance(modules["proj"], torch.nn.Linear) and "proj" not in mapped


def test_filter_fn_must_be_callable():
    with pytest.raises(TypeError, match="filter_fn must be callable"):
        convert(model(), HARDWARE, filter_fn="proj")

"""Default mappings: which weight matrices go onto crossbars when ``include`` is None.

The rule: the weight matrices doing the bulk of the model's work inside its repeated blocks
(attention projections, feed-forward and channel projections, recurrent matrices, the DNN
block) are mapped; the frontend, embeddings, output layers, norms, positional projections and
depthwise convolutions stay digital, as in the paper. The default is chosen by what the model
contains: the paper's Conformer patterns always apply (name patterns, unchanged), and each
architecture in `ARCHITECTURE_MAPPINGS` whose marker class (by class name) occurs in the model
adds its patterns. ``include`` overrides all of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

# The paper's mapping for SpeechBrain Conformer blocks: both feed-forward modules, the fused
# Q/K/V input projection and the output projection of self-attention (RelPosMHAXL/RoPEMHA, or
# nn.MultiheadAttention under `att` for attention_type regularMHA), and the two pointwise
# convolutions of the convolution module. linear_pos, the depthwise convolution, the frontend
# and the output layer stay digital.
PAPER_CONFORMER_MAPPING: tuple[str, ...] = (
    "*.ffn_module1",
    "*.ffn_module2",
    "*.mha_layer.in_proj_weight",
    "*.mha_layer.out_proj",
    "*.mha_layer.att.in_proj_weight",
    "*.mha_layer.att.out_proj",
    "*.convolution_module.bottleneck",
    "*.convolution_module.after_conv",
)


def _attention(name: str) -> tuple[str, ...]:
    """The fused input and the output projection of the attention module ``name``
    (RelPosMHAXL/RoPEMHA directly, speechbrain's MultiheadAttention under ``att``)."""
    return (
        f"*.{name}.in_proj_weight",
        f"*.{name}.out_proj",
        f"*.{name}.att.in_proj_weight",
        f"*.{name}.att.out_proj",
    )


@dataclass(frozen=True)
class ArchitectureMapping:
    """The default patterns of one architecture, used when a marker class is in the model."""

    name: str
    markers: tuple[str, ...]  # class names (type(module).__name__)
    patterns: tuple[str, ...]


ARCHITECTURE_MAPPINGS: tuple[ArchitectureMapping, ...] = (
    ArchitectureMapping(
        "Conformer", ("ConformerEncoderLayer", "ConformerDecoderLayer"), PAPER_CONFORMER_MAPPING
    ),
    ArchitectureMapping(
        "Branchformer",
        ("BranchformerEncoderLayer",),
        (
            *_attention("mha_layer"),
            "*.convolution_branch.pre_channel_proj",
            "*.convolution_branch.post_channel_proj",
            "*.merge_proj",
        ),
    ),
    ArchitectureMapping(
        "Transformer encoder", ("TransformerEncoderLayer",), (*_attention("self_att"), "*.pos_ffn")
    ),
    ArchitectureMapping(
        "Transformer decoder",
        ("TransformerDecoderLayer",),
        (*_attention("self_attn"), *_attention("multihead_attn"), "*.pos_ffn"),
    ),
    ArchitectureMapping(
        "recurrent (CRDNN)",
        ("LSTM", "GRU", "LiGRU"),
        ("type:LSTM", "type:GRU", "type:LiGRU", "type:DNN_Block"),
    ),
)


def default_mapping(modules: Iterable[torch.nn.Module]) -> tuple[str, ...]:
    """The default include patterns for a model made of ``modules`` (module doc)."""
    present = {type(module).__name__ for module in modules}
    patterns = list(PAPER_CONFORMER_MAPPING)
    for architecture in ARCHITECTURE_MAPPINGS:
        if present.intersection(architecture.markers):
            patterns += [p for p in architecture.patterns if p not in patterns]
    return tuple(patterns)


def detected_architectures(modules: Iterable[torch.nn.Module]) -> list[str]:
    """Names of the `ARCHITECTURE_MAPPINGS` whose markers occur among ``modules``."""
    present = {type(module).__name__ for module in modules}
    return [a.name for a in ARCHITECTURE_MAPPINGS if present.intersection(a.markers)]

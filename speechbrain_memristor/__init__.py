"""Simulate SpeechBrain models on memristor (ReRAM) crossbars with the Synaptogen device model.

Typical use::

    from speechbrain_memristor import HardwareConfig, convert, set_execution
    convert(model, HardwareConfig.preset("paper"), execution="fake_quant")  # QAT
    ...train...
    set_execution(model, "analog")                                          # simulated chips

SpeechBrain recipes use `MemristorBrain` and a `MemristorHook` in hparams instead (imported
lazily, so that the core does not import SpeechBrain).
"""

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    PAPER_CONFORMER_MAPPING,
    convert,
    hardware_layers,
    load_quantizer_state_dict,
    program,
    quantizer_state_dict,
    set_chip_seed,
    set_execution,
)
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.layers.attention import map_in_projection, map_multihead_attention
from speechbrain_memristor.layers.conv import MemristorConv1d, MemristorConv2d
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import EXECUTION_MODES, Execution

_SPEECHBRAIN_GLUE = ("MemristorBrain", "MemristorHook")

__all__ = [
    "EXECUTION_MODES",
    "PAPER_CONFORMER_MAPPING",
    "Crossbar",
    "Execution",
    "HardwareConfig",
    "HardwareMatmul",
    "MemristorConv1d",
    "MemristorConv2d",
    "MemristorLinear",
    "convert",
    "hardware_layers",
    "load_quantizer_state_dict",
    "map_in_projection",
    "map_multihead_attention",
    "program",
    "quantizer_state_dict",
    "set_chip_seed",
    "set_execution",
    *_SPEECHBRAIN_GLUE,
]


def __getattr__(name: str):
    """`MemristorBrain` and `MemristorHook` come from `speechbrain_memristor.brain` on first use."""
    if name in _SPEECHBRAIN_GLUE:
        from speechbrain_memristor import brain

        return getattr(brain, name)
    raise AttributeError(f"module 'speechbrain_memristor' has no attribute {name!r}")

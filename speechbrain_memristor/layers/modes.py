"""Execution modes of hardware-aware layers (CONTRACT: the string values).

- ``digital``: plain float layer (identical to torch).
- ``fake_quant``: quantization-aware training: fake-quantized weights and inputs,
  straight-through gradients.
- ``analog``: weights programmed onto simulated cells, every forward read through DAC,
  crossbar, read noise and ADC.

`Execution` is a ``str`` Enum: members compare equal to their strings, so ``"analog"`` and
``Execution.ANALOG`` are interchangeable everywhere. Public entry points check a mode once
with `check_execution`.
"""

from __future__ import annotations

from enum import Enum


class Execution(str, Enum):
    """How a hardware-aware layer computes its product."""

    DIGITAL = "digital"
    FAKE_QUANT = "fake_quant"
    ANALOG = "analog"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


EXECUTION_MODES: tuple[str, ...] = tuple(mode.value for mode in Execution)


def check_execution(execution: object, field: str = "execution") -> Execution:
    """``execution`` as an `Execution`, else a ValueError naming ``field`` and the choices."""
    try:
        return Execution(execution)
    except ValueError:
        raise ValueError(
            f"{field}={execution!r} is invalid; choose one of {', '.join(EXECUTION_MODES)}."
        ) from None

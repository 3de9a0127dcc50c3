"""Crossbar: tile layout, DAC/ADC periphery, programming, the closed-form read, the chip."""

from speechbrain_memristor.crossbar.chip import ChipInventory, Crossbar

__all__ = ["ChipInventory", "Crossbar"]

"""Current-to-value scale of the ADC: how many value units one ampere of column current is.

``HardwareConfig.current_scale=None`` calibrates it so that one bit-1 cell pair at the full
input voltage gives the value 1: 1 / (input_voltage * G), with G the cell model's
`bit_conductance`. Synaptogen cells: G = 1/R_LRS - 1/R_HRS with the median resistances (at the
model's reference voltage U0) of `cell_models.CALIBRATION_CELLS` fresh cells drawn with a fixed
seed (about 8.0e3 per ampere for the default parameters; the authors use 8020). Ideal cells:
G = G_LLRS.
"""

from __future__ import annotations

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.physics.cell_models import cell_model


def calibrated_current_scale(hardware: HardwareConfig) -> float:
    """``hardware.current_scale`` or, if None, the calibrated value per ampere (module doc)."""
    if hardware.current_scale is not None:
        return hardware.current_scale
    return 1.0 / (hardware.input_voltage * cell_model(hardware).bit_conductance())

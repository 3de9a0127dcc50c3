"""Device physics: Synaptogen parameters and cells, cell models, read noise, calibration.

Knows nothing of torch modules or crossbars; imports only the configuration below it.
"""

from speechbrain_memristor.physics.cells import CellArray
from speechbrain_memristor.physics.noise import read_noise_variance
from speechbrain_memristor.physics.params import DeviceParams, load_device_params

__all__ = ["CellArray", "DeviceParams", "load_device_params", "read_noise_variance"]

"""Synaptogen ReRAM device model in torch: parameters, cells, read noise."""

from speechbrain_memristor.device.cells import CellArray
from speechbrain_memristor.device.noise import read_noise_variance
from speechbrain_memristor.device.params import DeviceParams

__all__ = ["CellArray", "DeviceParams", "read_noise_variance"]

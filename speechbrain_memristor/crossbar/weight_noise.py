"""Calibrated weight noise: what a programmed chip does to each integer weight, measured once.

Used by noise-injection training (`layers.hardware_aware`). The calibration programs a real
chip (`Crossbar.program`, the configured cell model) holding every integer level
-Q_w..Q_w ``CALIBRATION_WEIGHTS_PER_LEVEL`` times and reads every weight alone: input row i
at the full-scale DAC code, all other rows 0, with an ideal ADC (no ADC rounding or
clipping, so the read isolates the cells; the ADC is emulated by ``adc_in_training`` or the
chip in the loop, not here). A read returns the weight's effective integer value
w_eff = sum over bit planes 2^p (I+ - I-) / I_unit, in units of w_int. Per level k:

- ``mean[k]``: mean of w_eff over the programmed cells, read without read noise (the
  systematic gain or offset of the cell pairs, e.g. a 0 bit that still conducts);
- ``programming_std[k]``: its spread over cells (device-to-device and cycle-to-cycle
  variability of the programmed bit-1 / bit-0 cell pairs of every plane);
- ``read_std[k]``: standard deviation of (noisy read - noiseless read) over
  ``CALIBRATION_READS`` reads of the same chip at full-scale input: the read noise referred
  to the weight at the largest input (an upper bound of its share at smaller inputs; with
  "physical" noise it includes the Johnson noise of the weight's column at 0 V, here of a
  full tile column (CALIBRATION_IN_FEATURES rows) holding every level equally often).

`WeightNoise.sample` draws w_eff = mean[k] + sqrt(programming_std[k]^2 + read_std[k]^2) * z,
z ~ N(0, 1) independently per weight: a Gaussian with the measured first two moments per
level (no free parameter). The calibration is a pure function of the hardware config (and
the fixed calibration seed); it costs one small chip (~0.1 s) and is cached per config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.chip import Crossbar
from speechbrain_memristor.util.seeding import stable_seed

CALIBRATION_WEIGHTS_PER_LEVEL = 4096
CALIBRATION_IN_FEATURES = 128  # one tile of rows in the paper's layout
CALIBRATION_READS = 4
CALIBRATION_SEED = "weight noise calibration"  # a text: no evaluation chip has this seed


@dataclass(frozen=True)
class WeightNoise:
    """Measured effective-weight statistics per integer level (module doc).

    ``mean``, ``programming_std``, ``read_std``: float32 [2 Q_w + 1], index k + Q_w for level k.
    """

    qmax: int
    mean: Tensor
    programming_std: Tensor
    read_std: Tensor

    @property
    def std(self) -> Tensor:
        """Total per-weight standard deviation [2 Q_w + 1] (programming and read noise)."""
        return (self.programming_std.square() + self.read_std.square()).sqrt()

    def sample(self, weight_int: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Effective integer weights, same shape as ``weight_int`` (integers in [-Q_w, Q_w],
        float): one independent draw per weight."""
        index = (weight_int.detach() + self.qmax).long()
        mean = self.mean.to(weight_int.device)[index]
        std = self.std.to(weight_int.device)[index]
        noise = torch.randn(
            weight_int.shape, generator=generator, device=weight_int.device, dtype=mean.dtype
        )
        return (mean + std * noise).to(weight_int.dtype)


def measure_effective_weights(
    weight_int: Tensor, hardware: HardwareConfig, chip_seed: int, reads: int
) -> tuple[Tensor, Tensor]:
    """Program ``weight_int`` [out, in] on a chip of ``chip_seed`` (ideal ADC) and read each
    weight alone at full-scale input: (noiseless w_eff [out, in], noisy reads [reads, out, in]).
    """
    ideal_adc = hardware.replace(adc_precision_bits=None, adc_range_bits=None)
    weight_int = weight_int.float()
    rows = torch.eye(weight_int.shape[1]) * ideal_adc.dac_qmax  # full-scale code, scale 1
    clean_chip = Crossbar.program(weight_int, 1.0, ideal_adc.replace(read_noise="off"), chip_seed)
    clean = clean_chip.read(rows).t()
    if ideal_adc.read_noise == "off":
        return clean, clean.expand(reads, -1, -1)
    noisy_chip = Crossbar.program(weight_int, 1.0, ideal_adc, chip_seed)
    return clean, torch.stack([noisy_chip.read(rows).t() for _ in range(reads)])


@functools.lru_cache(maxsize=16)
def calibrate_weight_noise(hardware: HardwareConfig) -> WeightNoise:
    """The `WeightNoise` of ``hardware`` (module doc), measured on one calibration chip."""
    qmax = hardware.weight_qmax
    levels = torch.arange(-qmax, qmax + 1, dtype=torch.float32)
    per_level = CALIBRATION_WEIGHTS_PER_LEVEL
    columns = per_level * levels.numel() // CALIBRATION_IN_FEATURES
    seed = stable_seed(CALIBRATION_SEED, hardware.seed)
    # Levels in random places: every column mixes all levels, as in a trained layer (the
    # physical read noise of one weight includes its column's cells at 0 V).
    order = torch.randperm(
        levels.numel() * per_level, generator=torch.Generator().manual_seed(seed)
    )
    weight_int = levels.repeat_interleave(per_level)[order].reshape(
        columns, CALIBRATION_IN_FEATURES
    )
    clean, noisy = measure_effective_weights(weight_int, hardware, seed, CALIBRATION_READS)
    read_error = noisy - clean
    mean, programming_std, read_std = [], [], []
    for level in levels:
        cells = weight_int == level
        mean.append(clean[cells].mean())
        programming_std.append(clean[cells].std())
        read_std.append(read_error[:, cells].std())
    return WeightNoise(qmax, torch.stack(mean), torch.stack(programming_std), torch.stack(read_std))

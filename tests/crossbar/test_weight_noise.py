"""Calibrated weight noise against the device model: the injected per-level statistics match
an independently programmed and read chip within their sampling errors."""

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.weight_noise import (
    CALIBRATION_WEIGHTS_PER_LEVEL,
    calibrate_weight_noise,
    measure_effective_weights,
)


def moments(values: torch.Tensor) -> tuple[float, float, float]:
    """(mean, std, kurtosis) of a 1-D sample, in float64."""
    values = values.double()
    centered = values - values.mean()
    variance = centered.square().mean()
    return values.mean().item(), variance.sqrt().item(), (centered**4).mean().item() / variance**2


@pytest.mark.parametrize("preset", ["paper", "default"])
def test_injected_noise_matches_an_independent_chip(preset):
    hardware = HardwareConfig.preset(preset)
    noise = calibrate_weight_noise(hardware)
    qmax = hardware.weight_qmax
    # An independent chip (other seed, other outputs; full 128-row tile columns, since the
    # physical read noise of a weight includes its column's other cells) of random weights.
    generator = torch.Generator().manual_seed(3)
    weight_int = torch.randint(-qmax, qmax + 1, (250, 128), generator=generator).float()
    reads = 3
    clean, noisy = measure_effective_weights(weight_int, hardware, chip_seed=12345, reads=reads)
    injected = torch.stack(
        [noise.sample(weight_int, torch.Generator().manual_seed(seed)) for seed in range(reads)]
    )
    for level in range(-qmax, qmax + 1):
        cells = weight_int == level
        n = int(cells.sum())  # ~ 32000 / (2 qmax + 1) per level on the check chip
        n_cal = CALIBRATION_WEIGHTS_PER_LEVEL
        index = level + qmax
        # Programming spread and gain: the check chip's noiseless reads.
        mean, std, kurtosis = moments(clean[cells])
        # Means agree within 5 standard errors of the difference of two independent means.
        assert abs(mean - noise.mean[index].item()) <= 5 * std * (1 / n + 1 / n_cal) ** 0.5
        # A sample std has relative standard error sqrt((kurtosis - 1) / (4 n)); 5 of them
        # (kurtosis measured, since cell spreads need not be Gaussian).
        bound = 5 * ((kurtosis - 1) / 4 * (1 / n + 1 / n_cal)) ** 0.5
        assert abs(noise.programming_std[index].item() / std - 1) <= bound, level
        # Read noise of the same chip: spread of noisy - noiseless reads.
        if hardware.read_noise != "off":
            _, read_std, read_kurtosis = moments((noisy - clean)[:, cells].flatten())
            bound = 5 * ((read_kurtosis - 1) / 4 * (1 / (reads * n) + 1 / (4 * n_cal))) ** 0.5
            assert abs(noise.read_std[index].item() / read_std - 1) <= bound, level
        # What training injects: the device's total per-weight moments (programming + read).
        device_mean, device_std, device_kurtosis = moments(noisy[:, cells].flatten())
        sample_mean, sample_std, _ = moments(injected[:, cells].flatten())
        # reads draws per weight share one programmed cell: n effective samples (conservative).
        assert abs(sample_mean - device_mean) <= 5 * device_std * (2 / n) ** 0.5, level
        bound = 5 * ((device_kurtosis - 1) / 4 * (2 / n)) ** 0.5 + 5 * (1 / (2 * n_cal)) ** 0.5
        assert abs(sample_std / device_std - 1) <= bound, level
    # A calibrated model, not one free Gaussian: spread and gain depend on the level.
    assert noise.programming_std.min() > 0
    assert noise.std.max() > 1.1 * noise.std.min()


def test_calibration_is_cached_per_config_and_sampling_is_seeded():
    hardware = HardwareConfig.preset("paper")
    assert calibrate_weight_noise(hardware) is calibrate_weight_noise(hardware.replace())
    weight_int = torch.tensor([[-3.0, 0.0, 3.0]])
    noise = calibrate_weight_noise(hardware)
    first = noise.sample(weight_int, torch.Generator().manual_seed(1))
    assert torch.equal(first, noise.sample(weight_int, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, noise.sample(weight_int, torch.Generator().manual_seed(2)))

"""The read's precision and devices: float32 under fp16/bf16 autocast (programming included),
and on CUDA against the CPU read of the same states (CUDA tests skip only without a GPU)."""

import copy

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.layers.linear import MemristorLinear

HARDWARE = HardwareConfig(weight_bits=4, tile_rows=32, tile_cols=32, seed=5)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def weights_and_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight_int = torch.randint(-7, 8, (48, 80), generator=generator)
    codes = torch.randint(-100, 101, (37, 80), generator=generator).float()
    return weight_int, codes


@pytest.mark.parametrize("read_noise", ["off", "physical"])
def test_programming_and_read_stay_float32_under_bfloat16_autocast(read_noise):
    hardware = HARDWARE.replace(read_noise=read_noise)
    weight_int, codes = weights_and_inputs()
    plain = Crossbar.program(weight_int, 0.1, hardware, 3).read(codes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chip = Crossbar.program(weight_int, 0.1, hardware, 3)  # raised before: bf16 matmuls
        autocast = chip.read(codes)
    assert autocast.dtype == torch.float32
    assert torch.equal(autocast, plain)  # same chip, same noise samples, float32 arithmetic


def test_analog_layer_under_bfloat16_autocast_reads_like_float32():
    torch.manual_seed(0)
    layer = MemristorLinear(80, 48, hardware=HARDWARE, execution="analog", name="layer")
    layer.eval()
    twin = copy.deepcopy(layer)  # same weights and seed, not programmed yet
    x = torch.randn(6, 80)
    with torch.no_grad():
        plain = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = twin(x)  # programs its chip lazily, inside autocast
    assert torch.equal(autocast, plain)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_read_equals_cpu_read_of_the_same_states_noise_off(dtype):
    """Ideal ADC (no rounding): the CUDA read of the same states equals the CPU read up to
    float32 rounding of the matrix products (relative 1e-5), also under CUDA autocast."""
    hardware = HARDWARE.replace(read_noise="off", adc_precision_bits=None, adc_range_bits=None)
    weight_int, codes = weights_and_inputs()
    chip = Crossbar.program(weight_int, 0.1, hardware, 3)
    on_cpu = chip.read(codes)
    chip.to("cuda")
    with torch.autocast("cuda", dtype=dtype):
        on_cuda = chip.read(codes.cuda())
    assert on_cuda.dtype == torch.float32 and on_cuda.is_cuda
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-5, atol=1e-4)


@CUDA
def test_cuda_read_with_noise_is_seeded_per_chip():
    """With read noise, a CUDA chip's reads repeat for the same chip seed (its own generator)."""
    weight_int, codes = weights_and_inputs()
    reads = []
    for _ in range(2):
        chip = Crossbar.program(weight_int, 0.1, HARDWARE, 3).to("cuda")
        reads.append(chip.read(codes.cuda()))
    assert torch.equal(reads[0], reads[1])
    assert not torch.equal(reads[0], chip.read(codes.cuda()))  # a second read: fresh noise

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


def test_programming_device_cpu_is_the_default_chip():
    weight_int, _ = weights_and_inputs()
    default = Crossbar.program(weight_int, 0.1, HARDWARE, 3).states()
    explicit = Crossbar.program(weight_int, 0.1, HARDWARE, 3, device="cpu").states()
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))


def bit_states(chip, weight_int):
    """States of the cells holding 1 and of those holding 0 (positive and negative side)."""
    r_pos, r_neg = chip.states()
    magnitude, planes = weight_int.t().abs(), chip.planes
    bits = torch.stack([(magnitude >> plane) & 1 for plane in range(planes)]).bool()
    ones = torch.cat([r_pos[bits & (weight_int.t() > 0)], r_neg[bits & (weight_int.t() < 0)]])
    zeros = torch.cat([r_pos[~bits | (weight_int.t() <= 0)], r_neg[~bits | (weight_int.t() >= 0)]])
    return ones, zeros


@CUDA
@pytest.mark.parametrize("write_verify", [False, True])
def test_cuda_programming_is_seeded_and_matches_cpu_statistics(write_verify):
    """Programming on CUDA: the same chip for the same seed; its LRS (1) and HRS (0) states
    follow the CPU programming's distribution: means within 5 standard errors (about 1e4
    cells each, a chance failure ~1e-6), write-verify statistics complete."""
    hardware = HARDWARE.replace(write_verify=write_verify, initial_cycles=1)
    generator = torch.Generator().manual_seed(1)
    weight_int = torch.randint(-7, 8, (96, 128), generator=generator)
    on_cuda = Crossbar.program(weight_int, 0.1, hardware, 3, device="cuda")
    again = Crossbar.program(weight_int, 0.1, hardware, 3, device="cuda")
    assert all(torch.equal(a, b) for a, b in zip(on_cuda.states(), again.states(), strict=True))
    on_cpu = Crossbar.program(weight_int, 0.1, hardware, 3)
    for cuda_states, cpu_states in zip(
        bit_states(on_cuda, weight_int), bit_states(on_cpu, weight_int), strict=True
    ):
        error = cuda_states.var() / cuda_states.numel() + cpu_states.var() / cpu_states.numel()
        assert abs(cuda_states.mean() - cpu_states.mean()) < 5 * error.sqrt()
    stats = on_cuda.programming
    assert stats.cells == on_cuda.inventory().cells
    if write_verify:
        assert sum(stats.attempts) + stats.unverified == stats.cells


def test_programming_device_weights_on_cpu_weights_is_the_default_chip():
    # "weights" programs on the weights' device: for CPU weights that is the CPU, the same
    # device model run as the default "cpu", so the chip must be identical bit for bit.
    torch.manual_seed(0)
    layer = MemristorLinear(80, 48, hardware=HARDWARE, execution="analog", name="layer")
    on_weights = copy.deepcopy(layer)
    on_weights.matmul.hardware = HARDWARE.replace(programming_device="weights")
    default = layer.matmul.build_chip(layer.weight).states()
    chosen = on_weights.matmul.build_chip(on_weights.weight).states()
    assert all(torch.equal(a, b) for a, b in zip(default, chosen, strict=True))


@CUDA
def test_programming_device_weights_programs_a_cuda_layer_on_the_gpu():
    """A layer on CUDA with programming_device="weights" gets a CUDA-programmed chip: another
    chip than the CPU default (CUDA's random numbers), on the GPU, and the same for the same seed."""
    torch.manual_seed(0)
    layer = MemristorLinear(80, 48, hardware=HARDWARE, execution="analog", name="layer").cuda()
    default = layer.matmul.build_chip(layer.weight).states()
    layer.matmul.hardware = HARDWARE.replace(programming_device="weights")
    first = layer.matmul.build_chip(layer.weight).states()
    again = layer.matmul.build_chip(layer.weight).states()
    assert first[0].is_cuda and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], default[0])

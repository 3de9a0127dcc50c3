"""The authors' QAT options (REFERENCE.md section 1): quantized layer outputs
(``HardwareConfig.output_bits``) and fake-quantized attention products (``attention_bits``).

Oracles: today's fake_quant formula F.linear(x_q, w_q) + b for the options off; the grid
2^(b-1) - 1 steps per range for the quantized values; torch's own RelPosMHAXL with the
quantized projection for the attention at high bits."""

import copy
import os
import pathlib
import socket

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.attention import RelPosMHAXL
from torch.overrides import TorchFunctionMode

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    convert,
    hardware_matmuls,
    load_quantizer_state_dict,
    quantizer_state_dict,
    set_execution,
)
from speechbrain_memristor.layers.attention import map_in_projection, map_multihead_attention
from speechbrain_memristor.layers.conv import MemristorConv1d
from speechbrain_memristor.layers.linear import MemristorLinear

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
# Ideal cells, no read noise, ideal ADC: the analog read is fake_quant up to float rounding.
IDEAL = HardwareConfig.preset("ideal", weight_bits=4)


def linear_layer(hardware, execution="fake_quant", seed=0):
    torch.manual_seed(seed)
    return MemristorLinear.from_linear(torch.nn.Linear(24, 16), hardware, execution, "fc")


def on_grid(values, qmax):
    """True when ``values`` are integer multiples of max|values| / qmax (to float rounding)."""
    steps = values / (values.abs().amax() / qmax)
    return bool(torch.allclose(steps, steps.round(), atol=1e-3))


class ProductRecorder(TorchFunctionMode):
    """Records the operands of every torch.matmul of two 4-D tensors (outside the hardware
    router's mode, so it sees the operands the router passes on)."""

    def __init__(self):
        super().__init__()
        self.operands = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.matmul and all(a.dim() == 4 for a in args[:2]):
            self.operands += [args[0].detach(), args[1].detach()]
        return func(*args, **kwargs)


def test_options_are_off_by_default_and_off_is_todays_fake_quant():
    hardware = HardwareConfig()
    assert (hardware.output_bits, hardware.attention_bits) == (None, None)
    layer = linear_layer(hardware)
    assert layer.matmul.output_quantizer is None
    x = torch.randn(5, 24)
    y = layer(x)
    matmul = layer.matmul
    # today's fake_quant, bit for bit (same ops, same order)
    expected = F.linear(matmul.input_quantizer(x), matmul.weight_quantizer(layer.weight))
    assert torch.equal(y, expected + layer.bias)
    assert set(matmul.quantizer_state()) == {"min", "max"}  # checkpoints keep today's keys


def test_attention_option_off_is_todays_attention():
    torch.manual_seed(5)
    attention = RelPosMHAXL(embed_dim=16, num_heads=4).eval()
    reference = copy.deepcopy(attention)
    map_in_projection(attention, HardwareConfig(), "fake_quant", name="att.in_proj_weight")
    x, pos = torch.randn(2, 9, 16), torch.randn(1, 17, 16)
    recorder = ProductRecorder()
    with torch.no_grad(), recorder:
        out, _ = attention(x, x, x, pos)
    matmul = attention.in_proj_matmul
    with torch.no_grad():
        reference.in_proj_weight.copy_(matmul.weight_quantizer(attention.in_proj_weight))
        x_q = matmul.input_quantizer(x)
        expected, _ = reference(x_q, x_q, x_q, pos)
    assert torch.equal(out, expected)
    assert len(recorder.operands) == 6  # QK^T, QP^T, AV: untouched when the option is off


@pytest.mark.parametrize("bits", [8, 3])
def test_output_quantization_levels_grid_and_straight_through_gradient(bits):
    hardware = HardwareConfig(output_bits=bits)
    quantized, plain = linear_layer(hardware), linear_layer(HardwareConfig())
    x = torch.randn(400, 24) * 3  # 6400 outputs: far more values than levels without the option
    x_a, x_b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_plain = quantized(x_a), plain(x_b)
    qmax = 2 ** (bits - 1) - 1
    assert y.unique().numel() <= 2**bits and y.unique().numel() > qmax  # most levels in use
    assert y_plain.unique().numel() > 1000  # what the option removes
    assert on_grid(y, qmax)
    scale = quantized.matmul.output_quantizer.scale()
    assert torch.allclose(y_plain.detach(), y.detach(), atol=scale.item() / 2 + 1e-6)
    # Straight-through: in training the range holds every output, so nothing clips and the
    # gradients equal those of the unquantized output.
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_plain * weights).sum().backward()
    assert torch.equal(x_a.grad, x_b.grad)
    assert torch.equal(quantized.weight.grad, plain.weight.grad)


def test_output_quantization_after_the_analog_read_uses_the_trained_range():
    layer = linear_layer(IDEAL.replace(output_bits=8))
    x = torch.randn(300, 24)
    layer.train()
    layer(x)  # calibrates input and output ranges
    state = layer.matmul.quantizer_state()
    layer.eval()
    set_execution(layer, "analog")
    with torch.no_grad():
        analog = layer(x * 1.5)  # beyond the trained range: clipped at it
        fake = linear_layer(IDEAL.replace(output_bits=8), "fake_quant")
        fake.matmul.load_quantizer_state(state)
        fake.eval()
        expected = fake(x * 1.5)
    assert analog.unique().numel() <= 2**8
    scale = layer.matmul.output_quantizer.scale()
    steps = analog / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127 + 1e-3
    assert analog.abs().max() <= float(state["output_max"].abs().max(state["output_min"].abs()))
    # ideal chip: the read equals fake_quant up to float rounding, and at most one output step
    # apart where the rounding lands on the other side of a level boundary
    assert ((analog - expected).abs() <= scale * 1.001 + 1e-6).all()
    assert (analog == expected).float().mean() > 0.99
    assert layer.matmul.quantizer_state()["output_max"] == state["output_max"]  # eval: frozen


@pytest.mark.parametrize("groups", [1, 4])  # dense (HardwareMatmul) and group-wise
def test_convolution_outputs_are_quantized_in_fake_quant_and_analog(groups):
    torch.manual_seed(2)
    conv = torch.nn.Conv1d(8, 8, 3, padding=1, groups=groups)
    layer = MemristorConv1d.from_conv1d(conv, IDEAL.replace(output_bits=4), "fake_quant", "conv")
    x = torch.randn(4, 8, 50)
    layer.train()
    fake = layer(x)
    layer.eval()
    set_execution(layer, "analog")
    with torch.no_grad():
        analog = layer(x)
    scale = layer.matmul.output_quantizer.scale()
    for y in (fake.detach(), analog):
        steps = y / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 7 + 1e-3
        assert y.unique().numel() <= 15


def relpos_pair(bits, training=False):
    torch.manual_seed(7)
    plain = RelPosMHAXL(embed_dim=16, num_heads=4).train(training)
    quantized = copy.deepcopy(plain)
    map_in_projection(plain, HardwareConfig(dac_bits=16), "fake_quant", name="att")
    hardware = HardwareConfig(dac_bits=16, attention_bits=bits)
    map_in_projection(quantized, hardware, "fake_quant", name="att")
    return plain, quantized


def test_attention_products_at_16_bits_match_unquantized_attention():
    plain, quantized = relpos_pair(16)
    x, pos = torch.randn(2, 9, 16), torch.randn(1, 17, 16)
    with torch.no_grad():
        expected, _ = plain(x, x, x, pos)
        out, _ = quantized(x, x, x, pos)
    assert not torch.equal(out, expected)  # the products were quantized ...
    # ... by at most half a 16-bit step (1/65534 of each operand's range) per operand: the
    # measured max difference is 3.6e-5 of the output's max (8 bits: 7.3e-3, 4 bits: 0.18); 1e-4 (plus rtol 1e-4) allows about 3x.
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_attention_products_at_4_bits_lie_on_the_grid_with_straight_through_gradient():
    plain, quantized = relpos_pair(4, training=True)
    x, pos = torch.randn(2, 9, 16), torch.randn(1, 17, 16)
    recorder = ProductRecorder()
    x_q = x.clone().requires_grad_()
    with recorder:
        out, _ = quantized(x_q, x_q, x_q, pos)
    assert len(recorder.operands) == 6  # QK^T, QP^T, AV: both operands of each
    for operand in recorder.operands:
        assert on_grid(operand, 7)
        assert operand.unique().numel() <= 15
    expected, _ = plain(x, x, x, pos)
    assert (out - expected).abs().max() > 1e-2  # 4 bits: clearly quantized
    out.sum().backward()
    assert torch.isfinite(x_q.grad).all() and x_q.grad.abs().sum() > 0
    assert quantized.in_proj_weight.grad.abs().sum() > 0


def test_attention_bits_on_torch_multihead_attention_is_a_clear_error():
    attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    map_multihead_attention(
        attention, HardwareConfig(attention_bits=4), "fake_quant", in_proj_name="mha.in"
    )
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="attention_bits=4"):
        attention(x, x, x)


def ctc_batch():
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 48, 20, generator=generator)
    lengths = torch.tensor([1.0, 0.875, 0.75])
    targets = torch.randint(1, 6, (3, 4), generator=generator)
    return feats, lengths, targets


def ctc_loss(model, feats, lengths, targets):
    cnn, transformer, ctc_lin = model
    log_probs = F.log_softmax(ctc_lin(transformer.encode(cnn(feats), lengths)), dim=-1)
    frames = torch.round(lengths * log_probs.shape[1]).long()
    target_lengths = torch.full((targets.shape[0],), targets.shape[1])
    return F.ctc_loss(log_probs.transpose(0, 1), targets, frames, target_lengths, blank=0)


def test_qat_training_with_both_options_lowers_the_loss():
    torch.manual_seed(0)
    with open(FIXTURES / "conformer_ctc.yaml") as stream:
        model = load_hyperpyyaml(stream)["model"]
    hardware = HardwareConfig(weight_bits=4, output_bits=8, attention_bits=4)
    convert(model, hardware, execution="fake_quant")
    assert all(m.output_quantizer is not None for m in hardware_matmuls(model))
    feats, lengths, targets = ctc_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(8):
        recorder = ProductRecorder()
        with recorder:
            loss = ctc_loss(model, feats, lengths, targets)
        if step == 0:  # 2 blocks x 3 products x 2 operands, each on its 4-bit grid
            assert len(recorder.operands) == 12
            assert all(on_grid(operand, 7) for operand in recorder.operands)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Memorizing one batch (as the plain QAT test in test_convert.py): Adam at 3e-3 lowers the
    # CTC loss well within 8 steps; a broken straight-through gradient would leave it flat.
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    ("field", "value"), [("output_bits", 1), ("output_bits", 17), ("attention_bits", "4")]
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"HardwareConfig.{field}={value!r}"):
        HardwareConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        HardwareConfig.for_recipe("paper", **{field: value})


def calibrated_net(hardware):
    torch.manual_seed(3)
    net = {"net": torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))}
    hook = MemristorHook(hardware, include=["*"])
    hook.convert(net)
    return hook, net


def test_checkpoint_round_trips_the_output_ranges(tmp_path):
    hook, net = calibrated_net(HardwareConfig(output_bits=8))
    set_execution(hook.model, "fake_quant")
    net["net"].train()
    net["net"](torch.randn(10, 4) * 2)
    saved = quantizer_state_dict(hook.model)
    assert {"net.0.output_min", "net.0.output_max", "net.1.output_max"} <= set(saved)
    assert all(torch.isfinite(value) for value in saved.values())
    hook.save(tmp_path / "memristor.ckpt")
    fresh_hook, _ = calibrated_net(HardwareConfig(output_bits=8))
    assert not torch.isfinite(quantizer_state_dict(fresh_hook.model)["net.0.output_max"])
    fresh_hook.load(tmp_path / "memristor.ckpt")
    loaded = quantizer_state_dict(fresh_hook.model)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)


def test_a_save_without_output_ranges_still_loads_the_input_ranges():
    """A quantizer state from before output_bits (input keys only) restores the input range
    of an output_bits model; its output range is left to be observed."""
    old_hook, old_net = calibrated_net(HardwareConfig())
    set_execution(old_hook.model, "fake_quant")
    old_net["net"](torch.randn(10, 4))
    old_state = quantizer_state_dict(old_hook.model)
    hook, _ = calibrated_net(HardwareConfig(output_bits=8))
    missing, unexpected = load_quantizer_state_dict(hook.model, old_state, strict=False)
    assert missing == [
        "net.0.output_max",
        "net.0.output_min",
        "net.1.output_max",
        "net.1.output_min",
    ]
    assert unexpected == []
    state = quantizer_state_dict(hook.model)
    assert all(torch.equal(state[key], old_state[key]) for key in old_state)
    assert not torch.isfinite(state["net.0.output_max"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# rank -> (input min, input max, output min, output max) of layer net.0
RANK_RANGES = ((-1.0, 2.0, -5.0, 3.0), (-3.0, 1.0, -2.0, 7.0))


def merge_worker(rank: int, port: int, folder: str) -> None:
    os.environ.pop("RANK", None)
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        hook, _ = calibrated_net(HardwareConfig(output_bits=8))
        state = quantizer_state_dict(hook.model)
        keys = ("net.0.min", "net.0.max", "net.0.output_min", "net.0.output_max")
        state.update({key: torch.tensor(v) for key, v in zip(keys, RANK_RANGES[rank], strict=True)})
        load_quantizer_state_dict(hook.model, state)
        hook.synchronize_quantizers()
        torch.save(quantizer_state_dict(hook.model), pathlib.Path(folder) / f"{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_merge_takes_the_global_output_range(tmp_path):
    """min-max observers: min of the ranks' minima and max of their maxima, for the output
    range as for the input range (as one observer fed both ranks' outputs)."""
    torch.multiprocessing.spawn(merge_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        merged = torch.load(tmp_path / f"{rank}.pt")
        got = [
            merged[f"net.0.{leaf}"].item() for leaf in ("min", "max", "output_min", "output_max")
        ]
        assert got == [-3.0, 2.0, -5.0, 7.0]

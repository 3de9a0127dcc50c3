"""MemristorLSTM / MemristorGRU: torch's recurrence with every weight matrix on a crossbar.

The oracle is a brute-force loop written here: one sequence at a time, one step at a time,
over its own length only (the reverse direction walks the valid steps backwards), with the
products given by a function. With plain float products it must equal torch's module (which
validates the oracle); with the layer's quantizers it is what fake_quant must compute.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls, set_execution
from speechbrain_memristor.layers.recurrent import MemristorGRU, MemristorLSTM

IDEAL = HardwareConfig.preset("ideal")
LENGTHS = torch.tensor([9, 5, 2])  # a padded batch: sequences of different lengths


def build(kind, seed=0, **kwargs):
    torch.manual_seed(seed)
    settings = {"num_layers": 2, "bidirectional": True, "batch_first": True, **kwargs}
    return getattr(torch.nn, kind)(4, 6, **settings)


def converted(rnn, execution="fake_quant", hardware=IDEAL, include=("*",)):
    holder = torch.nn.Sequential(rnn)
    convert(holder, hardware, execution, include=list(include))
    return holder[0]


def cell(kind, gates_x, gates_h, state):
    """One step of torch's documented LSTM / GRU equations for one sequence."""
    if kind == "LSTM":
        h, c = state
        i, f, g, o = (gates_x + gates_h).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    r_x, z_x, n_x = gates_x.chunk(3)
    r_h, z_h, n_h = gates_h.chunk(3)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return ((1 - z) * n + z * state[0],)


def oracle(rnn, kind, x, lengths, product):
    """Padded outputs [batch, time, directions * hidden] and final h [layers * dirs, batch, H]
    by a per-sequence, per-step loop; ``product(name, vector)`` computes W_name v + b_name."""
    directions = 2 if rnn.bidirectional else 1
    output = torch.zeros(x.shape[0], x.shape[1], directions * rnn.hidden_size)
    finals = torch.zeros(rnn.num_layers * directions, x.shape[0], rnn.hidden_size)
    for b, length in enumerate(lengths.tolist()):
        sequence = x[b, :length]
        for layer in range(rnn.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                zero = torch.zeros(rnn.hidden_size)
                state = (zero, zero) if kind == "LSTM" else (zero,)
                steps = range(length - 1, -1, -1) if direction else range(length)
                out = torch.zeros(length, rnn.hidden_size)
                for t in steps:
                    gates_x = product(f"weight_ih{suffix}", sequence[t])
                    gates_h = product(f"weight_hh{suffix}", state[0])
                    state = cell(kind, gates_x, gates_h, state)
                    out[t] = state[0]
                outputs.append(out)
                finals[layer * directions + direction, b] = state[0]
            sequence = torch.cat(outputs, -1)
        output[b, :length] = sequence
    return output, finals


def float_product(rnn):
    def product(name, vector):
        bias = getattr(rnn, name.replace("weight", "bias"))
        return F.linear(vector, getattr(rnn, name), bias)

    return product


def quantized_product(layer):
    """W v + b with the matmul's fake-quantized weight and (calibrated, eval) input."""

    def product(name, vector):
        matmul = layer.matmuls[name]
        weight = matmul.weight_quantizer(getattr(layer, name))
        bias = getattr(layer, name.replace("weight", "bias"))
        return F.linear(matmul.input_quantizer(vector), weight, bias)

    return product


def final_h(state):
    return state[0] if isinstance(state, tuple) else state


def packed_batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, int(LENGTHS.max()), 4, generator=generator)
    x = x * (torch.arange(x.shape[1]) < LENGTHS[:, None]).unsqueeze(-1)  # zero padding
    return x, pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)


def calibrate(layer, inputs):
    layer.train()
    with torch.no_grad():
        layer(inputs)
    layer.eval()


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_oracle_is_torch_in_float(kind):
    rnn = build(kind)
    x, packed = packed_batch()
    output, state = rnn(packed)
    output, _ = pad_packed_sequence(output, batch_first=True)
    expected, finals = oracle(rnn, kind, x, LENGTHS, float_product(rnn))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final_h(state), finals, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_digital_is_bitwise_torch(kind, batch_first):
    rnn = build(kind, batch_first=batch_first)
    reference = copy.deepcopy(rnn)
    layer = converted(rnn, "digital")
    assert isinstance(layer, MemristorLSTM if kind == "LSTM" else MemristorGRU)
    assert layer.weight_ih_l0 is rnn.weight_ih_l0  # Parameters shared
    x, packed = packed_batch()
    x = x if batch_first else x.transpose(0, 1)
    for inputs in (x, packed):
        got, want = layer(inputs), reference(inputs)
        got_out = got[0].data if isinstance(inputs, type(packed)) else got[0]
        want_out = want[0].data if isinstance(inputs, type(packed)) else want[0]
        assert torch.equal(got_out, want_out)
        assert torch.equal(final_h(got[1]), final_h(want[1]))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fake_quant_is_the_oracle_and_ideal_analog_reproduces_it(kind):
    layer = converted(build(kind))
    assert len(hardware_matmuls(layer)) == 8  # 2 layers x 2 directions x (ih, hh)
    x, packed = packed_batch()
    calibrate(layer, packed)
    output, state = layer(packed)
    output, lengths = pad_packed_sequence(output, batch_first=True)
    assert torch.equal(lengths, LENGTHS)
    expected, finals = oracle(layer, kind, x, LENGTHS, quantized_product(layer))
    # Same quantized products in another order of summation: float rounding only.
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final_h(state), finals, rtol=1e-5, atol=1e-5)
    # It is quantized: measurably different from the float module.
    float_out, _ = oracle(layer, kind, x, LENGTHS, float_product(layer))
    assert (output - float_out).abs().max() > 1e-3

    set_execution(layer, "analog")
    analog, analog_state = layer(packed)
    analog, _ = pad_packed_sequence(analog, batch_first=True)
    torch.testing.assert_close(analog, output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final_h(analog_state), final_h(state), rtol=1e-5, atol=1e-5)
    if kind == "LSTM":  # the cell state too
        torch.testing.assert_close(analog_state[1], state[1], rtol=1e-5, atol=1e-5)


def test_unpacked_time_major_unbatched_and_initial_state():
    layer = converted(build("LSTM", batch_first=False))
    x, _ = packed_batch()
    time_major = x.transpose(0, 1)
    calibrate(layer, time_major)
    h0 = torch.randn(4, 3, 6)
    c0 = torch.randn(4, 3, 6)
    output, (h_n, c_n) = layer(time_major, (h0, c0))
    assert output.shape == (9, 3, 12) and h_n.shape == (4, 3, 6)
    single, (h_single, _) = layer(time_major[:, 1], (h0[:, 1], c0[:, 1]))  # unbatched
    torch.testing.assert_close(single, output[:, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_single, h_n[:, 1], rtol=1e-5, atol=1e-6)


def test_partial_selection_keeps_the_rest_digital():
    rnn = build("GRU")
    layer = converted(rnn, include=["*.weight_ih_l0"])
    assert sorted(layer.matmuls) == ["weight_ih_l0"]
    x, packed = packed_batch()
    calibrate(layer, packed)
    output, _ = layer(packed)
    output, _ = pad_packed_sequence(output, batch_first=True)

    def product(name, vector):
        if name in layer.matmuls:
            return quantized_product(layer)(name, vector)
        return float_product(layer)(name, vector)

    expected, _ = oracle(layer, "GRU", x, LENGTHS, product)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


def test_state_dict_and_checkpoints_load_both_ways():
    plain = build("LSTM", seed=3)
    layer = converted(build("LSTM", seed=4))
    assert list(layer.state_dict()) == list(plain.state_dict())
    layer.load_state_dict(plain.state_dict())  # digital checkpoint -> converted
    assert torch.equal(layer.weight_hh_l1_reverse, plain.weight_hh_l1_reverse)
    fresh = build("LSTM", seed=5)
    fresh.load_state_dict(layer.state_dict())  # converted -> digital
    set_execution(layer, "digital")
    x, packed = packed_batch()
    assert torch.equal(layer(x)[0], fresh(x)[0])


def test_qat_steps_lower_the_loss():
    torch.manual_seed(0)
    layer = converted(build("LSTM", num_layers=1), hardware=HardwareConfig(weight_bits=4))
    head = torch.nn.Linear(12, 1)
    x, packed = packed_batch()
    target = x.sum(-1, keepdim=True).cumsum(1).tanh()  # a running sum to track
    mask = (torch.arange(x.shape[1]) < LENGTHS[:, None]).unsqueeze(-1)
    optimizer = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.02)
    layer.train()
    losses = []
    for _ in range(25):
        output, _ = pad_packed_sequence(layer(packed)[0], batch_first=True)
        loss = ((head(output) - target) ** 2 * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # 25 Adam steps on a learnable target must remove a large part of the initial error.
    assert losses[-1] < 0.6 * losses[0]
    assert layer.weight_hh_l0.grad is not None and layer.weight_ih_l0_reverse.grad.abs().sum() > 0


def test_analog_with_real_cells_runs_and_proj_size_stays_digital():
    layer = converted(build("GRU"), "analog", hardware=HardwareConfig())
    x, packed = packed_batch()
    output, state = layer(x)
    assert output.shape == (3, 9, 12) and torch.isfinite(output).all()
    projected = torch.nn.Sequential(torch.nn.LSTM(4, 6, proj_size=3))
    with pytest.raises(ValueError, match="no supported weight matrix"):
        convert(projected, IDEAL, include=["0"])

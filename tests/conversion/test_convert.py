"""convert(): YAML-built Conformer, conversion of every supported layer, modes, errors."""

import copy
import io
import pathlib

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.attention import RelPosMHAXL

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    PAPER_CONFORMER_MAPPING,
    convert,
    hardware_layers,
    hardware_matmuls,
    load_quantizer_state_dict,
    program,
    quantizer_state_dict,
    set_execution,
)
from speechbrain_memristor.layers.attention import map_in_projection
from speechbrain_memristor.layers.conv import MemristorConv1d, MemristorConv2d

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


def load_yaml(name, overrides=None, seed=0):
    torch.manual_seed(seed)
    with open(FIXTURES / name) as stream:
        return load_hyperpyyaml(stream, overrides or {})


def ctc_forward(model, feats, lengths):
    """CNN -> Conformer encoder -> CTC log-probabilities [batch, frames, vocab]."""
    cnn, transformer, ctc_lin = model
    encoded = transformer.encode(cnn(feats), lengths)
    return F.log_softmax(ctc_lin(encoded), dim=-1)


def toy_batch(seed=0, batch=3, frames=48, n_feats=20, vocab=6, target_len=4):
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, frames, n_feats, generator=generator)
    lengths = torch.tensor([1.0, 0.875, 0.75])[:batch]
    targets = torch.randint(1, vocab, (batch, target_len), generator=generator)
    return feats, lengths, targets


def ctc_loss(log_probs, lengths, targets):
    frames = torch.round(lengths * log_probs.shape[1]).long()
    target_lengths = torch.full((targets.shape[0],), targets.shape[1])
    return F.ctc_loss(log_probs.transpose(0, 1), targets, frames, target_lengths, blank=0)


def paper_names(prefix, layers=2):
    """The qualified names the paper mapping must select in the fixture Conformer."""
    names = set()
    for layer in range(layers):
        block = f"{prefix}encoder.layers.{layer}"
        names |= {
            f"{block}.mha_layer.in_proj_weight",
            f"{block}.mha_layer.out_proj",
            f"{block}.convolution_module.bottleneck.0",
            f"{block}.convolution_module.after_conv.2",
        }
        names |= {f"{block}.ffn_module{i}.1.ffn.{j}" for i in (1, 2) for j in (0, 3)}
    return names


def test_yaml_conformer_trains_in_fake_quant_and_runs_every_mode():
    hparams = load_yaml("convert_conformer.yaml")
    model = hparams["converted"]
    assert model is hparams["asr"]["model"]  # converted in place, root kept
    reference = load_yaml("conformer_ctc.yaml")["model"]
    assert list(model.state_dict()) == list(reference.state_dict())
    matmul_names = {matmul.name for matmul in hardware_matmuls(model)}
    assert matmul_names == paper_names("1.")

    feats, lengths, targets = toy_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = ctc_loss(ctc_forward(model, feats, lengths), lengths, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Memorizing one fixed batch: Adam at 3e-3 lowers the CTC loss well within 8 steps; a
    # broken straight-through gradient (zero or wrong-shaped) would leave it flat.
    assert losses[-1] < 0.9 * losses[0], losses

    model.eval()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    outputs = {}
    with torch.no_grad():
        expected = ctc_forward(reference, feats, lengths)
        for mode in ("digital", "fake_quant", "analog"):
            set_execution(model, mode)
            outputs[mode] = ctc_forward(model, feats, lengths)
    assert torch.equal(outputs["digital"], expected)
    for mode in ("fake_quant", "analog"):
        assert torch.isfinite(outputs[mode]).all()
        assert not torch.equal(outputs[mode], expected)
    # 4-bit weights, DAC and physical Synaptogen cells with a 4-bit ADC: noticeably different
    # log-probabilities, but the same function (see below for what unrelated outputs give).
    cosine = F.cosine_similarity(outputs["analog"].flatten(), outputs["fake_quant"].flatten(), 0)
    assert cosine > 0.8
    # Log-probabilities are all negative, so even unrelated outputs are far from orthogonal
    # (measured: a constant -1.79 gives 0.94, an untrained model 0.91, permuted vocabulary
    # 0.85); the analog output measures 0.99984 (1 - cosine = 1.6e-4), and 0.999 allows 6x.
    assert cosine > 0.999


@pytest.mark.parametrize("attention_type", ["RelPosMHAXL", "regularMHA"])
def test_digital_conversion_of_every_layer_is_bitwise(attention_type):
    overrides = {"attention_type": attention_type}
    reference = load_yaml("conformer_ctc.yaml", overrides)["model"]
    model = copy.deepcopy(reference)
    convert(model, HardwareConfig(), execution="digital", include=["*"])
    kinds = {type(layer).__name__ for _, layer in hardware_layers(model)}
    attention = {"RelPosMHAXL": "MemristorRelPosMHAXL", "regularMHA": "MemristorMultiheadAttention"}
    attention = attention[attention_type]
    assert kinds == {"MemristorLinear", "MemristorConv1d", "MemristorConv2d", attention}
    assert list(model.state_dict()) == list(reference.state_dict())
    feats, lengths, _ = toy_batch(seed=1)
    for training in (False, True):  # training: the frontend's dropout draws the same masks
        model.train(training)
        reference.train(training)
        torch.manual_seed(9)
        output = ctc_forward(model, feats, lengths)
        torch.manual_seed(9)
        assert torch.equal(output, ctc_forward(reference, feats, lengths))


CONV1D_CASES = [
    dict(kernel_size=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=4, padding="same", dilation=2),
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", groups=2),
    dict(kernel_size=5, padding=2, padding_mode="replicate", groups=6, stride=3),
]


def check_conv_against_quantized_torch(conv, layer, x, functional):
    """Fake-quant layer == torch conv of the fake-quantized padded input and kernel."""
    layer.eval()
    output = layer(x)  # first batch calibrates the input quantizer
    matmul = layer.matmul
    pad_mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    batched = x if x.dim() == conv.weight.dim() else x.unsqueeze(0)
    padded = F.pad(batched, conv._reversed_padding_repeated_twice, mode=pad_mode)
    expected = functional(
        matmul.input_quantizer(padded),
        matmul.weight_quantizer(conv.weight),
        conv.bias,
        stride=conv.stride,
        dilation=conv.dilation,
        groups=conv.groups,
    )
    expected = expected if x.dim() == conv.weight.dim() else expected.squeeze(0)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    return output, expected


@pytest.mark.parametrize("settings", CONV1D_CASES)
def test_conv1d_matches_quantized_torch_convolution(settings):
    torch.manual_seed(2)
    conv = torch.nn.Conv1d(6, 12, **settings)
    x = torch.randn(2, 6, 17)
    layer = MemristorConv1d.from_conv1d(conv, HardwareConfig(weight_bits=3), "digital", "conv")
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert torch.equal(layer(x), conv(x))
    assert list(layer.state_dict()) == list(conv.state_dict())
    layer.execution = "fake_quant"
    x.requires_grad_(True)
    output, expected = check_conv_against_quantized_torch(conv, layer, x, F.conv1d)
    # Straight-through gradients reach kernel and input exactly as through the torch reference.
    (grad_layer,) = torch.autograd.grad(output.square().sum(), conv.weight)
    (grad_reference,) = torch.autograd.grad(expected.square().sum(), conv.weight)
    torch.testing.assert_close(grad_layer, grad_reference, rtol=1e-4, atol=1e-5)
    check_conv_against_quantized_torch(conv, layer, x.detach()[0], F.conv1d)  # unbatched


@pytest.mark.parametrize(
    "settings",
    [dict(kernel_size=3, stride=2), dict(kernel_size=(3, 1), padding="same", groups=2)],
)
def test_conv2d_matches_quantized_torch_convolution(settings):
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, **settings)
    x = torch.randn(2, 4, 9, 7)
    layer = MemristorConv2d.from_conv2d(conv, HardwareConfig(weight_bits=4), "digital", "conv")
    assert torch.equal(layer(x), conv(x))
    layer.execution = "fake_quant"
    check_conv_against_quantized_torch(conv, layer, x, F.conv2d)


def test_grouped_conv_analog_reprograms_only_when_the_kernel_changes():
    # Ideal cells, no noise, no ADC: the analog read equals fake_quant up to float rounding, so
    # the block-diagonal mapping of the groups is checked end to end.
    torch.manual_seed(4)
    conv = torch.nn.Conv1d(4, 4, kernel_size=5, padding=2, groups=4)
    layer = MemristorConv1d.from_conv1d(conv, HardwareConfig.preset("ideal"), "fake_quant", "dw")
    layer.eval()
    x = torch.randn(2, 4, 30)
    with torch.no_grad():
        fake_quant = layer(x)
        layer.execution = "analog"
        analog = layer(x)
        chip = layer.matmul.chip
        layer(x)
        assert layer.matmul.chip is chip  # unchanged kernel: no reprogramming
        conv.weight.mul_(-1)
        flipped = layer(x)
    assert layer.matmul.chip is not chip
    torch.testing.assert_close(analog, fake_quant, rtol=1e-4, atol=1e-5)
    bias = conv.bias.view(1, -1, 1)
    torch.testing.assert_close(flipped - bias, -(analog - bias), rtol=1e-4, atol=1e-5)


def test_relposmhaxl_projection_is_routed_in_self_and_cross_attention():
    torch.manual_seed(5)
    attention = RelPosMHAXL(embed_dim=16, num_heads=4)
    attention.eval()
    reference = copy.deepcopy(attention)
    original = copy.deepcopy(attention)
    hardware = HardwareConfig(weight_bits=3)
    map_in_projection(attention, hardware, "fake_quant", name="att.in_proj_weight")
    assert list(attention.state_dict()) == list(reference.state_dict())
    matmul = attention.in_proj_matmul
    x, other = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    pos = torch.randn(1, 17, 16)
    with torch.no_grad():
        self_out, _ = attention(x, x, x, pos)
        cross_out, _ = attention(x, other, other, pos)
        # Reference: the original module with the 3-bit weight and quantized inputs, which is
        # what the hardware projection must compute; the unquantized module differs.
        reference.in_proj_weight.copy_(matmul.weight_quantizer(attention.in_proj_weight))
        quantize = matmul.input_quantizer
        expected_self, _ = reference(quantize(x), quantize(x), quantize(x), pos)
        expected_cross, _ = reference(quantize(x), quantize(other), quantize(other), pos)
        unquantized, _ = original(x, x, x, pos)
    torch.testing.assert_close(self_out, expected_self, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cross_out, expected_cross, rtol=1e-5, atol=1e-6)
    assert (self_out - unquantized).abs().max() > 1e-2


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_projections_are_routed(batch_first):
    torch.manual_seed(6)
    attention = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first)
    container = torch.nn.Sequential(attention)
    reference = copy.deepcopy(container)
    # 16-bit DAC: input quantization is negligible, so the reference only needs the 3-bit
    # weights of both projections (the output projection cannot be reached from outside).
    hardware = HardwareConfig(weight_bits=3, dac_bits=16)
    convert(container, hardware, "fake_quant", include=["type:MultiheadAttention"])
    assert {m.name for m in hardware_matmuls(container)} == {"0.in_proj_weight", "0.out_proj"}
    x = torch.randn(5, 3, 16) if not batch_first else torch.randn(3, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 4 + [True], [False] * 3 + [True] * 2])
    container.eval()
    reference.eval()
    with torch.no_grad():
        output, weights = attention(x, x, x, key_padding_mask=padding)
        original, _ = reference[0](x, x, x, key_padding_mask=padding)
        for matmul, weight in (
            (attention.in_proj_matmul, reference[0].in_proj_weight),
            (attention.out_proj_matmul, reference[0].out_proj.weight),
        ):
            weight.copy_(matmul.weight_quantizer(weight))
        expected, expected_weights = reference[0](x, x, x, key_padding_mask=padding)
    torch.testing.assert_close(output, expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-3, atol=1e-3)
    assert (output - original).abs().max() > 2e-2


def test_attention_that_never_applies_its_weight_with_linear_is_refused():
    class MatmulAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj_weight = torch.nn.Parameter(torch.randn(12, 4))

        def forward(self, x):
            return x @ self.in_proj_weight.t()

    model = torch.nn.Sequential(MatmulAttention())
    convert(model, HardwareConfig(), "digital", include=["0.in_proj_weight"])
    model(torch.randn(2, 4))
    set_execution(model, "fake_quant")
    with pytest.raises(RuntimeError, match="not supported"):
        model(torch.randn(2, 4))


def test_conversion_errors_are_clear():
    def fresh():
        return load_yaml("conformer_ctc.yaml")["model"]

    hardware = HardwareConfig()
    with pytest.raises(ValueError, match=r"'\*\.ffn_modul3' matches nothing.*ffn_module"):
        convert(fresh(), hardware, include=["*.ffn_modul3"])
    with pytest.raises(ValueError, match=r"LayerNorm.*no supported weight matrix"):
        convert(fresh(), hardware, include=["*.layers.0.norm1"])
    with pytest.raises(ValueError, match=r"type:Dropout.*no supported weight matrix"):
        convert(fresh(), hardware, include=["type:Dropout"])
    with pytest.raises(ValueError, match="exclude pattern 'nothing' matches nothing"):
        convert(fresh(), hardware, exclude=["nothing"])
    with pytest.raises(TypeError, match="HardwareConfig"):
        convert(fresh(), {"weight_bits": 3})
    with pytest.raises(TypeError, match="list of patterns"):
        convert(fresh(), hardware, include="*.ffn_module1")
    with pytest.raises(ValueError, match="root module"):
        convert(torch.nn.Linear(3, 2), hardware, include=["*"])
    with pytest.raises(ValueError, match="selects nothing"):
        convert(torch.nn.Sequential(torch.nn.Linear(3, 2)), hardware)
    integer = torch.nn.Sequential(torch.nn.Linear(3, 2))
    integer[0].weight = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"'0'.*torch.int8 weights"):
        convert(integer, hardware, include=["*"])
    with pytest.raises(ValueError, match="execution='analogue' is invalid"):
        convert(fresh(), hardware, execution="analogue")
    with pytest.raises(ValueError, match="no converted layers"):
        set_execution(fresh(), "analog")


def test_selection_patterns_names_and_types():
    model = load_yaml("conformer_ctc.yaml")["model"]
    convert(
        model,
        HardwareConfig(),
        include=[
            *(pattern for pattern in PAPER_CONFORMER_MAPPING if ".att." not in pattern),
            "type:Conv2d",
            "2",
        ],
        exclude=["*.layers.1.*"],
    )
    names = {matmul.name for matmul in hardware_matmuls(model)}
    frontend = {"0.convblock_0.convs.conv_0.conv", "0.convblock_1.convs.conv_0.conv"}
    assert names == paper_names("1.", layers=1) | frontend | {"2.w"}
    # A second call adds layers and leaves converted ones alone.
    convert(model, HardwareConfig(), include=["*.layers.1.mha_layer.linear_pos"])
    assert "1.encoder.layers.1.mha_layer.linear_pos" in {m.name for m in hardware_matmuls(model)}


def test_quantizer_state_round_trip_and_pickling():
    hparams = load_yaml("convert_conformer.yaml")
    model = hparams["converted"]
    feats, lengths, _ = toy_batch(seed=2)
    model.train()
    ctc_forward(model, feats, lengths)
    state = quantizer_state_dict(model)
    assert set(state) == {f"{name}.{key}" for name in paper_names("1.") for key in ("min", "max")}
    assert all(torch.isfinite(value) for value in state.values())

    other = load_yaml("convert_conformer.yaml")["converted"]
    assert not torch.isfinite(
        quantizer_state_dict(other)["1.encoder.layers.0.ffn_module1.1.ffn.0.min"]
    )
    load_quantizer_state_dict(other, state)
    assert all(torch.equal(state[k], v) for k, v in quantizer_state_dict(other).items())
    with pytest.raises(KeyError, match="unexpected"):
        load_quantizer_state_dict(other, {**state, "extra.min": torch.tensor(0.0)})

    model.eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(
            ctc_forward(restored, feats, lengths), ctc_forward(model, feats, lengths)
        )
        duplicate = copy.deepcopy(model)
        assert torch.equal(
            ctc_forward(duplicate, feats, lengths), ctc_forward(model, feats, lengths)
        )


def test_chips_depend_only_on_seed_and_layer_names():
    first = load_yaml("convert_conformer.yaml")["converted"]
    second = load_yaml("convert_conformer.yaml")["converted"]  # same weights, separate objects
    program(first, seed=3)
    program(second, seed=3)
    states = {m.name: m.chip.states() for m in hardware_matmuls(first)}
    for matmul in hardware_matmuls(second):
        for mine, theirs in zip(matmul.chip.states(), states[matmul.name], strict=True):
            assert torch.equal(mine, theirs)
    program(second, seed=4)
    changed = [
        not torch.equal(m.chip.states()[0], states[m.name][0]) for m in hardware_matmuls(second)
    ]
    assert all(changed)
    assert all(m.hardware.seed == 4 for m in hardware_matmuls(second))

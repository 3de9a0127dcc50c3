"""Default mappings of each SpeechBrain ASR architecture, built from a hparams YAML with
SpeechBrain's own classes (tests/fixtures/architectures.yaml), and whole-model coverage."""

import copy
import logging
import pathlib

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, coverage, hardware_matmuls, set_execution

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
HARDWARE = HardwareConfig()

ATTENTION = ("in_proj_weight", "out_proj")
MHA = ("att.in_proj_weight", "att.out_proj")
FFN = ("ffn.0", "ffn.3")

# What README "Default mappings" documents, per architecture: the mapped matrices of each
# block (relative to the block); everything else stays digital.
EXPECTED = {
    "branchformer": {
        f"model.encoder.layers.{layer}.{suffix}"
        for layer in range(2)
        for suffix in (
            *(f"mha_layer.{name}" for name in ATTENTION),
            "convolution_branch.pre_channel_proj",
            "convolution_branch.post_channel_proj",
            "merge_proj",
        )
    },
    "transformer_seq2seq": {
        *(f"model.encoder.layers.0.self_att.{name}" for name in MHA),
        *(f"model.encoder.layers.0.pos_ffn.{name}" for name in FFN),
        *(
            f"model.decoder.layers.{layer}.{attention}.{name}"
            for layer in range(2)
            for attention in ("self_attn", "multihead_attn")
            for name in MHA
        ),
        *(f"model.decoder.layers.{layer}.pos_ffn.{name}" for layer in range(2) for name in FFN),
    },
    "conformer_seq2seq": {
        *(f"model.encoder.layers.0.mha_layer.{name}" for name in ATTENTION),
        "model.encoder.layers.0.convolution_module.bottleneck.0",
        "model.encoder.layers.0.convolution_module.after_conv.2",
        *(
            f"model.encoder.layers.0.{ffn}.1.{name}"
            for ffn in ("ffn_module1", "ffn_module2")
            for name in FFN
        ),
        *(
            f"model.decoder.layers.0.{attention}.{name}"
            for attention in ("self_attn", "multihead_attn")
            for name in MHA
        ),
        *(f"model.decoder.layers.0.pos_ffn.{name}" for name in FFN),
    },
    "crdnn": {
        *(
            f"model.RNN.rnn.weight_{kind}_l{layer}{direction}"
            for kind in ("ih", "hh")
            for layer in range(2)
            for direction in ("", "_reverse")
        ),
        "model.DNN.block_0.linear.w",
        "model.DNN.block_1.linear.w",
    },
}


def load(name, overrides=None, seed=0):
    torch.manual_seed(seed)
    with open(FIXTURES / "architectures.yaml") as stream:
        hparams = load_hyperpyyaml(stream, overrides or {})
    return torch.nn.ModuleDict({"model": hparams[name]})


def run(name, modules, seed=0):
    """The model's forward on a fixed toy batch: a tuple of output tensors."""
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 16, 20, generator=generator)
    lengths = torch.tensor([1.0, 0.75])
    model = modules["model"]
    if name == "crdnn":
        return (model(feats),)
    if name == "branchformer":
        return (model.encode(feats, lengths),)
    tokens = torch.randint(1, 6, (2, 5), generator=generator)
    return model(feats, tokens, lengths)


def parameter_count(modules):
    return sum(parameter.numel() for parameter in modules.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_mapping_digital_fake_quant_and_analog(name):
    modules = load(name)
    reference = copy.deepcopy(modules)
    keys = list(modules.state_dict())
    planned = coverage(modules, HARDWARE)
    convert(modules, HARDWARE, "digital")
    mapped = {matmul.name for matmul in hardware_matmuls(modules)}
    assert mapped == EXPECTED[name]
    assert list(modules.state_dict()) == keys
    # Coverage counts every parameter of the model; the mapped share is the mapped matrices.
    assert planned.total == parameter_count(reference)
    assert planned.mapped == sum(m.weight.numel() for m in _mapped_layers(modules, mapped))
    assert planned.mapped + planned.digital_by_choice + planned.not_mappable_total == planned.total

    modules.eval(), reference.eval()
    with torch.no_grad():
        for got, want in zip(run(name, modules), run(name, reference), strict=True):
            assert torch.equal(got, want)

    set_execution(modules, "fake_quant")
    modules.train()
    outputs = run(name, modules)
    sum(output.float().square().mean() for output in outputs).backward()
    for matmul_name in mapped:
        weight = _parameter(modules, matmul_name)
        assert weight.grad is not None and torch.isfinite(weight.grad).all()

    set_execution(modules, "analog")
    modules.eval()
    with torch.no_grad():
        analog = run(name, modules)
        digital = run(name, reference)
    for got, want in zip(analog, digital, strict=True):
        assert got.shape == want.shape and torch.isfinite(got).all()
        assert not torch.equal(got, want)  # it really went through the chips


def _parameter(modules, matrix_name):
    """The Parameter a mapped matrix name stands for."""
    owner, _, leaf = matrix_name.rpartition(".")
    module = modules.get_submodule(owner)
    if leaf in ("in_proj_weight",) or leaf.startswith("weight_"):
        return getattr(module, leaf)
    return modules.get_submodule(matrix_name).weight


def _mapped_layers(modules, names):
    class Holder:
        def __init__(self, weight):
            self.weight = weight

    return [Holder(_parameter(modules, name)) for name in names]


def test_gru_crdnn_and_include_override():
    modules = load("crdnn", "rnn_class: !name:speechbrain.nnet.RNN.GRU")
    convert(modules, HARDWARE, "fake_quant", include=["type:GRU"])
    names = {matmul.name for matmul in hardware_matmuls(modules)}
    assert names == {n for n in EXPECTED["crdnn"] if ".rnn." in n}  # include overrides
    assert type(modules["model"].RNN.rnn).__name__ == "MemristorGRU"


def test_ligru_crdnn_maps_its_linears_per_step():
    # SpeechBrain's LiGRU (the upstream CRDNN default) applies nn.Linear w (all steps) and u
    # (every step): the default mapping maps both per layer, through the Linear rule.
    modules = load("crdnn", "rnn_class: !name:speechbrain.nnet.RNN.LiGRU")
    reference = copy.deepcopy(modules)
    convert(modules, HARDWARE, "digital")
    names = {matmul.name for matmul in hardware_matmuls(modules)}
    recurrent = {f"model.RNN.rnn.{layer}.{m}" for layer in range(2) for m in ("w", "u")}
    assert names == recurrent | {"model.DNN.block_0.linear.w", "model.DNN.block_1.linear.w"}
    modules.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(run("crdnn", modules)[0], run("crdnn", reference)[0])
        set_execution(modules, "analog")
        analog = run("crdnn", modules)[0]
    assert torch.isfinite(analog).all() and not torch.equal(analog, run("crdnn", reference)[0])


def test_coverage_log_counts_the_whole_model(caplog):
    modules = load("crdnn")
    total = parameter_count(modules)
    with caplog.at_level(logging.INFO, logger="speechbrain_memristor.convert"):
        convert(modules, HARDWARE, "fake_quant")
    (record,) = [r for r in caplog.records if "model parameters on crossbars" in r.getMessage()]
    message = record.getMessage()
    assert f"of {total:,} model parameters on crossbars" in message
    assert "LSTM.bias_ih" in message and "LayerNorm.weight" in message  # not mappable, by type
    # A second conversion sees the first one's layers as on crossbars.
    again = coverage(modules, HARDWARE, include=["*.CNN.*"])
    first = coverage(load("crdnn"), HARDWARE)
    assert again.total == total and again.mapped > first.mapped


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_everything_costs_its_weights_cells_and_the_budget_warning_names_the_layers(caplog):
    # Branchformer proportions (upstream: csgu 3072, kernel 31): with block-diagonal depthwise
    # convolutions include=["*"] needed csgu/2 times the cgMLP convolution's cells.
    wide = {"branchformer_csgu_units": 256, "branchformer_kernel": 15}
    modules = load("branchformer", wide)
    planned = coverage(modules, HARDWARE, include=["*"])
    cells_per_weight = 2 * HARDWARE.bit_planes
    assert planned.mapped + planned.not_mappable_total == planned.total == parameter_count(modules)
    assert planned.cells == planned.mapped * cells_per_weight  # group-wise: weights x cells
    with caplog.at_level(logging.WARNING, logger="speechbrain_memristor.convert"):
        convert(copy.deepcopy(modules), HARDWARE, "digital", include=["*"])
    assert not warnings_of(caplog)  # within the default budget
    # Per-layer weight bits multiply the cells: 8-bit weights on everything exceed 3x the
    # model at 3 bits (7 planes instead of 2), and the warning names the largest layers.
    eight_bits = {"*": {"weight_bits": 8}}
    with caplog.at_level(logging.WARNING, logger="speechbrain_memristor.convert"):
        convert(modules, HARDWARE, "digital", include=["*"], layer_hardware=eight_bits)
    (warning,) = warnings_of(caplog)
    assert f"creates {planned.cells // 2 * 7:,} cells" in warning
    for layer in range(2):
        assert f"model.encoder.layers.{layer}.convolution_branch.pre_channel_proj" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechbrain_memristor.convert"):
        convert(load("branchformer", wide), HARDWARE, "digital", max_cells=1000)
    (warning,) = warnings_of(caplog)
    assert "more than max_cells=1,000" in warning and "pre_channel_proj: 32,768 cells" in warning


def test_empty_default_mapping_error_lists_the_matrices_and_never_suggests_everything():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Conv1d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="selects nothing") as error:
        convert(model, HARDWARE)
    assert "'*'" not in str(error.value) and "0, 1" in str(error.value)

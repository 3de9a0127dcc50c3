"""What every hardware layer shares (`layers.base`, `layers.modes`): execution modes, device
placement of quantizer state, chip switching, and the input-width check."""

from __future__ import annotations

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import convert, hardware_matmuls, set_chip_seed, set_execution
from speechbrain_memristor.layers.base import HardwareLayer
from speechbrain_memristor.layers.conv import MemristorConv1d
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.layers.modes import EXECUTION_MODES, Execution, check_execution

HARDWARE = HardwareConfig(weight_bits=3, tile_rows=8, tile_cols=8, seed=2)


def test_execution_modes_are_the_contract_strings():
    assert EXECUTION_MODES == ("digital", "fake_quant", "analog")
    assert [mode.value for mode in Execution] == list(EXECUTION_MODES)
    assert Execution.ANALOG == "analog" and check_execution("analog") is Execution.ANALOG
    assert f"{Execution.FAKE_QUANT}" == "fake_quant" and str(Execution.DIGITAL) == "digital"
    with pytest.raises(ValueError, match=r"mode='analogue' is invalid; choose one of digital"):
        check_execution("analogue", field="mode")
    layer = MemristorLinear(4, 3, hardware=HARDWARE, execution=Execution.ANALOG)
    assert layer.execution == "analog" and type(layer.execution) is str  # saves as plain str
    with pytest.raises(ValueError, match="execution='quantum'"):
        layer.execution = "quantum"


@pytest.mark.parametrize(
    "make",
    [
        lambda: MemristorLinear(4, 3, hardware=HARDWARE, device="meta"),
        lambda: MemristorLinear.from_linear(torch.nn.Linear(4, 3, device="meta"), HARDWARE),
        lambda: MemristorConv1d(4, 3, 3, hardware=HARDWARE, device="meta"),
        lambda: MemristorConv1d.from_conv1d(torch.nn.Conv1d(4, 3, 3, device="meta"), HARDWARE),
    ],
)
def test_quantizer_buffers_live_on_the_weights_device(make):
    # The meta device stands in for a GPU here: buffers left on the CPU would say "cpu".
    layer = make()
    assert isinstance(layer, HardwareLayer) and layer.weight.device.type == "meta"
    quantizer = layer.matmul.input_quantizer
    assert {quantizer.min_val.device.type, quantizer.max_val.device.type} == {"meta"}


def test_converted_attention_and_linear_share_one_execution_switch():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.MultiheadAttention(8, 2))
    convert(model, HARDWARE, execution="digital", include=["*"])
    layers = [module for module in model.modules() if isinstance(module, HardwareLayer)]
    assert len(layers) == 2
    set_execution(model, "fake_quant")
    assert [layer.execution for layer in layers] == ["fake_quant", "fake_quant"]
    layers[1].execution = "analog"
    assert {m.execution for m in layers[1].hardware_matmuls()} == {"analog"}
    assert len(layers[1].projections()) == 2  # fused in_proj and out_proj


def test_switching_chips_keeps_quantizer_state_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.ReLU(), torch.nn.Linear(10, 6))
    convert(model, HARDWARE, execution="fake_quant", include=["*"])
    model.train()
    for _ in range(3):  # calibrate the observers
        model(torch.randn(5, 12))
    model.eval()
    matmuls = hardware_matmuls(model)
    quantizers = [(m.input_quantizer, m.weight_quantizer) for m in matmuls]
    states = [m.quantizer_state() for m in matmuls]
    set_execution(model, "analog")
    x = torch.randn(4, 12)
    first = model(x)
    chips = [m.chip for m in matmuls]
    set_chip_seed(model, 7)
    second = model(x)
    for matmul, (input_q, weight_q), state, chip in zip(
        matmuls, quantizers, states, chips, strict=True
    ):
        assert matmul.input_quantizer is input_q and matmul.weight_quantizer is weight_q
        for key, value in matmul.quantizer_state().items():
            assert torch.equal(value, state[key]), key
        assert matmul.hardware.seed == 7 and matmul.chip is not chip  # another chip
    assert not torch.equal(first, second)
    set_chip_seed(model, 2)
    assert torch.equal(model(x), first)  # the first chip again, same quantization


@pytest.mark.parametrize("execution", ["fake_quant", "analog"])
def test_an_input_of_the_wrong_width_names_the_layer_and_widths(execution):
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    convert(model, HARDWARE, execution=execution, include=["*"])
    with pytest.raises(ValueError, match=r"Layer '0' expects inputs \[\.\.\., 16\].*\(3, 51\)"):
        model(torch.randn(3, 51))

"""Quantizers (weights, DAC inputs), the DAC/ADC converters and the calibrated current scale."""

import pytest
import torch

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar.periphery import (
    AnalogToDigitalConverter,
    DigitalToAnalogConverter,
    quantize_symmetric,
)
from speechbrain_memristor.layers.quantizers import (
    ActivationQuantizer,
    WeightQuantizer,
    fake_quantize,
)
from speechbrain_memristor.physics.calibration import calibrated_current_scale
from speechbrain_memristor.physics.cell_models import device_params


def test_quantize_symmetric_rounds_half_to_even_and_clamps():
    values = torch.tensor([-9.0, -2.5, -0.5, 0.5, 1.5, 2.49, 3.0, 100.0])
    integers = quantize_symmetric(values, 1.0, 3)
    assert integers.tolist() == [-3.0, -2.0, -0.0, 0.0, 2.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_integers_span_reduced_symmetric_range(bits):
    hardware = HardwareConfig(weight_bits=bits)
    weight = torch.randn(64, 32, generator=torch.Generator().manual_seed(bits))
    quantizer = WeightQuantizer(hardware)
    integers = quantizer.integers(weight)
    qmax = 2 ** (bits - 1) - 1
    assert integers.abs().max() == qmax  # the largest magnitude maps onto the top level
    assert torch.equal(integers, integers.round())
    # Fake quantization is integers * scale, exactly.
    assert torch.equal(quantizer(weight), integers * quantizer.scale(weight))


def test_fake_quantize_gradient_is_straight_through_inside_range():
    values = torch.tensor([-5.0, -0.7, 0.2, 0.9, 1.0, 4.0], requires_grad=True)
    scale = torch.tensor(0.25)
    out = fake_quantize(values, scale, qmax=4)  # range +-1.0
    assert out.tolist() == [-1.0, -0.75, 0.25, 1.0, 1.0, 1.0]
    out.sum().backward()
    assert values.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_activation_observer_minmax_and_eval_behaviour():
    quantizer = ActivationQuantizer(HardwareConfig(dac_bits=8))
    assert not quantizer.calibrated
    quantizer.eval()
    quantizer(torch.tensor([-0.5, 2.0]))  # uncalibrated: calibrates once on first batch
    assert quantizer.state()["max"] == 2.0
    quantizer(torch.tensor([-4.0, 8.0]))  # calibrated and in eval: no update
    assert (quantizer.state()["min"], quantizer.state()["max"]) == (-0.5, 2.0)
    quantizer.train()
    quantizer(torch.tensor([-4.0, 1.0]))
    assert (quantizer.state()["min"], quantizer.state()["max"]) == (-4.0, 2.0)
    assert torch.isclose(quantizer.scale(), torch.tensor(4.0 / 127))
    quantizer.eval()
    values = torch.tensor([4.0, -100.0, 0.0])
    codes = quantize_symmetric(values, quantizer.calibrated_scale(values), quantizer.qmax)
    assert codes.tolist() == [127.0, -127.0, 0.0]


def test_moving_average_observer_and_state_round_trip():
    hardware = HardwareConfig(observer="moving_average", observer_momentum=0.5)
    quantizer = ActivationQuantizer(hardware).train()
    quantizer(torch.tensor([-1.0, 1.0]))
    quantizer(torch.tensor([-3.0, 5.0]))
    assert (quantizer.state()["min"], quantizer.state()["max"]) == (-2.0, 3.0)
    other = ActivationQuantizer(hardware)
    other.load_state(quantizer.state())
    assert other.calibrated and torch.equal(other.scale(), quantizer.scale())
    with pytest.raises(KeyError, match="max"):
        other.load_state({"min": torch.tensor(0.0)})


def test_dac_levels():
    dac = DigitalToAnalogConverter.from_config(HardwareConfig(dac_bits=3, input_voltage=0.6))
    assert dac.qmax == 3
    assert torch.allclose(dac.level_voltages(), torch.tensor([-0.6, -0.4, -0.2, 0, 0.2, 0.4, 0.6]))
    assert dac.integers(torch.tensor([0.51, -10.0]), 0.2).tolist() == [3.0, -3.0]


def test_adc_rounding_and_clipping_at_edges():
    adc = AnalogToDigitalConverter(precision_bits=2, range_bits=3)  # step 0.25, range +-4
    values = torch.tensor([0.125, 0.375, 0.12, 3.99, 4.2, -4.0, -4.2, -100.0])
    codes = adc.convert_(values.clone(), gain=1.0)
    # Half steps round to even codes; values beyond the range clip to +-4 (code 16).
    assert codes.tolist() == [0.0, 2.0, 0.0, 16.0, 16.0, -16.0, -16.0, -16.0]
    assert (codes * adc.step).tolist()[3] == 4.0
    gained = adc.convert_(torch.tensor([1.0]), gain=0.5)
    assert gained.tolist() == [2.0]
    ideal = AnalogToDigitalConverter(None, None)
    assert ideal.convert_(torch.tensor([123.456]), gain=2.0).tolist() == [pytest.approx(246.912)]


def test_calibrated_current_scale():
    explicit = HardwareConfig(current_scale=8020.0)
    assert calibrated_current_scale(explicit) == 8020.0
    # Median LRS 4.5 kohm and HRS 75 kohm (REFERENCE.md, measured on the synaptogen package)
    # at 0.6 V give 1 / (0.6 * (1/4.5e3 - 1/75e3)) = 7.98e3; the sample median is within 5 %.
    calibrated = calibrated_current_scale(HardwareConfig())
    assert 7.6e3 < calibrated < 8.4e3
    assert calibrated_current_scale(HardwareConfig(input_voltage=0.3)) == pytest.approx(
        2 * calibrated
    )
    ideal = HardwareConfig.preset("ideal")
    g_llrs = float(device_params(ideal).g_llrs)
    assert calibrated_current_scale(ideal) == pytest.approx(1 / (0.6 * g_llrs))

"""`HardwareMatmul`: x @ W^T + b for one weight matrix in a chosen execution mode.

Every hardware-aware layer (linear, pointwise convolution, attention projection) owns one and
passes its weight [out, in] and bias at each call.

- ``digital``: exactly ``F.linear(x, weight, bias)``.
- ``fake_quant``: F.linear of the fake-quantized input and weight (straight-through gradients,
  `quantization`), optionally through an emulation of the per-tile per-plane ADC
  (``hardware.adc_in_training``; same forward value in training and evaluation).
- ``analog``: the quantized weight is programmed onto a simulated chip (`crossbar.Crossbar`)
  lazily, and again whenever the weight tensor or the chip seed changes (its version counter
  or storage) or ``program()`` is called; the input goes through the DAC, the crossbar read (with read noise)
  and the ADC, then is rescaled by weight_scale * input_scale * Q_a (on either DAC grid,
  `HardwareConfig.dac_grid`; fake_quant rounds inputs onto the same grid) and the bias added
  digitally. Analog execution is inference only: its output carries no gradient.

With ``hardware.output_bits`` the output (bias included) of ``fake_quant`` and ``analog`` is
quantized by `quantizers.output_quantizer` (its range observed in training, or once if
uncalibrated); off (None) by default.

Hardware-aware training (`layers.hardware_aware`): with a ``training_method``, ``fake_quant``
training forwards take the value of a training chip (``chip_in_the_loop``, programmed by
`program_training_chip`) or of calibrated noisy weights (``noise_injection``) and keep
fake_quant's gradient; `begin_training_step` seeds the step's noise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.crossbar import ChipInventory, Crossbar
from speechbrain_memristor.crossbar.read import ideal_read
from speechbrain_memristor.crossbar.weight_noise import calibrate_weight_noise
from speechbrain_memristor.layers.hardware_aware import (
    TrainingMethod,
    check_training_method,
    straight_through,
)
from speechbrain_memristor.layers.modes import Execution, check_execution
from speechbrain_memristor.layers.quantizers import (
    ActivationQuantizer,
    WeightQuantizer,
    output_quantizer,
)
from speechbrain_memristor.util.seeding import stable_seed


class TrainingChipSource(NamedTuple):
    """What a training chip was programmed from: int8 weight integers [out, in] (CPU), the
    weight scale and the global seed; the chip is a pure function of these and the config."""

    weight_int: Tensor
    weight_scale: float
    seed: int | str


def _check_hardware(hardware: HardwareConfig) -> HardwareConfig:
    if not isinstance(hardware, HardwareConfig):
        raise TypeError(
            f"hardware must be a HardwareConfig, got {type(hardware).__name__}; "
            "build one with HardwareConfig(...) or HardwareConfig.preset(name)."
        )
    return hardware


class HardwareMatmul(torch.nn.Module):
    """Computes x @ W^T + b for one weight matrix W [out, in] in the chosen execution mode.

    Quantizer buffers are non-persistent: the owning layer's state_dict keys stay those of the
    original layer; calibration travels via ``quantizer_state()`` / ``load_quantizer_state()``.
    The chip is seeded by (``hardware.seed``, name); `set_chip_seed` switches chips without
    touching the quantizers.
    """

    def __init__(self, hardware: HardwareConfig, execution: str = "digital", name: str = ""):
        super().__init__()
        self._hardware = _check_hardware(hardware)
        self.name = name
        self._execution = check_execution(execution)
        self.input_quantizer = ActivationQuantizer(hardware)
        self.weight_quantizer = WeightQuantizer(hardware)
        self.output_quantizer = output_quantizer(hardware)  # None unless hardware.output_bits
        self.chip: Crossbar | None = None
        self._program_seed: int | None = None  # a seed given to program(), else hardware.seed
        self._programmed_for: tuple | None = None
        self._training_method: TrainingMethod | None = None
        self.training_chip: Crossbar | None = None
        self.training_chip_source: TrainingChipSource | None = None
        self._noise_generator: torch.Generator | None = None
        self._programmed_weight: Tensor | None = None  # the training chip's weights [out, in]

    @property
    def hardware(self) -> HardwareConfig:
        return self._hardware

    @hardware.setter
    def hardware(self, hardware: HardwareConfig) -> None:
        """New settings: quantizers are rebuilt (keeping the observed input range) and the chip
        is reprogrammed at the next analog read."""
        state = self.quantizer_state()
        device = self.input_quantizer.min_val.device
        self._hardware = _check_hardware(hardware)
        self.input_quantizer = ActivationQuantizer(hardware).to(device)
        self.weight_quantizer = WeightQuantizer(hardware)
        quantizer = output_quantizer(hardware)
        self.output_quantizer = None if quantizer is None else quantizer.to(device)
        self.load_quantizer_state(state)

    def set_chip_seed(self, seed: int) -> None:
        """Use the chip of global ``seed`` (stored as ``hardware.seed``; programmed lazily at the
        next analog read). The quantizers and their calibration are left as they are."""
        if seed != self._hardware.seed:
            self._hardware = self._hardware.replace(seed=seed)

    @property
    def execution(self) -> str:
        """The mode as its plain CONTRACT string (pickles and saves without the Enum)."""
        return self._execution.value

    @execution.setter
    def execution(self, execution: str) -> None:
        self._execution = check_execution(execution)

    @property
    def training_method(self) -> str | None:
        """Hardware-aware training method (`layers.hardware_aware`; None: plain QAT)."""
        return None if self._training_method is None else self._training_method.value

    @training_method.setter
    def training_method(self, method: str | None) -> None:
        self._training_method = check_training_method(method)

    def extra_repr(self) -> str:
        return f"execution={self.execution!r}, name={self.name!r}"

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """x [..., in] -> [..., out] in the current execution mode."""
        if self._execution == Execution.DIGITAL:
            return F.linear(x, weight, bias)
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"Layer {self.name or '<unnamed>'!r} expects inputs [..., {weight.shape[1]}] "
                f"(its weight is {weight.shape[0]} x {weight.shape[1]}), got {tuple(x.shape)}."
            )
        if self._execution == Execution.FAKE_QUANT:
            return self._fake_quant(x, weight, bias)
        return self._analog(x, weight, bias)

    def _fake_quant(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x_q = self.input_quantizer(x)
        w_q = self.weight_quantizer(weight)
        method = self._training_method if self.training else None
        if method == TrainingMethod.NOISE_INJECTION:
            w_q = straight_through(self._noisy_weight(weight), w_q)
        y = F.linear(x_q, w_q)
        if method == TrainingMethod.CHIP_IN_THE_LOOP:
            y = straight_through(self._training_read(x, x_q, w_q, weight), y)
        elif self.hardware.adc_in_training and self.hardware.has_adc:
            with torch.no_grad():
                input_scale = self.input_quantizer.scale()
                inputs = x.detach().reshape(-1, weight.shape[1]).float()
                w_int = self.weight_quantizer.integers(weight)
                values = ideal_read(inputs, input_scale, w_int, self.hardware)
                gain = self.weight_quantizer.scale(weight) * input_scale * self.hardware.dac_qmax
                y_adc = (values * gain).reshape(y.shape).to(y.dtype)
            y = y + (y_adc - y).detach()
        y = y if bias is None else y + bias
        return y if self.output_quantizer is None else self.output_quantizer(y)

    @torch.no_grad()
    def _noisy_weight(self, weight: Tensor) -> Tensor:
        """Weights with calibrated programming and read noise (`crossbar.weight_noise`)."""
        noise = calibrate_weight_noise(self.hardware)
        w_int = self.weight_quantizer.integers(weight)
        return noise.sample(w_int, self._noise_generator) * self.weight_quantizer.scale(weight)

    @torch.no_grad()
    def _training_read(self, x: Tensor, x_q: Tensor, w_q: Tensor, weight: Tensor) -> Tensor:
        """Analog read [..., out] of the training chip (no bias), at the input quantizer's
        scale, plus x_q (w_q - w_programmed)^T: the fake-quantized weights' change since the
        chip was programmed, applied digitally, so that the value follows every update
        between reprogrammings (zero right after programming: the read alone)."""
        if self.training_chip is None:
            raise RuntimeError(
                f"Layer {self.name or '<unnamed>'!r} trains chip_in_the_loop but has no training "
                "chip; call program_training_chip(weight, seed) first (MemristorHook does at "
                "each training batch)."
            )
        chip = self.training_chip
        input_scale = self.input_quantizer.scale()
        values = chip.read(x.detach().reshape(-1, weight.shape[1]), input_scale)
        values.mul_(chip.weight_scale * input_scale * self.hardware.dac_qmax)
        values = values.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)
        if self._programmed_weight is None or self._programmed_weight.device != weight.device:
            source = self.training_chip_source
            assert source is not None
            programmed = source.weight_int.to(weight.device, weight.dtype) * source.weight_scale
            self._programmed_weight = programmed
        change = w_q.detach() - self._programmed_weight
        return values if not change.any() else values.add_(F.linear(x_q.detach(), change))

    @torch.no_grad()
    def program_training_chip(self, weight: Tensor, seed: int | str) -> None:
        """Program ``weight`` [out, in] onto the training chip of global ``seed``
        (`hardware_aware.training_chip_seed`); evaluation chips are left alone."""
        source = TrainingChipSource(
            self.weight_quantizer.integers(weight).to(torch.int8).cpu(),
            self.weight_quantizer.scale(weight).item(),
            seed,
        )
        self.restore_training_chip(source, weight.device)

    def restore_training_chip(self, source: TrainingChipSource, device: torch.device) -> None:
        """Rebuild the training chip from a saved `TrainingChipSource`, on ``device``."""
        self.training_chip = Crossbar.program(
            source.weight_int.float(),
            source.weight_scale,
            self.hardware,
            self.chip_seed(source.seed),
        ).to(device)
        self.training_chip_source = source
        self._programmed_weight = None

    def begin_training_step(self, step_seed: int, device: torch.device) -> None:
        """Restart this layer's training noise (chip read noise, injected weight noise) from
        (``step_seed``, name)."""
        seed = stable_seed(step_seed, self.name)
        if self.training_chip is not None:
            self.training_chip.reseed_read_noise(seed)
        self._noise_generator = torch.Generator(device=device).manual_seed(seed)

    def _prepare_analog(self, x: Tensor, weight: Tensor) -> None:
        """Before an analog read: refuse non-finite inputs, program ``weight`` if needed."""
        if not torch.isfinite(x).all():
            raise ValueError(
                f"Analog layer {self.name or '<unnamed>'!r} got NaN or infinite inputs; a DAC "
                "cannot convert them. Check the preceding layers (or run in 'digital' mode "
                "to locate the source)."
            )
        self.ensure_programmed(weight)

    @torch.no_grad()
    def _analog(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        self._prepare_analog(x, weight)
        assert self.chip is not None
        input_scale = self.input_quantizer.calibrated_scale(x)
        values = self.chip.read(x.reshape(-1, weight.shape[1]), input_scale)
        values.mul_(self.chip.weight_scale * input_scale * self.hardware.dac_qmax)
        if bias is not None:
            values.add_(bias)
        if self.output_quantizer is not None:
            values = self.output_quantizer(values)
        return values.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)

    def _program_key(self, weight: Tensor) -> tuple:
        return (
            weight._version,
            weight.data_ptr(),
            tuple(weight.shape),
            weight.device,
            self._hardware,
            self.name,
            self._program_seed,
        )

    def ensure_programmed(self, weight: Tensor) -> None:
        """Program ``weight`` (with the kept seed) unless the chip already holds it."""
        if not self.is_programmed_for(weight):
            self.program(weight, self._program_seed)

    def is_programmed_for(self, weight: Tensor) -> bool:
        """True when the current chip holds ``weight`` with the current settings and seed."""
        return self.chip is not None and self._programmed_for == self._program_key(weight)

    def chip_seed(self, seed: int | str | None = None) -> int:
        """Stable seed of this layer's chip: hash of (seed or hardware.seed, name)."""
        return stable_seed(self.hardware.seed if seed is None else seed, self.name)

    @torch.no_grad()
    def build_chip(self, weight: Tensor, seed: int | None = None) -> Crossbar:
        """A chip programmed with ``weight`` [out, in] (seed None: the seed given to the last
        `program` call, else hardware.seed), without keeping
        it. A pure function of (weight, hardware, seed, name, programming device): programmed
        on the CPU and moved to the weight's device, or on the weight's device
        (``hardware.programming_device``)."""
        on_weights = self.hardware.programming_device == "weights"
        device = weight.device if on_weights else torch.device("cpu")
        return Crossbar.program(
            self.weight_quantizer.integers(weight).to(device),
            self.weight_quantizer.scale(weight).item(),
            self.hardware,
            self.chip_seed(self._program_seed if seed is None else seed),
            device=device if on_weights else None,
        ).to(weight.device)

    def program(self, weight: Tensor, seed: int | None = None) -> None:
        """Program ``weight`` [out, in] onto a fresh chip of ``seed`` (None: hardware.seed) and
        keep it; later lazy reprogramming keeps this seed."""
        self._program_seed = seed
        self.chip = self.build_chip(weight)
        self._programmed_for = self._program_key(weight)

    def inventory(self, weight: Tensor) -> ChipInventory:
        """Cells, tiles and conversions of ``weight`` [out, in] on this matmul's hardware."""
        return ChipInventory.of(weight.shape[0], weight.shape[1], self.hardware)

    def quantizer_state(self) -> dict[str, Tensor]:
        """Calibration state: the input quantizer's observed ``min`` and ``max``, and with
        ``hardware.output_bits`` the output quantizer's ``output_min`` and ``output_max``."""
        state = self.input_quantizer.state()
        if self.output_quantizer is not None:
            state.update({f"output_{k}": v for k, v in self.output_quantizer.state().items()})
        return state

    @property
    def calibrated(self) -> bool:
        """True once the input range (and, with ``output_bits``, the output range) is known."""
        output = self.output_quantizer
        return self.input_quantizer.calibrated and (output is None or output.calibrated)

    @staticmethod
    def quantizer_state_complete(state: dict[str, Tensor]) -> bool:
        """True when ``state`` holds the input range (``min``, ``max``); the output range is
        optional (a save from before ``output_bits`` leaves it to be observed)."""
        return {"min", "max"} <= set(state)

    def load_quantizer_state(self, state: dict[str, Tensor]) -> None:
        """Restore calibration saved by ``quantizer_state()``. Output keys are loaded when this
        layer quantizes outputs and the state has them (else the output range is observed
        afresh, or ignored)."""
        self.input_quantizer.load_state(state)
        output = {key[len("output_") :]: v for key, v in state.items() if key.startswith("output_")}
        if self.output_quantizer is not None and output:
            self.output_quantizer.load_state(output)

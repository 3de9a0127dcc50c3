"""Hardware-aware training with a real SpeechBrain CTC Conformer (YAML-built): each method
trains, the chip in the loop forwards the chip's read with fake_quant's gradient, training
chips never use an evaluation seed, and an interrupted run resumes to the same weights."""

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from test_brain import CTCBrain, load_hparams, make_brain, toy_dataset

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import hardware_matmuls
from speechbrain_memristor.crossbar import Crossbar
from speechbrain_memristor.crossbar.weight_noise import calibrate_weight_noise
from speechbrain_memristor.layers.hardware_aware import training_chip_seed
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.util.seeding import stable_seed

METHODS = (None, "chip_in_the_loop", "noise_injection")


class LossRecordingBrain(CTCBrain):
    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_losses.append(stage_loss)
        super().on_stage_end(stage, stage_loss, epoch)


def train(folder, method, epochs, brain_class=LossRecordingBrain, batch_size=3, **run_opts):
    hparams = load_hparams(
        folder, epochs=epochs, training_method=method, reprogram_every=2, lr=0.01
    )
    # SpeechBrain checkpoints no global RNG state: dropout off, so a resumed run can match.
    for module in hparams["model"].modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    brain = make_brain(brain_class, hparams, **run_opts)
    brain.train_losses = []
    brain.fit(
        hparams["epoch_counter"],
        toy_dataset(0),
        toy_dataset(1, count=3),
        train_loader_kwargs={"batch_size": batch_size},
        valid_loader_kwargs={"batch_size": 3},
    )
    return hparams, brain


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_the_yaml_conformer(tmp_path, method):
    hparams, brain = train(tmp_path, method, epochs=6)
    losses = brain.train_losses
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    # 12 Adam steps on 6 memorizable utterances: the training loss falls clearly.
    assert losses[-1] < 0.8 * losses[0], losses
    hook = brain.memristor
    assert hook.training_step == 12
    sources = [matmul.training_chip_source for matmul in hardware_matmuls(hook.model)]
    if method == "chip_in_the_loop":  # last round: steps 10, 11 (reprogram_every 2)
        assert {source.seed for source in sources} == {training_chip_seed(11, 5)}
    else:
        assert sources == [None] * len(sources)


def test_training_seeds_never_equal_evaluation_seeds(tmp_path):
    hparams, brain = train(tmp_path, "chip_in_the_loop", epochs=1)
    hook = brain.memristor
    evaluation = [seed for _, seed in hook.evaluation_plan() if seed is not None]
    assert evaluation == [11, 12]
    # Global seeds: evaluation chips are integers, training chips texts; a wide range of both.
    training = {training_chip_seed(base, round_) for base in range(20) for round_ in range(500)}
    assert all(isinstance(seed, str) for seed in training)
    assert not training & set(range(0, 10_000))
    # Per-layer chip seeds (what programming actually uses) of every layer never coincide.
    matmuls = hardware_matmuls(hook.model)
    evaluation_chips = {m.chip_seed(seed) for m in matmuls for seed in range(0, 1000)}
    training_chips = {m.chip_seed(seed) for m in matmuls for seed in list(training)[:1000]}
    assert len(evaluation_chips) == 1000 * len(matmuls)
    assert not evaluation_chips & training_chips
    # The chips trained on were programmed from a training seed.
    assert {m.training_chip_source.seed for m in matmuls} == {training_chip_seed(11, 0)}


def linear_pair(method):
    hardware = HardwareConfig.preset("paper", tile_rows=16, tile_cols=16)
    torch.manual_seed(0)
    layer = MemristorLinear(24, 10, hardware=hardware, execution="fake_quant", name="probe")
    layer.train()
    x = torch.randn(5, 7, 24)
    return layer, x


def forward_backward(layer, x):
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


def test_chip_in_the_loop_forwards_the_chip_read_with_fake_quant_gradient():
    layer, x = linear_pair("chip_in_the_loop")
    _, *fake_quant_grads = forward_backward(layer, x)  # plain QAT (observes the input range)
    layer.matmul.training_method = "chip_in_the_loop"
    layer.matmul.program_training_chip(layer.weight, training_chip_seed(0, 3))
    layer.matmul.begin_training_step(1234, layer.weight.device)
    y, *grads = forward_backward(layer, x)
    # Oracle: an independently programmed chip of the same seed and read-noise stream.
    matmul, weight = layer.matmul, layer.weight.detach()
    w_int = matmul.weight_quantizer.integers(weight)
    scale = matmul.weight_quantizer.scale(weight).item()
    chip = Crossbar.program(
        w_int, scale, matmul.hardware, stable_seed(training_chip_seed(0, 3), "probe")
    )
    chip.reseed_read_noise(stable_seed(1234, "probe"))
    input_scale = matmul.input_quantizer.scale()
    read = chip.read(x.reshape(-1, 24), input_scale) * (scale * input_scale * 127)
    assert matmul.hardware.dac_qmax == 127
    assert torch.equal(y, read.reshape(5, 7, 10) + layer.bias.detach())
    # The chip differs from fake_quant (read noise, ADC), the gradients do not.
    fake_quant_value = F.linear(matmul.input_quantizer(x), matmul.weight_quantizer(weight))
    assert not torch.allclose(y, fake_quant_value + layer.bias.detach(), atol=1e-3)
    for mine, reference in zip(grads, fake_quant_grads, strict=True):
        assert torch.equal(mine, reference)
    # Between reprogrammings: the chip's read plus the fake-quantized weight change, digital.
    with torch.no_grad():
        layer.weight.add_(
            0.05 * torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(2))
        )
    layer.matmul.begin_training_step(1234, layer.weight.device)
    chip.reseed_read_noise(stable_seed(1234, "probe"))
    y_moved, *_ = forward_backward(layer, x)
    change = matmul.weight_quantizer(layer.weight.detach()) - w_int * scale
    assert change.abs().sum() > 0
    expected = read.reshape(5, 7, 10) + F.linear(matmul.input_quantizer(x), change)
    assert torch.allclose(y_moved, expected + layer.bias.detach(), rtol=0, atol=1e-5)
    weight = layer.weight.detach()
    fake_quant_value = F.linear(matmul.input_quantizer(x), matmul.weight_quantizer(weight))
    # Evaluation mode and other executions ignore the method.
    layer.eval()
    assert torch.equal(layer(x), fake_quant_value + layer.bias.detach())


def test_noise_injection_forwards_calibrated_noisy_weights_with_fake_quant_gradient():
    layer, x = linear_pair("noise_injection")
    _, *fake_quant_grads = forward_backward(layer, x)
    matmul, weight = layer.matmul, layer.weight.detach()
    matmul.training_method = "noise_injection"
    matmul.begin_training_step(99, weight.device)
    y, *grads = forward_backward(layer, x)
    generator = torch.Generator().manual_seed(stable_seed(99, "probe"))
    noisy = calibrate_weight_noise(matmul.hardware).sample(
        matmul.weight_quantizer.integers(weight), generator
    )
    expected = F.linear(matmul.input_quantizer(x), noisy * matmul.weight_quantizer.scale(weight))
    assert torch.allclose(y, expected + layer.bias.detach(), rtol=0, atol=1e-6)
    # Weight and bias: fake_quant's straight-through gradient; the input's flows through the
    # noisy weights the forward used (the perturbation is part of the layer).
    for mine, reference in zip(grads[1:], fake_quant_grads[1:], strict=True):
        assert torch.equal(mine, reference)
    upstream = torch.linspace(-1, 1, 10).expand(5, 7, 10)
    noisy_weight = noisy * matmul.weight_quantizer.scale(weight)
    inside = matmul.input_quantizer.dac.max_code * matmul.input_quantizer.scale()
    expected_x = (upstream @ noisy_weight) * (
        x.abs() <= inside * matmul.input_quantizer.dac.steps_per_code
    )
    assert torch.allclose(grads[0], expected_x, rtol=0, atol=1e-6)


class InterruptingBrain(LossRecordingBrain):
    """Stops (like a killed job) in the middle of training batch ``stop_at``."""

    stop_at = 0

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        super().on_fit_batch_end(batch, outputs, loss, should_step)
        if self.memristor.training_step == self.stop_at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["chip_in_the_loop", "noise_injection"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, method):
    # 2 epochs of 6 batches; checkpoints after every batch; training chips of 2 steps, so the
    # interruption (in batch 10, after the checkpoint of batch 9) resumes mid-round.
    options = {"batch_size": 1, "ckpt_interval_steps": 1}
    reference, _ = train(tmp_path / "straight", method, epochs=2, **options)
    InterruptingBrain.stop_at = 10
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", method, epochs=2, brain_class=InterruptingBrain, **options)
    resumed, brain = train(tmp_path / "resumed", method, epochs=2, **options)
    assert brain.memristor.training_step == 12
    expected = reference["model"].state_dict()
    for key, value in resumed["model"].state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_hardware_aware_checkpoint_runs_test_only_in_every_mode(tmp_path):
    train(tmp_path, "chip_in_the_loop", epochs=1)
    for method in (None, "chip_in_the_loop"):
        hparams = load_hparams(tmp_path, seed=5, training_method=method)
        brain = make_brain(CTCBrain, hparams, test_only=True)
        brain.evaluate(toy_dataset(1, count=3), min_key="WER", test_loader_kwargs={"batch_size": 3})
        assert brain.executions[sb.Stage.TEST] == {"digital", "fake_quant", "analog"}
        best = hparams["checkpointer"].find_checkpoint(min_key="WER")
        for key, value in torch.load(best.paramfiles["model"]).items():
            assert torch.equal(hparams["model"].state_dict()[key], value)
        # Evaluation programs evaluation chips only; the saved training step came back.
        assert brain.memristor.training_step == 2
        assert {m.hardware.seed for m in hardware_matmuls(brain.memristor.model)} == {11}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training_method": "chip"}, "training_method='chip' is invalid"),
        ({"training_method": "noise_injection", "train_execution": "digital"}, "needs fake_quant"),
        ({"reprogram_every": 0}, "reprogram_every=0 is invalid"),
    ],
)
def test_hardware_aware_configuration_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_hparams(tmp_path, **overrides)


def test_analog_validation_uses_a_chip_outside_the_evaluation_plan():
    hook = MemristorHook(HardwareConfig(seed=11), valid_execution="analog", chips=5, include=["*"])
    hook.convert({"net": torch.nn.Sequential(torch.nn.Linear(4, 3))})
    hook.use_stage(sb.Stage.VALID)
    (matmul,) = hardware_matmuls(hook.model)
    assert matmul.execution == "analog" and matmul.hardware.seed == 11 + 2**62
    assert matmul.hardware.seed not in {seed for _, seed in hook.evaluation_plan()}
    hook.use_stage(sb.Stage.TEST)
    assert matmul.hardware.seed == 11

"""MemristorBrain / MemristorHook with a real SpeechBrain CTC recipe: fit, checkpoints, recovery
in every direction, --test_only multi-chip analog evaluation and its result tables."""

import csv
import json
import pathlib
import statistics

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.checkpoints import Checkpointer, average_checkpoints
from speechbrain.utils.data_utils import undo_padding

from speechbrain_memristor.brain import EvaluationRun, MemristorBrain, MemristorHook
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import hardware_matmuls, quantizer_state_dict

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
RUN_OPTS = {"device": "cpu", "noprogressbar": True}


def load_hparams(output_folder, seed=0, **overrides):
    torch.manual_seed(seed)
    with open(FIXTURES / "memristor_brain.yaml") as stream:
        return load_hyperpyyaml(stream, {"output_folder": str(output_folder), **overrides})


def toy_dataset(seed, count=6, frames=40, n_feats=20, vocab=6, tokens=3):
    """Random features with random token targets (the model can only memorize them)."""
    generator = torch.Generator().manual_seed(seed)
    data = {
        f"utt{seed}_{index}": {
            "feats": torch.randn(frames - 4 * (index % 2), n_feats, generator=generator),
            "tokens": torch.randint(1, vocab, (tokens,), generator=generator),
        }
        for index in range(count)
    }
    return DynamicItemDataset(data, output_keys=["id", "feats", "tokens"])


class CTCRecipe:
    """The recipe side of a tiny CTC experiment (shared by the memristor and plain Brains)."""

    def compute_forward(self, batch, stage):
        feats, lengths = batch.feats
        encoded = self.modules.enc(self.modules.CNN(feats), lengths)
        self.executions.setdefault(stage, set()).update(
            matmul.execution for matmul in executions_of(self)
        )
        return F.log_softmax(self.modules.ctc_lin(encoded), dim=-1), lengths

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lengths = predictions
        tokens, token_lengths = batch.tokens
        loss = self.hparams.ctc_cost(log_probs, tokens, lengths, token_lengths)
        if stage != sb.Stage.TRAIN:
            hypotheses = sb.decoders.ctc_greedy_decode(log_probs, lengths, blank_id=0)
            self.wer_metric.append(batch.id, hypotheses, undo_padding(tokens, token_lengths))
        return loss

    def on_stage_start(self, stage, epoch=None):  # like many recipes: no super() call
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        self.stage_losses[stage] = stage_loss
        if stage == sb.Stage.VALID:
            wer = self.wer_metric.summarize("error_rate")
            self.checkpointer.save_and_keep_only(meta={"WER": wer}, min_keys=["WER"], num_to_keep=2)


def executions_of(brain):
    hook = getattr(brain, "memristor", None)
    return hardware_matmuls(hook.model) if hook is not None else []


class CTCBrain(CTCRecipe, MemristorBrain):
    executions: dict  # stage -> execution modes seen in compute_forward
    stage_losses: dict  # stage -> last stage loss


class PlainCTCBrain(CTCRecipe, sb.Brain):
    executions: dict
    stage_losses: dict


def make_brain(cls, hparams, checkpointer=None, **run_opts):
    brain = cls(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={**RUN_OPTS, **run_opts},
        checkpointer=checkpointer or hparams["checkpointer"],
    )
    brain.executions = {}
    brain.stage_losses = {}
    return brain


def fit(brain, hparams):
    brain.fit(
        hparams["epoch_counter"],
        toy_dataset(0),
        toy_dataset(1, count=3),
        train_loader_kwargs={"batch_size": 3},
        valid_loader_kwargs={"batch_size": 3},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A QAT experiment trained for 2 epochs with a checkpoint after each."""
    folder = tmp_path_factory.mktemp("qat")
    hparams = load_hparams(folder)
    brain = make_brain(CTCBrain, hparams)
    fit(brain, hparams)
    return folder, hparams, brain


def test_fit_trains_in_fake_quant_and_checkpoints_digital_keys(trained):
    folder, hparams, brain = trained
    assert brain.executions == {sb.Stage.TRAIN: {"fake_quant"}, sb.Stage.VALID: {"fake_quant"}}
    checkpoints = hparams["checkpointer"].find_checkpoints()
    assert len(checkpoints) == 2
    plain_model = load_hparams(folder / "unused")["asr"]["model"]  # never converted
    for checkpoint in checkpoints:
        saved_model = torch.load(checkpoint.paramfiles["model"])
        assert list(saved_model) == list(plain_model.state_dict())
        saved = torch.load(checkpoint.paramfiles["memristor"])
        assert set(saved["quantizers"]) == set(quantizer_state_dict(brain.memristor.model))
        assert all(torch.isfinite(value) for value in saved["quantizers"].values())
        assert saved["hardware"] == hparams["hardware"].to_dict() and saved["seed"] == 11


def read_tables(folder, name="test"):
    stem = pathlib.Path(folder) / f"memristor_{name}"
    with open(f"{stem}.csv") as stream:
        rows = list(csv.DictReader(stream))
    return json.loads(pathlib.Path(f"{stem}.json").read_text()), rows, pathlib.Path(f"{stem}.md")


def test_test_only_evaluates_two_analog_chips_and_writes_tables(trained):
    folder = trained[0]
    hparams = load_hparams(folder, seed=5)  # fresh objects with other initial weights
    brain = make_brain(CTCBrain, hparams, test_only=True)
    fit(brain, hparams)  # --test_only: skips training (and on_fit_start)
    brain.evaluate(toy_dataset(1, count=3), min_key="WER", test_loader_kwargs={"batch_size": 3})

    best = hparams["checkpointer"].find_checkpoint(min_key="WER")
    for key, value in torch.load(best.paramfiles["model"]).items():
        assert torch.equal(hparams["model"].state_dict()[key], value)  # recovered for evaluation
    saved = torch.load(best.paramfiles["memristor"])["quantizers"]
    assert all(
        torch.equal(v, saved[k]) for k, v in quantizer_state_dict(brain.memristor.model).items()
    )
    assert brain.executions[sb.Stage.TEST] == {"digital", "fake_quant", "analog"}
    assert {m.hardware.seed for m in hardware_matmuls(brain.memristor.model)} == {11}

    document, rows, markdown = read_tables(folder)
    runs = document["runs"]
    assert [(run["execution"], run["seed"]) for run in runs] == [
        ("digital", None),
        ("fake_quant", None),
        ("analog", 11),
        ("analog", 12),
    ]
    analog = [run for run in runs if run["execution"] == "analog"]
    # Two chips with independent device randomness give different test losses.
    assert analog[0]["loss"] != analog[1]["loss"]
    summary = document["analog_summary"]
    wers = [run["metric"] for run in analog]
    assert summary["chips"] == 2 and summary["seeds"] == [11, 12]
    assert summary["metric"]["mean"] == pytest.approx(statistics.fmean(wers))
    assert summary["metric"]["std"] == pytest.approx(statistics.stdev(wers))
    assert summary["metric"]["min"] == min(wers) and summary["metric"]["max"] == max(wers)
    losses = [run["loss"] for run in analog]
    assert summary["loss"]["std"] == pytest.approx(statistics.stdev(losses))
    assert summary["loss"]["mean"] == pytest.approx(statistics.fmean(losses))
    assert [row["execution"] for row in rows] == [
        "digital",
        "fake_quant",
        "analog",
        "analog",
        "analog mean",
        "analog std",
        "analog min",
        "analog max",
    ]
    assert float(rows[2]["WER"]) == pytest.approx(wers[0], abs=1e-4)
    assert "| analog | 12 |" in markdown.read_text()
    assert not list(pathlib.Path(folder).glob(".tmp-*"))  # atomic writes leave no temporaries
    # The digital run of the converted model equals a plain Brain on the same checkpoint.
    plain = make_brain(PlainCTCBrain, load_hparams(folder, seed=6))
    plain_loss = plain.evaluate(
        toy_dataset(1, count=3), min_key="WER", test_loader_kwargs={"batch_size": 3}
    )
    assert runs[0]["loss"] == pytest.approx(plain_loss, rel=1e-6)


def test_digital_checkpoint_runs_in_analog_and_qat_checkpoint_runs_digital(tmp_path, trained):
    # Digital training with a plain Brain, then analog evaluation of its checkpoint.
    hparams = load_hparams(tmp_path, epochs=1)
    plain_hparams = dict(hparams)
    plain_hparams.pop("memristor")
    plain = make_brain(PlainCTCBrain, plain_hparams)
    fit(plain, plain_hparams)
    analog_hparams = load_hparams(tmp_path, seed=7, chips=1, compare=["digital"])
    brain = make_brain(CTCBrain, analog_hparams)
    with pytest.warns(UserWarning, match="missing a load path for memristor"):
        brain.evaluate(toy_dataset(1, count=3), min_key="WER", test_loader_kwargs={"batch_size": 3})
    document, _, _ = read_tables(tmp_path)
    assert [run["execution"] for run in document["runs"]] == ["digital", "analog"]
    assert document["runs"][0]["loss"] == pytest.approx(
        plain.evaluate(
            toy_dataset(1, count=3), min_key="WER", test_loader_kwargs={"batch_size": 3}
        ),
        rel=1e-6,
    )
    # The QAT checkpoint loads into a plain digital model (its memristor entry is ignored).
    qat_folder = trained[0]
    digital = load_hparams(qat_folder / "digital", seed=8)
    checkpointer = Checkpointer(qat_folder / "save", {"model": digital["model"]})
    checkpoint = checkpointer.recover_if_possible(min_key="WER")
    assert checkpoint is not None and "memristor" in checkpoint.paramfiles
    saved = torch.load(checkpoint.paramfiles["model"])
    assert all(torch.equal(digital["model"].state_dict()[k], v) for k, v in saved.items())


def test_hook_configuration_errors(tmp_path):
    hardware = HardwareConfig()
    with pytest.raises(ValueError, match="MemristorHook.test_execution"):
        MemristorHook(hardware, test_execution="analogue")
    with pytest.raises(ValueError, match="chips=0"):
        MemristorHook(hardware, chips=0)
    with pytest.raises(ValueError, match="compare contains 'analog'"):
        MemristorHook(hardware, compare=["analog"])
    with pytest.raises(TypeError, match="HardwareConfig"):
        MemristorHook({"weight_bits": 3})
    hparams = load_hparams(tmp_path)
    hparams.pop("memristor")
    with pytest.raises(ValueError, match="no MemristorHook"):
        make_brain(CTCBrain, hparams)
    hook = MemristorHook(hardware, include=["*.ffn_modul1"])
    with pytest.raises(ValueError, match="matches nothing"):
        CTCBrain(modules=hparams["modules"], hparams=hparams, run_opts=RUN_OPTS, memristor=hook)


def test_averaged_checkpoints_load_strictly_and_chips_follow_the_weights(trained):
    _, hparams, brain = trained  # runs last: it changes the trained model's weights
    brain.memristor.use("analog")
    brain.modules.eval()
    batch = PaddedBatch([toy_dataset(1, count=1)[0]])
    matmuls = hardware_matmuls(brain.memristor.model)
    with torch.no_grad():
        brain.compute_forward(batch, sb.Stage.TEST)
        chips = [matmul.chip for matmul in matmuls]
        averaged = average_checkpoints(hparams["checkpointer"].find_checkpoints(), "model")
        hparams["model"].load_state_dict(averaged, strict=True)
        brain.compute_forward(batch, sb.Stage.TEST)
    assert all(matmul.chip is not chip for matmul, chip in zip(matmuls, chips, strict=True))


def test_tables_of_repeated_evaluations_keep_earlier_ones(tmp_path):
    hook = MemristorHook(HardwareConfig(), chips=2, metric=None)
    runs = [EvaluationRun("analog", 0, 1.5, None), EvaluationRun("analog", 1, 2.5, None)]
    first = hook.write_tables(tmp_path, "test", runs)
    second = hook.write_tables(tmp_path, "test", runs[:1])
    assert first["json"].endswith("memristor_test.json")
    assert second["json"].endswith("memristor_test_2.json")
    summary = json.loads(pathlib.Path(first["json"]).read_text())["analog_summary"]
    assert summary["loss"] == {"mean": 2.0, "std": pytest.approx(0.5**0.5), "min": 1.5, "max": 2.5}
    assert summary["metric"] is None
    rows = list(csv.DictReader(pathlib.Path(first["csv"]).read_text().splitlines()))
    assert list(rows[0]) == ["execution", "seed", "loss"] and rows[2]["loss"] == "2.0000"

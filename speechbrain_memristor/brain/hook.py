"""`MemristorHook`: what to map and how each stage executes, configured in hparams YAML.

hparams::

    hardware: !new:speechbrain_memristor.config.HardwareConfig
        weight_bits: 3
    memristor: !new:speechbrain_memristor.brain.MemristorHook
        hardware: !ref <hardware>
        layer_hardware:                 # optional per-layer settings (later patterns win)
            "*.mha_layer.out_proj": {adc_precision_bits: 6, adc_range_bits: 6}
        train_execution: fake_quant     # QAT
        test_execution: analog
        chips: 10                       # analog test on chips of seeds s, s+1, ..., s+9
        compare: [digital, fake_quant]  # also tabulate these once each
        training_method: chip_in_the_loop   # or noise_injection; null: plain QAT
        reprogram_every: 50             # chip in the loop: new training chips every 50 steps

Hardware-aware training (`speechbrain_memristor.layers.hardware_aware`): with a
``training_method`` the fake_quant training stage takes the forward value of training chips
(``chip_in_the_loop``) or of calibrated noisy weights (``noise_injection``) and keeps
fake_quant's gradient. The hook counts training batches (``training_step``, checkpointed):
before batch t it reprograms the training chips from the current weights when
t // reprogram_every starts a new round (global seed `training_chip_seed`(seed, round), a text,
so never an evaluation chip's) and seeds the step's noise from (seed, t) only, never the rank:
every DDP rank holds the same chips, and a run resumed from an intra-epoch checkpoint (which
saves the step and the chips' programmed integers) continues identically.

The recipe's Brain (`MemristorBrain`) converts its modules through the hook, switches modes
per stage and runs the evaluation plan; see `speechbrain_memristor.brain.memristor_brain`.

Checkpoints: module state_dicts keep the keys of the digital model, so digital, QAT and analog
runs load each other's checkpoints (and averaged ones). The hook itself is a recoverable
(``memristor``, optional on load) saving the quantizer calibration and, for reproducibility, the
hardware config, chip seed, per-layer settings (``layer_hardware``) and every layer's effective
config (a checkpoint with other per-layer settings is logged on load; the hook's own settings
stay in use); chips themselves are never saved: they are a pure function of
(weights, config, seed, layer name) and are programmed lazily on the first analog read after
the weights change.

Evaluation: the Brain runs the test set once per entry of `MemristorHook.evaluation_plan`
and the hook writes the result table (`results`). Chip seeds depend only on (seed, layer name),
so a chip is the same on every rank; under DDP (torchrun) the plan's passes, or the test data,
are spread over the ranks (`speechbrain_memristor.brain.scale_out`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechbrain_memristor.brain.results import EvaluationRun, EvaluationTable
from speechbrain_memristor.config import CONFIG_VERSION, HardwareConfig
from speechbrain_memristor.convert import (
    LayerHardware,
    check_layer_hardware,
    convert,
    hardware_layers,
    hardware_matmuls,
    layer_configs,
    load_quantizer_state_dict,
    quantizer_state_dict,
    set_chip_seed,
    set_execution,
)
from speechbrain_memristor.layers.hardware_aware import (
    TrainingMethod,
    check_training_method,
    training_chip_seed,
    training_step_seed,
)
from speechbrain_memristor.layers.matmul import HardwareMatmul, TrainingChipSource
from speechbrain_memristor.layers.modes import Execution, check_execution

logger = logging.getLogger(__name__)

COMPARABLE_MODES = ("digital", "fake_quant")
CHECKPOINT_NAME = "memristor"
VALIDATION_SEED_OFFSET = 2**62


@register_checkpoint_hooks
class MemristorHook:
    """What to map, how to execute each stage, and how many chips to evaluate (from hparams).

    Arguments:
        hardware: the simulated hardware.
        train_execution: mode of the training stage ("fake_quant" for QAT, or "digital";
            None: "fake_quant").
        valid_execution: mode of validation (None: same as training; "analog" validates on
            the chip of `validation_seed`, never an evaluation chip; after chip-in-the-loop
            training, fake_quant validation no longer predicts the chips).
        test_execution: mode of ``evaluate`` ("analog" runs once per chip; None: "analog").
        execution: one switch for recipes, instead of the two above: "digital" trains and
            tests digitally, "fake_quant" trains and tests fake-quantized, "analog" trains
            fake-quantized (QAT) and tests on the chips. Giving it together with
            train_execution or test_execution is an error.
        include, exclude: layer patterns (`speechbrain_memristor.convert`); include None is the
            default mapping for what the model contains (the paper's for a Conformer).
        max_cells: warn when the mapped layers need more cells than this (None: the convert
            default, a few times the model's weight count; `speechbrain_memristor.convert`).
        layer_hardware: per-layer settings, layer pattern -> HardwareConfig field overrides
            (e.g. ``{"*.mha_layer.out_proj": {"adc_precision_bits": 6}}``; later patterns win;
            `speechbrain_memristor.convert`), applied at conversion.
        chips: number of chips for analog evaluation (seeds seed, seed+1, ...).
        seed: first chip seed (None: ``hardware.seed``).
        compare: modes from ("digital", "fake_quant") also evaluated once each and tabulated.
        metric: attribute of the Brain holding the test metric after ``evaluate`` (an object
            with ``summarize(field)``, e.g. ErrorRateStats), or None to tabulate the loss only.
        metric_key: field passed to ``summarize`` (None: call it without argument).
        metric_name: column title of the metric.
        output_folder: folder of the result tables (None: the Brain's hparams.output_folder).
        training_method: hardware-aware training of the fake_quant training stage,
            "chip_in_the_loop" or "noise_injection" (`layers.hardware_aware`; None: plain QAT).
        reprogram_every: chip in the loop: training steps (batches) per set of training chips.
    """

    def __init__(
        self,
        hardware: HardwareConfig,
        train_execution: str | None = None,
        valid_execution: str | None = None,
        test_execution: str | None = None,
        execution: str | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        layer_hardware: LayerHardware | None = None,
        max_cells: int | None = None,
        chips: int = 1,
        seed: int | None = None,
        compare: Sequence[str] = (),
        metric: str | None = "wer_metric",
        metric_key: str | None = "error_rate",
        metric_name: str = "WER",
        output_folder: str | os.PathLike | None = None,
        training_method: str | None = None,
        reprogram_every: int = 1,
    ):
        if not isinstance(hardware, HardwareConfig):
            raise TypeError(
                f"MemristorHook.hardware must be a HardwareConfig, got {type(hardware).__name__}; "
                "use hardware: !new:speechbrain_memristor.config.HardwareConfig."
            )
        train_execution, test_execution = _stage_modes(execution, train_execution, test_execution)
        valid_execution = (
            None if valid_execution is None else _check_mode("valid_execution", valid_execution)
        )
        if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
            raise ValueError(f"MemristorHook.chips={chips!r} is invalid: expected an integer >= 1.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"MemristorHook.seed={seed!r} is invalid: expected an integer >= 0.")
        compare = tuple(compare or ())
        for mode in compare:
            if mode not in COMPARABLE_MODES:
                raise ValueError(
                    f"MemristorHook.compare contains {mode!r}; choose from {COMPARABLE_MODES}."
                )
        method = check_training_method(training_method, "MemristorHook.training_method")
        if method is not None and train_execution != Execution.FAKE_QUANT:
            raise ValueError(
                f"MemristorHook.training_method={method.value!r} needs fake_quant training, but "
                f"train_execution is {train_execution.value!r}; use execution: analog (or "
                "fake_quant), or set training_method: null."
            )
        if isinstance(reprogram_every, bool) or not isinstance(reprogram_every, int):
            reprogram_every = -1
        if reprogram_every < 1:
            raise ValueError(
                f"MemristorHook.reprogram_every={reprogram_every!r} is invalid: expected an "
                "integer >= 1 (training steps per set of training chips)."
            )
        self.training_method = method
        self.reprogram_every = reprogram_every
        self.training_step = 0
        self.hardware = hardware if seed is None else hardware.replace(seed=seed)
        self.train_execution = train_execution
        self.valid_execution = valid_execution or train_execution
        self.test_execution = test_execution
        self.include = None if include is None else list(include)
        self.exclude = None if exclude is None else list(exclude)
        self.layer_hardware = check_layer_hardware(layer_hardware)
        self.max_cells = max_cells
        self.chips = chips
        self.compare = compare
        self.metric = metric
        self.metric_key = metric_key
        self.metric_name = metric_name
        self.output_folder = output_folder
        self.model: dict[str, torch.nn.Module] | None = None
        self._table_names: set[str] = set()

    @property
    def seed(self) -> int:
        """Seed of the first chip."""
        return self.hardware.seed

    def convert(self, modules: Mapping[str, torch.nn.Module] | torch.nn.ModuleDict) -> None:
        """Convert ``modules`` (each entry a root, kept as is) in place, in the training mode."""
        if self.model is not None:
            raise RuntimeError("This MemristorHook already converted a model; use one per Brain.")
        if not isinstance(modules, Mapping | torch.nn.ModuleDict) or not len(modules):
            raise ValueError(
                "MemristorHook.convert needs the Brain's modules as a non-empty mapping of names "
                f"to modules, got {modules!r}."
            )
        model = dict(modules.items())
        convert(
            model,
            self.hardware,
            self.train_execution,
            self.include,
            self.exclude,
            layer_hardware=self.layer_hardware,
            max_cells=self.max_cells,
        )
        self.model = model
        for matmul in hardware_matmuls(model):
            matmul.training_method = self.training_method

    def layer_configs(self) -> dict[str, dict]:
        """{layer name: its effective hardware fields} of every mapped matrix (chip seed: the
        hook's first chip, as saved)."""
        return {
            name: {**config.to_dict(), "seed": self.seed}
            for name, config in sorted(layer_configs(self._converted()).items())
        }

    def _converted(self) -> dict[str, torch.nn.Module]:
        if self.model is None:
            raise RuntimeError("MemristorHook has not converted a model yet (call convert first).")
        return self.model

    def use(self, execution: str, seed: int | None = None) -> None:
        """Run the converted layers in ``execution`` with chips of ``seed`` (None: first chip)."""
        model = self._converted()
        set_execution(model, execution)
        set_chip_seed(model, self.seed if seed is None else seed)

    def enter_stage(self, stage: sb.Stage) -> None:
        """At the start of a training or validation stage: switch to its mode (first chip).
        Test stages keep the mode the evaluation plan set."""
        if stage != sb.Stage.TEST:
            self.use_stage(stage)

    def end_stage(self, stage: sb.Stage) -> None:
        """At the end of a training stage (once per epoch): merge the DDP ranks' quantizers."""
        if stage == sb.Stage.TRAIN:
            self.synchronize_quantizers()

    @property
    def validation_seed(self) -> int:
        """Chip seed of analog validation: (seed + 2^62) mod 2^63, never an evaluation chip's
        (seed + k for k < chips, as long as chips < 2^62), so checkpoints are not selected on
        a test chip."""
        return (self.seed + VALIDATION_SEED_OFFSET) % 2**63

    def use_stage(self, stage: sb.Stage) -> None:
        """Switch to the configured mode of ``stage`` (first chip; analog validation: the
        validation chip)."""
        modes = {
            sb.Stage.TRAIN: self.train_execution,
            sb.Stage.VALID: self.valid_execution,
            sb.Stage.TEST: self.test_execution,
        }
        analog_validation = stage == sb.Stage.VALID and modes[stage] == Execution.ANALOG
        self.use(modes[stage], self.validation_seed if analog_validation else None)

    def _projections(self) -> list[tuple[HardwareMatmul, torch.Tensor]]:
        """(matmul, weight) of every mapped matrix, once each."""
        pairs: dict[int, tuple[HardwareMatmul, torch.Tensor]] = {}
        for _, layer in hardware_layers(self._converted()):
            for matmul, weight in layer.projections():
                pairs.setdefault(id(matmul), (matmul, weight))
        return list(pairs.values())

    def start_train_batch(self, batch: object = None) -> None:
        """Before each training batch: new training chips at the start of a round (chip in the
        loop) and the step's noise seeds (with a training method), then count the step."""
        del batch
        step = self.training_step
        self.training_step = step + 1
        if self.training_method is None:
            return
        step_seed = training_step_seed(self.seed, step)
        seed = training_chip_seed(self.seed, step // self.reprogram_every)
        for matmul, weight in self._projections():
            if self.training_method == TrainingMethod.CHIP_IN_THE_LOOP:
                source = matmul.training_chip_source
                if source is None or source.seed != seed:
                    matmul.program_training_chip(weight, seed)
                elif matmul.training_chip is None:  # restored from a checkpoint
                    matmul.restore_training_chip(source, weight.device)
            matmul.begin_training_step(step_seed, weight.device)

    def evaluation_plan(self) -> list[tuple[str, int | None]]:
        """(execution, chip seed) of each test pass: comparisons first, then the test mode."""
        plan: list[tuple[str, int | None]] = [
            (mode, None) for mode in self.compare if mode != self.test_execution
        ]
        if self.test_execution == Execution.ANALOG:
            plan += [(Execution.ANALOG, self.seed + chip) for chip in range(self.chips)]
        else:
            plan.append((self.test_execution, None))
        return plan

    def read_metric(self, brain: sb.Brain) -> float | None:
        """The test metric the Brain computed in its last evaluation (None if not configured)."""
        if self.metric is None:
            return None
        stats = getattr(brain, self.metric, None)
        if stats is None or not hasattr(stats, "summarize"):
            raise AttributeError(
                f"MemristorHook.metric={self.metric!r}, but after evaluation the Brain has no "
                f"attribute {self.metric!r} with a summarize() method. Set metric to the attribute "
                "holding your ErrorRateStats (e.g. wer_metric), or to null to tabulate the loss."
            )
        value = stats.summarize(self.metric_key) if self.metric_key else stats.summarize()
        return float(value)

    def synchronize_quantizers(self) -> None:
        """Merge the input (and output) ranges observed on every DDP rank (no-op without
        torch.distributed).

        "minmax" observers (each layer's own ``hardware.observer``) take the global min of
        mins and max of maxes; "moving_average" observers (and any other state) take the mean
        over the ranks that observed something (an uncalibrated rank's +-inf would poison the
        mean). Every rank then quantizes with the same ranges, and the checkpoint (saved by the
        main process) holds them.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world_size = torch.distributed.get_world_size()
        if world_size == 1:
            return
        model = self._converted()
        state = quantizer_state_dict(model)
        low, high = torch.distributed.ReduceOp.MIN, torch.distributed.ReduceOp.MAX
        # input (min, max) and, with output_bits, output (output_min, output_max) ranges
        reductions = {"min": low, "max": high, "output_min": low, "output_max": high}
        # each layer's own observer (per-layer settings may change it)
        observers = {matmul.name: matmul.hardware.observer for matmul in hardware_matmuls(model)}
        groups: dict[object, list[str]] = {}
        for key in state:
            layer, leaf = key.rsplit(".", 1)
            operation = reductions.get(leaf) if observers[layer] == "minmax" else None
            groups.setdefault(operation, []).append(key)
        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        for operation, keys in groups.items():
            packed = torch.stack([state[key].float() for key in keys]).to(device)
            if operation is None:
                packed = _mean_of_finite(packed)
            else:
                torch.distributed.all_reduce(packed, op=operation)
            state.update(zip(keys, packed.cpu().unbind(), strict=True))
        load_quantizer_state_dict(model, state)

    def register(self, checkpointer: sb.utils.checkpoints.Checkpointer) -> None:
        """Add this hook to ``checkpointer`` (optional on load: digital checkpoints lack it)."""
        for name, recoverable in checkpointer.recoverables.items():
            if recoverable is self:
                checkpointer.optional_recoverables[name] = True
                return
        checkpointer.add_recoverable(CHECKPOINT_NAME, self, optional_load=True)

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Save quantizer calibration, hardware config (with its version), chip seed, the
        per-layer settings (``layer_hardware``) and every layer's effective config
        (``layer_configs``; not the chips), and the hardware-aware training step with what
        the training chips were programmed from."""
        torch.save(
            {
                "quantizers": quantizer_state_dict(self._converted()),
                "hardware": self.hardware.to_dict(),
                "hardware_version": CONFIG_VERSION,
                "seed": self.seed,
                "layer_hardware": self.layer_hardware,
                "layer_configs": self.layer_configs(),
                "training_step": self.training_step,
                "training_chips": {
                    matmul.name: matmul.training_chip_source._asdict()
                    for matmul in hardware_matmuls(self._converted())
                    if matmul.training_chip_source is not None
                },
            },
            path,
        )

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = False) -> None:
        """Restore quantizer calibration; log how the saved hardware differs from the current."""
        del end_of_epoch
        saved = torch.load(path, map_location="cpu")
        missing, unexpected = load_quantizer_state_dict(
            self._converted(), saved["quantizers"], strict=False
        )
        if missing or unexpected:
            logger.warning(
                "Quantizer state in %s: %d layer entries missing (left uncalibrated or as they "
                "were), %d not in this model (other include/exclude?).",
                path,
                len(missing),
                len(unexpected),
            )
        saved_hardware = HardwareConfig.from_saved(
            saved["hardware"], saved.get("hardware_version"), source=os.fspath(path)
        ).to_dict()
        current = self.hardware.to_dict()
        changed = {
            key: (value, current[key])
            for key, value in saved_hardware.items()
            if current[key] != value
        }
        if changed:
            logger.info("Hardware differs from the checkpoint's (saved, now): %s", changed)
        self._log_layer_differences(saved, os.fspath(path))
        self.training_step = saved.get("training_step", 0)
        sources = saved.get("training_chips", {})
        for matmul in hardware_matmuls(self._converted()):
            if matmul.name in sources:  # rebuilt at the next training batch
                matmul.training_chip_source = TrainingChipSource(**sources[matmul.name])
                matmul.training_chip = None

    def _log_layer_differences(self, saved: Mapping, source: str) -> None:
        """Log how the saved per-layer settings differ from the current ones (checkpoints
        saved before per-layer settings existed count as having none)."""
        saved_patterns = saved.get("layer_hardware", {})
        if saved_patterns != self.layer_hardware:
            logger.info(
                "Per-layer hardware (layer_hardware) differs from the checkpoint's: saved %s, "
                "now %s.",
                saved_patterns,
                self.layer_hardware,
            )
        if "layer_configs" not in saved:
            return
        saved_base, current_base = saved["hardware"], self.hardware.to_dict()

        def own(fields: Mapping, base: Mapping) -> dict:  # a layer's fields that differ from base
            return {key: value for key, value in fields.items() if base.get(key, value) != value}

        current = self.layer_configs()
        differences = []
        for name in sorted(set(saved["layer_configs"]) | set(current)):
            if name not in current or name not in saved["layer_configs"]:
                where = "not mapped now" if name not in current else "not in the checkpoint"
                differences.append(f"{name}: {where}")
                continue
            before = own(saved["layer_configs"][name], saved_base)
            now = own(current[name], current_base)
            if before != now:
                differences.append(f"{name}: own settings saved {before or '-'}, now {now or '-'}")
        if differences:
            logger.info(
                "Per-layer hardware differs from the checkpoint %s:\n%s",
                source,
                "\n".join(differences),
            )

    def write_tables(
        self, folder: str | os.PathLike, table_name: str, runs: Sequence[EvaluationRun]
    ) -> dict[str, str]:
        """Write ``memristor_<table_name>.{md,csv,json}`` in ``folder``; returns their paths.

        A name already written by this hook gets a suffix (``test_2``, ...), so a recipe that
        evaluates several sets without naming them keeps every table.
        """
        unique, count = table_name, 1
        while unique in self._table_names:
            count += 1
            unique = f"{table_name}_{count}"
        self._table_names.add(unique)
        table = EvaluationTable(
            runs=tuple(runs),
            metric_name=self.metric_name if self.metric else None,
            hardware=self.hardware.to_dict(),
            hardware_version=CONFIG_VERSION,
            include=self.include,
            exclude=self.exclude,
            layer_hardware=self.layer_hardware,
        )
        return table.write(folder, unique)


def _mean_of_finite(values: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean over DDP ranks of the finite values (all-reduced); an entry no rank
    holds finite stays as it is on this rank."""
    finite = values.isfinite()
    sums_and_counts = torch.stack([torch.where(finite, values, 0.0), finite.float()])
    torch.distributed.all_reduce(sums_and_counts, op=torch.distributed.ReduceOp.SUM)
    sums, counts = sums_and_counts.unbind()
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), values)


def _check_mode(field: str, mode: str) -> Execution:
    try:
        return check_execution(mode)
    except ValueError as error:
        raise ValueError(f"MemristorHook.{field}: {error}") from None


def _stage_modes(
    execution: str | None, train_execution: str | None, test_execution: str | None
) -> tuple[Execution, Execution]:
    """(train, test) modes from the one ``execution`` switch or the two explicit ones."""
    if execution is None:
        return (
            _check_mode("train_execution", train_execution or Execution.FAKE_QUANT),
            _check_mode("test_execution", test_execution or Execution.ANALOG),
        )
    given = [
        f"{name}={value!r}"
        for name, value in (
            ("train_execution", train_execution),
            ("test_execution", test_execution),
        )
        if value is not None
    ]
    if given:
        raise ValueError(
            f"MemristorHook got execution={execution!r} and {' and '.join(given)}: execution "
            "sets both stages. Give either execution, or train_execution/test_execution."
        )
    mode = _check_mode("execution", execution)
    return (Execution.DIGITAL if mode == Execution.DIGITAL else Execution.FAKE_QUANT), mode


def find_hook(hparams: Mapping | None) -> MemristorHook:
    """The single MemristorHook among the top-level values of ``hparams``."""
    hooks = [value for value in (hparams or {}).values() if isinstance(value, MemristorHook)]
    if len(hooks) == 1:
        return hooks[0]
    if not hooks:
        raise ValueError(
            "MemristorBrain found no MemristorHook in hparams; add e.g. `memristor: "
            "!new:speechbrain_memristor.brain.MemristorHook` with `hardware: !ref <hardware>`, "
            "or pass memristor=... to the Brain."
        )
    raise ValueError(
        f"hparams hold {len(hooks)} MemristorHook objects; pass the one to use as memristor=..."
    )

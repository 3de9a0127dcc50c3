"""SpeechBrain integration: a hook configured in hparams YAML and a Brain base class using it.

hparams::

    hardware: !new:speechbrain_memristor.config.HardwareConfig
        weight_bits: 3
    memristor: !new:speechbrain_memristor.brain.MemristorHook
        hardware: !ref <hardware>
        train_execution: fake_quant     # QAT
        test_execution: analog
        chips: 10                       # analog test on chips of seeds s, s+1, ..., s+9
        compare: [digital, fake_quant]  # also tabulate these once each

recipe: ``class ASR(MemristorBrain)`` instead of ``class ASR(sb.Brain)``, nothing else.

`MemristorBrain.__init__` converts the Brain's modules in place before SpeechBrain builds
anything from them (optimizers are created later, in ``on_fit_start``), so conversion also
happens for ``--test_only``, which skips ``on_fit_start``. Each stage runs in its execution
mode: the mode is set when SpeechBrain's loop enters the stage (``_fit_train``, ``_fit_valid``,
``evaluate``), not in ``on_stage_start``, which recipes often override without calling super.

Checkpoints: module state_dicts keep the keys of the digital model, so digital, QAT and analog
runs load each other's checkpoints (and averaged ones). The hook itself is a recoverable
(``memristor``, optional on load) saving the quantizer calibration and, for reproducibility, the
hardware config and chip seed; chips themselves are never saved: they are a pure function of
(weights, config, seed, layer name) and are programmed lazily on the first analog read after
the weights change.

Evaluation: ``evaluate`` runs the test set once per entry of `MemristorHook.evaluation_plan`
and writes ``memristor_<table_name>.{md,csv,json}`` (atomically, main process only) in the
experiment folder: per-run metric (WER by default) and loss, and mean, std (sample, n-1), min
and max over the analog chips. Under DDP (torchrun) every rank converts and programs the same
chips: chip seeds depend only on (seed, layer name).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import LoopedLoader
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process
from torch.utils.data import DataLoader

from speechbrain_memristor.atomic import write_atomic
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    convert,
    load_quantizer_state_dict,
    quantizer_state_dict,
    set_chip_seed,
    set_execution,
)
from speechbrain_memristor.layers.matmul import check_execution

logger = logging.getLogger(__name__)

COMPARABLE_MODES = ("digital", "fake_quant")
CHECKPOINT_NAME = "memristor"


@dataclass(frozen=True)
class EvaluationRun:
    """One pass over a test set: execution mode, chip seed (analog only), loss, metric."""

    execution: str
    seed: int | None
    loss: float
    metric: float | None


@register_checkpoint_hooks
class MemristorHook:
    """What to map, how to execute each stage, and how many chips to evaluate (from hparams).

    Arguments:
        hardware: the simulated hardware.
        train_execution: mode of the training stage ("fake_quant" for QAT, or "digital").
        valid_execution: mode of validation (None: same as training).
        test_execution: mode of ``evaluate`` ("analog" runs once per chip).
        execution: one switch for recipes, instead of the two above: "digital" trains and
            tests digitally, "fake_quant" trains and tests fake-quantized, "analog" trains
            fake-quantized (QAT) and tests on the chips.
        include, exclude: layer patterns (`speechbrain_memristor.convert`); include None is the
            paper's Conformer mapping.
        chips: number of chips for analog evaluation (seeds seed, seed+1, ...).
        seed: first chip seed (None: ``hardware.seed``).
        compare: modes from ("digital", "fake_quant") also evaluated once each and tabulated.
        metric: attribute of the Brain holding the test metric after ``evaluate`` (an object
            with ``summarize(field)``, e.g. ErrorRateStats), or None to tabulate the loss only.
        metric_key: field passed to ``summarize`` (None: call it without argument).
        metric_name: column title of the metric.
        output_folder: folder of the result tables (None: the Brain's hparams.output_folder).
    """

    def __init__(
        self,
        hardware: HardwareConfig,
        train_execution: str = "fake_quant",
        valid_execution: str | None = None,
        test_execution: str = "analog",
        execution: str | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        chips: int = 1,
        seed: int | None = None,
        compare: Sequence[str] = (),
        metric: str | None = "wer_metric",
        metric_key: str | None = "error_rate",
        metric_name: str = "WER",
        output_folder: str | os.PathLike | None = None,
    ):
        if not isinstance(hardware, HardwareConfig):
            raise TypeError(
                f"MemristorHook.hardware must be a HardwareConfig, got {type(hardware).__name__}; "
                "use hardware: !new:speechbrain_memristor.config.HardwareConfig."
            )
        if execution is not None:
            _check_mode("execution", execution)
            train_execution = "digital" if execution == "digital" else "fake_quant"
            test_execution = execution
        for field, mode in (
            ("train_execution", train_execution),
            ("test_execution", test_execution),
        ):
            _check_mode(field, mode)
        if valid_execution is not None:
            _check_mode("valid_execution", valid_execution)
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
        self.hardware = hardware if seed is None else hardware.replace(seed=seed)
        self.train_execution = train_execution
        self.valid_execution = valid_execution or train_execution
        self.test_execution = test_execution
        self.include = None if include is None else list(include)
        self.exclude = None if exclude is None else list(exclude)
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
        convert(model, self.hardware, self.train_execution, self.include, self.exclude)
        self.model = model

    def _converted(self) -> dict[str, torch.nn.Module]:
        if self.model is None:
            raise RuntimeError("MemristorHook has not converted a model yet (call convert first).")
        return self.model

    def use(self, execution: str, seed: int | None = None) -> None:
        """Run the converted layers in ``execution`` with chips of ``seed`` (None: first chip)."""
        model = self._converted()
        set_execution(model, execution)
        set_chip_seed(model, self.seed if seed is None else seed)

    def use_stage(self, stage: sb.Stage) -> None:
        """Switch to the configured mode of ``stage`` (first chip)."""
        modes = {
            sb.Stage.TRAIN: self.train_execution,
            sb.Stage.VALID: self.valid_execution,
            sb.Stage.TEST: self.test_execution,
        }
        self.use(modes[stage])

    def evaluation_plan(self) -> list[tuple[str, int | None]]:
        """(execution, chip seed) of each test pass: comparisons first, then the test mode."""
        plan: list[tuple[str, int | None]] = [
            (mode, None) for mode in self.compare if mode != self.test_execution
        ]
        if self.test_execution == "analog":
            plan += [("analog", self.seed + chip) for chip in range(self.chips)]
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
        """Merge the input ranges observed on every DDP rank (no-op without torch.distributed).

        "minmax" observers take the global min of mins and max of maxes; "moving_average"
        observers (and any other state) take the mean over ranks. Every rank then quantizes
        with the same ranges, and the checkpoint (saved by the main process) holds them.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world_size = torch.distributed.get_world_size()
        if world_size == 1:
            return
        model = self._converted()
        state = quantizer_state_dict(model)
        reductions = {"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}
        if self.hardware.observer != "minmax":
            reductions = {}
        groups: dict[object, list[str]] = {}
        for key in state:
            groups.setdefault(reductions.get(key.rsplit(".", 1)[-1]), []).append(key)
        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        for operation, keys in groups.items():
            packed = torch.stack([state[key].float() for key in keys]).to(device)
            torch.distributed.all_reduce(
                packed, op=torch.distributed.ReduceOp.SUM if operation is None else operation
            )
            if operation is None:
                packed /= world_size
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
        """Save quantizer calibration, hardware config and chip seed (not the chips)."""
        torch.save(
            {
                "quantizers": quantizer_state_dict(self._converted()),
                "hardware": self.hardware.to_dict(),
                "seed": self.seed,
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
        current = self.hardware.to_dict()
        changed = {
            key: (value, current.get(key))
            for key, value in saved["hardware"].items()
            if current.get(key) != value
        }
        if changed:
            logger.info("Hardware differs from the checkpoint's (saved, now): %s", changed)

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
        os.makedirs(folder, exist_ok=True)
        summary = _summarize([run for run in runs if run.execution == "analog"])
        stem = os.path.join(folder, f"memristor_{unique}")
        document = {
            "metric": self.metric_name if self.metric else None,
            "runs": [asdict(run) for run in runs],
            "analog_summary": summary,
            "hardware": self.hardware.to_dict(),
            "include": self.include,
            "exclude": self.exclude,
        }
        paths = {
            "md": f"{stem}.md",
            "csv": f"{stem}.csv",
            "json": f"{stem}.json",
        }
        write_atomic(paths["md"], self._markdown(runs, summary))
        write_atomic(paths["csv"], self._csv(runs, summary))
        write_atomic(paths["json"], json.dumps(document, indent=2) + "\n")
        return paths

    def _columns(self) -> list[str]:
        return ["execution", "seed", *([self.metric_name] if self.metric else []), "loss"]

    def _rows(self, runs: Sequence[EvaluationRun], summary: dict) -> list[list[str]]:
        rows = []
        for run in runs:
            seed = "" if run.seed is None else str(run.seed)
            metric = [_number(run.metric)] if self.metric else []
            rows.append([run.execution, seed, *metric, _number(run.loss)])
        statistics_rows = ("mean", "std", "min", "max") if summary else ()
        for statistic in statistics_rows:
            metric = [_number(summary["metric"][statistic])] if self.metric else []
            rows.append([f"analog {statistic}", "", *metric, _number(summary["loss"][statistic])])
        return rows

    def _markdown(self, runs: Sequence[EvaluationRun], summary: dict) -> str:
        columns = self._columns()
        lines = [
            f"# Memristor evaluation ({summary['chips'] if summary else 0} analog chips)",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "|".join(" --- " for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self._rows(runs, summary)]
        return "\n".join(lines) + "\n"

    def _csv(self, runs: Sequence[EvaluationRun], summary: dict) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self._columns())
        writer.writerows(self._rows(runs, summary))
        return buffer.getvalue()


def _check_mode(field: str, mode: str) -> None:
    try:
        check_execution(mode)
    except ValueError as error:
        raise ValueError(f"MemristorHook.{field}: {error}") from None


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _statistics(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _summarize(analog_runs: list[EvaluationRun]) -> dict:
    """Mean, sample std, min, max of the analog runs' metric and loss ({} when none)."""
    if not analog_runs:
        return {}
    summary = {
        "chips": len(analog_runs),
        "seeds": [run.seed for run in analog_runs],
        "loss": _statistics([run.loss for run in analog_runs]),
    }
    metrics = [run.metric for run in analog_runs]
    summary["metric"] = None if None in metrics else _statistics(metrics)
    return summary


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


class MemristorBrain(sb.Brain):
    """`speechbrain.Brain` whose modules run on simulated memristor hardware.

    Same arguments as `speechbrain.Brain`, plus ``memristor`` (default: the MemristorHook found
    in ``hparams``). ``evaluate`` takes an extra ``table_name`` (file name of the result table;
    default "test", then "test_2", ... for later calls).
    """

    def __init__(
        self,
        modules=None,
        opt_class=None,
        hparams=None,
        run_opts=None,
        checkpointer=None,
        memristor: MemristorHook | None = None,
    ):
        self.memristor = memristor if memristor is not None else find_hook(hparams)
        self.memristor.convert(modules or {})
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        if checkpointer is not None:
            self.memristor.register(checkpointer)

    def _fit_train(self, *args, **kwargs):
        self.memristor.use_stage(sb.Stage.TRAIN)
        result = super()._fit_train(*args, **kwargs)
        self.memristor.synchronize_quantizers()
        return result

    def fit_batch(self, batch):
        """SpeechBrain's fit_batch, then the DDP ranks merge their observed input ranges."""
        loss = super().fit_batch(batch)
        self.memristor.synchronize_quantizers()
        return loss

    def _fit_valid(self, *args, **kwargs):
        self.memristor.use_stage(sb.Stage.VALID)
        return super()._fit_valid(*args, **kwargs)

    def evaluate(
        self,
        test_set,
        max_key=None,
        min_key=None,
        progressbar=None,
        test_loader_kwargs=None,
        table_name: str = "test",
    ) -> float:
        """Evaluate once per (execution, chip) of the hook's plan and write the result tables.

        Returns the mean test loss over the runs in ``test_execution``.
        """
        hook = self.memristor
        folder = hook.output_folder or getattr(
            getattr(self, "hparams", None), "output_folder", None
        )
        if folder is None:
            raise ValueError(
                "No folder for the memristor result tables: set MemristorHook.output_folder or "
                "hparams output_folder."
            )
        if not isinstance(test_set, DataLoader | LoopedLoader):
            loader_kwargs = dict(test_loader_kwargs or {})
            loader_kwargs["ckpt_prefix"] = None
            test_set = self.make_dataloader(test_set, sb.Stage.TEST, **loader_kwargs)
        runs = []
        for execution, seed in hook.evaluation_plan():
            hook.use(execution, seed)
            logger.info(
                "Memristor evaluation: %s%s",
                execution,
                "" if seed is None else f", chip seed {seed}",
            )
            loss = super().evaluate(test_set, max_key, min_key, progressbar)
            runs.append(EvaluationRun(execution, seed, float(loss), hook.read_metric(self)))
        hook.use_stage(sb.Stage.TEST)
        if if_main_process():
            paths = hook.write_tables(folder, table_name, runs)
            logger.info("Memristor evaluation table: %s", paths["md"])
        losses = [run.loss for run in runs if run.execution == hook.test_execution]
        return statistics.fmean(losses)

"""`MemristorBrain`: a `speechbrain.Brain` whose modules run on simulated memristor hardware.

recipe: ``class ASR(MemristorBrain)`` instead of ``class ASR(sb.Brain)``, nothing else; the
hparams hold a `MemristorHook` (found automatically).

``__init__`` converts the Brain's modules in place before SpeechBrain builds anything from them
(optimizers are created later, in ``on_fit_start``), so conversion also happens for
``--test_only``, which skips ``on_fit_start``. Only SpeechBrain's public hooks are used: the
recipe's ``on_stage_start`` and ``on_stage_end`` are wrapped when the class is defined (recipes
often override them without calling super), so that every training and validation stage
starts in its execution mode, every training stage ends with the DDP ranks' quantizer
ranges merged (once per epoch), and every training batch starts with the hook's hardware-aware
training step (``on_fit_batch_start``: training chips and noise seeds). ``evaluate`` runs the
test set once per entry of the hook's evaluation plan and writes the result table (main process
only); under torchrun the passes (chips) or the test data are spread over the ranks
(`speechbrain_memristor.brain.scale_out`).
"""

from __future__ import annotations

import functools
import logging
import statistics
from collections.abc import Callable

import speechbrain as sb
from speechbrain.dataio.dataloader import LoopedLoader
from speechbrain.utils.distributed import if_main_process
from torch.utils.data import DataLoader

from speechbrain_memristor.brain.hook import MemristorHook, find_hook
from speechbrain_memristor.brain.results import EvaluationRun
from speechbrain_memristor.brain.scale_out import (
    calibrate_as_one_process,
    gather,
    merge_shards,
    passes_of_rank,
    rank_local,
    shard_loader,
    shard_result,
    shards_chips,
    world,
)

logger = logging.getLogger(__name__)

_WRAPPED = "_memristor_stage_wrapper"


def _stage_wrapper(method: Callable, action: str) -> Callable:
    """``method(self, first, ...)`` preceded by ``self.memristor.<action>(first)`` (``first``:
    the stage, or the batch of ``on_fit_batch_start``), once per call chain (an override that calls super() does not repeat it)."""

    @functools.wraps(method)
    def wrapper(self, stage, *args, **kwargs):
        if getattr(self, "_memristor_in_stage_hook", False):
            return method(self, stage, *args, **kwargs)
        self._memristor_in_stage_hook = True
        try:
            getattr(self.memristor, action)(stage)
            return method(self, stage, *args, **kwargs)
        finally:
            self._memristor_in_stage_hook = False

    setattr(wrapper, _WRAPPED, True)
    return wrapper


STAGE_HOOKS = {
    "on_stage_start": "enter_stage",
    "on_stage_end": "end_stage",
    "on_fit_batch_start": "start_train_batch",
}


class MemristorBrain(sb.Brain):
    """`speechbrain.Brain` whose modules run on simulated memristor hardware (module doc).

    Same arguments as `speechbrain.Brain`, plus ``memristor`` (default: the MemristorHook found
    in ``hparams``). ``evaluate`` takes an extra ``table_name`` (file name of the result table;
    default "test", then "test_2", ... for later calls).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook_name, action in STAGE_HOOKS.items():
            method = getattr(cls, hook_name)
            if not getattr(method, _WRAPPED, False):
                setattr(cls, hook_name, _stage_wrapper(method, action))

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
        plan = hook.evaluation_plan()
        passes = (max_key, min_key, progressbar)
        rank, world_size = world()
        if world_size == 1:
            runs = [self._evaluation_pass(*entry, test_set, *passes) for entry in plan]
        elif shards_chips(plan, world_size):  # this rank's passes, gathered in plan order
            with rank_local(self):
                calibrate_as_one_process(self, plan, test_set, max_key, min_key)
                mine = {
                    index: self._evaluation_pass(*plan[index], test_set, *passes)
                    for index in passes_of_rank(plan, rank, world_size)
                }
            gathered = {index: run for part in gather(mine) for index, run in part.items()}
            runs = [gathered[index] for index in range(len(plan))]
        else:  # every pass on this rank's shard; scores merged over the whole split
            with rank_local(self):
                calibrate_as_one_process(self, plan, test_set, max_key, min_key)
            shard = shard_loader(test_set, rank, world_size)
            runs = []
            for execution, seed in plan:
                with rank_local(self):
                    run = self._evaluation_pass(execution, seed, shard, *passes)
                    result = shard_result(self, hook.metric, run.loss, len(shard))
                loss = merge_shards(self, hook.metric, gather(result))
                runs.append(EvaluationRun(execution, seed, loss, hook.read_metric(self)))
        hook.use_stage(sb.Stage.TEST)
        if if_main_process():
            paths = hook.write_tables(folder, table_name, runs)
            logger.info("Memristor evaluation table: %s", paths["md"])
        losses = [run.loss for run in runs if run.execution == hook.test_execution]
        return statistics.fmean(losses)

    def _evaluation_pass(
        self, execution: str, seed: int | None, test_set, max_key, min_key, progressbar
    ) -> EvaluationRun:
        """One test pass of SpeechBrain's evaluate in ``execution`` on the chip of ``seed``."""
        hook = self.memristor
        hook.use(execution, seed)
        logger.info(
            "Memristor evaluation: %s%s", execution, "" if seed is None else f", chip seed {seed}"
        )
        loss = super().evaluate(test_set, max_key, min_key, progressbar)
        return EvaluationRun(execution, seed, float(loss), hook.read_metric(self))


# MemristorBrain's own (inherited) stage hooks are wrapped too, for recipes that keep them.
for _hook_name, _action in STAGE_HOOKS.items():
    setattr(MemristorBrain, _hook_name, _stage_wrapper(getattr(sb.Brain, _hook_name), _action))

"""A memristor evaluation spread over the ranks of a DDP (torchrun) job.

With W ranks and an evaluation plan of comparison passes and N analog chips
(`MemristorHook.evaluation_plan`):

- N >= W (chip sharding): rank k runs comparison passes k, k + W, ... and programs and
  evaluates chips k, k + W, ... on the whole split. A chip is a pure function of (weights,
  config, seed, layer name) and its read noise is seeded from its own seed, so every pass gives
  the numbers a single process gives; the runs are gathered in plan order.
- N < W (data sharding, e.g. one chip on 8 GPUs): every rank runs every pass on its shard of
  the split (utterances k, k + W, ... of the dataset's order); the metric's per-utterance
  scores (SpeechBrain's ``MetricStats.ids`` / ``scores``) are gathered and summarized once, so
  an error rate is the one of the whole split (summed error counts), not a mean over ranks.
  The loss is the mean over all ranks' batches.

SpeechBrain does not shard test data and calls collectives (``ddp_broadcast`` of logged
stats, barriers) inside ``evaluate``; ranks that run different passes would deadlock on them,
so each rank's passes run in `rank_local`: SpeechBrain's main-process context (its collectives
become no-ops, main-process-only work such as logging runs on rank 0 only) with the modules
unwrapped from DistributedDataParallel (whose forward may broadcast buffers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset, FilteredSortedDynamicItemDataset
from speechbrain.utils.distributed import MainProcessContext
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, SequentialSampler

from speechbrain_memristor.brain.results import ANALOG
from speechbrain_memristor.convert import hardware_matmuls
from speechbrain_memristor.layers.modes import Execution

Plan = Sequence[tuple[str, int | None]]


def world() -> tuple[int, int]:
    """(rank, world size) of the initialized torch.distributed group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shards_chips(plan: Plan, world_size: int) -> bool:
    """Whether ranks split the plan's passes (chips >= ranks) rather than the test data."""
    return sum(execution == ANALOG for execution, _ in plan) >= world_size


def passes_of_rank(plan: Plan, rank: int, world_size: int) -> list[int]:
    """Plan indices that ``rank`` runs under chip sharding: comparisons and chips each dealt
    round robin (chip k on rank k mod W)."""
    comparisons = [index for index, (execution, _) in enumerate(plan) if execution != ANALOG]
    chips = [index for index, (execution, _) in enumerate(plan) if execution == ANALOG]
    return sorted(comparisons[rank::world_size] + chips[rank::world_size])


def calibrate_as_one_process(
    brain: sb.Brain, plan: Plan, loader: Any, max_key: str | None, min_key: str | None
) -> None:
    """Replay the input-range calibration a single process does, before chip-sharded passes.

    Uncalibrated input (or output) quantizers (e.g. a digital checkpoint) observe the first
    batch of the first quantized pass of the plan; a rank that starts with another pass would calibrate on
    other values. So every rank loads the checkpoint, runs that pass's first batch once, then
    drops the chips it read (fresh chips and read noise for its own passes)."""
    hook = brain.memristor
    brain.on_evaluate_start(max_key=max_key, min_key=min_key)
    matmuls = hardware_matmuls(hook.model)
    quantized = [(execution, seed) for execution, seed in plan if execution != Execution.DIGITAL]
    if all(matmul.calibrated for matmul in matmuls) or not quantized:
        return
    hook.use(*quantized[0])
    brain.modules.eval()
    with torch.no_grad():
        brain.compute_forward(next(iter(loader)), sb.Stage.TEST)
    for matmul in matmuls:
        matmul.chip = None


def gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (picklable objects; every rank gets all)."""
    gathered: list[Any] = [None] * world()[1]
    torch.distributed.all_gather_object(gathered, value)
    return gathered


@contextlib.contextmanager
def rank_local(brain: sb.Brain) -> Iterator[None]:
    """Run SpeechBrain code on this rank alone: its collectives are no-ops (main-process
    context) and the Brain's modules are unwrapped from DistributedDataParallel."""
    wrapped = {
        name: module
        for name, module in brain.modules.items()
        if isinstance(module, DistributedDataParallel)
    }
    for name, module in wrapped.items():
        brain.modules[name] = module.module
    try:
        with MainProcessContext():
            yield
    finally:
        for name, module in wrapped.items():
            brain.modules[name] = module


def shard_dataset(test_set: Any, rank: int, world_size: int) -> DynamicItemDataset:
    """Utterances ``rank``, ``rank + W``, ... of a DynamicItemDataset (kept in its order)."""
    if not isinstance(test_set, DynamicItemDataset):
        raise TypeError(
            f"Sharding the test data over {world_size} ranks needs a SpeechBrain "
            f"DynamicItemDataset (or a DataLoader over one), got {type(test_set).__name__}. "
            "Pass the dataset to evaluate with test_loader_kwargs, or evaluate at least "
            f"{world_size} chips (MemristorHook.chips) to shard chips instead."
        )
    if len(test_set) < world_size:
        raise ValueError(
            f"The test set has {len(test_set)} utterances, fewer than the {world_size} ranks "
            "sharing it; run with fewer ranks."
        )
    return FilteredSortedDynamicItemDataset(test_set, test_set.data_ids[rank::world_size])


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """The same batching (batch size, collate function, workers) over this rank's shard of a
    sequential DataLoader's dataset."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"Sharding the test data over {world_size} ranks needs a DataLoader (or a dataset), "
            f"got {type(loader).__name__}. Pass the dataset with test_loader_kwargs instead."
        )
    if loader.batch_size is None or not isinstance(loader.sampler, SequentialSampler):
        raise ValueError(
            f"Sharding a test DataLoader over {world_size} ranks needs plain sequential "
            f"batching (batch_size set, no sampler); this one has batch_size={loader.batch_size}"
            f" and sampler {type(loader.sampler).__name__}. Pass the dataset with "
            "test_loader_kwargs instead."
        )
    return DataLoader(
        shard_dataset(loader.dataset, rank, world_size),
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )


@dataclass(frozen=True)
class ShardResult:
    """One rank's pass over its shard: mean loss over its batches, the batch count, and the
    metric's per-utterance ids and scores (None without a metric)."""

    loss: float
    batches: int
    ids: list | None
    scores: list | None


def shard_result(brain: sb.Brain, metric: str | None, loss: float, batches: int) -> ShardResult:
    """This rank's `ShardResult` after a pass (the metric object's ids and scores)."""
    if metric is None:
        return ShardResult(loss, batches, None, None)
    stats = getattr(brain, metric, None)
    if not hasattr(stats, "scores") or not hasattr(stats, "ids"):
        raise AttributeError(
            f"Merging the metric {metric!r} over data shards needs a SpeechBrain MetricStats "
            "(ids and scores lists, e.g. ErrorRateStats); the Brain's attribute is "
            f"{type(stats).__name__}. Evaluate at least as many chips as ranks to shard "
            "chips instead."
        )
    return ShardResult(loss, batches, list(stats.ids), list(stats.scores))


def merge_shards(brain: sb.Brain, metric: str | None, results: Sequence[ShardResult]) -> float:
    """Put every rank's scores (in rank order) into the Brain's metric object, so that its
    ``summarize`` covers the whole split; returns the mean loss over all ranks' batches."""
    if metric is not None:
        stats = getattr(brain, metric)
        stats.ids = [item for result in results for item in result.ids]
        stats.scores = [item for result in results for item in result.scores]
    batches = sum(result.batches for result in results)
    return sum(result.loss * result.batches for result in results) / max(batches, 1)

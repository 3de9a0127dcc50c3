"""MemristorBrain.evaluate over 2 gloo ranks: chips dealt to ranks give the table of one
process, byte for byte; one chip on 2 ranks shards the data and merges the error counts into
the whole split's WER; the sharding rules and their errors."""

import json
import pathlib

import pytest
import torch
from test_brain import RUN_OPTS, CTCBrain, load_hparams, make_brain, toy_dataset
from test_ddp import WORLD_SIZE, free_port, init_rank

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.brain.scale_out import passes_of_rank, shard_dataset, shards_chips
from speechbrain_memristor.config import HardwareConfig

UTTERANCES = 5  # shards of 3 and 2 utterances: a mean of shard WERs is not the split's WER
TABLE_SUFFIXES = ("json", "csv", "md")


def noiseless_hook(hparams) -> MemristorHook:
    """The fixture's hardware without read noise (a read does not depend on which utterances
    the chip read before, so shards see what one process sees), one chip."""
    hardware = hparams["hardware"].replace(read_noise="off")
    return MemristorHook(hardware, chips=1, compare=["digital"])


def build_brain(folder, mode: str):
    hparams = load_hparams(folder, chips=4)  # same torch seed: the same model on every rank
    if mode == "chips":
        return make_brain(CTCBrain, hparams, distributed_backend="gloo")
    brain = CTCBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts={**RUN_OPTS, "distributed_backend": "gloo"},
        checkpointer=hparams["checkpointer"],
        memristor=noiseless_hook(hparams),
    )
    brain.executions, brain.stage_losses = {}, {}
    return brain


def evaluate(brain, table_folder) -> list:
    """Evaluate the toy test set (batch 1); returns the chip seeds of this process's passes."""
    brain.memristor.output_folder = str(table_folder)
    seeds, one_pass = [], brain._evaluation_pass

    def recording_pass(execution, seed, *args):
        if execution == "analog":
            seeds.append(seed)
        return one_pass(execution, seed, *args)

    brain._evaluation_pass = recording_pass
    brain.evaluate(toy_dataset(1, count=UTTERANCES), test_loader_kwargs={"batch_size": 1})
    return seeds


def worker(rank: int, port: int, folder: str, mode: str) -> None:
    """One torchrun-like rank: evaluate, save the chips it read and the merged WER stats."""
    init_rank(rank, port)
    try:
        brain = build_brain(folder, mode)
        seeds = evaluate(brain, pathlib.Path(folder) / "ranks")
        summary = brain.wer_metric.summarize()
        torch.save({"seeds": seeds, "summary": summary}, pathlib.Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def run_both(tmp_path, mode):
    """(one process's table folder and WER stats, the 2-rank table folder, per-rank records)."""
    # Float results depend on the intra-op thread count (reduction order): every process here
    # uses one thread, as torchrun's ranks do by default (OMP_NUM_THREADS=1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = build_brain(tmp_path, mode)
        seeds = evaluate(single, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(
        worker, args=(free_port(), str(tmp_path), mode), nprocs=WORLD_SIZE, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    return single, seeds, ranks


def test_chips_dealt_to_ranks_give_the_single_process_table(tmp_path):
    single, seeds, ranks = run_both(tmp_path, "chips")
    assert seeds == [11, 12, 13, 14]
    # rank k programs and reads chips k, k + 2 only
    assert [record["seeds"] for record in ranks] == [[11, 13], [12, 14]]
    for suffix in TABLE_SUFFIXES:
        one = (tmp_path / "single" / f"memristor_test.{suffix}").read_text()
        two = (tmp_path / "ranks" / f"memristor_test.{suffix}").read_text()
        assert one == two, suffix
    runs = json.loads((tmp_path / "ranks" / "memristor_test.json").read_text())["runs"]
    losses = [run["loss"] for run in runs if run["execution"] == "analog"]
    assert len(set(losses)) == 4  # each chip its own numbers: a swapped chip would show


def test_one_chip_on_two_ranks_shards_data_and_merges_error_counts(tmp_path):
    single, seeds, ranks = run_both(tmp_path, "data")
    assert seeds == [11] and [record["seeds"] for record in ranks] == [[11], [11]]
    # Both ranks hold the merged stats of the whole split: the same error counts as one process.
    whole = single.wer_metric.summarize()
    for record in ranks:
        assert record["summary"] == whole
    one = json.loads((tmp_path / "single" / "memristor_test.json").read_text())
    two = json.loads((tmp_path / "ranks" / "memristor_test.json").read_text())
    for mine, theirs in zip(one["runs"], two["runs"], strict=True):
        assert mine["metric"] == theirs["metric"]  # exact: summed error counts
        # loss: the same 5 batch losses, averaged in another order
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)
    # The merge is not a mean of the shards' WERs (which would differ here).
    scores = {score["key"]: score for score in single.wer_metric.scores}
    ids = toy_dataset(1, count=UTTERANCES).data_ids
    shard_wers = [
        100.0
        * sum(scores[key]["num_edits"] for key in ids[rank::WORLD_SIZE])
        / sum(scores[key]["num_ref_tokens"] for key in ids[rank::WORLD_SIZE])
        for rank in range(WORLD_SIZE)
    ]
    assert sum(shard_wers) / WORLD_SIZE != pytest.approx(whole["WER"])


def test_sharding_rules_and_errors():
    plan = [("digital", None), ("fake_quant", None)] + [("analog", 11 + chip) for chip in range(5)]
    assert shards_chips(plan, 5) and not shards_chips(plan, 6)
    assert passes_of_rank(plan, 0, 2) == [0, 2, 4, 6]  # digital, chips 0, 2, 4
    assert passes_of_rank(plan, 1, 2) == [1, 3, 5]  # fake_quant, chips 1, 3
    dealt = sorted(index for rank in range(3) for index in passes_of_rank(plan, rank, 3))
    assert dealt == list(range(len(plan)))  # every pass exactly once
    dataset = toy_dataset(1, count=5)
    assert shard_dataset(dataset, 1, 2).data_ids == dataset.data_ids[1::2]
    with pytest.raises(ValueError, match="has 5 utterances, fewer than the 8 ranks"):
        shard_dataset(dataset, 0, 8)
    with pytest.raises(TypeError, match="needs a SpeechBrain DynamicItemDataset"):
        shard_dataset([1, 2, 3], 0, 2)
    hardware = HardwareConfig(seed=3)
    assert MemristorHook(hardware, chips=2).evaluation_plan()[-1] == ("analog", 4)

"""MemristorBrain under DDP: 2 CPU processes (gloo), one QAT training step, identical chips;
the merge of the ranks' quantizer ranges against one observer of every rank's data."""

import os
import pathlib
import socket

import speechbrain as sb
import torch
from test_brain import CTCBrain, load_hparams, make_brain, toy_dataset
from torch.nn.parallel import DistributedDataParallel

from speechbrain_memristor.brain import MemristorHook
from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.convert import (
    hardware_matmuls,
    load_quantizer_state_dict,
    program,
    quantizer_state_dict,
)

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_rank(rank: int, port: int) -> None:
    """Join a gloo group of WORLD_SIZE ranks as torchrun would start ``rank`` (one thread)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    sb.utils.distributed.ddp_init_group({"distributed_backend": "gloo"})


def run_ranks(worker, folder: pathlib.Path, saved: str) -> list:
    """Spawn WORLD_SIZE ranks of ``worker(rank, port, folder)``; load what each saved as
    ``folder / f"{saved}{rank}.pt"``, in rank order."""
    torch.multiprocessing.spawn(
        worker, args=(free_port(), str(folder)), nprocs=WORLD_SIZE, join=True
    )
    return [torch.load(folder / f"{saved}{rank}.pt") for rank in range(WORLD_SIZE)]


def ddp_worker(rank: int, port: int, folder: str) -> None:
    """One rank, as torchrun would start it: train one QAT step, program chips, save results."""
    init_rank(rank, port)
    try:
        hparams = load_hparams(folder, epochs=1)  # same seed on every rank: same initial model
        brain = make_brain(CTCBrain, hparams, distributed_backend="gloo")
        hook = brain.memristor
        # Record this rank's own observed ranges just before each merge (end of a train stage).
        pre_merge, merge = [], hook.synchronize_quantizers

        def recording_merge() -> None:
            pre_merge.append(quantizer_state_dict(hook.model))
            merge()

        hook.synchronize_quantizers = recording_merge
        # 6 utterances, 3 per rank, batch 3: exactly one synchronized optimizer step.
        brain.fit(hparams["epoch_counter"], toy_dataset(0), train_loader_kwargs={"batch_size": 3})
        hook.use("analog")
        program(hook.model)
        torch.save(
            {
                "wrapped": isinstance(brain.modules["enc"], DistributedDataParallel),
                "steps": brain.optimizer_step,
                "loss": brain.stage_losses[sb.Stage.TRAIN],
                "executions": brain.executions[sb.Stage.TRAIN],
                "model": hparams["model"].state_dict(),
                "quantizers": quantizer_state_dict(hook.model),
                "pre_merge": pre_merge,
                "chips": {m.name: m.chip.states() for m in hardware_matmuls(hook.model)},
            },
            pathlib.Path(folder) / f"rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_qat_step_and_identical_chips_on_every_rank(tmp_path):
    first, second = run_ranks(ddp_worker, tmp_path, "rank")
    for result in (first, second):
        assert result["wrapped"] and result["steps"] == 1
        assert result["executions"] == {"fake_quant"}
        assert torch.isfinite(torch.tensor(result["loss"]))
    # Each rank saw its own shard, so the losses differ ...
    assert first["loss"] != second["loss"]
    # ... yet after the synchronized step the weights are identical, and moved from the start.
    initial = load_hparams(tmp_path / "initial", epochs=1)["model"].state_dict()
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    assert any(not torch.equal(value, initial[key]) for key, value in first["model"].items())
    # The ranks merged their observed input ranges: both quantize inputs alike.
    for key, value in first["quantizers"].items():
        assert torch.equal(value, second["quantizers"][key]), key
    # ... and the merged range is the one a single min-max observer of both shards would hold:
    # min of the ranks' minima, max of their maxima (each rank observed a different range).
    assert len(first["pre_merge"]) == len(second["pre_merge"]) == 1  # one training epoch
    mine, theirs = first["pre_merge"][0], second["pre_merge"][0]
    assert set(mine) == set(first["quantizers"])
    for key, merged in first["quantizers"].items():
        assert not torch.equal(mine[key], theirs[key]), key
        combine = torch.minimum if key.endswith(".min") else torch.maximum
        assert key.endswith((".min", ".max")), key
        assert torch.equal(merged, combine(mine[key], theirs[key])), key
    assert set(first["chips"]) == set(second["chips"]) and len(first["chips"]) == 16
    for name, states in first["chips"].items():
        for mine, theirs in zip(states, second["chips"][name], strict=True):
            assert torch.equal(mine, theirs), name


# Hand-set ranges per rank and layer: rank 0, rank 1 (on net.2 rank 1 never calibrated).
UNCALIBRATED = (float("inf"), float("-inf"))
HAND_SET_RANGES = {
    "net.0": ((-1.0, 2.0), (-3.0, 1.0)),
    "net.1": ((-0.5, 4.0), (-2.0, 3.0)),
    "net.2": ((-1.0, 1.0), UNCALIBRATED),
}


def three_layers() -> dict[str, torch.nn.Module]:
    layers = (torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    return {"net": torch.nn.Sequential(*layers)}


def merge_worker(rank: int, port: int, folder: str) -> None:
    """One rank: hand-set quantizer ranges, merged by `MemristorHook.synchronize_quantizers`
    for each observer; saves the merged states."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        merged = {}
        for observer in ("minmax", "moving_average"):
            hook = MemristorHook(HardwareConfig(observer=observer), include=["*"])
            hook.convert(three_layers())
            state = {}
            for layer, ranges in HAND_SET_RANGES.items():
                low, high = ranges[rank]
                state[f"{layer}.min"], state[f"{layer}.max"] = torch.tensor(low), torch.tensor(high)
            load_quantizer_state_dict(hook.model, state)
            hook.synchronize_quantizers()
            merged[observer] = quantizer_state_dict(hook.model)
        torch.save(merged, pathlib.Path(folder) / f"merged{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_quantizer_merge_equals_one_observer_of_all_ranks(tmp_path):
    """min-max: min of the minima, max of the maxima (as one observer fed both ranks' data);
    moving average: the mean over the ranks that calibrated (an uncalibrated rank's inf must
    not poison it)."""
    merged_per_rank = run_ranks(merge_worker, tmp_path, "merged")
    expected = {
        "minmax": {
            "net.0.min": -3.0,
            "net.0.max": 2.0,
            "net.1.min": -2.0,
            "net.1.max": 4.0,
            "net.2.min": -1.0,
            "net.2.max": 1.0,
        },
        "moving_average": {
            "net.0.min": -2.0,
            "net.0.max": 1.5,
            "net.1.min": -1.25,
            "net.1.max": 3.5,
            "net.2.min": -1.0,
            "net.2.max": 1.0,
        },
    }
    for merged in merged_per_rank:
        for observer, values in expected.items():
            assert {key: value.item() for key, value in merged[observer].items()} == values
    # The min-max merge agrees with a single observer fed the data of both ranks.
    single = MemristorHook(HardwareConfig(), include=["*"])
    single.convert(three_layers())
    for layer in hardware_matmuls(single.model):
        for rank in range(WORLD_SIZE):
            if HAND_SET_RANGES[layer.name][rank] != UNCALIBRATED:  # a rank that saw nothing
                layer.input_quantizer.observe(torch.tensor(HAND_SET_RANGES[layer.name][rank]))
    observed = {key: value.item() for key, value in quantizer_state_dict(single.model).items()}
    assert observed == expected["minmax"]


def chip_in_the_loop_worker(rank: int, port: int, folder: str) -> None:
    """One rank training 2 chip-in-the-loop steps (new chips each step); records every
    training chip and its read-noise seed before each step."""
    init_rank(rank, port)
    try:
        hparams = load_hparams(folder, epochs=1, training_method="chip_in_the_loop")
        brain = make_brain(CTCBrain, hparams, distributed_backend="gloo")
        hook, start = brain.memristor, brain.memristor.start_train_batch
        chips = []

        def recording_start(batch) -> None:
            start(batch)
            chips.append(
                {
                    m.name: (m.training_chip_source.seed, m.training_chip.read_seed)
                    + m.training_chip.states()
                    for m in hardware_matmuls(hook.model)
                }
            )

        hook.start_train_batch = recording_start
        # 4 utterances, 2 per rank, batch 1 per rank: two synchronized steps.
        train_opts = {"batch_size": 1}
        brain.fit(hparams["epoch_counter"], toy_dataset(0, count=4), train_loader_kwargs=train_opts)
        torch.save(chips, pathlib.Path(folder) / f"chips{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_train_on_identical_chips(tmp_path):
    first, second = run_ranks(chip_in_the_loop_worker, tmp_path, "chips")
    assert len(first) == len(second) == 2  # two steps on each rank
    for mine, theirs in zip(first, second, strict=True):
        assert set(mine) == set(theirs) and len(mine) == 16
        for name, (seed, read_seed, *states) in mine.items():
            their_seed, their_read_seed, *their_states = theirs[name]
            assert seed == their_seed and read_seed == their_read_seed, name
            for state, their_state in zip(states, their_states, strict=True):
                assert torch.equal(state, their_state), name
    # Each step trained on new chips (reprogram_every 1) with a new read-noise stream.
    name = next(iter(first[0]))
    assert first[0][name][0] != first[1][name][0] and first[0][name][1] != first[1][name][1]

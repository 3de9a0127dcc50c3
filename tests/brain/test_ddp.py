"""MemristorBrain under DDP: 2 CPU processes (gloo), one QAT training step, identical chips."""

import os
import pathlib
import socket

import speechbrain as sb
import torch
from test_brain import CTCBrain, load_hparams, make_brain, toy_dataset
from torch.nn.parallel import DistributedDataParallel

from speechbrain_memristor.convert import hardware_matmuls, program, quantizer_state_dict

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_worker(rank: int, port: int, folder: str) -> None:
    """One rank, as torchrun would start it: train one QAT step, program chips, save results."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    sb.utils.distributed.ddp_init_group({"distributed_backend": "gloo"})
    try:
        hparams = load_hparams(folder, epochs=1)  # same seed on every rank: same initial model
        brain = make_brain(CTCBrain, hparams, distributed_backend="gloo")
        # 6 utterances, 3 per rank, batch 3: exactly one synchronized optimizer step.
        brain.fit(hparams["epoch_counter"], toy_dataset(0), train_loader_kwargs={"batch_size": 3})
        hook = brain.memristor
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
                "chips": {m.name: m.chip.states() for m in hardware_matmuls(hook.model)},
            },
            pathlib.Path(folder) / f"rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_qat_step_and_identical_chips_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(
        ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True
    )
    first, second = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE))
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
    assert set(first["chips"]) == set(second["chips"]) and len(first["chips"]) == 16
    for name, states in first["chips"].items():
        for mine, theirs in zip(states, second["chips"][name], strict=True):
            assert torch.equal(mine, theirs), name

"""Under torchrun the SimCLR loss sees the whole global batch: 2 gloo processes against 1 process."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses import SimCLRLoss
from utils.distributed import gather_in_order, gather_with_grad, shard_range, sum_over_processes

GLOBAL_BATCH, DIM_IN, DIM_OUT = 8, 6, 5


def global_inputs() -> tuple[torch.Tensor, torch.nn.Linear]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(GLOBAL_BATCH, 2, DIM_IN, generator=generator)
    torch.manual_seed(1)
    return inputs, torch.nn.Linear(DIM_IN, DIM_OUT)


def simclr_loss(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    features = F.normalize(model(inputs), dim=-1)  # [b, 2, d]
    return SimCLRLoss(0.5)(gather_with_grad(features))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        inputs, model = global_inputs()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        shard = inputs.chunk(world_size)[rank]
        loss = simclr_loss(ddp, shard)
        loss.backward()
        result = {"loss": loss.detach(), "weight_grad": model.weight.grad, "bias_grad": model.bias.grad}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_give_the_single_process_loss_and_gradients(tmp_path):
    inputs, model = global_inputs()
    expected = simclr_loss(model, inputs)
    expected.backward()

    # Spawned, not forked: a fork of a process whose OpenMP thread pool is running can hang in the child.
    mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], expected.detach())
        torch.testing.assert_close(result["weight_grad"], model.weight.grad)
        torch.testing.assert_close(result["bias_grad"], model.bias.grad)


def test_without_a_process_group_the_gather_is_the_identity():
    tensor = torch.randn(3, 2)
    assert gather_with_grad(tensor) is tensor


def test_local_negatives_alone_would_give_another_loss():
    """The check above has teeth: the loss of a shard on its own negatives differs from the global one."""
    inputs, model = global_inputs()
    with torch.no_grad():
        global_loss = simclr_loss(model, inputs)
        local = torch.stack([simclr_loss(model, shard) for shard in inputs.chunk(2)]).mean()
    assert not torch.allclose(global_loss, local)


def test_shards_are_runs_of_whole_blocks_covering_every_item_once():
    # 45 items in blocks of 8: six blocks, the last one partial, dealt 3 + 3 (and 2 + 2 + 2 to three processes).
    assert [shard_range(45, 8, rank, 2) for rank in (0, 1)] == [range(0, 24), range(24, 45)]
    assert [shard_range(45, 8, rank, 3) for rank in (0, 1, 2)] == [range(0, 16), range(16, 32), range(32, 45)]
    # Fewer blocks than processes: some get nothing; one process gets everything.
    assert [len(shard_range(10, 8, rank, 4)) for rank in range(4)] == [0, 8, 0, 2]
    assert shard_range(10, 8) == range(10)


def test_without_a_process_group_sharded_evaluation_is_the_identity():
    rows = {"features": torch.randn(5, 3)}
    assert gather_in_order(rows, torch.arange(5)) is rows and sum_over_processes(7) == 7

"""utils/distributed.py: under torchrun the SimCLR loss sees the whole global batch (2 gloo processes against 1);
shards of an evaluation are gathered in dataset order on every process, in few messages."""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses import SimCLRLoss
from tests.conftest import exit_skipping_teardown, free_port
from utils import distributed
from utils.distributed import gather_in_order, gather_with_grad, shard_range, sum_over_processes
from utils.runtime import Runtime

GLOBAL_BATCH, DIM_IN, DIM_OUT = 8, 6, 5


def global_inputs() -> tuple[torch.Tensor, torch.nn.Linear]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(GLOBAL_BATCH, 2, DIM_IN, generator=generator)
    torch.manual_seed(1)
    return inputs, torch.nn.Linear(DIM_IN, DIM_OUT)


def simclr_loss(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    features = F.normalize(model(inputs), dim=-1)  # [b, 2, d]
    return SimCLRLoss(0.5)(gather_with_grad(features))


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
        dist.barrier()  # neither tears gloo down while the other still uses it (a SIGABRT in about one run of three)
    finally:
        dist.destroy_process_group()
    exit_skipping_teardown()


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


def test_a_gather_of_a_few_megabytes_goes_in_one_message(monkeypatch):
    from utils import distributed

    class CountingGroup(ThreadedProcessGroup):
        def __init__(self, world_size: int) -> None:
            super().__init__(world_size)
            self.sizes: list[int] = []

        def all_gather(self, received, sent) -> None:
            if self.get_rank() == 0:
                self.sizes.append(sent.numel())
            super().all_gather(received, sent)

    group = CountingGroup(2)
    monkeypatch.setattr(distributed, "dist", group)
    shards = [torch.arange(0, 600), torch.arange(600, 1000)]

    def work(rank: int) -> dict:
        features = shards[rank][:, None].float().expand(-1, 128).contiguous()
        return distributed.gather_in_order({"features": features}, shards[rank])

    for gathered in group.run(work):
        assert not isinstance(gathered, Exception), gathered
        assert torch.equal(gathered["features"][:, 0], torch.arange(1000.0))
    assert [size for size in group.sizes if size % 128 == 0 and size > 1] == [600 * 128]  # the largest shard


CPU = Runtime(device=torch.device("cpu"))


# Results gathered from several processes -----------------------------------------------------------------------
class ThreadedProcessGroup:
    """torch.distributed's calls that utils/distributed.py makes, for `world_size` threads of one process.

    Each thread is one rank; a collective hands every rank the list of what each rank sent, in rank order, as a
    real all_gather does. A rank that stops early (an exception) makes the others fail with BrokenBarrierError
    after `timeout` seconds instead of hanging.
    """

    def __init__(self, world_size: int, timeout: float = 10.0) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=timeout)
        self.slots: list = [None] * world_size
        self.local = threading.local()

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.local.rank

    def get_backend(self) -> str:
        return "gloo"

    def _exchange(self, value) -> list:
        self.slots[self.get_rank()] = value
        self.barrier.wait()
        everyone = list(self.slots)
        self.barrier.wait()  # no rank overwrites its slot before every rank has read them all
        return everyone

    def all_gather(self, received: list[torch.Tensor], sent: torch.Tensor) -> None:
        for out, value in zip(received, self._exchange(sent.clone())):
            out.copy_(value)  # fails on a shape mismatch, as the real collective does

    def all_gather_object(self, received: list, value) -> None:
        received[:] = self._exchange(value)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        tensor.copy_(self._exchange(tensor.clone())[src])

    def run(self, work) -> list:
        """work(rank) in one thread per rank; every rank's result (or the exception it raised), in rank order."""
        results: list = [None] * self.world_size

        def target(rank: int) -> None:
            self.local.rank = rank
            try:
                results[rank] = work(rank)
            except Exception as error:  # noqa: BLE001 - handed back to the test
                results[rank] = error

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


def rows_of(indices: list[int]) -> dict[str, torch.Tensor]:
    """What a process computed for these dataset items: features [i, 10 i, 100 i] and prediction i mod 3."""
    index = torch.tensor(indices, dtype=torch.long)
    return {"features": index[:, None].float() * torch.tensor([1.0, 10.0, 100.0]), "predictions": index % 3}


def test_shuffled_uneven_shards_are_gathered_in_dataset_order_on_every_process(monkeypatch):
    group = ThreadedProcessGroup(3)
    monkeypatch.setattr(distributed, "dist", group)
    monkeypatch.setattr(distributed, "ELEMENTS_PER_GATHER", 6)  # two feature rows a message: several rounds
    shards = [[6, 1, 3], [], [0, 7, 2, 5, 4]]  # rank 1 evaluated nothing

    def work(rank: int) -> dict:
        indices = torch.tensor(shards[rank], dtype=torch.long)
        return distributed.gather_in_order(rows_of(shards[rank]) if shards[rank] else {}, indices)

    expected = rows_of(list(range(8)))
    for gathered in group.run(work):
        assert not isinstance(gathered, Exception), gathered
        assert torch.equal(gathered["features"], expected["features"])
        assert torch.equal(gathered["predictions"], expected["predictions"])
        assert gathered["predictions"].dtype == torch.long


def test_shards_that_overlap_or_leave_a_gap_are_refused(monkeypatch):
    group = ThreadedProcessGroup(2)
    monkeypatch.setattr(distributed, "dist", group)
    shards = [[0, 1, 2], [2, 3]]  # item 2 twice, item 4 never

    def work(rank: int) -> dict:
        return distributed.gather_in_order(rows_of(shards[rank]), torch.tensor(shards[rank]))

    for outcome in group.run(work):
        assert isinstance(outcome, RuntimeError) and "exactly once" in str(outcome)


def test_only_rank_0_is_the_main_process(monkeypatch):
    group = ThreadedProcessGroup(3)
    monkeypatch.setattr(distributed, "dist", group)
    assert group.run(lambda rank: distributed.is_main_process()) == [True, False, False]


def test_every_process_evaluates_the_main_process_parameters_and_batchnorm_statistics(monkeypatch):
    group = ThreadedProcessGroup(3)
    monkeypatch.setattr(distributed, "dist", group)
    models = []
    for rank in range(3):  # DDP keeps parameters equal; BatchNorm statistics drift apart per process
        torch.manual_seed(rank)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        model[1].running_mean.normal_()
        models.append(model.to(memory_format=torch.contiguous_format))
    main = {key: value.clone() for key, value in models[0].state_dict().items()}
    group.run(lambda rank: distributed.broadcast_from_main(models[rank]))
    for model in models:
        assert all(torch.equal(value, main[key]) for key, value in model.state_dict().items())


def test_a_sharded_evaluation_without_dataset_indices_is_refused(monkeypatch):
    group = ThreadedProcessGroup(2)
    monkeypatch.setattr(distributed, "dist", group)
    outcomes = group.run(lambda rank: distributed.gather_in_order(rows_of([rank]), None))
    assert all(isinstance(outcome, ValueError) and "'index'" in str(outcome) for outcome in outcomes)

"""utils/runtime.py: where a run executes (SLURM's variables become torchrun's under plain srun, the GPU of each
process), seeding, and the random generators of a resumed run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from utils.runtime import (
    Runtime,
    adopt_slurm_environment,
    first_host,
    gpu_of,
    init_runtime,
    restore_rng_states,
    rng_state,
)


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node7", "node7"),
        ("gpu[03-05,09]", "gpu03"),
        ("gpu[11,03-05]", "gpu11"),
        ("a100-[001-004],cpu1", "a100-001"),
        ("cpu1,gpu[1-2]", "cpu1"),
    ],
)
def test_first_host_of_a_slurm_nodelist(nodelist, host):
    assert first_host(nodelist) == host


def test_srun_tasks_become_torchrun_processes():
    environ = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-04]"}
    adopt_slurm_environment(environ)
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("5", "8", "1")
    assert (environ["MASTER_ADDR"], environ["MASTER_PORT"]) == ("gpu03", "29500")


def test_torchrun_variables_win_and_single_tasks_stay_single():
    under_torchrun = {"RANK": "2", "WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    adopt_slurm_environment(under_torchrun)
    assert under_torchrun["RANK"] == "2" and under_torchrun["WORLD_SIZE"] == "4"
    single = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    adopt_slurm_environment(single)
    assert "RANK" not in single


@pytest.mark.parametrize(
    "local_rank, device_count, gpu",
    [(0, 4, 0), (3, 4, 3), (3, 1, 0), (5, 4, 1), (1, 2, 1)],  # srun with one GPU per task sees it as cuda:0
)
def test_each_process_takes_its_local_rank_modulo_the_gpus_it_sees(local_rank, device_count, gpu):
    assert gpu_of(local_rank, device_count) == gpu


def fake_cuda(monkeypatch, device_count: int, current: int = 0) -> dict:
    """torch.cuda as a machine with `device_count` GPUs would answer, recording what is set on it."""
    calls = {"set_device": [], "set_rng_state": [], "init_process_group": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: device_count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls["set_device"].append(device))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.full((4,), current, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: calls["set_rng_state"].append(state.tolist()))
    return calls


def test_a_task_that_sees_one_gpu_uses_it_and_binds_nccl_to_it(monkeypatch):
    calls = fake_cuda(monkeypatch, device_count=1)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls["init_process_group"].append(kwargs))
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(name, value)
    runtime = init_runtime()
    assert runtime.device == torch.device("cuda", 0) and calls["set_device"] == [torch.device("cuda", 0)]
    assert calls["init_process_group"] == [{"backend": "nccl", "device_id": torch.device("cuda", 0)}]


def test_resume_restores_this_process_gpu_generator(monkeypatch, capsys):
    # Written by two processes with one GPU each (one-entry lists); resumed by two processes on a 2-GPU machine.
    states = []
    for rank in range(2):
        fake_cuda(monkeypatch, device_count=1, current=0)
        saved = torch.full((4,), 10 + rank, dtype=torch.uint8)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda saved=saved: saved)
        states.append(rng_state())
    assert [state["cuda"][0].tolist() for state in states] == [[10] * 4, [11] * 4]
    calls = fake_cuda(monkeypatch, device_count=2, current=1)
    restore_rng_states(states, Runtime(device=torch.device("cuda", 1), rank=1, world_size=2, local_rank=1))
    assert calls["set_rng_state"] == [[11] * 4] and capsys.readouterr().out == ""
    # An older checkpoint holding every GPU's generator: the current device's entry.
    restore_rng_states([{**states[0], "cuda": [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]}],
                       Runtime(device=torch.device("cuda", 1)))  # fmt: skip
    assert calls["set_rng_state"][-1] == [1] * 4


def test_a_cpu_checkpoint_resumed_on_a_gpu_says_the_streams_differ(monkeypatch, capsys):
    state = rng_state()  # no GPU here: no "cuda" entry
    fake_cuda(monkeypatch, device_count=1)
    restore_rng_states([state], Runtime(device=torch.device("cuda", 0)))
    assert "written by 1 process(es) not on a GPU, this run has 1 on a GPU" in capsys.readouterr().out


def test_an_entry_script_waits_for_every_process_then_leaves_the_process_group(monkeypatch):
    """run_cli ends a torchrun process only after all have met: one leaving early tore gloo down under the writer."""
    from engine.stage import run_cli

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    calls = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: (calls.append("barrier"), real_barrier())[1])
    try:
        run_cli(lambda: calls.append("main"))
        assert calls == ["main", "barrier"] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_seed_everything_makes_python_numpy_and_torch_draws_repeat_and_offsets_them_by_rank():
    import random

    from utils.runtime import seed_everything

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draws()
    seed_everything(3)
    assert draws() == first
    seed_everything(3, rank=1)
    assert all(a != b for a, b in zip(draws(), first))


def test_srun_with_two_tasks_takes_rank_and_world_from_slurm():
    from utils.runtime import adopt_slurm_environment

    environ = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[4-5]"}
    adopt_slurm_environment(environ)
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["MASTER_ADDR"]) == ("1", "2", "node4")

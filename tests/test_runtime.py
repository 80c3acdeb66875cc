"""Where a run executes: SLURM's variables become torchrun's when a job is started with plain srun."""

from __future__ import annotations

import pytest

from utils.runtime import adopt_slurm_environment, first_host


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

"""Threads per rank (recipes/threads.py): where the count comes from, and the wait policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from recipe_helpers import REPO

from recipes.threads import (
    cgroup_cpu_limit,
    oversubscription,
    prefer_passive_wait,
    resolve_threads,
    usable_cpus,
)


def test_explicit_threads_win_over_every_variable() -> None:
    env = {"OMP_NUM_THREADS": "8", "SLURM_CPUS_PER_TASK": "4", "SLURM_PROCID": "0"}
    got = resolve_threads(3, local_ranks=2, environ=env, affinity=16)
    assert (got.per_rank, got.source) == (3, "--threads 3")


def test_omp_num_threads_is_respected_as_a_per_process_count() -> None:
    got = resolve_threads(None, local_ranks=4, environ={"OMP_NUM_THREADS": "5"}, affinity=64)
    assert (got.per_rank, got.source) == (5, "OMP_NUM_THREADS=5")


def test_torchruns_own_omp_num_threads_is_named_as_torchruns() -> None:
    # torchrun sets OMP_NUM_THREADS=1 for its workers when it is unset (--nproc-per-node > 1):
    # the line must not look like the user's choice.
    env = {"OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "4"}
    got = resolve_threads(None, local_ranks=1, environ=env, affinity=64)
    assert got.per_rank == 1 and "which torchrun sets when it is unset" in got.source
    assert "--threads" in got.source
    for other in ({**env, "OMP_NUM_THREADS": "4"}, {**env, "LOCAL_WORLD_SIZE": "1"},
                  {"OMP_NUM_THREADS": "1"}):  # fmt: skip
        assert "torchrun" not in resolve_threads(None, 1, environ=other, affinity=64).source


def test_oversubscription_counts_slurms_grant_per_task() -> None:
    # Without task affinity, a task sees every CPU of the node but was granted
    # SLURM_CPUS_PER_TASK: the old warning compared with the node and said nothing.
    env = {"SLURM_CPUS_PER_TASK": "2", "SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "8"}
    warning = oversubscription(4, local_ranks=8, environ=env, affinity=64)
    assert warning is not None and "4 threads need 4 CPUs" in warning
    assert "may use 2 (SLURM_CPUS_PER_TASK=2)" in warning and "--threads 2 or fewer" in warning
    assert oversubscription(2, local_ranks=8, environ=env, affinity=64) is None
    # Lightning's own launcher: the local ranks share this process's CPUs.
    warning = oversubscription(1, local_ranks=3, environ={}, affinity=2, quota=None)
    assert warning is not None and "--devices 2 or fewer" in warning
    assert oversubscription(1, local_ranks=2, environ={}, affinity=2) is None
    assert oversubscription(1, local_ranks=1, environ={}, affinity=8, quota=1) is None
    assert oversubscription(2, local_ranks=1, environ={}, affinity=8, quota=1) is not None


def test_slurm_cpus_per_task_caps_each_rank() -> None:
    # One srun task per rank (scripts/slurm_lm.sh): each rank owns its task's CPUs.
    env = {"SLURM_CPUS_PER_TASK": "3", "SLURM_PROCID": "5", "SLURM_NTASKS_PER_NODE": "8"}
    got = resolve_threads(None, local_ranks=8, environ=env, affinity=96)
    assert got.per_rank == 3 and got.source == "SLURM_CPUS_PER_TASK=3"
    # One task running 4 ranks of Lightning's own launcher: they share its 8 CPUs.
    env = {"SLURM_CPUS_PER_TASK": "8", "SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "1"}
    got = resolve_threads(None, local_ranks=4, environ=env, affinity=8)
    assert got.per_rank == 2 and "shared by 4 ranks" in got.source
    # Never more than k, and never more than the CPUs actually usable.
    for ranks in (1, 2, 3, 8):
        env = {"SLURM_CPUS_PER_TASK": "1", "SLURM_PROCID": "0"}
        assert resolve_threads(None, local_ranks=ranks, environ=env, affinity=32).per_rank == 1
    env = {"SLURM_CPUS_PER_TASK": "16", "SLURM_PROCID": "0"}
    assert resolve_threads(None, local_ranks=1, environ=env, affinity=2).per_rank == 2


def test_default_uses_the_affinity_and_quota_not_the_machine_size() -> None:
    got = resolve_threads(None, local_ranks=1, environ={}, affinity=1)
    assert (got.per_rank, got.source) == (1, "1 usable CPU(s)")
    got = resolve_threads(None, local_ranks=2, environ={}, affinity=8)
    assert (got.per_rank, got.source) == (4, "8 usable CPU(s) / 2 local ranks")
    assert resolve_threads(None, local_ranks=4, environ={}, affinity=2).per_rank == 1
    assert resolve_threads(None, local_ranks=1, environ={}, affinity=32, quota=3).per_rank == 3
    # torchrun says how many processes share the machine.
    env = {"LOCAL_WORLD_SIZE": "4"}
    assert resolve_threads(None, local_ranks=1, environ=env, affinity=16).per_rank == 4


def test_usable_cpus_and_the_cgroup_quota(tmp_path) -> None:
    assert usable_cpus() == min(len(os.sched_getaffinity(0)), cgroup_cpu_limit() or 10**6)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 2  # 1.5 CPUs: round up, the half CPU is still usable
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


@pytest.mark.parametrize("bad", ["two", "0", "-1"])
def test_bad_variables_name_themselves(bad: str) -> None:
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS={bad!r}"):
        resolve_threads(None, environ={"OMP_NUM_THREADS": bad}, affinity=2)


def test_wait_policy_keeps_the_users_choice() -> None:
    env: dict[str, str] = {}
    assert prefer_passive_wait(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    assert prefer_passive_wait(env) == "active" and env["OMP_WAIT_POLICY"] == "active"


_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import importlib.util
spec = importlib.util.spec_from_file_location("recipes.lm", sys.argv[1] + "/recipes/lm.py")
lm = importlib.util.module_from_spec(spec)
sys.modules["recipes.lm"] = lm
spec.loader.exec_module(lm)
import torch
threads = lm.apply_threads(None, 1)
print(json.dumps({"torch": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY"),
                  "line": threads.describe()}))
"""


@pytest.mark.slow  # a fresh interpreter importing lightning: ~20 s on a shared core
@pytest.mark.parametrize(
    ("env", "threads", "policy", "source"),
    [
        ({"SLURM_CPUS_PER_TASK": "1", "SLURM_PROCID": "0"}, 1, "PASSIVE", "SLURM_CPUS_PER_TASK=1"),
        ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}, 2, "ACTIVE", "OMP_NUM_THREADS=2"),
    ],
)
def test_recipe_sets_torch_threads_and_the_policy(env, threads, policy, source) -> None:
    ours = ("OMP_", "SLURM_", "LOCAL_WORLD_SIZE")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO)], env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["torch"] == threads and got["policy"] == policy
    assert got["line"].startswith(f"threads: {threads} per rank (from {source}")

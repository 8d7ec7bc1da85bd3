"""How many CPU threads each rank of ``recipes/lm.py`` uses, and where that number came from.

Three parts; the first two apart because OpenMP reads its settings once, when torch loads it:

- :func:`prefer_passive_wait` runs before ``import torch`` (first lines of ``recipes/lm.py``). An
  OpenMP thread that finishes its share of an operation spins waiting for the next one by
  default; beside another busy process the spinning threads steal the core a sibling thread needs,
  and a 2-thread run on a 2-core machine with one other busy process fell from ~2,100 to 183
  tokens/s (issue 14). ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep instead. A user's own
  ``OMP_WAIT_POLICY`` is kept.
- :func:`resolve_threads` picks the count: ``--threads`` if given, else ``OMP_NUM_THREADS``, else
  ``SLURM_CPUS_PER_TASK``, else the CPUs this process may run on (its affinity mask, capped by a
  cgroup CPU quota), each shared among the ranks that share those CPUs. ``OMP_NUM_THREADS=1`` under
  torchrun is named as the default torchrun sets, not presented as the user's choice.
- :func:`oversubscription` warns when the ranks that share the CPUs run more threads than there
  are CPUs (those of the affinity mask and quota, or SLURM's grant per task if fewer).

Only the standard library is imported here, so ``recipes/lm.py`` can import this module before
torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def prefer_passive_wait(environ: dict[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy; returns the policy in force.

    Must run before torch is imported: its OpenMP runtime reads the variable only when loaded.
    """
    env = os.environ if environ is None else environ
    return env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class Threads:
    """The resolved count per rank and a human-readable origin for the first lines of a run."""

    per_rank: int
    source: str

    def describe(self) -> str:
        policy = os.environ.get("OMP_WAIT_POLICY", "unset")
        return f"threads: {self.per_rank} per rank (from {self.source}; OMP_WAIT_POLICY={policy})"


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``: ``QUOTA PERIOD`` or ``max PERIOD``),
    rounded up; ``None`` when there is no quota or no such file."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(affinity: int | None = None, quota: int | None = None) -> int:
    """CPUs this process may use: its affinity mask (``taskset``, SLURM, containers) and, when
    set, the cgroup quota, whichever is smaller. Arguments override the live values (tests)."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS and Windows have no affinity call
            affinity = os.cpu_count() or 1
    if quota is None:
        quota = cgroup_cpu_limit()
    return max(1, min(affinity, quota) if quota is not None else affinity)


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw.split(",")[0])  # OMP_NUM_THREADS may list nested levels: "4,2"
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number of threads: set it to a positive integer or unset it"
        ) from None
    if value < 1:
        raise ValueError(f"{name}={raw!r}: set it to a positive integer or unset it")
    return value


def ranks_sharing_cpus(local_ranks: int, env: Mapping[str, str]) -> int:
    """How many of this machine's ``local_ranks`` share this process's CPU set.

    ``srun`` gives every task its own CPUs (``--cpus-per-task``); when the tasks are the ranks
    (``scripts/slurm_lm.sh``: one task per GPU) each rank has its CPUs to itself. Otherwise
    (Lightning's own launcher, torchrun) all local ranks share the CPUs of this process.
    """
    if "SLURM_PROCID" in env:
        tasks_here = _positive_int(env, "SLURM_NTASKS_PER_NODE") or 1
        return max(1, local_ranks // tasks_here)
    return max(1, _positive_int(env, "LOCAL_WORLD_SIZE") or local_ranks)


def resolve_threads(
    explicit: int | None,
    local_ranks: int = 1,
    environ: Mapping[str, str] | None = None,
    affinity: int | None = None,
    quota: int | None = None,
) -> Threads:
    """Threads per rank: ``--threads`` > ``OMP_NUM_THREADS`` > ``SLURM_CPUS_PER_TASK`` > the
    usable CPUs, the last two divided among the ranks that share them.

    ``OMP_NUM_THREADS`` is a per-process count by convention (``scripts/slurm_lm.sh`` exports it),
    so it is used as it is. Bad values raise :class:`ValueError` naming the variable.
    """
    env = os.environ if environ is None else environ
    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"--threads {explicit}: give a positive number of threads")
        return Threads(explicit, f"--threads {explicit}")
    omp = _positive_int(env, "OMP_NUM_THREADS")
    if omp is not None:
        source = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
        if omp == 1 and _torchrun_default(env):
            source += (
                ", which torchrun sets when it is unset and --nproc-per-node > 1: export "
                "OMP_NUM_THREADS, or pass --threads, to use more"
            )
        return Threads(omp, source)
    sharing = ranks_sharing_cpus(local_ranks, env)
    per_task = _positive_int(env, "SLURM_CPUS_PER_TASK")
    cpus = usable_cpus(affinity, quota)
    if per_task is not None:
        # Never more than SLURM granted, nor more than this process may actually run on.
        n = max(1, min(per_task, cpus) // sharing)
        shared = f" shared by {sharing} ranks" if sharing > 1 else ""
        return Threads(n, f"SLURM_CPUS_PER_TASK={per_task}{shared}")
    shared = f" / {sharing} local ranks" if sharing > 1 else ""
    return Threads(max(1, cpus // sharing), f"{cpus} usable CPU(s){shared}")


def _torchrun_default(env: Mapping[str, str]) -> bool:
    """Whether ``OMP_NUM_THREADS=1`` may be torchrun's own: it sets 1 for its workers when the
    variable is unset and it starts more than one per node (it sets ``TORCHELASTIC_RUN_ID``)."""
    return "TORCHELASTIC_RUN_ID" in env and (_positive_int(env, "LOCAL_WORLD_SIZE") or 1) > 1


def oversubscription(
    threads_per_rank: int,
    local_ranks: int,
    environ: Mapping[str, str] | None = None,
    affinity: int | None = None,
    quota: int | None = None,
) -> str | None:
    """A warning when the ranks that share this process's CPUs run more threads than those CPUs:
    they then take turns on the cores and every step slows down, with no error. ``None`` if not.

    The CPUs are those this process may use (:func:`usable_cpus`), or SLURM's grant per task
    (``SLURM_CPUS_PER_TASK``) when that is fewer: without task affinity SLURM does not pin a task
    to its CPUs, but the other tasks on the node count on theirs.
    """
    env = os.environ if environ is None else environ
    sharing = ranks_sharing_cpus(local_ranks, env)
    cpus, where = usable_cpus(affinity, quota), "os.sched_getaffinity and the cgroup quota"
    per_task = _positive_int(env, "SLURM_CPUS_PER_TASK")
    if per_task is not None and per_task < cpus:
        cpus, where = per_task, f"SLURM_CPUS_PER_TASK={per_task}"
    if sharing * threads_per_rank <= cpus:
        return None
    fewer = (
        f"use --devices {max(1, cpus // threads_per_rank)} or fewer (or fewer --threads)"
        if sharing > 1
        else f"use --threads {cpus} or fewer"
    )
    need = (
        f"{sharing} ranks x {threads_per_rank} thread(s) need {sharing * threads_per_rank} CPUs"
        if sharing > 1
        else f"{threads_per_rank} threads need {threads_per_rank} CPUs"
    )
    return (
        f"{need}, but this process may use {cpus} ({where}): the threads will slow each other "
        f"down; {fewer}"
    )


def apply_threads(explicit: int | None, local_ranks: int) -> Threads:
    """Resolve the count and give it to torch (``torch.set_num_threads``)."""
    import torch

    threads = resolve_threads(explicit, local_ranks)
    torch.set_num_threads(threads.per_rank)
    return threads

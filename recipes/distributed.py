"""What ``recipes/lm.py`` does about running as several processes (ranks).

- :func:`launch_rank`: this process's global rank before the process group exists, read from the
  launcher's variables exactly as Lightning reads them, so that only rank 0 prints the run's first
  lines or deletes an earlier run (``--overwrite``), on every launcher.
- :func:`peer_failure_message`: what a process-group timeout (``--dist-timeout``) means.
- :class:`RankSeeds`: each rank's own random stream for training (dropout, sampled heads).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

# The variables that make Lightning pick its TorchElasticEnvironment (torchrun sets them all).
_TORCHRUN = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def launch_rank(devices_per_node: int, environ: Mapping[str, str] | None = None) -> int:
    """The global rank that Lightning will give this process (0 when single-process).

    Lightning picks the first cluster environment that matches, in this order, and so does this:

    - torchrun (``RANK``, ``GROUP_RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` all set): ``RANK``;
    - SLURM, when ``srun`` started the tasks (``SLURM_NTASKS`` set, job name not ``bash`` or
      ``interactive``): ``SLURM_PROCID``;
    - Lightning's own launcher, one node or several (``NODE_RANK`` or torchrun's ``GROUP_RANK``,
      ``LOCAL_RANK``, each 0 when unset): ``NODE_RANK × devices_per_node + LOCAL_RANK``.

    A lone ``RANK`` (without torchrun's other variables) is ignored, as Lightning ignores it.
    """
    env = os.environ if environ is None else environ
    if all(name in env for name in _TORCHRUN):
        return int(env["RANK"])
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(env.get("SLURM_PROCID", 0))
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
    return node * devices_per_node + int(env.get("LOCAL_RANK", 0))


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank among those of its machine (``LOCAL_RANK``, or SLURM's
    ``SLURM_LOCALID`` under ``srun``; 0 when single-process)."""
    env = os.environ if environ is None else environ
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"])
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(env.get("SLURM_LOCALID", 0))
    return 0


def is_peer_timeout(error: BaseException) -> bool:
    """Whether ``error`` is torch.distributed giving up on the other ranks after the process
    group's timeout: at the rendezvous (c10d's store: ``DistStoreError``, ``DistNetworkError``)
    or in a gloo collective (a plain ``RuntimeError`` from gloo). NCCL's watchdog aborts the
    process itself instead."""
    if not isinstance(error, RuntimeError) or "timed out" not in str(error).lower():
        return False
    return isinstance(error, dist.DistError) or "gloo" in str(error)


def peer_failure_message(error: BaseException, timeout_s: float, rank: int) -> str:
    """One paragraph for a rank that waited for the others in vain."""
    lines = str(error).strip().splitlines()
    return (
        f"rank {rank} gave up waiting for the other ranks (--dist-timeout {timeout_s:g} s; "
        f"{type(error).__name__}: {lines[0] if lines else 'no message'}). The likely cause: "
        "another rank or node failed before it joined, or stopped mid-run (its own output says "
        "why: e.g. a missing data folder, exit status 2), or never started (a wrong MASTER_ADDR "
        "or MASTER_PORT, a firewall). If every rank is healthy but one is slower to reach this "
        "point (e.g. it builds the token cache while the others wait), build the cache before "
        "the job or raise --dist-timeout"
    )


def step_seed(seed: int, rank: int, step: int, micro_batch: int = 0) -> int:
    """The seed of ``rank``'s stream at training step ``step``, micro-batch ``micro_batch`` of
    its accumulation window (ranks ≥ 1): well mixed, so that nearby keys give unrelated streams
    (``seed + rank`` would make rank 1 of ``--seed 1`` replay rank 0 of ``--seed 2``)."""
    key = [seed % 2**63, rank, step, micro_batch]
    words = np.random.SeedSequence(key).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


class RankSeeds(Callback):
    """A random stream per rank for training, so that ranks draw different dropout masks (and
    different negatives in sampled heads) instead of ``world_size`` copies of the same ones.

    Rank 0 keeps the stream of ``--seed`` untouched: a single-process run, and rank 0 of any run,
    draws exactly what it drew before, and its RNG state is the one checkpoints save. Every other
    rank re-seeds before each training step from ``(seed, rank, global step)``. Keyed by the step,
    these streams need no checkpoint of their own (a checkpoint holds rank 0's RNG state only): a
    run resumed at step ``s`` draws on every rank what an uninterrupted run drew at ``s``, at any
    world size. Data order does not come from this RNG (the data module's sampler is seeded by
    ``(seed, epoch)``), so it stays as it was.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._step, self._micro_batch = -1, 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        if trainer.global_rank == 0:
            return
        # Under gradient accumulation several batches share a global step: each gets its own
        # stream. Checkpoints are written at step ends, so a resumed window starts at 0 again.
        step = int(trainer.global_step)
        self._micro_batch = self._micro_batch + 1 if step == self._step else 0
        self._step = step
        torch.manual_seed(step_seed(self.seed, trainer.global_rank, step, self._micro_batch))

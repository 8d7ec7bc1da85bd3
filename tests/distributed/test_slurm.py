"""Preemption under SLURM at 2 ranks (gloo, subprocesses; ``ddp``).

Each rank is started here with the variables ``srun`` would give it, so Lightning's
``SLURMEnvironment`` runs the job; ``scontrol`` is a fake on PATH that records the requeue. One
rank gets SLURM's requeue signal (SIGUSR1) in the middle of a training step, as an asynchronous
signal does. Lightning's own handler saved from inside the handler, at a different point on each
rank, and its save gathers the LSTM's carried state across ranks: the ranks deadlocked. Now both
save ``hpc_ckpt_1.ckpt`` at the end of the step the signal arrived in and train on, and the
requeued job continues from it to exactly the weights of a run that was never signalled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.test_ddp import SCRIPT, TIMEOUT, _env, _free_port

pytestmark = pytest.mark.ddp

ARGS = [
    "--data", "synthetic", "--synthetic-vocab-size", "80", "--synthetic-tokens", "6000",
    "--batch-size", "4", "--bptt", "10", "--embed-dim", "16", "--d-model", "16",
    "--dropout", "0.3", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
    "--threads", "1", "--no-progress-bar", "--max-steps", "6", "--checkpoint-every", "100",
]  # fmt: skip
"""75 batches an epoch (6000 tokens / 8 streams / 10): every step here is mid-epoch."""


def _start_job(tmp_path: Path, out: str, signal_rank: int | None = None) -> list[subprocess.Popen]:
    """The job's two tasks, as ``srun`` starts them (and SIGUSR1 at step 2 on ``signal_rank``)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / out}.scontrol"\n')
    scontrol.chmod(0o755)
    env = _env()
    env.update(
        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NODEID="0", SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="lm-test", SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(_free_port()),
        PATH=f"{fake_bin}{os.pathsep}{env['PATH']}",
    )  # fmt: skip
    argv = [sys.executable, str(SCRIPT), "slurm_task", *ARGS, "--cache-dir",
            str(tmp_path / "cache"), "--output-dir", str(tmp_path / out)]  # fmt: skip
    tasks = []
    for rank in (0, 1):
        task_env = {**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        if rank == signal_rank:
            task_env["SIGUSR1_AT"] = "2"
        tasks.append(subprocess.Popen(argv, cwd=tmp_path, env=task_env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    return tasks


def _finish(tasks: list[subprocess.Popen]) -> list[str]:
    """Both tasks' stderr, once both exited 0 (killed, and the test failed, at the timeout)."""
    errs = []
    try:
        for task in tasks:
            out, err = task.communicate(timeout=TIMEOUT)
            assert task.returncode == 0, f"exit {task.returncode}\n{out[-3000:]}\n{err[-6000:]}"
            errs.append(err)
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
                task.communicate()
    return errs


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_requeue_signal_at_two_ranks_saves_at_a_step_end_and_resumes_exactly(tmp_path) -> None:
    # The never-signalled run and the signalled one at once: 4 processes, 1 thread each.
    whole, signalled = _start_job(tmp_path, "whole"), _start_job(tmp_path, "run", signal_rank=1)
    _finish(whole)
    errs = _finish(signalled)
    assert "SIGUSR1: saved" in errs[0] and "requeued SLURM job 4242" in errs[0]
    assert (tmp_path / "run.scontrol").read_text() == "requeue 4242\n"  # rank 0 only, once
    hpc = torch.load(tmp_path / "run/hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 3  # the end of the step the signal arrived in, on both ranks
    assert hpc["carried_state"]["state"].shape[0] == 2  # each rank's streams
    assert hpc["batching"]["world_size"] == 2 and hpc["batching"]["global_batch"] == 8

    requeued = tmp_path / "requeued"  # the job as SLURM restarts it (no --resume)
    requeued.mkdir()
    shutil.copy(tmp_path / "run/hpc_ckpt_1.ckpt", requeued)
    _finish(_start_job(tmp_path, "requeued"))
    reference = _weights(tmp_path / "whole/checkpoints/last.ckpt")
    for run in ("run", "requeued"):
        ours = _weights(tmp_path / run / "checkpoints/last.ckpt")
        assert ours.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=f"{run}: {name}")

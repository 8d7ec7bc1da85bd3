"""scripts/slurm_lm.sh, read as SLURM runs it: its syntax, the srun line, and when a (re)started
job continues its run. srun is replaced by a stub that records its arguments. Which checkpoint
``--resume last`` takes is the recipe's rule (tests/recipes/test_interrupt.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_lm.sh"


def _checkpoint(path: Path, age_s: float) -> Path:
    """A complete zip archive (torch.save's format), written ``age_s`` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"fake")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def test_the_script_parses_and_names_what_a_cluster_needs() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
    text = SCRIPT.read_text()
    assert "srun --kill-on-bad-exit=1" in text  # one failed task ends the others
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=" in text
    assert "export NCCL_ASYNC_ERROR_HANDLING" not in text  # the deprecated name
    assert "#SBATCH --requeue" in text  # Lightning's SIGUSR1 handler requeues the job


def _fake_srun(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "srun.log"
    bin_dir.mkdir()
    stub = bin_dir / "srun"
    stub.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{log}"\n')
    stub.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize(
    ("given", "resumed"),
    [([], "last"), (["--resume", "last"], "user's"), (["--overwrite"], "none")],
)
def test_a_restarted_job_continues_its_run(tmp_path, given, resumed) -> None:
    out = tmp_path / "run"
    _checkpoint(out / "hpc_ckpt_1.ckpt", age_s=300)
    _checkpoint(out / "checkpoints" / "last.ckpt", age_s=100)
    bin_dir, log = _fake_srun(tmp_path)
    env = _env(SLURM_SUBMIT_DIR=str(REPO), OUTPUT_DIR=str(out), SLURM_CPUS_PER_TASK="4",
               SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NUM_NODES="3")  # fmt: skip
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    done = subprocess.run(["bash", str(SCRIPT), *given], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = log.read_text().splitlines()
    assert argv[:3] == ["--kill-on-bad-exit=1", "--cpus-per-task=4", "python"]
    assert argv[argv.index("--devices") + 1] == "2" and argv[argv.index("--num-nodes") + 1] == "3"
    resumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--resume"]
    expected = {"last": ["last"], "user's": ["last"], "none": []}[resumed]
    assert resumes == expected
    assert argv[len(argv) - len(given) :] == given  # the user's arguments come last (they win)


def test_a_job_submitted_from_elsewhere_says_where_to_submit_from(tmp_path) -> None:
    bin_dir, log = _fake_srun(tmp_path)
    env = _env(SLURM_SUBMIT_DIR=str(tmp_path))
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2 and "repository root" in done.stderr
    assert not log.exists()

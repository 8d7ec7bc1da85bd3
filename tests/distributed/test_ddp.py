"""2-rank gloo DDP on CPU, always in subprocesses (``strategy="ddp"`` inside pytest would relaunch
pytest itself). Marked ``ddp``: run with ``pytest -m ddp tests/distributed``.

- every registered head trains under plain DDP without ``find_unused_parameters``;
- the mixin's val/test perplexity under ``Trainer(strategy="ddp")`` on an odd-sized set (which
  Lightning's sampler pads with a repeat) equals the exact one over each sample once;
- the recipe's 2-rank validation/test perplexity equals the single-process one on the same model;
- a 2-rank run stopped mid-epoch and resumed from ``last.ckpt`` ends with exactly the weights of an
  uninterrupted run (dropout on: the RNG state is checkpointed too).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.ddp

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_script.py")
RECIPE = REPO / "recipes" / "lm.py"
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), DDP_TEST_PORT=str(_free_port()),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )  # fmt: skip
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return proc


def _recipe(tmp_path: Path, out: str, *extra: str) -> dict:
    args = [
        str(RECIPE), "--data", "synthetic", "--synthetic-vocab-size", "80",
        "--synthetic-tokens", "6000", "--cache-dir", str(tmp_path / "cache"),
        "--batch-size", "4", "--bptt", "10", "--embed-dim", "16", "--d-model", "16",
        "--dropout", "0.3", "--accelerator", "cpu", "--threads", "1", "--no-progress-bar",
        "--output-dir", str(tmp_path / out), *extra,
    ]  # fmt: skip
    _run(args, tmp_path)
    return json.loads((tmp_path / out / "results.json").read_text())


def test_every_head_trains_under_plain_ddp(tmp_path) -> None:
    proc = _run([str(SCRIPT), "heads"], tmp_path)
    from lm_heads import HEADS

    assert sorted(
        line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")
    ) == sorted(HEADS)


def test_mixin_counts_each_sample_once_when_ranks_do_not_divide_the_set(tmp_path) -> None:
    proc = _run([str(SCRIPT), "mixin_eval"], tmp_path)
    logged = {
        line.split()[1]: (float(line.split()[2]), float(line.split()[3]))
        for line in proc.stdout.splitlines()
        if line.startswith("ok ")
    }
    assert set(logged) == {"val", "test"}, proc.stdout
    for stage, (value, exact) in logged.items():
        assert value == pytest.approx(exact, rel=1e-6), stage


def test_two_rank_perplexity_equals_single_process(tmp_path) -> None:
    single = _recipe(tmp_path, "one", "--head", "hierarchical", "--max-steps", "3")
    ckpt = str(tmp_path / "one" / "checkpoints" / "last.ckpt")
    two = _recipe(
        tmp_path, "two", "--head", "hierarchical", "--devices", "2", "--eval-only", "--resume", ckpt
    )
    assert two["world_size"] == 2
    assert two["val_ppl"] == pytest.approx(single["val_ppl"], rel=1e-5)
    assert two["test_ppl"] == pytest.approx(single["test_ppl"], rel=1e-5)


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path) -> None:
    common = ["--head", "adaptive", "--devices", "2", "--checkpoint-every", "2"]
    # 6000 tokens / (2 ranks x 4 streams) = 750 per stream = 75 batches of 10: step 5 is mid-epoch.
    full = _recipe(tmp_path, "full", *common, "--max-steps", "8")
    # The interrupted run gets past step 5, but resumes from its last *periodic* checkpoint
    # (step 4), as a run killed at step 5 would: the end-of-run save plays no part.
    _recipe(tmp_path, "part", *common, "--max-steps", "5")
    periodic = str(tmp_path / "part/checkpoints/step4.ckpt")
    resumed = _recipe(tmp_path, "part", *common, "--max-steps", "8", "--resume", periodic)
    assert resumed["global_step"] == full["global_step"] == 8
    a = torch.load(tmp_path / "full/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "part/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert resumed["train_loss_last"] == pytest.approx(full["train_loss_last"], rel=1e-6)

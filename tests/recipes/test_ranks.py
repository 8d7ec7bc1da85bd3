"""recipes/distributed.py and the recipe's multi-process options: the global rank before the
process group exists (every launcher, checked against Lightning's own answer), the process-group
timeout, its message, and one random stream per rank."""

from __future__ import annotations

import os
from datetime import timedelta

import lightning as L
import pytest
import torch
import torch.distributed as dist

from recipes.distributed import (
    RankSeeds,
    is_peer_timeout,
    launch_rank,
    local_rank,
    peer_failure_message,
)

SLURM = {
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_JOB_NAME": "lm",
    "SLURM_NODELIST": "n[1-2]",
    "SLURM_NODEID": "1",
}
TORCHRUN = {
    "GROUP_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "WORLD_SIZE": "4",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "x",
}
SALLOC = {**SLURM, "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash", "SLURM_PROCID": "0"}
LAUNCHERS = {
    "single process": ({}, 1, 1, 0),
    "Lightning's launcher, child process": ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 2, 1, 1),
    # Lightning's own multi-node mode: node 1 was rank 0 by the old RANK/SLURM_PROCID/LOCAL_RANK
    # rule, printed the first lines and, with --overwrite, deleted the run.
    "Lightning multi-node, node 1": ({"NODE_RANK": "1", "WORLD_SIZE": "2"}, 1, 2, 1),
    "Lightning multi-node, node 1, child": ({"NODE_RANK": "1", "LOCAL_RANK": "1"}, 2, 2, 3),
    "LOCAL_RANK alone": ({"LOCAL_RANK": "1"}, 2, 1, 1),
    "torchrun": ({**TORCHRUN, "RANK": "3", "LOCAL_RANK": "1"}, 2, 2, 3),
    "srun": ({**SLURM, "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}, 2, 2, 2),
    # An interactive allocation (job name bash): Lightning ignores SLURM and launches itself; the
    # old rule took SLURM_PROCID=0 for the child too.
    "Lightning's launcher in salloc": ({**SALLOC, "LOCAL_RANK": "1"}, 2, 1, 1),
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launch_rank_is_the_rank_lightning_gives(launcher, monkeypatch) -> None:
    env, devices, nodes, expected = LAUNCHERS[launcher]
    assert launch_rank(devices, env) == expected
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # A DDP trainer sets the process-wide rank of rank_zero_only (Lightning's and its utilities'
    # copies): put both back afterwards, or later tests in this process log nothing (rank != 0).
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

    for function in (rank_zero_only, utils_rank_zero_only):
        monkeypatch.setattr(function, "rank", getattr(function, "rank", 0), raising=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, strategy="ddp",
                        logger=False, enable_checkpointing=False)  # fmt: skip
    assert trainer.global_rank == expected == launch_rank(devices)


def test_local_rank_of_each_launcher() -> None:
    assert local_rank({}) == 0
    assert local_rank({"LOCAL_RANK": "3"}) == 3
    assert local_rank({**SLURM, "SLURM_LOCALID": "1"}) == 1
    assert local_rank({**SLURM, "SLURM_JOB_NAME": "interactive", "SLURM_LOCALID": "1"}) == 0


@pytest.mark.parametrize(
    ("strategy", "devices", "kind"),
    [
        ("auto", 2, "DDPStrategy"),
        ("ddp", 1, "DDPStrategy"),
        ("ddp_spawn", 2, "DDPStrategy"),
        ("ddp_find_unused_parameters_true", 2, "DDPStrategy"),
    ],
)
def test_every_ddp_strategy_gets_the_timeout(strategy, devices, kind) -> None:
    from recipes.options import TrainerOptions
    from recipes.preflight import _strategy

    built = _strategy(TrainerOptions(strategy=strategy, devices=devices), timeout_s=42)
    assert type(built).__name__ == kind
    assert built._timeout == timedelta(seconds=42)
    if strategy == "ddp_find_unused_parameters_true":  # the user's choice is kept
        assert built._ddp_kwargs["find_unused_parameters"] is True


def test_the_default_timeout_and_a_single_device() -> None:
    from recipes.cli import parse_args
    from recipes.options import TrainerOptions, option_group
    from recipes.preflight import _strategy

    default = parse_args([]).dist_timeout
    assert _strategy(TrainerOptions(devices=2), default)._timeout == timedelta(seconds=600)
    assert _strategy(option_group(TrainerOptions, parse_args([])), default) == "auto"


def test_timeouts_are_told_from_other_errors() -> None:
    assert is_peer_timeout(dist.DistStoreError("Timed out after 21 seconds waiting for clients"))
    assert is_peer_timeout(dist.DistNetworkError("The client socket has timed out after 20000ms"))
    gloo = "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv"
    assert is_peer_timeout(RuntimeError(gloo))
    assert not is_peer_timeout(RuntimeError("CUDA out of memory"))
    assert not is_peer_timeout(RuntimeError("the request timed out"))  # neither c10d nor gloo
    assert not is_peer_timeout(ValueError("Timed out"))


def test_a_peer_timeout_ends_the_recipe_with_one_paragraph(lm, tiny_args, capsys,
                                                           monkeypatch) -> None:  # fmt: skip
    def waits_in_vain(*args, **kwargs):
        raise dist.DistStoreError("Timed out after 21 seconds waiting for clients. 1/2 joined.")

    monkeypatch.setattr(lm, "run", waits_in_vain)
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(SystemExit) as exit_:
        lm.main([*tiny_args, "--num-nodes", "2", "--dist-timeout", "20"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("recipes/lm.py: error: rank 1 gave up waiting")
    assert "--dist-timeout 20 s" in err and "another rank or node failed" in err


def test_peer_failure_message_without_a_message() -> None:
    text = peer_failure_message(dist.DistStoreError(""), 600, 0)
    assert "DistStoreError: no message" in text


class _Trainer:
    def __init__(self, rank: int, step: int) -> None:
        self.global_rank, self.global_step = rank, step


def _draws(rank: int, step: int, seed: int = 7) -> torch.Tensor:
    torch.manual_seed(seed)
    RankSeeds(seed).on_train_batch_start(_Trainer(rank, step), None, None, 0)  # type: ignore[arg-type]
    return torch.nn.functional.dropout(torch.ones(64), 0.5)


def test_each_rank_draws_its_own_dropout_masks() -> None:
    masks = [_draws(rank, step=5) for rank in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert not torch.equal(_draws(1, step=5), _draws(1, step=6))  # a new stream every step


def test_rank_zero_keeps_the_base_seed_and_other_ranks_resume_exactly() -> None:
    torch.manual_seed(7)
    single_process = torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(_draws(0, step=5), single_process)  # a 1-rank run is unchanged
    # Keyed by (seed, rank, step): a rank resumed at step 5 draws what it drew uninterrupted,
    # whatever its RNG state was (checkpoints hold rank 0's only).
    torch.manual_seed(999)
    RankSeeds(7).on_train_batch_start(_Trainer(1, 5), None, None, 0)  # type: ignore[arg-type]
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), _draws(1, step=5))
    assert not torch.equal(_draws(1, step=5, seed=7), _draws(1, step=5, seed=8))


def test_each_micro_batch_of_an_accumulated_step_draws_its_own_masks() -> None:
    # Under gradient accumulation batches share a global step: keyed by the step alone, rank 1
    # drew the same masks for every micro-batch of a window.
    seeds = RankSeeds(7)
    masks = []
    for step in (5, 5, 6):
        seeds.on_train_batch_start(_Trainer(1, step), None, None, 0)  # type: ignore[arg-type]
        masks.append(torch.nn.functional.dropout(torch.ones(64), 0.5))
    assert not torch.equal(masks[0], masks[1])
    assert torch.equal(masks[2], _draws(1, step=6))  # a new window starts at micro-batch 0


def test_the_recipe_trains_with_rank_seeds(tmp_path) -> None:
    from recipes.cli import grouped, parse_args
    from recipes.preflight import build_trainer

    args = parse_args(["--accelerator", "cpu", "--output-dir", str(tmp_path), "--logger", "csv"])
    trainer, _ = build_trainer(grouped(args), resuming=False, rank=0)
    assert any(isinstance(c, RankSeeds) for c in trainer.callbacks)

"""The world size is part of a run: checkpoints record how the global batch was made, and a
resume with another split is refused mid-epoch (exit 2, before training, with or without carried
state) and warned about at an epoch's end.

These runs are single-process and edit the world size a checkpoint records: the check reads only
that record and this run's ``trainer.world_size``, so a 1-process run resuming a checkpoint that
says 2 ranks takes the very path of a 2 → 1 resume (tests/distributed/test_slurm.py checks the
record a real 2-rank run writes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _as_if_saved_by(path: Path, world_size: int) -> Path:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    record = ckpt["batching"]
    record["world_size"] = world_size
    record["global_batch"] = record["batch_size"] * world_size
    edited = path.with_name(f"world{world_size}.ckpt")
    torch.save(ckpt, edited)
    return edited


def test_checkpoints_record_the_batching(lm, tiny_args, tmp_path) -> None:
    lm.main([*tiny_args, "--max-steps", "3"])
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu",
                      weights_only=True)  # fmt: skip
    # 4000 tokens in 4 streams of windows of 8: 125 batches an epoch
    assert ckpt["batching"] == {"world_size": 1, "batch_size": 4, "accumulate_grad_batches": 1,
                                "global_batch": 4, "epoch_batches_done": 3,
                                "epoch_batches": 125}  # fmt: skip


@pytest.mark.parametrize("carry", ["--carry-state", "--no-carry-state"])
def test_mid_epoch_resume_on_another_world_size_is_refused_before_training(
    lm, tiny_args, tmp_path, capsys, carry
) -> None:
    lm.main([*tiny_args, "--max-steps", "3"])
    last = tmp_path / "run/checkpoints/last.ckpt"
    edited = _as_if_saved_by(last, world_size=2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        lm.main([*tiny_args, "--max-steps", "6", "--resume", str(edited), carry])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "saved mid-epoch (after batch 3 of 125)" in err
    assert "2 rank(s) x --batch-size 4 (global batch 8 windows)" in err
    assert "1 rank(s) x --batch-size 4 (global batch 4 windows)" in err
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3  # untrained


def test_epoch_boundary_resume_on_another_world_size_warns_of_the_global_batch(
    lm, tiny_args, tmp_path, capsys
) -> None:
    epoch = ["--limit-train-batches", "4", "--max-steps", "-1"]
    lm.main([*tiny_args, *epoch, "--max-epochs", "1"])
    edited = _as_if_saved_by(tmp_path / "run/checkpoints/last.ckpt", world_size=2)
    capsys.readouterr()
    resumed = lm.main([*tiny_args, *epoch, "--max-epochs", "2", "--resume", str(edited)])
    assert resumed["global_step"] == 8
    err = capsys.readouterr().err
    assert "warning: checkpoint" in err
    assert "now averages the gradient over 4 windows instead of 8" in err


def test_checkpoints_before_the_record_tell_their_world_size_by_the_carried_state() -> None:
    from recipes.checkpoint import check_batching
    from recipes.cli import UsageError

    now = {"world_size": 1, "batch_size": 4, "accumulate_grad_batches": 1, "global_batch": 4}
    state = torch.zeros(2, 2, 1, 4, 16)  # [world, (h, c), layers, batch_size, d]
    old = {"carried_state": {"state": state, "batches_in_epoch": 5}}
    with pytest.raises(UsageError, match=r"2 rank\(s\) x --batch-size 4 \(global batch 8"):
        check_batching(old, Path("old.ckpt"), now)
    assert check_batching({}, Path("old.ckpt"), now) is None  # nothing recorded: nothing to tell
    same = {"carried_state": {"state": state[:1], "batches_in_epoch": 5}}
    assert check_batching(same, Path("old.ckpt"), now) is None

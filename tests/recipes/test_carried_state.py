"""Truncated BPTT with carried state, and the plateau learning-rate annealing."""

from __future__ import annotations

import pytest
import torch
from recipe_helpers import TINY

from recipes.language_model import LanguageModel
from recipes.models import LSTMLM


def test_two_windows_with_carried_state_equal_one_window_over_both() -> None:
    torch.manual_seed(0)
    model = LSTMLM(50, embed_dim=8, d_model=12, num_layers=2, dropout=0.0).eval()
    tokens = torch.randint(0, 50, (3, 14))
    whole, whole_state = model(tokens)
    first, state = model(tokens[:, :9])
    second, end_state = model(tokens[:, 9:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for a, b in zip(end_state, whole_state, strict=True):
        torch.testing.assert_close(a, b)
    # Without the state the second window differs: the test can tell carried from zero state.
    assert not torch.allclose(model(tokens[:, 9:])[0], second)


def test_language_model_carries_detached_state_per_stage() -> None:
    torch.manual_seed(0)
    model = LanguageModel(vocab_size=40, counts=torch.arange(40, 0, -1), head="full",
                          embed_dim=8, d_model=8, dropout=0.0)  # fmt: skip
    tokens = torch.randint(0, 40, (2, 6))
    model._hidden(tokens[:, :3], "val")
    carried = model._hidden(tokens[:, 3:], "val")
    torch.testing.assert_close(carried, model(tokens)[0][:, 3:])
    h, c = model._carried["val"]
    assert not h.requires_grad and not c.requires_grad
    assert "train" not in model._carried  # stages keep separate streams
    model.on_validation_epoch_start()
    assert model._carried["val"] is None  # each pass over a split starts from the zero state


def test_no_carry_state_restarts_every_window() -> None:
    torch.manual_seed(0)
    model = LanguageModel(vocab_size=40, counts=torch.arange(40, 0, -1), head="full",
                          embed_dim=8, d_model=8, dropout=0.0, carry_state=False)  # fmt: skip
    tokens = torch.randint(0, 40, (2, 6))
    model._hidden(tokens[:, :3], "train")
    torch.testing.assert_close(model._hidden(tokens[:, 3:], "train"), model(tokens[:, 3:])[0])


def test_plateau_divides_the_lr_when_validation_does_not_improve() -> None:
    model = LanguageModel(vocab_size=40, counts=torch.arange(40, 0, -1), head="full",
                          embed_dim=8, d_model=8, optimizer="sgd", lr=20.0,
                          lr_schedule="plateau", lr_decay=4.0)  # fmt: skip
    config = model.configure_optimizers()
    schedule = config["lr_scheduler"]
    assert schedule["monitor"] == "val_ppl" and schedule["interval"] == "epoch"
    scheduler, opt = schedule["scheduler"], config["optimizer"]
    lrs = []
    # pytorch/examples: anneal whenever val is not strictly below the best so far.
    for val in [300.0, 250.0, 260.0, 240.0, 240.0, 239.0]:
        scheduler.step(val)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [20.0, 20.0, 5.0, 5.0, 1.25, 1.25]


def test_plateau_rejects_warmup_and_a_decay_that_does_not_decay() -> None:
    common = {"vocab_size": 40, "counts": torch.arange(40, 0, -1), "head": "full"}
    with pytest.raises(ValueError, match="warmup"):
        LanguageModel(**common, lr_schedule="plateau", warmup_steps=5)
    with pytest.raises(ValueError, match="lr_decay must be > 1"):
        LanguageModel(**common, lr_schedule="plateau", lr_decay=1.0)


def _fit(lm, tmp_path, name: str, *extra: str) -> dict:
    return lm.main([*TINY, "--head", "adaptive", "--cache-dir", str(tmp_path / "cache"),
                    "--output-dir", str(tmp_path / name), *extra])  # fmt: skip


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("drop_state", [False, True])
def test_resume_mid_epoch_restores_the_carried_state(lm, tmp_path, monkeypatch, drop_state) -> None:
    """Killed after a mid-epoch checkpoint and resumed: same weights as an uninterrupted run.

    With the carried state removed from the checkpoint the weights differ, which shows that the
    state matters and that the test can fail.
    """
    monkeypatch.chdir(tmp_path)
    # 4000 tokens / 4 streams / 8 = 125 batches per epoch: step 4 is mid-epoch.
    plan = ["--lr-schedule", "plateau", "--optimizer", "sgd", "--lr", "5", "--dropout", "0.3"]
    _fit(lm, tmp_path, "whole", *plan, "--max-steps", "8", "--checkpoint-every", "4")
    _fit(lm, tmp_path, "part", *plan, "--max-steps", "5", "--checkpoint-every", "4")
    periodic = tmp_path / "part/checkpoints/step4.ckpt"
    ckpt = torch.load(periodic, map_location="cpu", weights_only=True)
    assert ckpt["carried_state"]["state"].shape == (1, 2, 2, 4, 16)  # world, (h, c), layers, B, d
    assert ckpt["carried_state"]["batches_in_epoch"] == 4
    assert ckpt["lr_schedulers"][0]["factor"] == 0.25  # the schedule travels with the checkpoint
    if drop_state:
        del ckpt["carried_state"]
        torch.save(ckpt, periodic)
    resumed = _fit(lm, tmp_path, "resumed", *plan, "--max-steps", "8", "--checkpoint-every", "4",
                   "--resume", str(periodic))  # fmt: skip
    assert resumed["global_step"] == 8
    a = _weights(tmp_path / "whole/checkpoints/last.ckpt")
    b = _weights(tmp_path / "resumed/checkpoints/last.ckpt")
    same = all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)
    assert same is not drop_state

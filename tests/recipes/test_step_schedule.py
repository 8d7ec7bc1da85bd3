"""``--lr-schedule step``: the lr of every epoch fixed in advance, also across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from recipe_helpers import load_recipe

language_model = load_recipe("language_model")

STUDY = ["--head", "full", "--lr", "20", "--lr-schedule", "step", "--lr-milestones", "[5, 6]",
         "--lr-decay", "4", "--limit-train-batches", "2", "--limit-val-batches", "1",
         "--max-epochs", "6"]  # fmt: skip
EXPECTED = [20.0, 20.0, 20.0, 20.0, 5.0, 1.25]  # constant for epochs 1-4, then /4 twice


def _output(args: list[str]) -> Path:
    return Path(args[args.index("--output-dir") + 1])


def _epoch_lrs(results: dict) -> list[float]:
    """The lr each epoch trained at, read from its epoch-end validation point."""
    return [p["lr"] for p in results["val_curve"] if "val_ppl" in p]


def test_each_epoch_trains_at_the_scheduled_lr(lm, tiny_args) -> None:
    results = lm.main([*tiny_args, *STUDY])
    assert _epoch_lrs(results) == EXPECTED
    assert [p.get("epoch_end") for p in results["val_curve"] if "val_ppl" in p] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


@pytest.mark.parametrize("stop_at", [7, 9])  # inside epoch 4 (before the change), epoch 5
def test_a_resumed_run_keeps_the_schedule_and_the_weights(lm, tiny_args, stop_at) -> None:
    whole = lm.main([*tiny_args, *STUDY])
    whole_weights = torch.load(_output(tiny_args) / "checkpoints" / "last.ckpt")["state_dict"]
    split = list(tiny_args)
    split[split.index("--output-dir") + 1] = str(_output(tiny_args).parent / "split")
    lm.main([*split, *STUDY, "--max-steps", str(stop_at)])
    resumed = lm.main([*split, *STUDY, "--resume", "last"])
    assert resumed["global_step"] == whole["global_step"] == 12
    assert _epoch_lrs(resumed) == EXPECTED
    weights = torch.load(_output(split) / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(weights[k], whole_weights[k]) for k in whole_weights)
    assert json.loads((_output(split) / "results.json").read_text())["val_ppl"] == whole["val_ppl"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr_schedule": "step"}, "needs lr_milestones"),
        ({"lr_schedule": "step", "lr_milestones": [6, 5]}, "increasing epochs"),
        ({"lr_schedule": "step", "lr_milestones": [1]}, "from 2"),
        ({"lr_schedule": "step", "lr_milestones": [5], "lr_decay": 1.0}, "lr_decay must be > 1"),
        ({"lr_schedule": "step", "lr_milestones": [5], "warmup_steps": 3}, "no warmup_steps"),
        ({"lr_schedule": "plateau", "lr_milestones": [5]}, "read by lr_schedule='step' only"),
    ],
)
def test_schedule_options_that_disagree_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        language_model.LanguageModel(vocab_size=30, embed_dim=8, d_model=8, **options)

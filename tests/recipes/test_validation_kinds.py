"""Whole-split validation at each epoch end drives the plateau schedule; subset points never do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipe_helpers import load_recipe

language_model = load_recipe("language_model")


def _scripted_run(lm, tiny_args, monkeypatch, whole: list[float], subset: list[float]) -> dict:
    """Three epochs where the epoch-end (whole split) ``val_ppl`` and the subset points read
    the scripted values instead of the model's."""
    whole_left, subset_left = list(whole), list(subset)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.log("val_ppl", whole_left.pop(0), on_epoch=True)

    def subset_perplexity(self, trainer, module):
        return subset_left.pop(0)

    monkeypatch.setattr(language_model.LanguageModel, "validation_step", validation_step)
    monkeypatch.setattr(language_model.SubsetValidation, "perplexity", subset_perplexity)
    lm.main([*tiny_args, "--head", "full", "--max-epochs", "3", "--lr", "20",
             "--lr-schedule", "plateau", "--lr-decay", "4", "--limit-train-batches", "4",
             "--curve-every", "2", "--curve-batches", "1"])  # fmt: skip
    return json.loads((tiny_args_output(tiny_args) / "results.json").read_text())


def tiny_args_output(tiny_args: list[str]) -> Path:
    return Path(tiny_args[tiny_args.index("--output-dir") + 1])


def _lrs(results: dict, metric: str) -> list[float]:
    return [p["lr"] for p in results["val_curve"] if metric in p]


def test_a_worse_epoch_end_validation_anneals_whatever_the_subset_says(
    lm, tiny_args, monkeypatch
) -> None:
    # Epoch 2's whole split is worse than epoch 1's: anneal, though every subset point improved.
    results = _scripted_run(lm, tiny_args, monkeypatch, whole=[100.0, 120.0, 90.0],
                            subset=[200.0, 150.0, 110.0, 105.0, 95.0, 80.0])  # fmt: skip
    assert _lrs(results, "val_ppl") == [20.0, 20.0, 5.0]  # the lr each epoch was trained at
    assert _lrs(results, "val_subset_ppl") == [20.0, 20.0, 20.0, 20.0, 5.0, 5.0]
    assert [p["val_subset_ppl"] for p in results["val_curve"] if "val_subset_ppl" in p] == [
        200.0, 150.0, 110.0, 105.0, 95.0, 80.0,
    ]  # fmt: skip


def test_a_worse_subset_never_anneals(lm, tiny_args, monkeypatch) -> None:
    results = _scripted_run(lm, tiny_args, monkeypatch, whole=[100.0, 90.0, 80.0],
                            subset=[100.0, 300.0, 100.0, 400.0, 100.0, 500.0])  # fmt: skip
    assert _lrs(results, "val_ppl") == [20.0, 20.0, 20.0]
    assert _lrs(results, "val_subset_ppl") == [20.0] * 6


def test_subset_points_evaluate_the_first_batches_from_the_zero_state(lm, tiny_args) -> None:
    # Unscripted: the subset point at an epoch's end equals a whole-split validation cut to
    # the same batches (same weights, same streams, zero state at the start).
    lm.main([*tiny_args, "--head", "adaptive", "--max-epochs", "1", "--limit-train-batches", "4",
             "--curve-every", "4", "--curve-batches", "2", "--limit-val-batches", "2"])  # fmt: skip
    curve = json.loads((tiny_args_output(tiny_args) / "results.json").read_text())["val_curve"]
    subset = next(p for p in curve if "val_subset_ppl" in p)
    whole = next(p for p in curve if "val_ppl" in p)
    assert subset["step"] == whole["step"] == 4
    assert subset["val_subset_ppl"] == pytest.approx(whole["val_ppl"], rel=1e-5)

"""The memory estimate checked before training (recipes/memory.py) and its error."""

from __future__ import annotations

import pytest
import torch

from recipes.language_model import LanguageModel
from recipes.memory import GiB, check_memory, estimate, score_shape

V, D = 500, 16


def _model(head: str, optimizer: str = "adam", **options) -> LanguageModel:
    counts = torch.arange(V, 0, -1)
    return LanguageModel(vocab_size=V, counts=counts, head=head, head_options=options,
                         embed_dim=D, d_model=D, optimizer=optimizer)  # fmt: skip


def test_estimate_counts_parameters_gradients_adam_state_and_scores() -> None:
    model = _model("full")
    params = sum(p.numel() for p in model.parameters()) * 4
    est = estimate(model, model.head, "adam", tokens=70)
    assert (est.parameters, est.gradients, est.optimizer) == (params, params, 2 * params)
    assert est.score_shape == (70, V) and est.scores == 3 * 4 * 70 * V
    assert estimate(model, model.head, "sgd", tokens=70).optimizer == 0


@pytest.mark.parametrize(
    ("head", "options", "columns"),
    [
        ("full", {"chunk_size": 8}, V),  # 8 rows at a time
        ("importance", {"num_samples": 64}, 65),
        ("adaptive", {"cutoffs": [50, 200]}, 50 + 2 + 300),
        ("spherical", {}, 0),
    ],
)
def test_score_shape_follows_the_head_structure(head, options, columns) -> None:
    model = _model(head, **options)
    rows, cols = score_shape(model.head, tokens=70)
    assert cols == columns and rows == (8 if head == "full" else 70)


def test_tree_heads_score_the_widest_node_of_each_level() -> None:
    rows, cols = score_shape(_model("class", num_classes=10).head, tokens=70)
    assert rows == 70 and 10 < cols < V  # the 10 classes, then the largest class's words


def test_too_little_memory_is_a_clear_error_before_training() -> None:
    model = _model("full")
    est, free = check_memory(model, 20 * 35, torch.device("cpu"), available=64 * GiB)
    assert free == 64 * GiB and est.total > est.parameters
    with pytest.raises(MemoryError, match=r"--head full cannot train .* only 0\.0 GiB is free"):
        check_memory(model, 20 * 35, torch.device("cpu"), available=1024)


def test_recipe_refuses_a_head_that_does_not_fit(lm, tiny_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("recipes.memory.available_bytes", lambda device: 10_000)
    with pytest.raises(SystemExit) as exit_info:
        lm.main([*tiny_args, "--head", "full", "--max-steps", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--head full cannot train in the memory available" in err and "--batch-size" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained

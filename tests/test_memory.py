"""The memory estimate (lm_heads/memory.py) and each head's widest score matrix (score_shape)."""

from __future__ import annotations

import pytest
import torch

from lm_heads import build_head
from lm_heads.memory import estimate

V, D = 500, 16
COUNTS = torch.arange(V, 0, -1)


def _head(name: str, **options):
    return build_head(name, D, V, counts=COUNTS, **options)


def test_estimate_counts_parameters_gradients_adam_state_and_scores() -> None:
    head = _head("full")
    params = sum(p.numel() for p in head.parameters()) * 4
    est = estimate(head, head, "adam", tokens=70)
    assert (est.parameters, est.gradients, est.optimizer) == (params, params, 2 * params)
    assert est.score_shape == (70, V) and est.scores == 3 * 4 * 70 * V
    assert estimate(head, head, "sgd", tokens=70).optimizer == 0
    head.weight.requires_grad_(False)  # frozen parameters have no gradient nor optimizer state
    assert estimate(head, head, "adam", tokens=70).gradients == params - V * D * 4


@pytest.mark.parametrize(
    ("name", "options", "shape"),
    [
        ("full", {}, (70, V)),
        ("full", {"chunk_size": 8}, (8, V)),  # 8 rows at a time
        ("full", {"chunk_size": 100}, (70, V)),  # never more rows than tokens
        ("importance", {"num_samples": 64}, (70, 65)),
        ("nce", {"num_samples": 32}, (70, 33)),
        ("adaptive", {"cutoffs": [50, 200]}, (70, 50 + 2 + 300)),
        ("spherical", {}, (70, 0)),
        ("spherical", {"gram": False}, (70, V)),  # the naive form scores every word
        ("taylor", {}, (70, 0)),
        ("cosine", {}, (70, V)),
    ],
)
def test_score_shape_follows_the_head_structure(name, options, shape) -> None:
    assert _head(name, **options).score_shape(70) == shape


def test_tree_heads_score_the_widest_node_of_each_level() -> None:
    head = _head("class", num_classes=10)
    classes, largest = head.classes_built, int(head.node_width[1:].max())
    # The root scores the classes, then one class scores its words: the largest bounds that.
    assert head.score_shape(70) == (70, classes + largest) and classes + largest < V

"""Hardware-aware cutoffs: the dynamic programme against exhaustive search and cost models whose
optimum is known, and the measured cost model (quick, cached, reusable)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from lm_heads.cutoffs import (
    MatmulCost,
    choose_cutoffs,
    default_cutoffs,
    measure_matmul_cost,
    projection_dims,
)
from tests.heads.utils import zipf_counts


def expected_cost(cost, counts: torch.Tensor, cuts: list[int], d: int, batch: int, div: float):
    """The objective of Grave et al. (Section 4), written directly for one set of cutoffs."""
    probs = torch.sort(counts.double(), descending=True).values
    probs = probs / probs.sum()
    vocab = probs.numel()
    scalar = lambda x: torch.tensor(float(x), dtype=torch.float64)  # noqa: E731
    if not cuts:
        return float(cost(scalar(batch), d, scalar(vocab)))
    total = float(cost(scalar(batch), d, scalar(cuts[0] + len(cuts))))
    bounds = [*cuts, vocab]
    for i, dim in enumerate(projection_dims(d, len(cuts), div)):
        rows = scalar(float(probs[bounds[i] : bounds[i + 1]].sum()) * batch)
        total += float(
            cost(rows, d, scalar(dim)) + cost(rows, dim, scalar(bounds[i + 1] - bounds[i]))
        )
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_programme_finds_the_exhaustive_optimum(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    call, flop, output, weight = (
        torch.rand(4, generator=generator) * torch.tensor([50, 1, 5, 1])
    ).tolist()
    cost = MatmulCost(call=call, flop=flop / 64, output=output, weight=weight)
    vocab, d, batch, div = 24, 64, 256, 4.0
    counts = zipf_counts(vocab, seed=seed)
    found = choose_cutoffs(counts, d, batch, div_value=div, max_clusters=3, cost_model=cost)
    best = min(
        (list(c) for j in range(4) for c in itertools.combinations(range(1, vocab), j)),
        key=lambda c: expected_cost(cost, counts, c, d, batch, div),
    )
    assert expected_cost(cost, counts, found, d, batch, div) == pytest.approx(
        expected_cost(cost, counts, best, d, batch, div), rel=1e-9
    )


def test_step_cost_puts_cutoffs_at_the_step() -> None:
    # A matmul is cheap up to 256 output columns and 1000× dearer beyond: the head takes as many
    # words as fit (256 − J cluster tokens), and every cluster stays within 256 words.
    def step(rows: torch.Tensor, in_dim: int, out_dim: torch.Tensor) -> torch.Tensor:
        return rows * torch.where(out_dim <= 256, 1.0, 1000.0)

    cuts = choose_cutoffs(
        zipf_counts(1000), 64, 512, div_value=2.0, cost_model=step, candidates=range(1, 1000)
    )
    assert len(cuts) == 3 and cuts[0] == 256 - 3
    assert all(b - a <= 256 for a, b in zip(cuts, [*cuts[1:], 1000], strict=True))


def test_per_call_overhead_means_fewer_clusters() -> None:
    counts = zipf_counts(5000)

    def linear(overhead: float):
        return lambda rows, in_dim, out_dim: overhead + rows * in_dim * out_dim

    free = choose_cutoffs(counts, 256, 1024, cost_model=linear(0.0))
    some = choose_cutoffs(counts, 256, 1024, cost_model=linear(3e7))
    prohibitive = choose_cutoffs(counts, 256, 1024, cost_model=linear(1e13))
    assert len(free) > len(some) >= 1
    assert prohibitive == []  # one call (a full softmax) beats the 1 + 2J calls of J clusters


def test_max_clusters_and_vanishing_projections_are_respected() -> None:
    counts = zipf_counts(5000)
    flops = lambda rows, in_dim, out_dim: rows * in_dim * out_dim  # noqa: E731
    assert len(choose_cutoffs(counts, 256, 1024, cost_model=flops, max_clusters=1)) <= 1
    # d = 16, div 4: a second cluster would project to 16 // 16 = 1 dim, a third to 0.
    assert len(choose_cutoffs(counts, 16, 1024, cost_model=flops)) <= 2


def test_bad_arguments() -> None:
    counts = zipf_counts(100)
    flops = lambda rows, in_dim, out_dim: rows * in_dim * out_dim  # noqa: E731
    with pytest.raises(ValueError, match="candidates"):
        choose_cutoffs(counts, 16, 64, cost_model=flops, candidates=[0, 10])
    with pytest.raises(ValueError, match="max_clusters"):
        choose_cutoffs(counts, 16, 64, cost_model=flops, max_clusters=-1)
    with pytest.raises(ValueError, match="non-negative"):
        choose_cutoffs(counts, 16, 64, cost_model=lambda r, i, o: -r)


def test_measured_cost_model_is_cached_and_serialisable() -> None:
    model = measure_matmul_cost(16, 64, "cpu", max_macs=2**16, refresh=True)
    assert measure_matmul_cost(16, 64, "cpu", max_macs=2**16) is model
    assert all(v >= 0 for v in model.to_dict().values())
    assert MatmulCost.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    cuts = choose_cutoffs(zipf_counts(2000), 16, 64, "cpu", cost_model=model)
    assert cuts == sorted(set(cuts)) and all(0 < c < 2000 for c in cuts)
    assert json.loads(json.dumps(cuts)) == cuts


def test_size_arguments_go_through_the_shared_integer_check() -> None:
    assert default_cutoffs(np.int64(50), 16) == default_cutoffs(50, 16)
    with pytest.raises(ValueError, match="vocab_size must be an int ≥ 2, got True"):
        default_cutoffs(True, 16)
    counts = zipf_counts(100)
    for option in ("batch_tokens", "max_clusters"):
        with pytest.raises(ValueError, match=rf"{option} must be an int ≥ [01].*got 2.5"):
            choose_cutoffs(counts, 16, cost_model=lambda *shape: 1.0, **{option: 2.5})

"""Perplexity: exact sum/count accumulation, padding, DDP-style merging."""

from __future__ import annotations

import math

import pytest
import torch

from lm_heads.metrics import Perplexity


def test_matches_formula_and_skips_padding() -> None:
    log_p = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.2, 0.9, 1e-30]]))
    target = torch.tensor([[1, 2, 3], [4, 5, -100]])
    metric = Perplexity()
    metric.update(log_p, target)
    nll = -sum(math.log(p) for p in (0.5, 0.25, 0.1, 0.2, 0.9))
    expected = math.exp(nll / 5)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)  # float32 inputs
    assert metric.compute().dtype == torch.float64


def test_padding_with_minus_inf_is_ignored() -> None:
    metric = Perplexity()
    metric.update(torch.tensor([math.log(0.5), -math.inf]), torch.tensor([0, -100]))
    assert float(metric.compute()) == pytest.approx(2.0)


def test_token_weighted_not_mean_of_batch_means() -> None:
    """A short last batch counts by its tokens, unlike averaging per-batch perplexities."""
    big = torch.full((100,), math.log(0.5))
    small = torch.full((1,), math.log(0.01))
    metric = Perplexity()
    metric.update(big, torch.zeros(100, dtype=torch.long))
    metric.update(small, torch.zeros(1, dtype=torch.long))
    expected = math.exp(-(100 * math.log(0.5) + math.log(0.01)) / 101)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    mean_of_means = math.exp(-(math.log(0.5) + math.log(0.01)) / 2)
    assert abs(float(metric.compute()) - mean_of_means) > 1.0


def test_merge_of_shards_equals_whole() -> None:
    """What the DDP sum-reduction does: merging per-rank states gives the global perplexity."""
    log_p = -torch.rand(10, 5) * 4
    target = torch.randint(0, 50, (10, 5))
    target[7:, 2:] = -100  # unequal token counts per shard
    whole = Perplexity()
    whole.update(log_p, target)
    shards = [Perplexity() for _ in range(3)]
    for i, m in enumerate(shards):
        m.update(log_p[i::3], target[i::3])
    merged = shards[0]
    for other in shards[1:]:
        merged.merge_state(other)
    assert torch.allclose(merged.compute(), whole.compute(), rtol=1e-12)


def test_custom_ignore_index_and_reset() -> None:
    metric = Perplexity(ignore_index=0)
    metric.update(torch.tensor([math.log(0.25), -7.0]), torch.tensor([3, 0]))
    assert float(metric.compute()) == pytest.approx(4.0)
    metric.reset()
    metric.update(torch.tensor([math.log(0.5)]), torch.tensor([1]))
    assert float(metric.compute()) == pytest.approx(2.0)


def test_bad_updates_say_what_to_do() -> None:
    metric = Perplexity()
    with pytest.raises(ValueError, match="must equal target shape"):
        metric.update(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError):
        metric.update(torch.zeros(3))  # type: ignore[call-arg]


def test_only_the_tensor_form_exists() -> None:
    """The (nll_sum=, num_tokens=) form is gone: one way in, the one the mixin uses."""
    with pytest.raises(TypeError):
        Perplexity().update(nll_sum=1.0, num_tokens=3)  # type: ignore[call-arg]


def test_low_precision_inputs_accumulate_in_float64() -> None:
    metric = Perplexity()
    log_p = torch.full((1000,), -2.0, dtype=torch.bfloat16)
    for _ in range(10):
        metric.update(log_p, torch.ones(1000, dtype=torch.long))
    assert metric.nll_sum.dtype == torch.float64
    assert float(metric.compute()) == pytest.approx(math.exp(2.0), rel=1e-9)

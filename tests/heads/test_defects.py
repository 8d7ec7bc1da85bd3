"""Regression tests for defects found by independent oracles (issue 11 §3, D1-D6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lm_heads import build_head
from lm_heads.adaptive import AdaptiveSoftmaxHead
from lm_heads.base import add_gumbel_, check_finite, sample_categorical
from lm_heads.chunked_ce import linear_sample


# ------------------------------------------------------------------------------------------------
# D1: Gumbel noise from float32 uniforms (clamped at 1 - 1e-7) capped at ~16 nats, so words far
# below the mode were drawn too rarely, and never past ~19.5 nats.
def _rand_near_one(column: int, gap: float, width: int):
    """A stand-in for torch.rand: 0.5 everywhere except ``1 - gap`` in ``column`` of every row of
    ``width`` (the noise may be drawn for a flattened ``[rows, width]`` block)."""

    def fake(shape, *, generator=None, device=None, dtype=None):
        u = torch.full(tuple(shape), 0.5, dtype=dtype or torch.float32, device=device)
        u.view(-1)[column::width] = 1.0 - gap
        return u

    return fake


@pytest.mark.parametrize("path", ["sample_categorical", "linear_sample"])
def test_noise_resolves_words_twenty_nats_below_the_mode(path, monkeypatch) -> None:
    # With u = 1 - 2^-30 the Gumbel noise is -log(-log u) ≈ 20.8, so a word 20 nats below the
    # mode (whose u = 0.5 gives noise 0.37) must win. float32 rounds u to 1 and the old clamp
    # capped the noise at 16.1, so that word could never be drawn.
    vocab, tail = 8, 5
    logits = torch.zeros(3, vocab)
    logits[:, tail] = -20.0
    monkeypatch.setattr(torch, "rand", _rand_near_one(tail, 2.0**-30, vocab))
    if path == "sample_categorical":
        draws = sample_categorical(logits.log_softmax(-1))
    else:
        weight = torch.zeros(vocab, 4)
        draws = linear_sample(torch.zeros(3, 4), weight, logits[0], chunk_size=2)
    assert draws.tolist() == [tail] * 3


def test_gumbel_noise_is_drawn_in_blocks_without_a_float64_copy(monkeypatch) -> None:
    monkeypatch.setattr("lm_heads.base._GUMBEL_BLOCK", 5)
    generator = torch.Generator().manual_seed(0)
    noise = add_gumbel_(torch.zeros(3, 4), generator)
    assert noise.dtype == torch.float32 and torch.isfinite(noise).all()
    assert noise.unique().numel() == 12  # every block drew its own uniforms


def test_hierarchical_sampling_uses_the_same_noise(monkeypatch) -> None:
    # Every node of a Huffman tree over 2 words is one 2-way softmax: the same argument applies.
    head = build_head("hierarchical", 4, 2, counts=torch.tensor([3.0, 1.0]), tree="huffman")
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, -20.0]))  # child 0 = word 0 (the frequent one)
    monkeypatch.setattr(torch, "rand", _rand_near_one(1, 2.0**-30, 2))
    assert head.sample(torch.zeros(3, 4)).tolist() == [1, 1, 1]


def _tail_frequency(vocab: int, rows: int, calls: int) -> tuple[float, float, float]:
    """The issue's reproducer: a full head whose mode holds 0.99 and the other words share 0.01."""
    head = build_head("full", 4, vocab)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(math.log(0.01 / (vocab - 1)))
        head.bias[0] = math.log(0.99)
    generator = torch.Generator().manual_seed(0)
    hits = sum(
        int((head.sample(torch.zeros(rows, 4), generator=generator) != 0).sum())
        for _ in range(calls)
    )
    draws = rows * calls
    return hits / draws, 0.01, math.sqrt(0.01 * 0.99 / draws)


@pytest.mark.slow
def test_sample_tail_frequency_matches_the_distribution() -> None:
    # Each tail word is 15.4 nats below the mode. Observed before the fix: 0.00818 (4.4σ low).
    observed, expected, std = _tail_frequency(50_000, 512, 100)
    assert abs(observed - expected) < 3 * std, f"tail frequency {observed:.5f} vs {expected}"


# ------------------------------------------------------------------------------------------------
# D2: adaptive log_prob on a float64 head.
def test_adaptive_log_prob_in_float64() -> None:
    head = build_head("adaptive", 16, 100, counts=torch.ones(100), cutoffs=[10, 50]).double()
    hidden = torch.randn(4, 16, dtype=torch.float64)
    log_prob = head.log_prob(hidden)
    assert log_prob.dtype == torch.float64
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(4, dtype=torch.float64))
    target = torch.tensor([0, 20, 60, 99])
    expected = log_prob.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(head.target_log_prob(hidden, target), expected)
    assert head.sample(hidden).shape == (4,) and head.predict(hidden).shape == (4,)


def test_adaptive_from_float64_torch_module() -> None:
    module = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 100, [10, 50]).double()
    head = AdaptiveSoftmaxHead.from_torch(module)
    hidden = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(head.log_prob(hidden), module.log_prob(hidden))


# ------------------------------------------------------------------------------------------------
# D3: a checkpoint of another tree shape.
def test_loading_a_deeper_tree_fails_clearly_and_changes_nothing() -> None:
    deep = build_head("hierarchical", 8, 400, counts=torch.arange(1, 401) ** 3, tree="huffman")
    shallow = build_head("hierarchical", 8, 400, counts=torch.ones(400), tree="huffman")
    before = {k: v.clone() for k, v in shallow.state_dict().items()}
    hidden = torch.randn(3, 8)
    log_prob = shallow.log_prob(hidden)
    with pytest.raises(ValueError, match=r"another tree.*path_nodes \(400, 29\) vs \(400, 9\)"):
        shallow.load_state_dict(deep.state_dict())
    for key, value in shallow.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    torch.testing.assert_close(shallow.log_prob(hidden), log_prob)


# ------------------------------------------------------------------------------------------------
# D4 lives in the conformance suite (every case); here: the check offered for counted positions.
def test_check_finite_names_the_problem() -> None:
    hidden = torch.randn(2, 5, 4)
    assert check_finite(hidden) is hidden
    hidden[1, 3, 0] = float("nan")
    hidden[0, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite values in 2 position"):
        check_finite(hidden)


# ------------------------------------------------------------------------------------------------
# D5: the spherical Gram path is accurate when [W, b] has full column rank, not otherwise.
def _gram_error(bias_from: str) -> float:
    torch.manual_seed(0)
    vocab, d = 2000, 16
    head = build_head("spherical", d, vocab)
    h0 = torch.randn(d)
    h0 = 100.0 * h0 / h0.norm()
    with torch.no_grad():
        head.weight.normal_()
        if bias_from == "rank_deficient":
            head.bias.copy_(-head.weight @ h0)  # [W, b] = W [I, -h0]: rank d, not d + 1
        else:
            head.bias.normal_()
    hidden = (h0 + torch.randn(64, d)) if bias_from == "rank_deficient" else torch.randn(64, d)
    target = torch.randint(0, vocab, (64,))
    gram = head.target_log_prob(hidden, target).double()
    exact = head.double().log_prob(hidden.double()).gather(1, target[:, None]).squeeze(1)
    return float((gram - exact).abs().max().detach())


def test_spherical_gram_accuracy_needs_full_rank() -> None:
    assert _gram_error("full_rank") < 1e-5
    # The documented exception: h̃ nearly orthogonal to the null space's complement loses digits.
    assert _gram_error("rank_deficient") > 1e-4


# ------------------------------------------------------------------------------------------------
# D6: argument checks.
@pytest.mark.parametrize(
    "cutoffs", [np.array([10, 50]), [np.int64(10), np.int32(50)], torch.tensor([10, 50])]
)
def test_integer_cutoffs_of_any_integer_type(cutoffs) -> None:
    head = build_head("adaptive", 16, 100, counts=torch.ones(100), cutoffs=cutoffs)
    assert head.cutoffs.tolist() == [10, 50]


# ------------------------------------------------------------------------------------------------
# Issue 8 §3: the template's hooks.
def test_is_exact_reads_loss_is_exact() -> None:
    cosine = build_head("cosine", 8, 20, margin=0.0).train()
    assert cosine.is_exact and cosine.loss_is_exact(training=True)
    out = cosine(torch.randn(5, 8), torch.arange(5))
    assert out.nll_sum is not None
    margin = build_head("cosine", 8, 20, margin=0.2)
    assert not margin.loss_is_exact(training=True) and margin.loss_is_exact(training=False)
    assert margin.train()(torch.randn(5, 8), torch.arange(5)).nll_sum is None


def test_shared_checks_refuse_bools_and_accept_numpy_numbers() -> None:
    from lm_heads._check import check_bool, check_float, check_int

    for check in (check_int, check_float):
        for value in (True, np.True_, "3", None):
            with pytest.raises(ValueError, match=r"^x must be"):
                check("x", value)
    assert check_int("x", np.int16(3), minimum=1) == 3
    assert check_float("x", np.float32(0.5), minimum=0.0, maximum=1.0) == 0.5
    with pytest.raises(ValueError, match=r"x must be a positive finite number \(e.g. 1\), got nan"):
        check_float("x", float("nan"), positive=True, hint="e.g. 1")
    with pytest.raises(ValueError, match="x must be True or False, got 1"):
        check_bool("x", 1)

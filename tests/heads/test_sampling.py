"""Sampling from the exact distribution: Gumbel noise that resolves words far below the mode."""

from __future__ import annotations

import math

import pytest
import torch

from lm_heads import build_head
from lm_heads.base import add_gumbel_, sample_categorical
from lm_heads.chunked_ce import linear_sample


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
    """A full head whose mode holds 0.99 and the other words share 0.01."""
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

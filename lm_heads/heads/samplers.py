r"""Proposal (noise) distributions ``q`` over word ids for the sampled heads, and their sampler.

- ``"unigram"``: ``q(w) ∝ count(w)^α`` (α = 0.75 in word2vec, Mikolov et al. 2013; α = 1 is the
  unigram of Mnih & Teh 2012). Words with zero count get the smallest positive count, so every
  word keeps ``q > 0`` (the ``log(K·q)`` corrections must stay finite).
- ``"log_uniform"``: Zipf over frequency rank ``r`` (0 = most frequent),
  ``q(r) = log((r + 2)/(r + 1)) / log(V + 1)``, which telescopes to a sum of exactly 1 (Jean et
  al. 2015; TensorFlow's ``log_uniform_candidate_sampler``). Ranks come from ``counts``.
- ``"uniform"``: ``q = 1/V``.

:class:`CategoricalSampler` stores ``q`` as an int64 cumulative table over ``2^62`` ticks and
samples by inverse CDF: ``searchsorted(cdf, u)`` for ``u ~ U{0, …, 2^62 − 1}``, i.e.
``O(K log V)`` per draw of ``K`` samples with no ``O(V)`` work per step (``torch.multinomial``
rebuilds a cumulative sum over all ``V`` words on every call). Integer ticks keep the resolution
of rare words (``2^-62``, where a float32 CDF over 800k words loses words with ``q < 6e-8``), and
survive ``module.half()`` / ``.double()``, which cast floating buffers only.

Shape:
    - ``sample(K)`` → ``[K]`` int64 ids, i.i.d. (with replacement) from ``q``
    - ``log_prob(ids)`` → ``log q(ids)``, float32, same shape as ``ids``
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lm_heads.counts import as_counts, frequency_order

PROPOSALS = ("unigram", "log_uniform", "uniform")
_LOG2_TICKS = 62
_TICKS = 2**_LOG2_TICKS


def unigram_probs(counts: Tensor, alpha: float) -> Tensor:
    """``q ∝ count^α`` as float64 ``[V]`` (zero counts raised to the smallest positive count)."""
    counts = counts.double()
    smallest = counts[counts > 0].min()
    weights = counts.clamp_min(smallest) ** alpha
    return weights / weights.sum()


def log_uniform_probs(vocab_size: int, rank_of_id: Tensor | None = None) -> Tensor:
    """Zipf over frequency rank as float64 ``[V]`` in id order (``rank_of_id=None``: id = rank)."""
    ranks = torch.arange(vocab_size, dtype=torch.float64)
    probs = torch.log1p(1.0 / (ranks + 1.0)) / math.log(vocab_size + 1.0)
    return probs if rank_of_id is None else probs[rank_of_id]


def proposal_probs(
    proposal: str,
    vocab_size: int,
    counts: Tensor | Sequence[float] | None,
    alpha: float = 0.75,
    head: str = "sampled",
) -> Tensor:
    """``q`` as float64 ``[V]`` in id order for one of :data:`PROPOSALS`."""
    if proposal == "unigram":
        return unigram_probs(as_counts(counts, vocab_size, head), alpha)
    if proposal == "log_uniform":
        if counts is None:
            return log_uniform_probs(vocab_size)
        _, rank_of_id = frequency_order(as_counts(counts, vocab_size, head))
        return log_uniform_probs(vocab_size, rank_of_id)
    if proposal == "uniform":
        return torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64)
    raise ValueError(f"proposal must be one of {', '.join(PROPOSALS)}; got {proposal!r}")


class CategoricalSampler(nn.Module):
    """I.i.d. draws from a fixed categorical ``q`` over ``V`` ids by inverse CDF on int64 ticks.

    Args:
        probs: ``[V]`` non-negative weights (normalised here), every entry positive.
    """

    cdf: Tensor

    def __init__(self, probs: Tensor) -> None:
        super().__init__()
        probs = probs.detach().to("cpu", torch.float64).reshape(-1)
        if probs.numel() < 1 or not bool(torch.isfinite(probs).all()) or bool((probs <= 0).any()):
            raise ValueError("proposal probabilities must be finite and positive for every word")
        probs = probs / probs.sum()
        ticks = (probs * _TICKS).to(torch.int64).clamp_min(1)
        # Rounding leftovers (at most ~V ticks of 2^62) go to the likeliest word, so the table
        # sums to exactly 2^62 and a uniform int64 in [0, 2^62) always lands on a word.
        ticks[torch.argmax(ticks)] += _TICKS - int(ticks.sum())
        self.register_buffer("cdf", torch.cumsum(ticks, 0))

    @property
    def num_classes(self) -> int:
        return self.cdf.numel()

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``[num_samples]`` int64 ids drawn with replacement from ``q``."""
        u = torch.randint(0, _TICKS, (num_samples,), generator=generator, device=self.cdf.device)
        return torch.searchsorted(self.cdf, u, right=True)

    def log_prob(self, ids: Tensor) -> Tensor:
        """``log q(ids)`` (float32), exact to float32 rounding: ticks are integers."""
        upper = self.cdf[ids]
        lower = torch.where(ids > 0, self.cdf[(ids - 1).clamp_min(0)], 0)
        return (upper - lower).float().log() - _LOG2_TICKS * math.log(2.0)

    def probs(self) -> Tensor:
        """``q`` as float64 ``[V]`` (sums to 1 exactly up to float64 rounding)."""
        ticks = torch.diff(self.cdf, prepend=self.cdf.new_zeros(1))
        return ticks.double() / _TICKS

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

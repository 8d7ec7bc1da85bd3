"""Corpus frequency counts: validation and the frequency order that heads build structure from.

Users bring their own tokenizers, so ``counts[i]`` (the corpus frequency of word id ``i``) may come
in any id order. Heads that bin words by frequency work in *rank* space (rank 0 = most frequent)
and keep the two permutations below as buffers, so a checkpoint restores the same structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class MissingCountsError(ValueError):
    """A head that builds structure from word frequencies got ``counts=None``."""


def as_counts(counts: Tensor | Sequence[float] | None, vocab_size: int, head: str) -> Tensor:
    """Validate ``counts`` for a head and return them as a float64 CPU tensor ``[V]``."""
    if counts is None:
        raise MissingCountsError(
            f"the {head!r} head needs counts=<corpus frequency of each word id, length "
            f"{vocab_size}>; e.g. Vocabulary.counts from lm_heads.data, or torch.bincount(ids)"
        )
    tensor = torch.as_tensor(counts).detach().to("cpu", torch.float64)
    if tensor.dim() != 1:
        raise ValueError(
            f"counts must be 1-D (one count per word id), got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() != vocab_size:
        raise ValueError(
            f"counts has {tensor.numel()} entries but vocab_size is {vocab_size}: "
            "give one count per word id"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("counts must be finite")
    if bool((tensor < 0).any()):
        first = int(torch.nonzero(tensor < 0)[0])
        raise ValueError(f"counts must be non-negative; counts[{first}] = {tensor[first].item()}")
    if float(tensor.sum()) <= 0:
        raise ValueError("counts sum to zero: at least one word must occur")
    return tensor


def frequency_order(counts: Tensor) -> tuple[Tensor, Tensor]:
    """``(id_of_rank, rank_of_id)``: ids by descending count (ties by id), and the inverse."""
    # A stable sort keeps ties in id order, so the same counts always give the same structure.
    id_of_rank = torch.sort(counts, descending=True, stable=True).indices
    rank_of_id = torch.empty_like(id_of_rank)
    rank_of_id[id_of_rank] = torch.arange(id_of_rank.numel())
    return id_of_rank, rank_of_id


def equal_mass_bins(sorted_counts: Tensor, num_bins: int) -> Tensor:
    """Cut frequency-sorted counts into ``num_bins`` contiguous bins of about equal unigram mass.

    Returns the ``num_bins + 1`` boundaries (``0 = b_0 < b_1 < … < b_C = V``); every bin holds at
    least one word, so very frequent words that carry more than ``1/C`` of the mass sit alone.
    """
    size = sorted_counts.numel()
    if not 1 <= num_bins <= size:
        raise ValueError(f"num_bins must lie in [1, {size}] (the number of words), got {num_bins}")
    # Smoothing by one keeps zero-count words spread over bins instead of all in the last one.
    mass = torch.cumsum(sorted_counts.double() + 1.0, 0)
    targets = mass[-1] * torch.arange(1, num_bins, dtype=torch.float64) / num_bins
    # Cut after the word whose cumulative mass is nearest each target.
    below = torch.searchsorted(mass, targets, right=True).clamp(1, size - 1)
    nearer_next = (mass[below] - targets) < (targets - mass[below - 1])
    cuts = below + nearer_next.long()
    # Force strictly increasing cuts with room for one word per remaining bin.
    bounds = [0]
    for i, cut in enumerate(cuts.tolist()):
        low = bounds[-1] + 1
        high = size - (num_bins - 1 - i)
        bounds.append(min(max(cut, low), high))
    bounds.append(size)
    return torch.tensor(bounds, dtype=torch.long)

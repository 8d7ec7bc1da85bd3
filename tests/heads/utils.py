"""Small fixtures shared by head tests: Zipfian counts in a shuffled id order."""

from __future__ import annotations

import torch


def zipf_counts(vocab_size: int, *, shuffle: bool = True, seed: int = 0) -> torch.Tensor:
    """Integer counts ∝ 1/rank; with ``shuffle`` the ids are *not* sorted by frequency."""
    ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)
    counts = torch.ceil(1e6 / ranks).long()
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        counts = counts[torch.randperm(vocab_size, generator=generator)]
    return counts


def zipf_targets(counts: torch.Tensor, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Targets drawn from the unigram distribution of ``counts``."""
    generator = torch.Generator().manual_seed(seed)
    probs = counts.double() / counts.sum()
    flat = torch.multinomial(probs, int(torch.tensor(shape).prod()), True, generator=generator)
    return flat.reshape(shape)

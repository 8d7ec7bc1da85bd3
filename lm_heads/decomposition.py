r"""Where a head loses: its NLL cut along frequency clusters, beside the unigram's.

Words are ranked by training count and cut at ``cutoffs`` (rank space, as the adaptive head's):
the *head* holds ranks ``[0, c_1)``, cluster ``i`` holds ``[c_i, c_{i+1})``. Any normalised
distribution ``p`` over the vocabulary then splits each token's NLL exactly::

    −log p(w) = −log p(w)                                            w in the head
    −log p(w) = −log P(k) − log p(w | k),   P(k) = Σ_{v ∈ k} p(v)      w in cluster k

so a split's NLL is the sum of three parts: *head words*, the *cluster choice* of tail tokens, and
the *within-cluster* NLL of each cluster. For an adaptive head, ``P(k)`` is its head softmax's
cluster entry; for any other head (full softmax included) it is the mass the head puts on the
cluster, so two heads compare part by part on the same cut.

Each part comes with the same part of the (add-one smoothed) training unigram, the model that
knows only frequencies: a part whose NLL is above its unigram's has not learnt even that (the
symptom of a tail projection that is too narrow, or a tail without bias, early in training).

Shapes: ``log_prob [n, V]`` (normalised), ``target [n]``; ``counts [V]`` in id order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lm_heads.counts import as_counts, frequency_order

__all__ = ["NLLDecomposition"]


class NLLDecomposition:
    """Accumulates the parts of the NLL over batches; :meth:`compute` gives the table.

    Args:
        counts: training count of each word id (any id order).
        cutoffs: rank-space cut points ``0 < c_1 < … < c_J < V`` (e.g. ``head.bounds[1:-1]`` of
            an adaptive head).
        ignore_index: padding target id (not counted).
    """

    def __init__(
        self, counts: Tensor | Sequence[float], cutoffs: Sequence[int], ignore_index: int = -100
    ) -> None:
        counts_t = as_counts(counts, len(counts), "decomposition").double()
        vocab_size = counts_t.numel()
        cuts = [int(c) for c in cutoffs]
        if any(b <= a for a, b in zip([0, *cuts], [*cuts, vocab_size], strict=True)):
            raise ValueError(
                f"cutoffs must increase strictly inside (0, {vocab_size}), got {list(cutoffs)}"
            )
        self.vocab_size, self.ignore_index = vocab_size, ignore_index
        self.bounds = [0, *cuts, vocab_size]
        self.id_of_rank, rank_of_id = frequency_order(counts_t)
        self.cluster_of_id = torch.bucketize(rank_of_id, torch.tensor(cuts), right=True)
        self._cluster_ids = [
            self.id_of_rank[low:high] for low, high in itertools.pairwise(self.bounds)
        ]
        smoothed = counts_t + 1.0  # add-one: a word unseen in training keeps a finite cost
        cluster_mass = torch.zeros(len(cuts) + 1, dtype=torch.float64)
        cluster_mass.index_add_(0, self.cluster_of_id, smoothed)
        total = smoothed.sum()
        self._unigram_word = (smoothed / total).log()
        self._unigram_choice = (cluster_mass / total).log()
        self._unigram_within = (smoothed / cluster_mass[self.cluster_of_id]).log()
        parts = 2 + len(cuts)  # head words, cluster choice, within each cluster
        self._tokens = torch.zeros(parts, dtype=torch.float64)
        self._nll = torch.zeros(parts, dtype=torch.float64)
        self._unigram = torch.zeros(parts, dtype=torch.float64)

    @torch.no_grad()
    def update(self, log_prob: Tensor, target: Tensor) -> None:
        """Add ``log_prob [n, V]`` (normalised rows) scored against ``target [n]``."""
        if log_prob.dim() != 2 or log_prob.shape[1] != self.vocab_size:
            raise ValueError(f"log_prob must be [n, {self.vocab_size}], got {list(log_prob.shape)}")
        if target.shape != log_prob.shape[:1]:
            raise ValueError(f"target must be [{log_prob.shape[0]}], got {list(target.shape)}")
        keep = target != self.ignore_index
        counted = target[keep]
        if counted.numel() and not 0 <= int(counted.min()) <= int(counted.max()) < self.vocab_size:
            raise ValueError(f"target ids must lie in [0, {self.vocab_size}) or be ignore_index")
        # [n, V] stays where it is, in its dtype; only [n]-sized results go to float64 on the CPU.
        device = log_prob.device
        safe = torch.where(keep, target, 0)
        cluster_dev = self.cluster_of_id.to(device)[safe]
        word = log_prob.gather(1, safe[:, None]).squeeze(1)
        masses = torch.stack(
            [log_prob.index_select(1, ids.to(device)).logsumexp(1) for ids in self._cluster_ids],
            dim=1,
        )
        choice = masses.gather(1, cluster_dev[:, None]).squeeze(1)
        keep, safe = keep.cpu(), safe.cpu()
        word, choice = word.double().cpu(), choice.double().cpu()
        cluster = self.cluster_of_id[safe]
        in_head, in_tail = keep & (cluster == 0), keep & (cluster > 0)
        self._add(0, in_head, -word, -self._unigram_word[safe])
        self._add(1, in_tail, -choice, -self._unigram_choice[cluster])
        within, unigram_within = -(word - choice), -self._unigram_within[safe]
        for k in range(1, len(self.bounds) - 1):
            self._add(1 + k, keep & (cluster == k), within, unigram_within)

    @torch.no_grad()
    def update_from_head(self, head: Any, hidden: Tensor, target: Tensor, chunk: int = 0) -> None:
        """Score ``head.log_prob`` of ``hidden [..., d]`` in chunks of tokens (``[chunk, V]`` at
        a time; by default about 128 MB of float32)."""
        hidden, target = hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1)
        chunk = chunk or max(1, 2**25 // self.vocab_size)
        for start in range(0, target.numel(), chunk):
            part = slice(start, start + chunk)
            self.update(head.log_prob(hidden[part]), target[part])

    def _add(self, part: int, rows: Tensor, nll: Tensor, unigram: Tensor) -> None:
        self._tokens[part] += rows.sum()
        self._nll[part] += nll[rows].sum()
        self._unigram[part] += unigram[rows].sum()

    def compute(self) -> dict[str, Any]:
        """``{"tokens", "nll_per_token", "ppl", "parts": [...]}``; each part has its tokens, its
        share of the total NLL, and its NLL and the unigram's in nats per token of the part."""
        tokens = float(self._tokens[0] + self._tokens[1])
        total = float(self._nll.sum())
        names = ["head words", "cluster choice"]
        clusters = enumerate(itertools.pairwise(self.bounds[1:]), 1)
        names += [f"within cluster {k} (ranks {low}-{high - 1})" for k, (low, high) in clusters]
        parts = []
        for i, name in enumerate(names):
            n = float(self._tokens[i])
            parts.append({
                "part": name,
                "tokens": int(n),
                "nll_share": float(self._nll[i]) / total if total else math.nan,
                "nll_per_token": float(self._nll[i]) / n if n else math.nan,
                "unigram_per_token": float(self._unigram[i]) / n if n else math.nan,
            })  # fmt: skip
        return {
            "tokens": int(tokens),
            "nll_per_token": total / tokens if tokens else math.nan,
            "ppl": math.exp(total / tokens) if tokens else math.nan,
            "cutoffs": self.bounds[1:-1],
            "parts": parts,
        }

    @staticmethod
    def table(result: dict[str, Any]) -> str:
        """The parts as aligned text lines."""
        lines = [f"{'part':<34}{'tokens':>10}{'share':>8}{'nats/tok':>10}{'unigram':>10}"]
        for p in result["parts"]:
            lines.append(
                f"{p['part']:<34}{p['tokens']:>10,}{p['nll_share']:>8.1%}"
                f"{p['nll_per_token']:>10.3f}{p['unigram_per_token']:>10.3f}"
            )
        lines.append(f"total: {result['tokens']:,} tokens, ppl {result['ppl']:.2f}")
        return "\n".join(lines)

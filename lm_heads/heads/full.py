r"""Full softmax: ``log p(w | h) = o_w − logsumexp(o)`` with ``o = W h + b``, over every word.

The reference every other head is measured against (Bengio et al. 2003 onwards). Two exact modes:

- ``chunk_size=None`` (naive): ``F.linear`` then ``F.cross_entropy`` in float32. Simple, and the
  speed baseline, but it materialises ``[n, V]`` logits plus their gradient (8192 tokens × 267k
  words × 4 B = 8.7 GB each).
- ``chunk_size=<int>`` or ``"auto"`` (memory-efficient): :func:`lm_heads.chunked_ce.
  linear_cross_entropy` cuts tokens into chunks and never holds ``[n, V]``; it forms the
  gradients chunk by chunk during forward (the same three matmul passes as naive). ``"auto"``
  keeps one chunk's float32 logits within the size of the weight gradient (``max(256, d)``
  rows), so the loss needs about twice the memory floor ``V·d·4`` bytes (torch's own
  ``F.linear_cross_entropy`` needs more, see BENCHMARKS.md). Same loss and gradients as naive to
  float tolerance.

Training objective, per token (both modes; only while training, evaluation is the exact NLL)::

    (1 − ε)·nll + ε·(logsumexp(o) − mean_j o_j) + λ·logsumexp(o)²

with ``label_smoothing = ε`` (exactly ``F.cross_entropy(label_smoothing=ε)``) and ``z_loss = λ``
(PaLM's auxiliary loss, which keeps ``log Z`` near 0). ``nll_sum`` stays the exact NLL.

``log_prob`` returns ``[n, V]`` by contract in both modes; ``target_log_prob``, ``predict`` and
``sample`` are chunked in both modes (evaluation memory stays O(chunk·V) at any batch size).

Shape:
    - hidden: ``[..., d]``; target: ``[...]``
    - weight: ``[V, d]`` (the output embeddings); bias: ``[V]``

DDP: ``weight`` and ``bias`` take part in every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lm_heads.base import linear_f32
from lm_heads.chunked_ce import ChunkSize, check_loss_options, regularised_loss
from lm_heads.heads.linear import LinearVocabularyHead


class FullSoftmaxHead(LinearVocabularyHead):
    """Exact softmax over all ``V`` words, naive or chunked (memory-efficient).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        counts: ignored (accepted so every head builds from the same arguments).
        ignore_index: padding target id.
        bias: learn a per-word bias ``b``.
        chunk_size: ``None`` for the naive loss; a positive int (tokens per chunk) or ``"auto"``
            (``max(256, d)`` tokens) for the memory-efficient exact loss.
        label_smoothing: ``ε ∈ [0, 1]`` while training, as ``F.cross_entropy``'s.
        z_loss: ``λ ≥ 0``, weight of ``(log Z)²`` while training (PaLM uses ``1e-4``).
    """

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        bias: bool = True,
        chunk_size: ChunkSize | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(
            in_features, vocab_size, ignore_index=ignore_index, bias=bias, chunk_size=chunk_size
        )
        self.label_smoothing, self.z_loss = check_loss_options(label_smoothing, z_loss)

    def loss_is_exact(self, training: bool) -> bool:
        return not (training and (self.label_smoothing or self.z_loss))

    def _loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        smoothing, z_loss = self.label_smoothing, self.z_loss
        if not (smoothing or z_loss):
            return self._exact_loss_sums(hidden, target, keep)
        if self.chunk_size is not None:
            loss, nll = self._fused_sums(hidden, target, keep, smoothing, z_loss)
            return loss, nll
        logits = linear_f32(hidden, self.weight, self.bias)
        lse = logits.logsumexp(-1)
        nll = torch.where(keep, lse - logits.gather(-1, target[:, None]).squeeze(-1), 0.0)
        loss = regularised_loss(nll, lse, logits.mean(-1), smoothing, z_loss)
        return torch.where(keep, loss, 0.0).sum(), nll.detach().sum()

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")
            + (f", z_loss={self.z_loss}" if self.z_loss else "")
        )

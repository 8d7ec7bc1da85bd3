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

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lm_heads.base import Head, linear_f32
from lm_heads.chunked_ce import (
    ChunkSize,
    check_chunk_size,
    check_loss_options,
    linear_argmax,
    linear_cross_entropy,
    linear_nll,
    linear_sample,
    regularised_loss,
)


class FullSoftmaxHead(Head):
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
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self.chunk_size = check_chunk_size(chunk_size)
        self.label_smoothing, self.z_loss = check_loss_options(label_smoothing, z_loss)
        self.weight = nn.Parameter(torch.empty(vocab_size, in_features))
        if bias:
            self.bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W ~ U(−1/√d, 1/√d)`` as ``nn.Linear``; ``b = 0`` (no prior over words)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def loss_is_exact(self, training: bool) -> bool:
        return not (training and (self.label_smoothing or self.z_loss))

    def _loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        smoothing, z_loss = (self.label_smoothing, self.z_loss) if self.training else (0.0, 0.0)
        if self.chunk_size is not None:
            # The padding mask enters the fused kernel as token weights: the loss is a weighted
            # sum, so its gradients can be formed during forward.
            weight = keep.to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
            return linear_cross_entropy(
                hidden,
                self.weight,
                self.bias,
                target,
                token_weight=weight,
                chunk_size=self.chunk_size,
                label_smoothing=smoothing,
                z_loss=z_loss,
            )
        if not (smoothing or z_loss):
            return super()._loss_sums(hidden, target, keep)
        logits = linear_f32(hidden, self.weight, self.bias)
        lse = logits.logsumexp(-1)
        nll = torch.where(keep, lse - logits.gather(-1, target[:, None]).squeeze(-1), 0.0)
        loss = regularised_loss(nll, lse, logits.mean(-1), smoothing, z_loss)
        return torch.where(keep, loss, 0.0).sum(), nll.detach().sum()

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        # The exact NLL (one chunk in naive mode); the regularisers live in `_loss_sums`.
        return linear_nll(hidden, self.weight, self.bias, target, chunk_size=self.chunk_size)

    def _log_prob(self, hidden: Tensor) -> Tensor:
        return linear_f32(hidden, self.weight, self.bias).log_softmax(-1)

    # Evaluation never needs [n, V] at once: even the naive mode (whose *training* loss is the
    # speed baseline) scores, predicts and samples chunk by chunk, with the same exact result.
    @property
    def _eval_chunk_size(self) -> ChunkSize:
        return "auto" if self.chunk_size is None else self.chunk_size

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        chunk = self._eval_chunk_size
        return -linear_nll(hidden, self.weight, self.bias, target, chunk_size=chunk)

    def _predict(self, hidden: Tensor) -> Tensor:
        return linear_argmax(hidden, self.weight, self.bias, chunk_size=self._eval_chunk_size)

    def _sample(self, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
        return linear_sample(
            hidden, self.weight, self.bias, chunk_size=self._eval_chunk_size, generator=generator
        )

    def output_embeddings(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, bias={self.bias is not None}, chunk_size={self.chunk_size}"
            + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")
            + (f", z_loss={self.z_loss}" if self.z_loss else "")
        )

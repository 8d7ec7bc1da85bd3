r"""Full softmax: ``log p(w | h) = o_w − logsumexp(o)`` with ``o = W h + b``, over every word.

The reference every other head is measured against (Bengio et al. 2003 onwards). Two exact modes:

- ``chunk_size=None`` (naive): ``F.linear`` then ``F.cross_entropy`` in float32. Simple, and the
  speed baseline, but it materialises ``[n, V]`` logits plus their gradient (8192 tokens × 267k
  words × 4 B = 8.7 GB each).
- ``chunk_size=<int>`` or ``"auto"`` (memory-efficient): :mod:`lm_heads.chunked_ce` cuts tokens
  into chunks and never holds ``[n, V]``: the training loss forms its gradients chunk by chunk
  during forward (the same three matmul passes as naive), and ``target_log_prob``, ``predict`` and
  ``sample`` run chunk by chunk too. ``"auto"`` sizes chunks so that one chunk's float32 logits
  take about 512 MB (``chunk·V·4 B``; 501 tokens at V = 267k): big enough that the chunked
  matmuls run at full matmul speed, small next to naive's ``3·n·V·4 B``. Same loss and
  gradients as naive to float tolerance.

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
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads.base import Head, linear_f32
from lm_heads.chunked_ce import (
    ChunkSize,
    check_chunk_size,
    linear_argmax,
    linear_cross_entropy,
    linear_sample,
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
            (chunks of ``~512 MB`` float32 logits) for the memory-efficient exact loss.
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
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
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

    def _loss_sum(self, hidden: Tensor, target: Tensor, keep: Tensor) -> Tensor:
        if self.chunk_size is None or not self.is_exact:
            # Naive mode, or a subclass whose training loss is not this NLL (sampled heads).
            return super()._loss_sum(hidden, target, keep)
        # The padding mask goes into the fused loss as token weights: the loss is a weighted sum,
        # so its gradients can be formed during forward.
        return linear_cross_entropy(
            hidden,
            self.weight,
            self.bias,
            target,
            chunk_size=self.chunk_size,
            reduction="sum",
            token_weight=keep.to(hidden.dtype if hidden.dtype == torch.float64 else torch.float32),
        )

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._exact_token_loss(hidden, target)

    def _exact_token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-token NLL ``[n]`` under the full softmax (naive or chunked)."""
        if self.chunk_size is None:
            logits = linear_f32(hidden, self.weight, self.bias)
            return F.cross_entropy(logits, target, reduction="none")
        return linear_cross_entropy(
            hidden, self.weight, self.bias, target, chunk_size=self.chunk_size
        )

    def _log_prob(self, hidden: Tensor) -> Tensor:
        return linear_f32(hidden, self.weight, self.bias).log_softmax(-1)

    # Evaluation never needs [n, V] at once: even the naive mode (whose *training* loss is the
    # speed baseline) scores, predicts and samples chunk by chunk, with the same exact result.
    @property
    def _eval_chunk_size(self) -> ChunkSize:
        return "auto" if self.chunk_size is None else self.chunk_size

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return -linear_cross_entropy(
            hidden, self.weight, self.bias, target, chunk_size=self._eval_chunk_size
        )

    def _predict(self, hidden: Tensor) -> Tensor:
        return linear_argmax(hidden, self.weight, self.bias, chunk_size=self._eval_chunk_size)

    def _sample(self, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
        return linear_sample(
            hidden, self.weight, self.bias, chunk_size=self._eval_chunk_size, generator=generator
        )

    def output_embeddings(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}, chunk_size={self.chunk_size}"

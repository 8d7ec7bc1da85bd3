"""What the full softmax and the sampled heads share: ``o = W h + b`` over the whole vocabulary.

:class:`LinearVocabularyHead` owns the parameters ``W [V, d]`` and ``b [V]``, their
initialisation, and the exact distribution ``softmax(o)`` with everything evaluation needs (the
NLL, scores, argmax, sampling), naive or chunked by ``chunk_size`` through
:mod:`lm_heads.chunked_ce`. Its subclasses differ only in their training objective: the full
softmax's cross-entropy (:mod:`lm_heads.heads.full`) or a sampled estimate of it
(:mod:`lm_heads.heads.sampled`).

Evaluation never needs ``[n, V]`` at once: even the naive mode (whose *training* loss is the
speed baseline) scores, predicts and samples chunk by chunk, with the same exact result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lm_heads.base import Head, at_least_float32, linear_f32
from lm_heads.chunked_ce import (
    ChunkSize,
    LossSums,
    check_chunk_size,
    linear_argmax,
    linear_cross_entropy,
    linear_nll,
    linear_sample,
    resolve_chunk_size,
)


class LinearVocabularyHead(Head):
    """``W [V, d]``, ``b [V]`` and the exact ``softmax(W h + b)``; subclasses add the training
    objective (``_loss_sums`` or ``_token_loss``).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        ignore_index: padding target id.
        bias: learn a per-word bias ``b``.
        chunk_size: ``None`` for the naive exact loss; a positive int (tokens per chunk) or
            ``"auto"`` (``max(256, d)`` tokens) for the memory-efficient exact loss.
    """

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        ignore_index: int = -100,
        bias: bool = True,
        chunk_size: ChunkSize | None = None,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self.chunk_size = check_chunk_size(chunk_size)
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

    def _fused_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor, smoothing: float, z_loss: float
    ) -> LossSums:
        """The chunked kernel's sums; the padding mask enters as token weights (the loss is a
        weighted sum, so its gradients can be formed during forward)."""
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

    def _exact_loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor]:
        if self.chunk_size is not None:
            loss, nll = self._fused_sums(hidden, target, keep, 0.0, 0.0)
            return loss, nll
        nll = linear_nll(hidden, self.weight, self.bias, target, chunk_size=None)
        total = torch.where(keep, at_least_float32(nll), 0.0).sum()
        return total, total.detach()

    def _log_prob(self, hidden: Tensor) -> Tensor:
        return linear_f32(hidden, self.weight, self.bias).log_softmax(-1)

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

    def score_shape(self, tokens: int) -> tuple[int, int]:
        if self.chunk_size is None:
            return tokens, self.vocab_size
        return min(tokens, resolve_chunk_size(self.chunk_size, self.in_features)), self.vocab_size

    def output_embeddings(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}, chunk_size={self.chunk_size}"

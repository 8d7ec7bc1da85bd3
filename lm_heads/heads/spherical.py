r"""The spherical family: spherical softmax and Taylor softmax, trained in O(d²) per token.

References:
    - Vincent, de Brébisson, Bouthillier (2015), "Efficient exact gradient update for training deep
      networks with very large sparse targets" (the spherical family, the Gram-matrix trick).
    - de Brébisson & Vincent (2016), "An exploration of softmax alternatives belonging to the
      spherical loss family" (log-spherical and log-Taylor softmax; they beat log-softmax on MNIST
      and CIFAR-10 but lose to it on Penn Treebank and One Billion Word).

With logits ``o = W h + b``:

.. math::

    \text{spherical:}\quad p_i = \frac{o_i^2 + \varepsilon}{\sum_j (o_j^2 + \varepsilon)}
                             = \frac{o_i^2 + \varepsilon}{q + V\varepsilon}
    \qquad
    \text{Taylor:}\quad p_i = \frac{1 + o_i + o_i^2/2}{\sum_j (1 + o_j + o_j^2/2)}
                            = \frac{1 + o_i + o_i^2/2}{V + s + q/2}

Both normalisers depend on ``h`` only through ``s = Σ_j o_j`` and ``q = Σ_j o_j²``. Appending a
constant 1 to ``h`` (``h̃ = [h, 1]``, ``W̃ = [W, b]``):

.. math::

    s = (\tilde W^\top \mathbf 1)\cdot\tilde h, \qquad
    q = \tilde h^\top (\tilde W^\top \tilde W)\,\tilde h
      = h^\top (W^\top W) h + 2 (W^\top b)\cdot h + b^\top b

so with the ``(d+1)×(d+1)`` Gram matrix built once per call (O(V d²)), each token's exact
negative log-likelihood costs O(d²) plus one row dot for the target logit, and ``[n, V]`` is never
built. Autograd differentiates through it; the Gram matrix's backward is a single ``V×d×d``
matmul (``dW = W (dG + dGᵀ)``). Forward+backward costs ``≈ 2 V d²`` instead of ``≈ 3 n V d``
for the naive formula: for ``n ≫ d`` (4096 tokens, d = 512) that is a large win.

Numerics: the Gram matrix, ``s``, ``q`` and the normaliser are computed in float32 even under
autocast (float64 when the weights are float64). ``q = h̃ᵀ G̃ h̃`` is a quadratic form: its error
is ``~ u·‖G̃‖·‖h̃‖²`` (``u = 2⁻²⁴``), not relative to ``q``. When ``W̃ = [W, b]`` has full column
rank *and is well conditioned*, ``q ≥ σ_min(G̃)‖h̃‖²`` and the relative error is ``~ u·cond(G̃)``:
tests find float32 Gram log-probs within 1e-5 of float64 ones for random weights and biases.
The condition matters. When ``h̃`` is nearly in the null space of ``W̃`` (``‖W̃h̃‖ ≪ ‖W̃‖‖h̃‖``),
``q`` loses its digits to cancellation. That happens when ``V ≤ d``, and also when
``[W, b]`` is rank-deficient or nearly so, e.g. ``b = −W h₀`` with hidden states near a large
``h₀``: with ``‖h₀‖ = 100`` the Gram log-probs are off by about 2e-3 nats (tested). ``q`` may then
round below 0, so it is clamped at 0 (its exact value is a sum of squares) and every log stays
finite, but the value is inaccurate: use ``gram=False`` there. Rounding ``q`` more
cleverly would not help: the error is already made when ``G̃ = W̃ᵀW̃`` is formed in float32 (a
factor ``L`` with ``q = ‖Lᵀh̃‖²`` inherits it, and needs ``G̃`` non-singular besides). The
normaliser is at least ``V ε`` (spherical) or ``V/2`` (Taylor: ``1 + o + o²/2 = ((1+o)² + 1)/2``,
so forming it from ``s`` and ``q`` cancels at most a factor 3).

``log_prob``, ``predict`` and ``sample`` need all ``V`` probabilities anyway and use the logits
directly; ``target_log_prob`` (perplexity) uses the Gram form like the loss.

Shape:
    - hidden: ``[..., d]``; target: ``[...]``
    - log_prob: ``[..., V]``
    - weight: ``[V, d]`` (the output embeddings), bias: ``[V]``

DDP: ``weight`` and ``bias`` enter the normaliser through the Gram matrix on every call, so every
parameter gets a gradient whatever the targets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lm_heads._check import check_bool, check_float
from lm_heads.base import Head, SavedOptions, linear_f32

__all__ = ["SphericalSoftmaxHead", "TaylorSoftmaxHead"]


class _Gram(torch.autograd.Function):
    """``WᵀW`` whose backward is one matmul, ``W (dG + dGᵀ)``, instead of autograd's two."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return weight.t() @ weight

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # Any: FunctionCtx lacks saved_tensors
        # Plain tensor ops on the saved weight: under create_graph=True autograd differentiates
        # this too, so double backward (a gradient penalty) is exact.
        (weight,) = ctx.saved_tensors
        return weight @ (grad + grad.t())


def gram_matrix(weight: Tensor) -> Tensor:
    """``weightᵀ weight`` ``[d, d]`` for ``weight [V, d]``, with a one-matmul backward."""
    return _Gram.apply(weight)


class _SphericalFamilyHead(Head):
    """Shared machinery: ``p_i = f(o_i) / Σ_j f(o_j)`` with ``Σ_j f(o_j)`` a function of (s, q)."""

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        ignore_index: int = -100,
        gram: bool = True,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self.gram = check_bool("gram", gram, hint="True: O(d²) per token; False: naive")
        self.weight = nn.Parameter(torch.empty(vocab_size, in_features))
        self.bias = nn.Parameter(torch.empty(vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default scale: logits start O(1), where both f(o) are well behaved.
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    # What each member defines.
    def _score(self, logits: Tensor) -> Tensor:
        """``f(o)`` elementwise (positive)."""
        raise NotImplementedError

    def _normaliser(self, s: Tensor, q: Tensor) -> Tensor:
        """``Σ_j f(o_j)`` from ``s = Σ_j o_j`` and ``q = Σ_j o_j²``."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------
    def _accumulate_dtype(self) -> torch.dtype:
        return torch.promote_types(self.weight.dtype, torch.float32)

    def _gram_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """``log p(target)`` ``[n]`` through the Gram matrix: O(V d²) once, O(d²) per token."""
        dtype = self._accumulate_dtype()
        # Autocast off: the Gram matrix and the quadratic form are the normaliser (float32 rule).
        with torch.autocast(hidden.device.type, enabled=False):
            weight = self.weight.to(dtype)
            bias = self.bias.to(dtype)
            h = hidden.to(dtype)
            g = gram_matrix(weight)  # [d, d]
            wb = bias @ weight  # [d]  Wᵀb
            q = ((h @ g) * h).sum(-1) + 2.0 * (h @ wb) + bias @ bias
            q = q.clamp_min(0.0)  # a sum of squares; rounding may push it below 0
            s = h @ weight.sum(0) + bias.sum()
            logit = (h * weight[target]).sum(-1) + bias[target]
            return self._score(logit).log() - self._normaliser(s, q).log()

    def _logits(self, hidden: Tensor) -> Tensor:
        return linear_f32(hidden, self.weight, self.bias)

    def _naive_log_prob(self, hidden: Tensor) -> Tensor:
        scores = self._score(self._logits(hidden))
        return scores.log() - scores.sum(-1, keepdim=True).log()

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return -self._target_log_prob(hidden, target)

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        if self.gram:
            return self._gram_log_prob(hidden, target)
        return self._naive_log_prob(hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def _log_prob(self, hidden: Tensor) -> Tensor:
        return self._naive_log_prob(hidden)

    def _predict(self, hidden: Tensor) -> Tensor:
        return self._score(self._logits(hidden)).argmax(-1)

    def score_shape(self, tokens: int) -> tuple[int, int]:
        # The Gram form needs d x d, not a score per word; the naive form scores all V.
        return tokens, 0 if self.gram else self.vocab_size

    def output_embeddings(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gram={self.gram}"


class SphericalSoftmaxHead(SavedOptions, _SphericalFamilyHead):
    r"""Spherical softmax, ``p_i ∝ o_i² + ε`` (Vincent et al. 2015; de Brébisson & Vincent 2016).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        ignore_index: target id that changes neither loss nor gradient.
        gram: compute the loss through the ``d×d`` Gram matrix (O(d²) per token); ``False`` builds
            the ``[n, V]`` logits (the naive formula, kept as the oracle and benchmark baseline).
        eps: ``ε > 0``, the floor that keeps every probability positive. It also bounds the
            gradient of ``log(o² + ε)`` by ``1/√ε`` at ``o = ±√ε``; 0.01 keeps that at 10 while
            staying small next to logits of order 1 (the model can always scale ``W`` up).
    """

    saved_options = ("eps",)

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        ignore_index: int = -100,
        gram: bool = True,
        eps: float = 1e-2,
    ) -> None:
        eps = check_float("eps", eps, positive=True, hint="e.g. 1e-2")
        super().__init__(in_features, vocab_size, ignore_index=ignore_index, gram=gram)
        self.eps = eps

    def _score(self, logits: Tensor) -> Tensor:
        return logits.square() + self.eps

    def _normaliser(self, s: Tensor, q: Tensor) -> Tensor:
        return q + self.vocab_size * self.eps

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class TaylorSoftmaxHead(_SphericalFamilyHead):
    r"""Taylor softmax, ``p_i ∝ 1 + o_i + o_i²/2`` (de Brébisson & Vincent 2016).

    The second-order Taylor expansion of ``exp`` is ``((1 + o)² + 1)/2 ≥ 1/2``: always positive,
    no extra hyper-parameter.

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        ignore_index: target id that changes neither loss nor gradient.
        gram: compute the loss through the ``d×d`` Gram matrix (O(d²) per token); ``False`` builds
            the ``[n, V]`` logits (the naive formula, kept as the oracle and benchmark baseline).
    """

    def _score(self, logits: Tensor) -> Tensor:
        return 1.0 + logits + 0.5 * logits.square()

    def _normaliser(self, s: Tensor, q: Tensor) -> Tensor:
        # V + s + q/2 = Σ ((1+o)² + 1)/2 ≥ V/2: computing it from s and q cancels at most a factor
        # 3, and the clamp (a true bound) guards the log against rounding.
        return (self.vocab_size + s + 0.5 * q).clamp_min(0.5 * self.vocab_size)

r"""Margin and kernel softmax heads from metric learning: cosine / AM-Softmax and RBF-Softmax.

References:
    - Wang, Cheng, Liu, Liu (2018), "Additive Margin Softmax for Face Verification" (AM-Softmax);
      Wang et al. (2018), "CosFace: Large Margin Cosine Loss for Deep Face Recognition".
    - Zhang, Liu, Xu, Zhang, Jiang (2020), "RBF-Softmax: Learning Deep Representative Prototypes
      with Radial Basis Function Softmax" (ECCV).

Both define a normalised distribution ``p = softmax(z)`` over ``V`` words with bounded logits:

.. math::

    \text{cosine:}\quad z_j = s \cos(h, w_j) - s\,m\,[j = c \text{ and training}]
    \qquad
    \text{RBF:}\quad z_j = s \exp(-\lVert h - w_j\rVert^2 / \gamma)

The cosine head subtracts the additive margin ``m`` from the target's cosine while training only,
so its training loss is the NLL of a *different* distribution than the one it is evaluated on
(``is_exact`` is False while training with ``m > 0``); evaluation uses ``softmax(s cos)``. RBF's
loss is the exact NLL of its distribution. Both (and the prototype head's cross-entropy) take
label smoothing and the z-loss while training, which make the training loss inexact too.

Bounded logits cap how peaked the distribution can be: with logits in ``[-s, s]`` (cosine) or
``[0, s]`` (RBF) the target's probability is at most ``1 / (1 + (V-1) e^{-2s})`` (resp.
``e^{-s}``). A word-level LM with ``V = 267k`` needs ``s`` well above ``ln V ≈ 12.5`` to express
confident predictions, hence the default ``s = 16`` (face recognition uses ``s = 30`` with
``m = 0.35`` on ~10k identities). Language modelling targets are inherently uncertain and the
margin makes the training distribution sharper than the evaluated one (over-confidence costs
perplexity), so the default margin is small: ``m = 0.1``, a handicap of ``s·m = 1.6`` nats.

Both heads build ``[n, V]`` logits like the full softmax (memory O(n V)). RBF's squared distance
is ``‖h‖² − 2 h·w + ‖w‖²`` (clamped at 0 by ``squared_distances``; the logits skip the clamp),
computed in float32 even under autocast: in bf16 the cross term's rounding (``~‖h‖‖w‖·2⁻⁸``)
would swamp distances between nearby points.

Shape:
    - hidden: ``[..., d]``; target: ``[...]``
    - log_prob: ``[..., V]``
    - weight: ``[V, d]`` (the output embeddings)

DDP: every parameter enters every logit, so all get gradients whatever the targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_bool, check_float
from lm_heads.base import Head, SavedOptions, at_least_float32
from lm_heads.chunked_ce import check_loss_options, regularised_loss

__all__ = ["CosineSoftmaxHead", "LearnedScale", "RBFSoftmaxHead"]


def softplus_inverse(y: Tensor) -> Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``: ``y + log(1 − e^{−y})``, via ``expm1`` so
    that large ``y`` keep their digits."""
    return y + torch.log(-torch.expm1(-y))


class LearnedScale(nn.Module):
    r"""A learned inverse temperature ``s = softplus(raw) > 0``, initialised at ``scale``.

    Why not ``log s`` (NormFace's choice): the loss's derivative in ``s`` is
    ``E_p[cos] − cos_c ∈ [−2, 2]`` and its curvature ``Var_p[cos] ≤ 1``, whatever ``s``. In
    ``log s`` they are ``s`` and ``s²`` times larger, so at a language model's SGD learning rate
    (20) every step overshoots once ``s`` has grown: ``s`` then swings between ≈ 0 (a uniform
    distribution) and hundreds (measured: the prototype head's training loss above 100 for 72%
    of its first 4,128 steps, epoch-1 validation perplexity 11,974; docs/study/LOG.md). Through
    ``softplus`` both stay bounded (its slope is below 1), and ``s`` cannot reach 0 or below.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.raw = nn.Parameter(softplus_inverse(torch.tensor(float(scale))))

    def forward(self) -> Tensor:
        return F.softplus(self.raw)


def load_log_scale(state_dict: dict[str, Tensor], prefix: str, to: str) -> None:
    """Rename a checkpoint's ``log_scale`` (lm_heads ≤ 0.3) to ``to``'s ``softplus`` parameter."""
    log_scale = state_dict.pop(prefix + "log_scale", None)
    if log_scale is not None:
        state_dict[prefix + to] = softplus_inverse(log_scale.exp())


class LogitSoftmaxHead(Head):
    """A head whose distribution is ``softmax(logits(h))`` over ``[n, V]`` logits.

    Its cross-entropy takes label smoothing ``ε`` and the z-loss ``λ·(log Z)²`` while training,
    exactly and at no extra ``[n, V]`` pass beyond a mean (see :mod:`lm_heads.chunked_ce`)."""

    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def _set_loss_options(self, label_smoothing: float, z_loss: float) -> None:
        self.label_smoothing, self.z_loss = check_loss_options(label_smoothing, z_loss)

    @property
    def _regularised(self) -> bool:
        """Whether the training cross-entropy has label smoothing or the z-loss."""
        return bool(self.label_smoothing or self.z_loss)

    def loss_is_exact(self, training: bool) -> bool:
        return not (training and self._regularised)

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """Per-token training cross-entropy of ``logits [n, V]``."""
        if not self._regularised:
            return F.cross_entropy(logits, target, reduction="none")
        lse = logits.logsumexp(-1)
        nll = lse - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        mean = logits.mean(-1) if self.label_smoothing else None
        return regularised_loss(nll, lse, mean, self.label_smoothing, self.z_loss)

    def _logits(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._cross_entropy(self._logits(hidden), target)

    def _log_prob(self, hidden: Tensor) -> Tensor:
        return self._logits(hidden).log_softmax(-1)

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        # One fused [n, V] pass: a logsumexp plus a gather makes four.
        return -F.cross_entropy(self._logits(hidden), target, reduction="none")

    def _predict(self, hidden: Tensor) -> Tensor:
        return self._logits(hidden).argmax(-1)


class CosineSoftmaxHead(LogitSoftmaxHead):
    r"""Cosine softmax with an additive margin at training time (AM-Softmax / CosFace).

    ``z_j = s·cos(h, w_j)``, minus ``s·m`` on the target while training. No bias.

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        ignore_index: target id that changes neither loss nor gradient.
        scale: ``s > 0``, the inverse temperature; must exceed ``ln V`` for peaked predictions.
        margin: ``m ≥ 0``, subtracted from the target cosine while training (0: plain cosine
            softmax, whose training loss is then the exact NLL).
        learn_scale: learn ``s`` (initialised at ``scale``; :class:`LearnedScale`) as NormFace
            (Wang et al. 2017) does, instead of keeping it fixed as AM-Softmax does.
        label_smoothing: ``ε ∈ [0, 1]`` while training, as ``F.cross_entropy``'s.
        z_loss: ``λ ≥ 0``, weight of ``(log Z)²`` while training (PaLM).
    """

    learned_scale: LearnedScale  # learn_scale=True
    log_scale: Tensor  # learn_scale=False: a buffer, as in lm_heads ≤ 0.3

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        ignore_index: int = -100,
        scale: float = 16.0,
        margin: float = 0.1,
        learn_scale: bool = False,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self._set_loss_options(label_smoothing, z_loss)
        scale = check_float("scale", scale, positive=True, hint="e.g. 16.0")
        margin = check_float(
            "margin", margin, minimum=0.0, hint="cosines span [-1, 1]; AM-Softmax uses 0.35"
        )
        if not margin < 2.0:
            raise ValueError(f"margin must lie in [0, 2) (cosines span [-1, 1]), got {margin}")
        self.margin = margin
        self.learn_scale = check_bool("learn_scale", learn_scale)
        if learn_scale:
            self.learned_scale = LearnedScale(scale)
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(scale)))
        self.weight = nn.Parameter(torch.randn(vocab_size, in_features) / math.sqrt(in_features))

    def scale(self) -> Tensor:
        """``s``, a 0-d tensor."""
        return self.learned_scale() if self.learn_scale else self.log_scale.exp()

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object,
                              **kwargs: object) -> None:  # fmt: skip
        if self.learn_scale:
            load_log_scale(state_dict, prefix, "learned_scale.raw")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def loss_is_exact(self, training: bool) -> bool:
        return super().loss_is_exact(training) and (not training or self.margin == 0.0)

    def _logits(self, hidden: Tensor) -> Tensor:
        # Normalise in at least float32 (a bf16 norm costs 3 digits of every cosine); the matmul
        # itself follows autocast. The scale is folded into the [n, d] side, so the matmul
        # writes the logits directly: one [n, V] pass fewer on a memory-bound head.
        h = F.normalize(at_least_float32(hidden), dim=-1)
        w = F.normalize(at_least_float32(self.weight), dim=-1)
        return at_least_float32(F.linear(h * self.scale().to(h.dtype), w))

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        logits = self._logits(hidden)
        if self.margin:
            # No op saved the logits for its backward, so the margin goes in in place and
            # F.cross_entropy normalises the margin logits in one fused pass: no [n, V] copy.
            # (Updating the plain lse by log1p(−p_t·(1 − e^{−sm})) instead would cancel to
            # log1p(−1) = −inf in float32 once the target is confident and s·m ≳ 16.)
            shift = self.scale().to(logits.dtype) * -self.margin
            logits = logits.scatter_add_(-1, target.unsqueeze(-1), shift.expand(len(target), 1))
        return self._cross_entropy(logits, target)

    def output_embeddings(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        scale = float(self.scale().detach())
        return (
            f"{super().extra_repr()}, scale={scale:.4g}, margin={self.margin}, "
            f"learn_scale={self.learn_scale}"
        )


class RBFSoftmaxHead(SavedOptions, LogitSoftmaxHead):
    r"""RBF-Softmax: ``z_j = s·exp(−‖h − w_j‖² / γ)`` (Zhang et al. 2020).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        ignore_index: target id that changes neither loss nor gradient.
        scale: ``s > 0``; logits lie in ``[0, s]``, so ``s`` must exceed ``ln V`` for peaked
            predictions.
        gamma: ``γ > 0``, the kernel width in squared-distance units. ``None`` (default) uses
            ``d``: hidden states with unit-variance coordinates are ``≈ √(2d)`` apart, so the
            kernel starts neither saturated at 0 nor flat at 1.
        label_smoothing: ``ε ∈ [0, 1]`` while training, as ``F.cross_entropy``'s.
        z_loss: ``λ ≥ 0``, weight of ``(log Z)²`` while training (PaLM).
    """

    saved_options = ("scale", "gamma")

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        ignore_index: int = -100,
        scale: float = 16.0,
        gamma: float | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self._set_loss_options(label_smoothing, z_loss)
        self.scale = check_float("scale", scale, positive=True, hint="e.g. 16.0")
        self.gamma = (
            float(in_features) if gamma is None else check_float("gamma", gamma, positive=True)
        )
        # Prototypes start near the origin: every word is at distance ≈ ‖h‖ from h, so the
        # kernel and its gradient are the same order for all words at the start.
        self.weight = nn.Parameter(torch.randn(vocab_size, in_features) / math.sqrt(in_features))

    def squared_distances(self, hidden: Tensor, factor: float = 1.0) -> Tensor:
        """``factor·‖h − w_j‖²`` ``[n, V]`` in at least float32 (autocast off: cancellation),
        clamped to the sign of ``factor``."""
        dist = self._affine_distances(hidden, factor)
        return dist.clamp_min(0.0) if factor > 0 else dist.clamp_max(0.0)

    def _affine_distances(self, hidden: Tensor, factor: float, offset: float = 0.0) -> Tensor:
        """``factor·‖h − w_j‖² + offset`` ``[n, V]``, unclamped, in at least float32.

        One matmul over augmented vectors ``[−2h, ‖h‖², 1, offset/factor]·[w, 1, ‖w‖², 1]``
        (times ``factor``) yields it directly, instead of four further ``[n, V]`` passes to add
        the norms, scale and shift.
        """
        with torch.autocast(hidden.device.type, enabled=False):
            h = at_least_float32(hidden)
            w = at_least_float32(self.weight)
            ones_h, ones_w = torch.ones_like(h[:, :1]), torch.ones_like(w[:, :1])
            h_aug = torch.cat(
                [(-2.0 * factor) * h, factor * h.square().sum(-1, keepdim=True),
                 factor * ones_h, offset * ones_h], 1,
            )  # fmt: skip
            w_aug = torch.cat([w, ones_w, w.square().sum(-1, keepdim=True), ones_w], 1)
            return F.linear(h_aug, w_aug)

    def _logits(self, hidden: Tensor) -> Tensor:
        # s·exp(−d²/γ) = exp(−d²/γ + ln s), exponentiated in place: the matmul's backward does
        # not read its output. No clamp: rounding can leave a coincident point's d² a few ulps
        # of ‖h‖² below 0, which puts its logit as little above s, harmless to the softmax, and
        # saves the clamp's two [n, V] passes.
        return self._affine_distances(hidden, -1.0 / self.gamma, math.log(self.scale)).exp_()

    def output_embeddings(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, gamma={self.gamma}"

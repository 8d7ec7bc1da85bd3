"""The contract every head keeps (see ``shared/design/heads.md``).

A head maps hidden states to a normalised distribution over a vocabulary of ``V`` words and owns
its training objective. Heads are plain :class:`torch.nn.Module` s; Lightning never appears here.

Notation used for tensor shapes:
    - ``...``: any leading dims (batch, time); heads flatten them to ``n`` tokens internally
    - ``d``: ``in_features``
    - ``V``: ``vocab_size``

Subclasses implement on flattened tensors (``hidden [n, d]``, ``target [n]`` already validated):
    - ``_token_loss(hidden, target) -> [n]``: per-token training objective, float32
    - ``_log_prob(hidden) -> [n, V]``: normalised log-probabilities, float32
and override ``_target_log_prob``, ``_predict`` and ``_sample`` when they can do better than
going through ``[n, V]``, and ``_loss_sums`` when their training kernel takes the padding mask
itself or reports the exact NLL beside a regularised objective (full, adaptive).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadOutput(NamedTuple):
    """What ``Head.forward`` returns."""

    loss: Tensor
    """Scalar float32 training objective: mean over tokens that are not ``ignore_index``."""
    nll_sum: Tensor | None
    """Scalar float32 ``Σ −log p(target)`` over counted tokens (exact heads; ``None`` otherwise).
    With ``num_tokens`` it gives a DDP-correct perplexity: sum both across ranks, then divide."""
    num_tokens: Tensor
    """Scalar int64: number of tokens that are not ``ignore_index``."""


class Head(nn.Module):
    """Base class of every output layer: ``hidden [..., d]`` → distribution over ``V`` words.

    Args:
        in_features: ``d``, the size of the hidden states.
        vocab_size: ``V``, the number of words.
        ignore_index: target value whose tokens change neither loss nor gradient (padding).
    """

    exact_loss: ClassVar[bool] = True
    """True when ``forward(h, t).loss == -target_log_prob(h, t).mean()`` (False: sampled heads,
    margin heads while training)."""

    def __init__(self, in_features: int, vocab_size: int, *, ignore_index: int = -100) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("vocab_size", vocab_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        self.in_features = in_features
        self.vocab_size = vocab_size
        self.ignore_index = int(ignore_index)

    # ----------------------------------------------------------------------------------------
    # What a head implements (on flattened, validated tensors).
    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-token training objective ``[n]`` (float32). ``target`` holds only valid ids."""
        raise NotImplementedError

    def _log_prob(self, hidden: Tensor) -> Tensor:
        """Normalised log-probabilities ``[n, V]`` (float32)."""
        raise NotImplementedError

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._log_prob(hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def _predict(self, hidden: Tensor) -> Tensor:
        return self._log_prob(hidden).argmax(-1)

    def _sample(self, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
        return sample_categorical(self._log_prob(hidden), generator)

    def output_embeddings(self) -> Tensor | None:
        """``[V, d]`` output word vectors in id order, or ``None`` if the head has no such rows."""
        return None

    @property
    def is_exact(self) -> bool:
        """Whether this instance's loss is currently the exact NLL (may depend on train/eval)."""
        return self.exact_loss

    # ----------------------------------------------------------------------------------------
    # The public API: validation, flattening, ignore_index and float32 handled once, here.
    def forward(self, hidden: Tensor, target: Tensor) -> HeadOutput:
        """Training objective for ``hidden [..., d]`` and ``target [...]``."""
        h, t = self._flatten(hidden, target)
        keep = t != self.ignore_index
        # Masking with `where` (not boolean indexing) keeps shapes static: no host sync on GPU,
        # and ignored tokens get exactly zero gradient.
        safe_target = torch.where(keep, t, torch.zeros_like(t))
        loss_sum, nll_sum = self._loss_sums(h, safe_target, keep)
        num_tokens = keep.sum()
        return HeadOutput(loss_sum / num_tokens.clamp_min(1), nll_sum, num_tokens)

    def _loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """``(Σ training objective, Σ exact NLL or None)`` over the tokens where ``keep``.

        The default sums ``_token_loss``; a head overrides it to fuse the padding mask into its
        kernel, or to report the exact NLL beside a regularised objective."""
        per_token = torch.where(keep, at_least_float32(self._token_loss(hidden, target)), 0.0)
        loss_sum = per_token.sum()
        return loss_sum, (loss_sum.detach() if self.is_exact else None)

    def log_prob(self, hidden: Tensor) -> Tensor:
        """Normalised log-probabilities ``[..., V]`` (float32)."""
        h = self._check_hidden(hidden)
        return self._log_prob(h.reshape(-1, self.in_features)).reshape(*hidden.shape[:-1], -1)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """``log p(target | hidden)`` as ``[...]`` (float32); 0 where target is ``ignore_index``."""
        h, t = self._flatten(hidden, target)
        keep = t != self.ignore_index
        safe_target = torch.where(keep, t, torch.zeros_like(t))
        out = torch.where(keep, at_least_float32(self._target_log_prob(h, safe_target)), 0.0)
        return out.reshape(target.shape)

    def predict(self, hidden: Tensor) -> Tensor:
        """Most probable word ``[...]`` under the exact distribution."""
        h = self._check_hidden(hidden)
        return self._predict(h.reshape(-1, self.in_features)).reshape(hidden.shape[:-1])

    def sample(self, hidden: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw ``[...]`` from the exact distribution for each position."""
        h = self._check_hidden(hidden)
        flat = h.reshape(-1, self.in_features)
        return self._sample(flat, generator).reshape(hidden.shape[:-1])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, vocab_size={self.vocab_size}"

    # ----------------------------------------------------------------------------------------
    def _check_hidden(self, hidden: Tensor) -> Tensor:
        if not isinstance(hidden, Tensor):
            raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
        if not hidden.is_floating_point():
            raise TypeError(
                f"hidden must be a floating-point tensor, got dtype {hidden.dtype}; "
                "pass the model's hidden states, not token ids"
            )
        if hidden.dim() == 0 or hidden.shape[-1] != self.in_features:
            raise ValueError(
                f"hidden must have shape [..., {self.in_features}] (in_features), "
                f"got {tuple(hidden.shape)}"
            )
        if hidden.numel() == 0:
            raise ValueError(f"empty batch: hidden of shape {tuple(hidden.shape)} has no tokens")
        return hidden

    def _flatten(self, hidden: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        self._check_hidden(hidden)
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer word ids, got dtype {target.dtype}")
        if target.shape != hidden.shape[:-1]:
            raise ValueError(
                f"target shape {tuple(target.shape)} must equal hidden's leading shape "
                f"{tuple(hidden.shape[:-1])} (hidden is {tuple(hidden.shape)})"
            )
        t = target.reshape(-1).long()
        check_ids(t, self.vocab_size, self.ignore_index)
        return hidden.reshape(-1, self.in_features), t


def check_ids(target: Tensor, vocab_size: int, ignore_index: int) -> None:
    """Raise if any id is outside ``[0, vocab_size)`` other than ``ignore_index``."""
    bad = ((target < 0) | (target >= vocab_size)) & (target != ignore_index)
    message = (
        f"target ids must lie in [0, {vocab_size}) (vocab_size) or equal ignore_index="
        f"{ignore_index}"
    )
    if target.device.type == "cpu":
        if bool(bad.any()):
            first = int(target[bad][0])
            raise ValueError(f"{message}; found {first}. Check the tokenizer and vocab_size.")
    else:
        # Asynchronous check: no host sync in the training step; it surfaces at the next sync.
        torch._assert_async(~bad.any(), message)


def sample_categorical(log_prob: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gumbel-max draw from rows of ``log_prob [n, V]``: device-side, no host sync."""
    uniform = torch.rand(
        log_prob.shape, generator=generator, device=log_prob.device, dtype=torch.float32
    )
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (log_prob.float() + gumbel).argmax(-1)


def at_least_float32(x: Tensor) -> Tensor:
    """float32, except that float64 stays float64 (gradcheck, float64 evaluation)."""
    return x if x.dtype == torch.float64 else x.float()


def linear_f32(hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``hidden @ weightᵀ + bias`` in the autocast dtype, returned as float32 for normalisers
    (float64 stays float64)."""
    return at_least_float32(F.linear(hidden, weight, bias))

"""Token-level perplexity that stays exact under DDP.

``Perplexity`` keeps two states, the summed negative log-likelihood ``Σ −log p(target)`` (float64)
and the number of counted tokens (int64), both reduced across ranks with ``sum``. ``compute``
returns ``exp(Σ nll / Σ tokens)``: the perplexity of the union of all ranks' tokens, never a mean
of per-rank (or per-batch) means, which would weight a short padded last batch like a full one.

It takes target log-probabilities (``Head.target_log_prob``), so it works for every head, including
those that never build ``[n, V]`` logits (``torchmetrics.text.Perplexity`` needs full logits).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class Perplexity(Metric):
    """``exp(Σ −log p(target) / #tokens)`` in nats, accumulated over batches and DDP ranks.

    ``update(target_log_prob, target)`` takes ``log p(target)`` of shape ``[...]`` and the
    targets of the same shape; positions where ``target == ignore_index`` are skipped.

    Args:
        ignore_index: target value that marks padding.
        kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Example:
        >>> metric = Perplexity()
        >>> metric.update(torch.log(torch.tensor([0.5, 0.25, 1.0])), torch.tensor([3, 1, -100]))
        >>> round(float(metric.compute()), 6)  # exp(-(log .5 + log .25) / 2)
        2.828427
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    nll_sum: Tensor
    num_tokens: Tensor

    def __init__(self, ignore_index: int = -100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index = int(ignore_index)
        # float64: a WikiText-103 test split is ~245k tokens of NLL ~3-6 nats each; float32 sums
        # would lose digits that matter when comparing runs to 1e-5.
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, target_log_prob: Tensor, target: Tensor) -> None:
        """Add a batch: ``log p(target)`` and ``target``, of the same shape."""
        if target_log_prob.shape != target.shape:
            raise ValueError(
                f"target_log_prob shape {tuple(target_log_prob.shape)} must equal target shape "
                f"{tuple(target.shape)}"
            )
        keep = target != self.ignore_index
        # `where` rather than multiplication: a -inf log-prob at a padded position stays out.
        nll = torch.where(keep, -target_log_prob.detach().to(self.nll_sum.dtype), 0.0)
        # Out of place: after a `trainer.validate` the states may be inference tensors, which
        # cannot be updated in place by a later `fit` (evaluation there runs under no_grad).
        self.nll_sum = self.nll_sum + nll.sum()
        self.num_tokens = self.num_tokens + keep.sum()

    def compute(self) -> Tensor:
        """``exp(mean NLL)`` as a float64 scalar (NaN when no token was counted)."""
        return torch.exp(self.nll_sum / self.num_tokens.to(self.nll_sum.dtype))

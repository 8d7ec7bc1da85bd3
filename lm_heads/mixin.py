"""``LMHeadMixin``: a head, its loss and its perplexity in a user's own ``LightningModule``.

The backbone stays the user's: it returns hidden states ``[B, T, d]``; the mixin owns what comes
after. It defines no ``__init__`` and hides no hook, so it composes with any LightningModule::

    class MyLM(LMHeadMixin, L.LightningModule):
        def __init__(self, vocab_size: int, counts: list[int]) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, 32)
            self.rnn = nn.LSTM(32, 32, batch_first=True)
            self.configure_head("adaptive", in_features=32, vocab_size=vocab_size, counts=counts)

        def hidden(self, x):
            return self.rnn(self.embed(x))[0]

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.head_training_step(self.hidden(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.head_evaluation_step(self.hidden(x), y, stage="val")

Perplexity is measured on ``head.target_log_prob`` (the exact, normalised distribution) and
accumulated as (Σ NLL, #tokens) in a :class:`~lm_heads.metrics.Perplexity` metric that is logged
as an object, so Lightning syncs it across DDP ranks and resets it at the end of each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lm_heads.base import Head
from lm_heads.metrics import Perplexity
from lm_heads.registry import build_head

STAGES = ("val", "test")


class LMHeadMixin:
    """Adds ``configure_head``, ``head_training_step`` and ``head_evaluation_step``.

    Put it before ``LightningModule`` in the bases. After ``configure_head`` the module has
    ``self.head`` (a :class:`~lm_heads.base.Head`) and ``self.val_ppl`` / ``self.test_ppl``
    (:class:`~lm_heads.metrics.Perplexity`).
    """

    head: Head
    val_ppl: Perplexity
    test_ppl: Perplexity

    def configure_head(
        self,
        head: str | Head,
        in_features: int | None = None,
        vocab_size: int | None = None,
        counts: Tensor | Sequence[float] | None = None,
        **options: Any,
    ) -> Head:
        """Build head ``head`` (a registered name) or adopt a ready :class:`Head` instance.

        ``options`` are the head's own keyword arguments (``cutoffs=...``, ``num_samples=...``).
        Call it in ``__init__`` after ``super().__init__()``, so the head's parameters are
        registered before the optimizer and the DDP wrapper see the module.
        """
        if isinstance(head, Head):
            if in_features is not None or vocab_size is not None or counts is not None or options:
                raise TypeError(
                    "configure_head(<Head instance>) takes no other arguments; "
                    "build the head with its options first, or pass a registered name"
                )
            built = head
        elif isinstance(head, str):
            if in_features is None or vocab_size is None:
                raise TypeError(f"configure_head({head!r}, ...) needs in_features= and vocab_size=")
            built = build_head(head, in_features, vocab_size, counts=counts, **options)
        else:
            raise TypeError(
                f"head must be a registered head name or a Head, got {type(head).__name__}"
            )
        self.head = built
        self.val_ppl = Perplexity(ignore_index=built.ignore_index)
        self.test_ppl = Perplexity(ignore_index=built.ignore_index)
        return built

    def head_training_step(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Training loss of ``hidden [B, T, d]`` against ``target [B, T]``; logs it.

        Logs ``train_loss`` (the head's objective) and, when that objective is the exact NLL,
        ``train_ppl = exp(train_loss)`` of the batch. Both are per-step values for monitoring; the
        numbers to report are ``val_ppl`` / ``test_ppl``.
        """
        out = self.head(hidden, target)
        batch_size = target.shape[0] if target.dim() > 0 else 1
        loss = out.loss.detach()
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=batch_size)
        if out.nll_sum is not None:
            self.log(
                "train_ppl",
                loss.exp(),
                on_step=True,
                prog_bar=True,
                batch_size=batch_size,
            )
        return out.loss

    def head_evaluation_step(self, hidden: Tensor, target: Tensor, stage: str = "val") -> Tensor:
        """Accumulate ``log p(target)`` into ``{stage}_ppl`` and log it (epoch-level, synced).

        Returns the target log-probabilities ``[B, T]`` (0 where target is ``ignore_index``).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        metric = getattr(self, f"{stage}_ppl", None)
        if not isinstance(metric, Perplexity):
            raise RuntimeError("call self.configure_head(...) in __init__ before evaluating")
        target_log_prob = self.head.target_log_prob(hidden, target)
        metric.update(target_log_prob, target)
        # Logging the metric object (not its value) makes Lightning call compute() once per epoch,
        # after torchmetrics has summed both states over ranks, and then reset it.
        self.log(f"{stage}_ppl", metric, on_step=False, on_epoch=True, prog_bar=True)
        return target_log_prob

"""``LMHeadMixin``: a head, its loss and its perplexity in a user's own ``LightningModule``.

The backbone stays the user's: it returns hidden states ``[B, T, d]``; the mixin owns what comes
after. It defines no ``__init__``, so it composes with any LightningModule::

    class MyLM(LMHeadMixin, L.LightningModule):
        def __init__(self, vocab_size: int, counts: list[int] | None = None) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["counts"])
            self.embed = nn.Embedding(vocab_size, 32)
            self.rnn = nn.LSTM(32, 32, batch_first=True)
            self.configure_head("adaptive", in_features=32, vocab_size=vocab_size, counts=counts)

        def hidden(self, x):
            return self.rnn(self.embed(x))[0]

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.head_training_step(self.hidden(x), y)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            x, y = batch
            self.head_evaluation_step(self.hidden(x), y, stage="val")

Metrics. Perplexity is measured on ``head.target_log_prob`` (the exact, normalised distribution)
and accumulated as (Σ NLL, #tokens) in a :class:`~lm_heads.metrics.Perplexity` per stage *and per
dataloader*: ``val_ppl`` for the first, ``val_ppl/dataloader_idx_k`` for each further one.
Metrics are logged as objects, so Lightning syncs them across DDP ranks and resets them at the end
of each epoch.

No hook to chain. The mixin implements none of the LightningModule hooks a user overrides: its
bookkeeping runs in :class:`HeadBookkeeping`, a callback it adds through ``configure_callbacks``
(Lightning calls callbacks whatever the module's own hooks do). The callback resets the metrics at
the start of each evaluation epoch (state left by a manual ``head_evaluation_step`` or an
interrupted run never leaks in), tells ``head_evaluation_step`` which dataloader is running, and
makes evaluation ``DistributedSampler`` s deal each sample once (see ``head_evaluation_step``).
Gradient accumulation needs no hook at all (see ``head_training_step``). If you override
``configure_callbacks``, return ``[*super().configure_callbacks(), ...]``: an evaluation without
the callback raises, saying so.

Observing a run never changes it. Creating an evaluation's DataLoader iterator draws its seed
from the global torch generator, so a validation in the middle of ``fit`` would change the
dropout masks (and a sampled head's noise words) of every training step after it.
:class:`EvaluationKeepsRandomState`, the mixin's second callback, puts the random streams (torch
CPU, the module's CUDA device, Python ``random``, numpy) back as training left them after every
validation inside ``fit``, the sanity check included. A run trains to the same weights however
often it validates, seed for seed.

Checkpoints. The head's structure (name, sizes, counts, resolved options: see
:class:`~lm_heads.registry.HeadSpec`) travels in the module's state dict as ``head_structure.*``
tensors. A head configured by name without the ``counts`` it needs waits for a state dict, and
``load_state_dict`` (so ``MyLM.load_from_checkpoint(path)`` and ``ckpt_path=``) builds it from the
stored structure: no corpus, no new measurement for ``cutoffs="auto"``. A head built with other
counts or options, whose shapes differ from the checkpoint's, is rebuilt from the checkpoint too,
with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset

from lm_heads.base import Head, HeadOutput
from lm_heads.counts import MissingCountsError
from lm_heads.metrics import Perplexity
from lm_heads.random_state import RandomState
from lm_heads.registry import HEADS, HeadSpec, build_head
from lm_heads.tying import INITS, tie_weights

STAGES = ("val", "test")
STRUCTURE_KEY = "head_structure."
"""State-dict prefix of the head's structure (``HeadSpec.to_state``), next to ``head.*``."""

_NOT_CONFIGURED = "call self.configure_head(...) in __init__ before training or evaluating"

if TYPE_CHECKING:
    # The mixin is always combined with a LightningModule (``self.log``, ``self.trainer``, the
    # state-dict hooks); at run time it has no base, so it composes in any order.
    _Base = L.LightningModule
else:
    _Base = object


class EvaluationSamplingWarning(UserWarning):
    """The mixin cannot tell whether an evaluation dataloader gives every sample exactly once
    over the DDP ranks, so ``val_ppl`` / ``test_ppl`` may count some samples twice or miss some.
    Filter this category once you know that it does."""


@dataclass
class _Window:
    """Running sums over the micro-batches of one optimizer step (0-dim tensors, on device)."""

    loss_sum: Tensor
    nll_sum: Tensor | None
    tokens: Tensor
    reference: Tensor
    """Token count of the window's first non-empty micro-batch (0 until there is one)."""
    batch: tuple[int, int]
    """(epoch, batch index) of the window's latest micro-batch."""
    micro_batches: int = 0


class HeadBookkeeping(Callback):
    """What ``LMHeadMixin`` needs from the loops, as a callback so that no override of a module
    hook (with or without ``super()``) can skip it. ``LMHeadMixin.configure_callbacks`` adds it;
    ``pl_module`` is an ``LMHeadMixin``."""

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module._head_window = None  # a window left by an interrupted run never leaks in

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        _count_each_sample_once(trainer, pl_module, "val")

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        _count_each_sample_once(trainer, pl_module, "test")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module._reset_stage_metrics("val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module._reset_stage_metrics("test")

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        pl_module._head_running = ("val", dataloader_idx)

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        pl_module._head_running = ("test", dataloader_idx)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        pl_module._head_running = None

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        pl_module._head_running = None

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        pl_module._head_running = None  # a later call by hand only accumulates again


class EvaluationKeepsRandomState(Callback):
    """Lightning's validations inside ``fit`` (the sanity check, each epoch end or
    ``val_check_interval``) end with the random streams as the training left them.

    Lightning creates the validation iterator (drawing its seed) before it calls any validation
    hook, so the state is taken at the end of every training batch (about 60 µs) and at the
    sanity check's start. It is put back when the validation ends, before any checkpoint of that
    moment is written (Lightning runs checkpoint callbacks last). ``validate``/``test`` outside
    ``fit`` are left alone: nothing trains after them.
    """

    def __init__(self) -> None:
        self._state: RandomState | None = None

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._state = RandomState.capture(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._state = RandomState.capture(pl_module.device)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._state is not None:
            self._state.restore()


_DEALS_ONCE_WHEN_UNPADDED = (DistributedSampler.__iter__, DistributedSamplerWrapper.__iter__)
"""Iterators that read ``total_size`` / ``num_samples`` at each pass (torch's and Lightning's)."""


def _count_each_sample_once(trainer: L.Trainer, module: LMHeadMixin, stage: str) -> None:
    """Make the stage's ``DistributedSampler`` s deal every sample to one rank, once, and warn
    about each dataloader for which the mixin cannot know that every sample counts once."""
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    changed = False
    for index, loader in enumerate(loaders):
        unrepeated, problem = _unrepeat(loader, trainer.world_size)
        changed |= unrepeated
        if problem is not None and trainer.is_global_zero:
            module._warn_once(
                f"{stage}_ppl may count some samples twice or miss some: {stage} dataloader "
                f"{index} {problem}",
                EvaluationSamplingWarning,
            )
    if changed:
        # Lightning's loop built its iterator and prefetched a batch, in the padded order, just
        # before this hook: start it over so that the new order applies from the first batch.
        if trainer.state.fn == TrainerFn.FITTING:
            trainer.fit_loop.epoch_loop.val_loop.reset()
        else:
            (trainer.validate_loop if stage == "val" else trainer.test_loop).reset()


def _unrepeat(loader: object, world_size: int) -> tuple[bool, str | None]:
    """Make ``loader``'s ``DistributedSampler`` stop repeating samples (``True`` if it did), and
    say why every sample may still not count exactly once (``None`` when it does)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    custom = batch_sampler is not None and type(batch_sampler) is not BatchSampler
    candidates = (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None))
    sampler = next((s for s in candidates if isinstance(s, DistributedSampler)), None)
    if sampler is None:
        if world_size == 1:
            return False, None
        if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            return False, (
                "is not split across ranks by Lightning (an iterable-style dataset or a "
                "non-DataLoader): the mixin cannot check that the ranks together read each "
                "sample once"
            )
        if custom:
            return False, (
                f"has its own batch_sampler ({type(batch_sampler).__name__}) and no "
                "DistributedSampler: the mixin cannot check that the ranks together draw each "
                "sample once"
            )
        return False, None
    size = len(sampler.dataset)  # type: ignore[arg-type]
    changed = False
    if sampler.drop_last and size % sampler.num_replicas:
        return False, "has a DistributedSampler with drop_last=True, which leaves samples out"
    if sampler.total_size > size:
        if type(sampler).__iter__ not in _DEALS_ONCE_WHEN_UNPADDED:
            return False, f"has a {type(sampler).__name__}, which repeats samples its own way"
        if size < sampler.num_replicas:
            return False, (
                f"has {size} samples for {sampler.num_replicas} ranks, so some rank must "
                "evaluate a repeat; evaluate on fewer devices"
            )
        # DistributedSampler.__iter__ reads both at every pass: with these it pads nothing and
        # rank r takes samples r, r + W, ... (Lightning's sampler for predict does the same).
        sampler.total_size = size
        sampler.num_samples = len(range(sampler.rank, size, sampler.num_replicas))
        changed = True
    if custom and (changed or world_size > 1):
        return changed, (
            f"has its own batch_sampler ({type(batch_sampler).__name__}): the "
            "DistributedSampler it draws from gives each sample to one rank once, but the mixin "
            "cannot check that the batch_sampler draws each of them once"
        )
    return changed, None


def _uncompiled(head: Any) -> Any:
    """The module that ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), else ``head``."""
    return getattr(head, "_orig_mod", head)


class LMHeadMixin(_Base):
    """Adds ``configure_head``, ``head_training_step``, ``head_evaluation_step``,
    ``tie_head_weights`` and a default ``predict_step``.

    Put it before ``LightningModule`` in the bases. After ``configure_head`` the module has
    ``self.head`` (a :class:`~lm_heads.base.Head`), ``self.val_ppl`` / ``self.test_ppl``
    (:class:`~lm_heads.metrics.Perplexity` of the first dataloader of each stage) and
    ``self.extra_ppl`` (those of further dataloaders: ``"val_1"``, ...).
    """

    head: Head
    val_ppl: Perplexity
    test_ppl: Perplexity
    _head_window: _Window | None = None
    """Sums of the gradient-accumulation window under way (``None`` between optimizer steps)."""
    _head_running: tuple[str, int] | None = None
    """(stage, dataloader index) of the evaluation batch Lightning is running, else ``None``."""
    _head_captured: list[Tensor] | None = None
    """Where ``head_evaluation_step`` puts its result during the default ``predict_step``."""

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
        registered before the optimizer and the DDP wrapper see the module. A head that needs
        ``counts`` may be configured without them when its weights will be loaded (see the
        module docstring); using it before that raises. The head may be compiled afterwards:
        ``self.head.compile()`` (in place, so checkpoints keep eager parameter names) or
        ``self.head = torch.compile(self.head)``.
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
            try:
                built = build_head(head, in_features, vocab_size, counts=counts, **options)
            except MissingCountsError:
                ignore_index = options.get("ignore_index", -100)
                built = _PendingHead(head, in_features, vocab_size, ignore_index)
        else:
            raise TypeError(
                f"head must be a registered head name or a Head, got {type(head).__name__}"
            )
        self.head = built
        self.val_ppl = Perplexity(ignore_index=built.ignore_index)
        self.test_ppl = Perplexity(ignore_index=built.ignore_index)
        # Metrics of the second and later dataloaders, made on first use: "val_1", "test_2", ...
        self.extra_ppl = nn.ModuleDict()
        if not getattr(self, "_head_hooks_installed", False):
            # Private names: the public register_* forms need torch >= 2.5.
            self._register_state_dict_hook(_save_head_structure)
            self._register_load_state_dict_pre_hook(_load_head_structure, with_module=True)
            self._head_hooks_installed = True
        return built

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Lightning's hook, extended with :class:`HeadBookkeeping` and
        :class:`EvaluationKeepsRandomState`; if you override it, return
        ``[*super().configure_callbacks(), ...]``."""
        inherited = super().configure_callbacks()
        callbacks = [inherited] if isinstance(inherited, Callback) else list(inherited)
        return [*callbacks, HeadBookkeeping(), EvaluationKeepsRandomState()]

    def tie_head_weights(self, embedding: nn.Embedding, *, init: str = "head") -> None:
        """Share ``embedding.weight`` with the head's output rows (:func:`~lm_heads.tying.
        tie_weights`; ``init="head"`` keeps the head's initialisation). The tie is made again
        whenever the head is rebuilt from a checkpoint."""
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        head = _uncompiled(self._configured_head())
        if not isinstance(head, _PendingHead):
            tie_weights(embedding, head, init=init)
        self._head_tie = (embedding, init)

    def head_training_step(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Training loss of ``hidden [B, T, d]`` against ``target [B, T]``; logs it.

        Logs ``train_loss`` (the head's objective, label smoothing and z-loss included) and, for
        heads that give the exact NLL, ``train_ppl = exp(Σ NLL / #tokens)``: the perplexity of
        the step's tokens under the model, never exp of a regularised loss. Both are per-step
        values for monitoring; the numbers to report are ``val_ppl`` / ``test_ppl``. A step
        without any counted token (all ``ignore_index``) logs neither: its loss is 0 by
        convention, not a perfect score.

        With ``Trainer(accumulate_grad_batches=k)`` the optimizer step is weighted by tokens, as
        one batch holding all its micro-batches would be, and the step's ``train_loss`` /
        ``train_ppl`` are over all its tokens. Call it once per ``training_step`` then. Each
        micro-batch's loss is its token sum over a reference count; the step's last micro-batch
        rescales the gradients summed so far to ``Σ loss / Σ tokens`` before its own backward,
        so ``on_after_backward``, ``on_before_optimizer_step`` (of callbacks and module alike)
        and gradient clipping all see the final gradients. The rescaling applies to every
        gradient of the module: a loss added to the head's is exact with micro-batches of equal
        token counts (the factor is then 1). Under DDP each rank's gradient is its own tokens'
        mean and DDP averages the ranks, as without accumulation.
        """
        out = self._configured_head()(hidden, target)
        accumulation, last = self._accumulation()
        if accumulation == 1:
            # One scalar read from the device (Lightning's progress bar reads the logged values
            # at every step anyway); logging 0 / ppl 1 for an empty batch would be a false score.
            if bool(out.num_tokens > 0):
                self._log_training(out.loss.detach(), out.nll_sum, out.num_tokens)
            return out.loss
        return self._accumulate(out, accumulation, last)

    def head_evaluation_step(
        self,
        hidden: Tensor,
        target: Tensor,
        stage: str = "val",
        dataloader_idx: int | None = None,
    ) -> Tensor:
        """Accumulate ``log p(target)`` into the stage's perplexity and log it (epoch-level,
        synced): ``{stage}_ppl``, with ``/dataloader_idx_k`` appended by Lightning when the
        stage has several dataloaders, each with its own metric.

        ``dataloader_idx`` defaults to the dataloader Lightning is running (the index its
        ``self.log`` appends). Called by hand outside a Lightning loop, it only accumulates (read
        ``self.val_ppl.compute()``). Returns the target log-probabilities ``[B, T]`` (0 where
        target is ``ignore_index``).

        Under DDP, Lightning's ``DistributedSampler`` pads a set that does not divide by the
        number of ranks with repeated samples. Before each evaluation the mixin makes it deal
        every sample to exactly one rank, once (as Lightning's own sampler for ``predict``
        does), so ranks may run one batch fewer than others: steps must not call collectives
        per batch (``self.log(..., sync_dist=True)`` with ``on_step=True``, ``all_gather``).
        Where it cannot know that each sample counts once (a custom ``batch_sampler``, an
        ``IterableDataset``, another sampler that repeats, ``drop_last=True``) it warns with
        :class:`EvaluationSamplingWarning`.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        target_log_prob = self._configured_head().target_log_prob(hidden, target)
        if self._head_captured is not None:  # the default predict_step: no metric, no log
            self._head_captured.append(target_log_prob)
            return target_log_prob
        running = self._head_running
        if running is None:
            self._check_bookkeeping()
        if dataloader_idx is None:
            dataloader_idx = running[1] if running is not None and running[0] == stage else 0
        metric, attribute = self._stage_metric(stage, dataloader_idx)
        metric.update(target_log_prob, target)
        if running is None:
            return target_log_prob  # called by hand, outside an evaluation step: accumulate only
        # Logging the metric object (not its value) makes Lightning call compute() once per epoch,
        # after torchmetrics has summed both states over ranks, and then reset it.
        self.log(
            f"{stage}_ppl", metric, on_step=False, on_epoch=True, prog_bar=True,
            metric_attribute=attribute,
        )  # fmt: skip
        return target_log_prob

    def predict_step(self, *args: Any, **kwargs: Any) -> Tensor | list[Tensor]:
        """``trainer.predict``: the targets' log-probabilities ``[B, T]`` of each batch (0 where
        the target is ``ignore_index``), as the module's ``validation_step`` (else its
        ``test_step``) computes them through ``head_evaluation_step``; no metric is updated.
        A list when the step calls ``head_evaluation_step`` several times. Define your own
        ``predict_step`` for anything else: it takes precedence over this one."""
        steps = [getattr(self, name) for name in ("validation_step", "test_step")]
        step = next(
            (s for s in steps if getattr(L.LightningModule, s.__name__) is not s.__func__), None
        )
        captured: list[Tensor] = []
        self._head_captured = captured
        try:
            if step is not None:
                step(*args, **kwargs)
        finally:
            self._head_captured = None
        if not captured:
            raise RuntimeError(
                "LMHeadMixin.predict_step returns the target log-probabilities that "
                "validation_step (or test_step) computes with head_evaluation_step, but "
                f"{'neither is defined' if step is None else f'{step.__name__} made no such call'}"
                "; define predict_step in your module"
            )
        return captured[0] if len(captured) == 1 else captured

    # ----------------------------------------------------------------------------------------
    def _accumulation(self) -> tuple[int, bool]:
        """Micro-batches per optimizer step, and whether the running one is a step's last;
        ``(1, True)`` outside a fit loop and in manual optimization."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or not getattr(trainer, "training", False):
            return 1, True  # called by hand, or from an evaluation step
        if not self.automatic_optimization or trainer.strategy.handles_gradient_accumulation:
            return 1, True
        accumulation = int(trainer.accumulate_grad_batches)
        if accumulation == 1:
            return 1, True
        # Lightning's own rule, read once it has counted this batch: every k-th batch of an
        # epoch and its last one end a step (private, but the very test its loop applies).
        return accumulation, not trainer.fit_loop._should_accumulate()

    def _accumulate(self, out: HeadOutput, accumulation: int, last: bool) -> Tensor:
        """The micro-batch's share of the window's token-weighted loss (see
        ``head_training_step``).

        Why the last micro-batch rescales the gradients: the window's token total is unknown
        until its last micro-batch, and Lightning divides every returned loss by ``k``. Each
        earlier micro-batch returns its token sum over ``reference`` (its window's first
        non-empty count), so the summed gradients are ``Σ ∇loss_sum / (k · reference)``; the
        last one multiplies them by ``k · reference / Σ tokens`` and returns ``k · loss_sum /
        Σ tokens``. The step then sees ``Σ ∇loss_sum / Σ tokens`` before its last backward ends,
        so every hook after it and gradient clipping see the final gradients, without any hook
        of ours (a hook placed in the callback or module chain would run after some others).
        With equal micro-batches the factor is 1 and every returned loss is the usual mean.
        """
        trainer = self.trainer
        batch = (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx)
        tokens = out.num_tokens.to(out.loss.dtype)
        loss_sum = out.loss * tokens  # the head's loss is a mean over its counted tokens
        window = self._head_window
        if window is not None and window.batch == batch:
            raise RuntimeError(
                "head_training_step was called twice in one training_step while accumulating "
                f"gradients (accumulate_grad_batches={accumulation}); the mixin weighs each "
                "micro-batch by its tokens, so call it once per step: concatenate the hidden "
                "states and targets (padding with ignore_index), or set accumulate_grad_batches=1"
            )
        if window is None:
            zero = loss_sum.detach() * 0
            window = _Window(zero, None if out.nll_sum is None else zero, zero, zero, batch)
        window.batch = batch
        window.micro_batches += 1
        window.reference = torch.where(window.reference > 0, window.reference, tokens.detach())
        window.loss_sum = window.loss_sum + loss_sum.detach()
        window.tokens = window.tokens + tokens.detach()
        if window.nll_sum is not None:
            window.nll_sum = (
                None if out.nll_sum is None else window.nll_sum + out.nll_sum.detach().float()
            )
        reference = window.reference.clamp(min=1.0)
        if not last:
            self._head_window = window
            return loss_sum / reference
        self._head_window = None
        total = window.tokens.clamp(min=1.0)
        if window.micro_batches > 1:
            factor = accumulation * reference / total
            with torch.no_grad():
                for parameter in self.parameters():
                    if parameter.grad is not None:
                        parameter.grad.mul_(factor.to(parameter.grad.dtype))
        if bool(window.tokens > 0):
            self._log_training(window.loss_sum / window.tokens, window.nll_sum, window.tokens)
        return loss_sum * accumulation / total

    def _log_training(self, loss: Tensor, nll_sum: Tensor | None, tokens: Tensor) -> None:
        # on_step values are never averaged, so the batch size Lightning asks for plays no part.
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=1)
        if nll_sum is not None:
            ppl = (nll_sum.detach().double() / tokens.double()).exp()
            self.log("train_ppl", ppl.float(), on_step=True, prog_bar=True, batch_size=1)

    def _check_bookkeeping(self) -> None:
        """Raise if a Lightning evaluation runs without :class:`HeadBookkeeping`."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or not (
            trainer.sanity_checking or trainer.validating or trainer.testing
        ):
            return
        if not any(isinstance(callback, HeadBookkeeping) for callback in trainer.callbacks):
            raise RuntimeError(
                f"LMHeadMixin's HeadBookkeeping callback is missing from the trainer: "
                f"{type(self).__name__}.configure_callbacks replaces the mixin's. Return "
                "[*super().configure_callbacks(), <your callbacks>] from it"
            )

    def _warn_once(self, message: str, category: type[Warning] = UserWarning) -> None:
        warned = self.__dict__.setdefault("_head_warned", set())
        if message not in warned:
            warned.add(message)
            warnings.warn(message, category, stacklevel=3)

    def _configured_head(self) -> Head:
        head = getattr(self, "head", None)
        if not isinstance(_uncompiled(head), Head):
            raise RuntimeError(_NOT_CONFIGURED)
        # A compiled head (torch.compile) runs its compiled forward when called; its other
        # attributes (target_log_prob, ignore_index) are the Head's own.
        return cast(Head, head)

    def _stage_metric(self, stage: str, dataloader_idx: int) -> tuple[Perplexity, str]:
        first = getattr(self, f"{stage}_ppl", None)
        if not isinstance(first, Perplexity):
            raise RuntimeError(_NOT_CONFIGURED)
        if dataloader_idx == 0:
            return first, f"{stage}_ppl"
        key = f"{stage}_{dataloader_idx}"
        if key not in self.extra_ppl:
            self.extra_ppl[key] = Perplexity(ignore_index=first.ignore_index).to(first.device)
        # extra_ppl holds only the Perplexity metrics made here; ModuleDict cannot type them.
        return cast(Perplexity, self.extra_ppl[key]), f"extra_ppl.{key}"

    def _reset_stage_metrics(self, stage: str) -> None:
        first = getattr(self, f"{stage}_ppl", None)
        if isinstance(first, Perplexity):
            first.reset()
            for key, metric in self.extra_ppl.items():
                if key.startswith(f"{stage}_"):
                    cast(Perplexity, metric).reset()

    def _restore_head(self, spec: HeadSpec, state_dict: dict[str, Any], prefix: str) -> None:
        """Rebuild ``self.head`` from ``spec`` when it is pending or its shapes differ from the
        ``prefix``-ed entries of ``state_dict``; then loading fills in the weights."""
        current = self.head
        if isinstance(current, _PendingHead):
            declared = (current.name, current.in_features, current.vocab_size)
            if declared != (spec.name, spec.in_features, spec.vocab_size):
                raise ValueError(
                    f"the checkpoint holds a {spec.name!r} head with in_features="
                    f"{spec.in_features}, vocab_size={spec.vocab_size}, but this module configures "
                    f"{current.name!r} with in_features={current.in_features}, vocab_size="
                    f"{current.vocab_size}"
                )
        else:
            ours = current.build_spec
            if ours is not None:
                same_type = ours.name == spec.name
            else:  # an instance passed to configure_head
                same_type = spec.name not in HEADS or isinstance(current, HEADS[spec.name])
            if not same_type:
                # Equal shapes would load silently, and the weights be read as another head's.
                configured = f"{ours.name!r} head" if ours else type(current).__name__
                raise ValueError(
                    f"the checkpoint holds a {spec.name!r} head, but this module configures a "
                    f"{configured}: its weights would mean another distribution here. "
                    f"Configure {spec.name!r} to load them"
                )
            stored = {
                key[len(prefix) :]: value.shape
                for key, value in state_dict.items()
                if key.startswith(prefix)
            }
            if not stored or stored == {k: v.shape for k, v in current.state_dict().items()}:
                return
            warnings.warn(
                f"the checkpoint's head ({_describe(spec, ours)}) differs in structure from the "
                f"one configured here ({_describe(ours, spec) if ours else type(current).__name__}"
                "); rebuilding it from the checkpoint. Omit counts= to take it from the "
                "checkpoint without this warning",
                stacklevel=2,
            )
        rebuilt = spec.build()
        reference = next((p for p in current.parameters() if p.is_floating_point()), None)
        if reference is not None:
            rebuilt.to(device=reference.device, dtype=reference.dtype)
        else:
            rebuilt.to(device=getattr(self, "device", None), dtype=getattr(self, "dtype", None))
        self.head = rebuilt
        tie = getattr(self, "_head_tie", None)
        if tie is not None:
            tie_weights(tie[0], rebuilt, init=tie[1])
        if isinstance(current, _PendingHead):
            for callback in current.when_built:  # e.g. an AdaptiveInput.from_head(self.head)
                callback(rebuilt)


class _PendingHead(Head):
    """Stands in for a head configured without the counts it needs, until ``load_state_dict``
    (a checkpoint) brings its structure. Every use raises a message saying what to do."""

    def __init__(self, name: str, in_features: int, vocab_size: int, ignore_index: int) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self.name = name
        self.when_built: list[Callable[[Head], None]] = []
        """Called with the head once a checkpoint builds it (modules made from it wait too)."""

    def _message(self) -> str:
        return (
            f"the {self.name!r} head was configured without counts=, so it has no structure yet: "
            "pass counts=<corpus frequency of each word id> to configure_head, or load weights "
            "saved by LMHeadMixin (MyLM.load_from_checkpoint(path), ckpt_path=..., "
            "load_state_dict), which rebuild it"
        )

    def _check_hidden(self, hidden: Tensor) -> Tensor:
        raise RuntimeError(self._message())

    def output_embeddings(self) -> Tensor | None:
        raise RuntimeError(self._message())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if any(key.startswith(prefix) for key in state_dict):
            raise RuntimeError(
                f"{self._message()}. This state dict has the head's weights but not its structure "
                f"({STRUCTURE_KEY}* entries, saved since lm_heads 0.1 by LMHeadMixin): "
                "pass the counts the head was trained with"
            )

    def extra_repr(self) -> str:
        return f"{self.name!r} awaiting its structure, {super().extra_repr()}"


def _save_head_structure(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    spec = getattr(module.head, "build_spec", None)
    if spec is None:  # a pending head, or an instance not made by build_head
        return
    try:
        state = spec.to_state()
    except TypeError as error:
        warnings.warn(f"{error}; loading these weights will need the same arguments", stacklevel=2)
        return
    for key, value in state.items():
        state_dict[prefix + STRUCTURE_KEY + key] = value


def _load_head_structure(
    module: LMHeadMixin, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    # Popped so that strict loading does not see them as unexpected keys.
    state = {
        key: state_dict.pop(prefix + STRUCTURE_KEY + key)
        for key in ("spec", "counts")
        if prefix + STRUCTURE_KEY + key in state_dict
    }
    if "spec" in state:
        head = prefix + "head."
        # The head's weights tell which release saved a spec without a format version.
        weights = {key[len(head) :]: v for key, v in state_dict.items() if key.startswith(head)}
        module._restore_head(HeadSpec.from_state(state, weights), state_dict, head)


def _describe(spec: HeadSpec, other: HeadSpec | None = None) -> str:
    """``spec`` in words; beside ``other``, only the options whose values differ from its."""
    counts = "no counts" if spec.counts is None else f"counts sum {float(spec.counts.sum()):g}"
    options = spec.options
    if other is not None:
        options = {
            k: v for k, v in options.items() if k not in other.options or other.options[k] != v
        }
    return (
        f"{spec.name!r}, in_features={spec.in_features}, vocab_size={spec.vocab_size}, "
        f"{counts}, options={options}"
    )

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
of each epoch; the mixin also resets them at the start of each evaluation epoch
(``on_validation_epoch_start`` / ``on_test_epoch_start``), so state left by a manual
``head_evaluation_step`` or an interrupted run never leaks in. It learns the running dataloader
and batch from ``on_{validation,test}_batch_start/_end`` and weighs gradient-accumulation windows
by tokens in ``on_before_optimizer_step``: call ``super()`` if you override any of these hooks.

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

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from lm_heads.base import Head
from lm_heads.counts import MissingCountsError
from lm_heads.metrics import Perplexity
from lm_heads.registry import HEADS, HeadSpec, build_head
from lm_heads.tying import INITS, tie_weights

STAGES = ("val", "test")
STRUCTURE_KEY = "head_structure."
"""State-dict prefix of the head's structure (``HeadSpec.to_state``), next to ``head.*``."""

_NOT_CONFIGURED = "call self.configure_head(...) in __init__ before training or evaluating"

if TYPE_CHECKING:
    # The mixin is always combined with a LightningModule (``self.log``, state-dict hooks, the
    # epoch hooks it extends); at run time it has no base, so it composes in any order.
    import lightning as L

    _Base = L.LightningModule
else:
    _Base = object


@dataclass
class _Window:
    """Running sums over the micro-batches of one optimizer step (0-dim tensors, on device)."""

    loss_sum: Tensor
    nll_sum: Tensor | None
    tokens: Tensor
    reference: Tensor
    """Token count of the window's first non-empty micro-batch (0 until there is one)."""


@dataclass
class _Batch:
    """An evaluation batch's place in this rank's share of its dataloader."""

    stage: str
    dataloader_idx: int
    first: int
    """Index, among this rank's samples, of the batch's first row."""
    own: int | None
    """This rank's samples that are not repeats (``None``: the sampler repeats none)."""
    rows: int | None
    """Samples the dataloader puts in this batch (when ``own`` is not ``None``)."""


class LMHeadMixin(_Base):
    """Adds ``configure_head``, ``head_training_step``, ``head_evaluation_step`` and
    ``tie_head_weights``.

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
    _head_batch: _Batch | None = None
    """The evaluation batch Lightning is running (``None`` outside an evaluation loop)."""

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
        module docstring); using it before that raises.
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

    def tie_head_weights(self, embedding: nn.Embedding, *, init: str = "head") -> None:
        """Share ``embedding.weight`` with the head's output rows (:func:`~lm_heads.tying.
        tie_weights`; ``init="head"`` keeps the head's initialisation). The tie is made again
        whenever the head is rebuilt from a checkpoint."""
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(self._configured_head(), _PendingHead):
            tie_weights(embedding, self.head, init=init)
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
        one batch holding all ``k`` micro-batches would be: the returned loss is the micro-batch's
        token sum over a reference count, and ``on_before_optimizer_step`` rescales the summed
        gradients to ``Σ loss / Σ tokens`` of the window (before gradient clipping), then logs the
        window's token-weighted ``train_loss`` / ``train_ppl``. That rescaling applies to every
        gradient of the module, so a loss added to the head's is rescaled with it. Under DDP each
        rank's gradient is its own tokens' mean and DDP averages the ranks, as without
        accumulation.
        """
        out = self._configured_head()(hidden, target)
        accumulation = self._accumulation()
        if accumulation == 1:
            # One scalar read from the device (Lightning's progress bar reads the logged values
            # at every step anyway); logging 0 / ppl 1 for an empty batch would be a false score.
            if bool(out.num_tokens > 0):
                self._log_training(out.loss.detach(), out.nll_sum, out.num_tokens)
            return out.loss
        tokens = out.num_tokens.to(out.loss.dtype)
        loss_sum = out.loss * tokens  # the head's loss is a mean over its counted tokens
        window = self._head_window
        if window is None:
            zero = loss_sum.detach() * 0
            window = _Window(zero, None if out.nll_sum is None else zero, zero, zero)
        # The reference count is the window's first non-empty micro-batch: with equal micro-
        # batches the returned loss is the usual mean and the final rescaling factor is 1.
        reference = torch.where(window.reference > 0, window.reference, tokens.detach())
        window.reference = reference
        window.loss_sum = window.loss_sum + loss_sum.detach()
        window.tokens = window.tokens + tokens.detach()
        if window.nll_sum is not None:
            window.nll_sum = (
                None if out.nll_sum is None else window.nll_sum + out.nll_sum.detach().float()
            )
        self._head_window = window
        return loss_sum / reference.clamp(min=1.0)

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

        Under DDP, Lightning's default sampler pads an evaluation set that does not divide by the
        number of ranks with repeats of its first samples; those rows (the last of some ranks) are
        left out of the metric, so every sample counts once. This needs the batch's first
        dimension to be the samples of the dataloader's ``batch_size``, as with the default
        ``collate_fn``; otherwise a warning says that repeats may be counted.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        head = self._configured_head()
        running = self._head_batch
        if running is not None and running.stage != stage:
            running = None  # e.g. a test metric fed from a validation step: no position known
        if dataloader_idx is None:
            dataloader_idx = running.dataloader_idx if running is not None else 0
        metric, attribute = self._stage_metric(stage, dataloader_idx)
        target_log_prob = head.target_log_prob(hidden, target)
        counted = target
        if running is not None and running.dataloader_idx == dataloader_idx:
            counted = self._without_repeats(running, target, head.ignore_index)
        metric.update(target_log_prob, counted)
        if self._head_batch is None:
            return target_log_prob  # called by hand, outside a Lightning loop: accumulate only
        # Logging the metric object (not its value) makes Lightning call compute() once per epoch,
        # after torchmetrics has summed both states over ranks, and then reset it.
        self.log(
            f"{stage}_ppl", metric, on_step=False, on_epoch=True, prog_bar=True,
            metric_attribute=attribute,
        )  # fmt: skip
        return target_log_prob

    def on_train_start(self) -> None:
        super().on_train_start()
        self._head_window = None  # a window left by an interrupted run never leaks in

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Under gradient accumulation: rescale the window's gradients to its token-weighted
        mean and log the window's ``train_loss`` / ``train_ppl`` (see ``head_training_step``).
        Call ``super().on_before_optimizer_step(optimizer)`` if you override it."""
        super().on_before_optimizer_step(optimizer)
        window, self._head_window = self._head_window, None
        if window is None or not bool(window.tokens > 0):
            return
        # Lightning divided each micro-batch's loss by k; each was a token sum over `reference`.
        factor = self._accumulation() * window.reference / window.tokens
        for parameter in self.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(factor.to(parameter.grad.dtype))
        self._log_training(window.loss_sum / window.tokens, window.nll_sum, window.tokens)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._reset_stage_metrics("val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._reset_stage_metrics("test")

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_validation_batch_start(batch, batch_idx, dataloader_idx)
        self._head_batch = self._batch_position("val", batch_idx, dataloader_idx)

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_validation_batch_end(outputs, batch, batch_idx, dataloader_idx)
        self._head_batch = None

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_test_batch_start(batch, batch_idx, dataloader_idx)
        self._head_batch = self._batch_position("test", batch_idx, dataloader_idx)

    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_test_batch_end(outputs, batch, batch_idx, dataloader_idx)
        self._head_batch = None

    # ----------------------------------------------------------------------------------------
    def _accumulation(self) -> int:
        """Micro-batches per optimizer step (1 outside a trainer and in manual optimization)."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer: called by hand
            return 1
        if not self.automatic_optimization:
            return 1
        return int(trainer.accumulate_grad_batches)

    def _log_training(self, loss: Tensor, nll_sum: Tensor | None, tokens: Tensor) -> None:
        # on_step values are never averaged, so the batch size Lightning asks for plays no part.
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=1)
        if nll_sum is not None:
            ppl = (nll_sum.detach().double() / tokens.double()).exp()
            self.log("train_ppl", ppl.float(), on_step=True, prog_bar=True, batch_size=1)

    def _batch_position(self, stage: str, batch_idx: int, dataloader_idx: int) -> _Batch:
        """Where the coming batch sits in this rank's share of the dataloader, and how many of
        this rank's samples are not repeats added by a distributed sampler."""
        trainer = self.trainer
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        sampler = getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None)
        if not isinstance(sampler, DistributedSampler):
            return _Batch(stage, dataloader_idx, 0, None, None)
        size = len(sampler.dataset)  # type: ignore[arg-type]
        if sampler.drop_last and size % sampler.num_replicas:
            self._warn_once(
                "a DistributedSampler with drop_last=True leaves samples out of "
                f"{stage}_ppl; use one that neither drops nor repeats samples"
            )
        if sampler.total_size <= size:  # nothing repeated
            return _Batch(stage, dataloader_idx, 0, None, None)
        if batch_size is None:
            self._warn_once(
                f"{stage}_ppl may count repeated samples: the DistributedSampler repeats samples "
                "to give every rank the same number, and without a DataLoader batch_size the "
                "repeats cannot be found in the batches; pass Trainer(use_distributed_sampler="
                "False) with a sampler that does not repeat"
            )
            return _Batch(stage, dataloader_idx, 0, None, None)
        # The sampler deals position p of its padded order to rank p % W; positions past the
        # dataset's size are the repeats, so they are the last samples of their rank.
        own = len(range(sampler.rank, size, sampler.num_replicas))
        first = batch_idx * batch_size
        rows = max(0, min(batch_size, sampler.num_samples - first))
        return _Batch(stage, dataloader_idx, first, own, rows)

    def _without_repeats(self, batch: _Batch, target: Tensor, ignore_index: int) -> Tensor:
        """``target`` with the rows that repeat other ranks' samples set to ``ignore_index``."""
        if batch.own is None or batch.first + (batch.rows or 0) <= batch.own:
            return target
        if target.dim() == 0 or target.shape[0] != batch.rows:
            self._warn_once(
                f"{batch.stage}_ppl may count repeated samples: the DistributedSampler repeats "
                f"samples to give every rank the same number, but this batch has "
                f"{target.shape[0] if target.dim() else 0} rows where the dataloader gives "
                f"{batch.rows} samples; pass Trainer(use_distributed_sampler=False) with a "
                "sampler that does not repeat"
            )
            return target
        keep = max(0, batch.own - batch.first)
        counted = target.clone()
        counted[keep:] = ignore_index
        return counted

    def _warn_once(self, message: str) -> None:
        warned = self.__dict__.setdefault("_head_warned", set())
        if message not in warned:
            warned.add(message)
            warnings.warn(message, stacklevel=3)

    def _configured_head(self) -> Head:
        head = getattr(self, "head", None)
        if not isinstance(head, Head):
            raise RuntimeError(_NOT_CONFIGURED)
        return head

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

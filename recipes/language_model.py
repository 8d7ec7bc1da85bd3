"""The recipe's LightningModule and its training callbacks.

``LanguageModel`` is a backbone (``recipes.models``) plus a head wired through ``LMHeadMixin``;
``TrainClock`` measures training time and throughput, enforces ``--max-time`` and records the
validation curve; ``SubsetValidation`` adds the curve's frequent points on a fixed slice of the
validation split; ``FinalCheckpoint`` writes ``last.ckpt`` when training stops between periodic
checkpoints.

Two kinds of validation, kept apart on purpose (as pytorch/examples does):

- ``val_ppl``: Lightning's validation loop over the **whole** split at each epoch end. It alone
  drives the plateau schedule and is the number reported.
- ``val_subset_ppl``: every ``--curve-every`` steps, the first ``--curve-batches`` batches, for
  the curves only. A subset swings by a few percent around the trend from one point to the next,
  so it never decides when to anneal.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lm_heads import build_head
from lm_heads.mixin import LMHeadMixin
from recipes.models import LSTMLM, TransformerLM, adaptive_input
from recipes.options import resolve as resolve_options

Batch = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------------------
# The model
class LanguageModel(LMHeadMixin, L.LightningModule):
    """Backbone (``LSTMLM`` / ``TransformerLM``) + head, trained with the mixin's steps.

    Only primitives go to ``save_hyperparameters``; the head's structure (counts included)
    travels in the state dict (``LMHeadMixin``), so ``LanguageModel.load_from_checkpoint(path)``
    needs no corpus, and a checkpoint loads with ``torch.load(..., weights_only=True)``.
    ``compile=True`` compiles the backbone and the head's training forward (``torch.compile``)
    when training starts.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        counts: torch.Tensor | None = None,
        max_len: int = 512,
        **options: Any,
    ) -> None:
        """``vocab_size`` words, unigram ``counts`` for the heads that need them, Transformer
        positions up to ``max_len``; ``options`` are the fields of ``recipes/options.py`` (their
        defaults there, the optimizer and lr by backbone when not given)."""
        hp = resolve_options(options)
        super().__init__()
        self.save_hyperparameters({"vocab_size": vocab_size, "max_len": max_len, **hp})
        if hp["lr_schedule"] == "plateau" and hp["warmup_steps"]:
            raise ValueError("lr_schedule='plateau' takes no warmup_steps (use 'constant')")
        if hp["lr_schedule"] == "plateau" and not hp["lr_decay"] > 1.0:
            decay = hp["lr_decay"]
            raise ValueError(f"lr_decay must be > 1 (the lr is divided by it), got {decay}")
        head, head_options, input_layer = hp["head"], hp["head_options"], hp["input_layer"]
        embed_dim, d_model, tie_weights = hp["embed_dim"], hp["d_model"], hp["tie_weights"]
        out_features = embed_dim if tie_weights else None
        built_head, embedding = None, None
        if input_layer == "adaptive":
            # Adaptive input shares the adaptive head's clusters: build the head first.
            built_head = build_head(
                head, out_features or d_model, vocab_size, counts=counts, **head_options
            )
            embedding = adaptive_input(built_head, vocab_size, embed_dim, counts, tie_weights)
        elif input_layer != "embedding":
            raise ValueError(f"input_layer must be 'embedding' or 'adaptive', got {input_layer!r}")
        self.backbone = _backbone(self.hparams, out_features, embedding)
        if built_head is not None:
            self.configure_head(built_head)
        else:
            self.configure_head(
                head,
                in_features=self.backbone.out_features,
                vocab_size=vocab_size,
                counts=counts,
                **head_options,
            )
        if tie_weights and input_layer == "embedding":
            self.tie_head_weights(self.backbone.embedding)
        self._rng_to_restore: dict[str, torch.Tensor] | None = None
        # Truncated BPTT: the detached recurrent state after the last window of each stage's
        # streams, fed to the next window of the same streams (batch row b continues row b).
        self._carried: dict[str, Any] = {}
        self._train_batches_in_epoch = 0
        self._state_to_restore: tuple[torch.Tensor, int] | None = None

    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """``tokens [B, T]`` → ``(hidden [B, T, d], state)``; see ``recipes.models``."""
        return self.backbone(tokens, state)

    def _hidden(self, tokens: torch.Tensor, stage: str) -> torch.Tensor:
        if not self.hparams.carry_state:
            return self(tokens)[0]
        hidden, state = self(tokens, self._carried.get(stage))
        self._carried[stage] = _detach(state)
        return hidden

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        self._train_batches_in_epoch += 1
        return self.head_training_step(self._hidden(inputs, "train"), targets)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        inputs, targets = batch
        self.head_evaluation_step(self._hidden(inputs, "val"), targets, stage="val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        inputs, targets = batch
        self.head_evaluation_step(self._hidden(inputs, "test"), targets, stage="test")

    # Every pass over a split starts its streams from the zero state (as pytorch/examples does at
    # each epoch and each evaluation). A mid-epoch resume continues from the checkpoint's state:
    # Lightning calls on_train_start but not on_train_epoch_start for the resumed epoch.
    def on_train_epoch_start(self) -> None:
        if not 0 < self._train_batches_in_epoch < self.trainer.num_training_batches:
            self._carried["train"], self._train_batches_in_epoch = None, 0

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()  # the mixin resets the stage's metrics
        self._carried["val"] = None

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._carried["test"] = None

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=hp.lr, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {hp.optimizer!r}")
        if hp.lr_schedule == "plateau":
            # pytorch/examples' annealing: lr /= lr_decay whenever an epoch's validation
            # perplexity is not strictly below the best so far (threshold 0, patience 0).
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=1.0 / hp.lr_decay, patience=hp.lr_patience, threshold=0.0
            )
            schedule = {"scheduler": plateau, "monitor": "val_ppl", "interval": "epoch"}
            return {"optimizer": opt, "lr_scheduler": schedule}
        if hp.lr_schedule == "constant" and hp.warmup_steps == 0:
            return opt
        warmup, cosine = hp.warmup_steps, hp.lr_schedule == "cosine"
        # A --max-time budget alone has no step total (inf): only cosine needs one (check_args).
        total = max(1, int(self.trainer.estimated_stepping_batches)) if cosine else 1

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Exact resume: the global torch RNG drives dropout (and any head that samples from it), and
    # Lightning does not checkpoint it. Tensors only, so weights_only loading still works.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["rng_states"] = rng
        state = self._carried.get("train")
        if state is not None and self._train_batches_in_epoch < self.trainer.num_training_batches:
            # Every rank carries its own streams' state; the checkpoint keeps all of them. This
            # hook runs on every rank (Lightning dumps the checkpoint everywhere, rank 0 writes).
            stacked = torch.stack(state)  # [2, layers, B, d]
            gathered = self.all_gather(stacked) if self.trainer.world_size > 1 else stacked[None]
            checkpoint["carried_state"] = {
                "state": gathered.cpu(),  # [world, 2, layers, B, d]
                "batches_in_epoch": self._train_batches_in_epoch,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        carried = checkpoint.get("carried_state")
        if carried is not None:
            self._state_to_restore = (carried["state"], int(carried["batches_in_epoch"]))

    def on_fit_start(self) -> None:
        # Here, not in __init__: loading a checkpoint may rebuild the head after construction.
        # In place (Module.compile), so parameter names and checkpoints stay those of eager runs.
        if self.hparams.get("compile", False):
            self.backbone.compile()
            self.head.compile()

    def on_train_start(self) -> None:
        # Restored here, after the sanity check and loader setup, right before the next step.
        if self._state_to_restore is not None:
            state, batches_done = self._state_to_restore
            self._state_to_restore = None
            if state.shape[0] != self.trainer.world_size:
                raise ValueError(
                    f"the checkpoint carries the recurrent state of {state.shape[0]} rank(s), but "
                    f"this run has {self.trainer.world_size}: each rank reads other streams, so "
                    "resume mid-epoch with the same number of devices (or pass --no-carry-state)"
                )
            if 0 < batches_done < self.trainer.num_training_batches:
                own = state[self.trainer.global_rank].to(self.device)
                self._carried["train"] = tuple(own.unbind(0))
                self._train_batches_in_epoch = batches_done
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_to_restore["cuda"], self.device)
            self._rng_to_restore = None


class TrainClock(Callback):
    """Training wall-clock (optimizer steps only), the ``--max-time`` budget, and the val curve.

    ``seconds`` sums the time from each training batch's start to its end (forward, backward,
    optimizer step) on this rank, so validation, checkpoints and data loading do not count: the
    curve of validation perplexity against ``seconds`` compares heads by what training costs.
    ``curve`` gets one point per validation during ``fit`` (not the sanity check).

    With a budget, every rank stops after the step at which any rank crossed it (one boolean
    all-reduce per step, so ranks never disagree on the number of steps). ``tokens_per_s`` is the
    training throughput over all ranks without the first step, which pays one-off allocations.

    The clock is part of the checkpoint (``state_dict``): a resumed run continues its seconds,
    tokens and curve, so ``--max-time`` is a budget for the whole run, not for each restart.
    ``probe``, when given, adds its fields (e.g. word-similarity scores) to every curve point.
    """

    def __init__(
        self,
        max_seconds: float | None = None,
        probe: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.max_seconds = max_seconds
        self.probe = probe
        self.seconds = 0.0
        self.tokens = 0
        self.curve: list[dict[str, float]] = []
        self.stopped_by_time = False
        self._first_step: tuple[float, int] | None = None  # (seconds, tokens)
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self.tokens += batch[1].numel() * trainer.world_size
            if self._first_step is None:
                self._first_step = (self.seconds, self.tokens)
        self._t0 = None
        if self.max_seconds is not None:
            over = trainer.strategy.reduce_boolean_decision(
                self.seconds >= self.max_seconds, all=False
            )
            if over:
                self.stopped_by_time = True
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "tokens": self.tokens,
            "curve": self.curve,
            "first_step": self._first_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds, self.tokens = float(state["seconds"]), int(state["tokens"])
        self.curve = list(state["curve"])
        first = state["first_step"]
        self._first_step = None if first is None else (float(first[0]), int(first[1]))

    @property
    def tokens_per_s(self) -> float | None:
        if self._first_step is None or self.seconds <= self._first_step[0]:
            return None
        first_seconds, first_tokens = self._first_step
        return (self.tokens - first_tokens) / (self.seconds - first_seconds)

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get("val_ppl")
        if value is not None:
            self.add_point(trainer, "val_ppl", float(value))

    def add_point(self, trainer: L.Trainer, metric: str, value: float, **extra: Any) -> None:
        """Append ``{metric: value}`` at the trainer's step, with the clock, epoch and lr."""
        step = int(trainer.global_step)
        last = self.curve[-1] if self.curve else None
        if last is not None and last["step"] == step and metric in last:
            self.curve.pop()  # same weights evaluated again (e.g. the final validation)
        point: dict[str, Any] = {
            "step": step,
            "epoch": step / max(1, trainer.num_training_batches),
            "train_seconds": self.seconds,
            "tokens": self.tokens,
            "lr": current_lr(trainer),
            metric: value,
            **extra,
        }
        if self.probe is not None:
            point.update(self.probe())
        self.curve.append(point)


def current_lr(trainer: L.Trainer) -> float | None:
    """The first parameter group's learning rate (``None`` before the optimizer exists)."""
    optimizers = trainer.optimizers
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else None


class SubsetValidation(Callback):
    """``val_subset_ppl`` on the first ``batches`` validation batches every ``every`` steps.

    A curve point only: it is logged to no logger that a scheduler or checkpoint could monitor.
    The streams start from the zero state at each point and carry their state from batch to
    batch, as the whole-split validation does, so a point is that validation cut short. Under
    DDP every rank evaluates its own streams and the sums are all-reduced.
    """

    def __init__(self, every: int, batches: int, clock: TrainClock) -> None:
        self.every, self.batches, self.clock = every, batches, clock
        self._done_at = -1  # one point per optimizer step, also under gradient accumulation

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step == 0 or step % self.every or step == self._done_at:
            return
        self._done_at = step
        self.clock.add_point(trainer, "val_subset_ppl", self.perplexity(trainer, module))

    @torch.no_grad()
    def perplexity(self, trainer: L.Trainer, module: Any) -> float:
        was_training = module.training
        module.eval()
        nll = torch.zeros((), dtype=torch.float64, device=module.device)
        count = torch.zeros((), dtype=torch.float64, device=module.device)
        state = None
        carry = module.hparams.get("carry_state", False)
        try:
            with trainer.precision_plugin.val_step_context():
                for i, (inputs, targets) in enumerate(trainer.datamodule.val_dataloader()):
                    if i >= self.batches:
                        break
                    inputs, targets = inputs.to(module.device), targets.to(module.device)
                    hidden, new_state = module(inputs, state if carry else None)
                    state = _detach(new_state)
                    log_prob = module.head.target_log_prob(hidden, targets).double()
                    keep = targets != module.head.ignore_index
                    nll -= torch.where(keep, log_prob, 0.0).sum()
                    count += keep.sum()
        finally:
            module.train(was_training)
        nll = trainer.strategy.reduce(nll, reduce_op="sum")
        count = trainer.strategy.reduce(count, reduce_op="sum")
        return math.exp(float(nll / count.clamp_min(1)))


def time_to_target(curve: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """First point of ``curve`` whose validation perplexity is ``<= target`` (``None``: never).

    Reads the subset points when the curve has them (they are the frequent ones), else the
    whole-split points; ``metric`` says which.
    """
    metric = "val_subset_ppl" if any("val_subset_ppl" in p for p in curve) else "val_ppl"
    for point in curve:
        if metric in point and point[metric] <= target:
            return {"target_ppl": target, "metric": metric, **point}
    return {"target_ppl": target, "metric": metric, "step": None, "train_seconds": None,
            "tokens": None, metric: None}  # fmt: skip


class TrainingStopped(Exception):
    """A signal stopped training; ``last.ckpt`` holds the step it stopped at."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"training stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopOnSignal(Callback):
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the step, stop, let
    :class:`FinalCheckpoint` save ``last.ckpt`` at that step, and leave ``fit`` by raising
    :class:`TrainingStopped`, so ``--resume last`` continues exactly there.

    Lightning's own handling exits at once without a checkpoint. A second Ctrl-C stops at once
    (nothing saved). Under DDP the ranks agree on the step to stop at (one all-reduce per step).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None  # the signal that asked to stop (on this rank)
        self.stopped_by: int | None = None  # set once training stopped for it
        self._previous: dict[int, Any] = {}

    def request(self, signum: int, frame: Any = None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise SystemExit(128 + signum)  # asked twice: stop now, with the shell's status 130
        self.received = signum
        again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C (SIGINT)"
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving last.ckpt "
            f"({again} to stop at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        # Here, after Lightning installed its SIGTERM handler (which would exit unsaved).
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.request) for s in self.SIGNALS}

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        asked = self.received is not None
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            self.stopped_by = self.received or signal.SIGTERM  # another rank's signal
            trainer.should_stop = True
            # Lightning validates when should_stop is set mid-epoch (for early stopping), then
            # ends the epoch: it would step the plateau schedule and write last.ckpt again with
            # the epoch marked finished, so that --resume began the next one. Neither may happen.
            trainer.limit_val_batches = 0

    def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        # Called before ModelCheckpoint's epoch-end save and the schedulers' epoch step.
        if self.stopped_by is not None:
            raise TrainingStopped(self.stopped_by)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, module: Any, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class FinalCheckpoint(Callback):
    """Write ``last.ckpt`` when training stops between two periodic checkpoints.

    Saved from ``on_train_batch_end`` of the final step, exactly like ModelCheckpoint's periodic
    saves (which Lightning runs after this callback), so ``--resume last`` continues exactly.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        last_step = 0 < trainer.max_steps <= step
        last_batch = (
            trainer.max_epochs is not None
            and trainer.max_epochs > 0
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and idx + 1 >= trainer.num_training_batches
        )
        if (last_step or last_batch or trainer.should_stop) and step % self.every != 0:
            trainer.save_checkpoint(self.path, weights_only=False)  # all of it, for --resume


def _backbone(hp: Any, out_features: int | None, embedding: torch.nn.Module | None) -> Any:
    """``LSTMLM`` or ``TransformerLM`` from the model's hyperparameters."""
    common = {
        "embed_dim": hp.embed_dim,
        "d_model": hp.d_model,
        "num_layers": hp.num_layers,
        "dropout": hp.dropout,
        "out_features": out_features,
        "embedding": embedding,
    }
    if hp.model == "lstm":
        return LSTMLM(hp.vocab_size, **common)
    if hp.model == "transformer":
        return TransformerLM(
            hp.vocab_size,
            num_heads=hp.num_heads,
            max_len=hp.max_len,
            positions=hp.positions,
            **common,
        )
    raise ValueError(f"model must be 'lstm' or 'transformer', got {hp.model!r}")


def _detach(state: Any) -> Any:
    """Cut the autograd history of a recurrent state (a tensor, a tuple of them, or None)."""
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.detach()
    return tuple(_detach(s) for s in state)

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
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from typing_extensions import Unpack

from lm_heads import build_head
from lm_heads.mixin import LMHeadMixin
from lm_heads.random_state import preserved_random_state
from recipes.models import LSTMLM, TransformerLM, adaptive_input
from recipes.options import ModelOptionsDict
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
        **options: Unpack[ModelOptionsDict],
    ) -> None:
        """``vocab_size`` words, unigram ``counts`` for the heads that need them, Transformer
        positions up to ``max_len``; ``options`` are the fields of ``recipes/options.py`` (their
        defaults there, the optimizer and lr by backbone when not given)."""
        hp = resolve_options(options)
        super().__init__()
        self.save_hyperparameters({"vocab_size": vocab_size, "max_len": max_len, **hp})
        _check_schedule(hp)
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
        if not self.hparams["carry_state"]:
            return self(tokens)[0]
        hidden, state = self(tokens, self._carried.get(stage))
        self._carried[stage] = _detach(state)
        return hidden

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        self._train_batches_in_epoch += 1
        loss = self.head_training_step(self._hidden(inputs, "train"), targets)
        # The loggers' rows count steps as the progress line does (the steps done, this one
        # included) rather than by Lightning's 0-based index ("step" sets a row's step), beside
        # the lr this step trains at.
        steps_done = float(self.trainer.global_step + 1)
        lr = current_lr(self.trainer) or 0.0
        self.log_dict({"step": steps_done, "lr": lr}, on_step=True, on_epoch=False)
        return loss

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
        self._carried["val"] = None

    def on_test_epoch_start(self) -> None:
        self._carried["test"] = None

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp["optimizer"] == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=hp["lr"], weight_decay=hp["weight_decay"]
            )
        elif hp["optimizer"] == "adamw":
            opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        elif hp["optimizer"] == "sgd":
            opt = torch.optim.SGD(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        else:
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {hp['optimizer']!r}")
        if hp["lr_schedule"] == "plateau":
            # pytorch/examples' annealing: lr /= lr_decay whenever an epoch's validation
            # perplexity is not strictly below the best so far (threshold 0, patience 0).
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="min",
                factor=1.0 / hp["lr_decay"],
                patience=hp["lr_patience"],
                threshold=0.0,
            )
            schedule = {"scheduler": plateau, "monitor": "val_ppl", "interval": "epoch"}
            return {"optimizer": opt, "lr_scheduler": schedule}
        if hp["lr_schedule"] == "step":
            # Fixed in advance: epoch e (from 1) trains at lr / lr_decay ** (milestones <= e),
            # whatever the validations say. Stepped at each epoch end; the checkpoint keeps its
            # count of epochs, so a resumed run continues the same schedule.
            milestones = sorted(hp["lr_milestones"])

            def divided(epochs_done: int) -> float:
                return hp["lr_decay"] ** -sum(m <= epochs_done + 1 for m in milestones)

            steps = torch.optim.lr_scheduler.LambdaLR(opt, divided)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": steps, "interval": "epoch"}}
        if hp["lr_schedule"] == "constant" and hp["warmup_steps"] == 0:
            return opt
        warmup, cosine = hp["warmup_steps"], hp["lr_schedule"] == "cosine"
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
            # Every rank carries its own streams' state; the checkpoint keeps all of them. The
            # gather is safe because every save happens at the end of a training step that all
            # ranks reach together: ModelCheckpoint and FinalCheckpoint save at a step every rank
            # computes alike, and SLURM's requeue signal is turned into a save at the step end
            # the ranks agreed on (StopOnSignal). Lightning's own SIGUSR1 handler saved from
            # inside the handler, at a different point on each rank (deadlocked here, and
            # mid-step besides): StopOnSignal takes the signal before Lightning can install it.
            # (Per-rank side files would avoid the gather but not Lightning's barrier at the end
            # of every save, and would make a checkpoint several files.)
            stacked = torch.stack(state)  # [2, layers, B, d]
            gathered = self.all_gather(stacked) if self.trainer.world_size > 1 else stacked[None]
            assert isinstance(gathered, torch.Tensor)  # all_gather of a tensor is one tensor
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
            if state.shape[0] != self.trainer.world_size:  # recipes/lm.py refuses it earlier
                raise ValueError(
                    f"the checkpoint carries the recurrent state of {state.shape[0]} rank(s), but "
                    f"this run has {self.trainer.world_size}: each rank reads other streams, so "
                    "resume mid-epoch with the same number of devices, or from a checkpoint saved "
                    "at an epoch's end"
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
    ``curve`` gets one point per validation during ``fit`` (not the sanity check); one at an
    epoch's end says which in ``epoch_end`` (1 = the first).

    With a budget, every rank stops after the step at which any rank crossed it (one boolean
    all-reduce per step, so ranks never disagree on the number of steps). ``tokens_per_s`` is the
    training throughput over all ranks without the first step, which pays one-off allocations.

    The clock is part of the checkpoint (``state_dict``): a resumed run continues its seconds,
    tokens and curve, so ``--max-time`` is a budget for the whole run, not for each restart.
    A point's ``lr`` is the one its weights' last step trained at: Lightning steps an epoch-wise
    scheduler (``step``) before the epoch-end validation, a plateau one after it.
    ``probe``, when given, adds its fields (e.g. word-similarity scores) to every curve point.

    Why not Lightning's ``Timer`` and ``ThroughputMonitor`` (``tests/recipes/test_train_clock.py``
    pins the difference; one CPU fit of 6 steps, 0.02 s of loading per batch, 2 x 0.15 s of
    validation): the steps took 0.35 s by this clock, ``Timer`` counted 0.85 s of "train" (it
    times ``on_train_start`` to ``on_train_end``, validation and loading included, and its stop
    is rank 0's decision, broadcast), ``ThroughputMonitor`` 0.49 s (loading and hooks included;
    rank 0 only, over a window, and nothing in the checkpoint: ``state_dict() == {}``).
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
        self._step_lr: float | None = None  # the lr of the last training step

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        self._step_lr = current_lr(trainer)
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
            "step_lr": self._step_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds, self.tokens = float(state["seconds"]), int(state["tokens"])
        self.curve = list(state["curve"])
        first = state["first_step"]
        self._first_step = None if first is None else (float(first[0]), int(first[1]))
        self._step_lr = state.get("step_lr")  # absent from checkpoints of earlier versions

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
            # epoch_end: which epoch this validation closes (none: a stop mid-epoch), so a report
            # never takes a validation cut short by --max-time for an epoch's.
            ended = {"epoch_end": trainer.current_epoch + 1} if trainer.is_last_batch else {}
            self.add_point(trainer, "val_ppl", float(value), **ended)

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
            "lr": self._step_lr if self._step_lr is not None else current_lr(trainer),
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
        with preserved_random_state(module.device):  # the point must not change the training
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
                # Lightning's data connector sets trainer.datamodule; Trainer does not declare it.
                loader = trainer.datamodule.val_dataloader()  # type: ignore[attr-defined]
                for i, (inputs, targets) in enumerate(loader):
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


HPC_CHECKPOINT = "hpc_ckpt_{}.ckpt"
"""Lightning's name for the checkpoints of SLURM's requeue signal, numbered from 1."""


def hpc_checkpoints(folder: Path) -> list[Path]:
    """The ``hpc_ckpt_N.ckpt`` files in ``folder``, in the order of ``N``."""
    numbered = [p for p in folder.glob(HPC_CHECKPOINT.format("*")) if _hpc_number(p) is not None]
    return sorted(numbered, key=lambda path: _hpc_number(path) or 0)


def _hpc_number(path: Path) -> int | None:
    number = path.name[len("hpc_ckpt_") : -len(".ckpt")]
    return int(number) if number.isdigit() else None


class StopOnSignal(Callback):
    """Signals during training, each acted on at the end of a training step that every rank
    reaches together (the ranks agree on it with one small all-reduce per step):

    - Ctrl-C (SIGINT) or SIGTERM: finish the step, stop, let :class:`FinalCheckpoint` save
      ``last.ckpt`` at that step, and leave ``fit`` by raising :class:`TrainingStopped`, so
      ``--resume last`` continues exactly there. Lightning's own handling exits at once without a
      checkpoint. A second Ctrl-C stops at once (nothing saved).
    - SLURM's requeue signal (SIGUSR1, ``#SBATCH --signal=SIGUSR1@120``), when SLURM runs the job:
      save ``<output-dir>/hpc_ckpt_N.ckpt`` at the end of the step, ask SLURM to requeue the job
      (``scontrol requeue``, from rank 0) and train on until SLURM's SIGTERM stops the run as
      above. The requeued job resumes from the newer of the two (``recipes.checkpoint``).

    The handlers only take note: Lightning's SIGUSR1 handler saved from inside the handler, at
    whatever point each rank had reached (mid-step, and with collectives in the save, a deadlock
    across ranks). Ours is installed in ``setup``, before Lightning registers its handlers, and
    Lightning leaves a signal alone that already has one.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REQUEUE_SIGNAL = signal.SIGUSR1

    def __init__(self) -> None:
        self.received: int | None = None  # the signal that asked to stop (on this rank)
        self.stopped_by: int | None = None  # set once training stopped for it
        self.requeue_asked = False  # SLURM's requeue signal arrived since the last save
        self.saved: list[Path] = []  # the hpc checkpoints written for it (on rank 0)
        self._previous: dict[int, Any] = {}
        self._previous_requeue: dict[int, Any] = {}
        self._fitting = False  # between setup("fit") and the end of training
        self._rank_zero = True

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

    def request_requeue(self, signum: int, frame: Any = None) -> None:
        if self._fitting:
            self.requeue_asked = True  # acted on (and reported) at the end of this step
        elif self._rank_zero:
            name = signal.Signals(signum).name
            print(f"\n{name}: SLURM asks to requeue, but training is over: nothing to save "
                  "(last.ckpt holds the final step)", file=sys.stderr, flush=True)  # fmt: skip

    def setup(self, trainer: L.Trainer, module: Any, stage: str) -> None:
        self._fitting, self._rank_zero = stage == "fit", trainer.is_global_zero
        # Before Lightning's _SignalConnector registers its handlers: it skips a taken signal.
        if _on_main_thread() and SLURMEnvironment.detect() and not self._previous_requeue:
            handler = signal.signal(self.REQUEUE_SIGNAL, self.request_requeue)
            self._previous_requeue = {self.REQUEUE_SIGNAL: handler}

    def teardown(self, trainer: L.Trainer, module: Any, stage: str) -> None:
        self._fitting = False
        for signum, handler in self._previous_requeue.items():
            signal.signal(signum, handler)
        self._previous_requeue = {}

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        # Here, after Lightning installed its SIGTERM handler (which would exit unsaved).
        if _on_main_thread():
            self._previous = {s: signal.signal(s, self.request) for s in self.SIGNALS}

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        requeue, self.requeue_asked = self.requeue_asked, False
        asked = [self.received is not None, requeue]
        if trainer.world_size > 1:  # any rank's signal counts for all
            flags = torch.tensor(asked, dtype=torch.int32, device=trainer.strategy.root_device)
            asked = trainer.strategy.reduce(flags, reduce_op="sum").bool().tolist()
        stop, requeue = asked
        if requeue:
            self._save_and_requeue(trainer)
        if stop:
            self.stopped_by = self.received or signal.SIGTERM  # another rank's signal
            trainer.should_stop = True
            # Lightning validates when should_stop is set mid-epoch (for early stopping), then
            # ends the epoch: it would step the plateau schedule and write last.ckpt again with
            # the epoch marked finished, so that --resume began the next one. Neither may happen.
            trainer.limit_val_batches = 0

    def _save_and_requeue(self, trainer: L.Trainer) -> None:
        """Every rank saves (the checkpoint holds every rank's carried state; rank 0 writes it),
        then rank 0 asks SLURM to requeue the job."""
        folder = Path(trainer.default_root_dir)
        last = max((_hpc_number(p) or 0 for p in hpc_checkpoints(folder)), default=0)
        path = folder / HPC_CHECKPOINT.format(last + 1)
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            self.saved.append(path)
            name = signal.Signals(self.REQUEUE_SIGNAL).name
            print(f"{name}: saved {path} at step {trainer.global_step}; {_requeue_job()}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        # Called before ModelCheckpoint's epoch-end save and the schedulers' epoch step.
        if self.stopped_by is not None:
            raise TrainingStopped(self.stopped_by)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, module: Any, exception: BaseException) -> None:
        self._restore()
        self.teardown(trainer, module, "fit")

    def _restore(self) -> None:
        self._fitting = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _requeue_job() -> str:
    """Ask SLURM to requeue this job (as Lightning's plugin does); say what came of it."""
    env = os.environ
    job = env.get("SLURM_JOB_ID", "")
    if "SLURM_ARRAY_JOB_ID" in env:
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = f"{type(error).__name__}: {error}"
    else:
        if done.returncode == 0:
            return f"requeued SLURM job {job}; training goes on until SLURM stops it"
        failure = f"exit {done.returncode}: {' '.join(done.stderr.split())}"
    return (
        f"could not requeue SLURM job {job} (scontrol requeue {job}: {failure}); training goes "
        "on: submit the job again when it ends, and it resumes from the newest checkpoint"
    )


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


def _check_schedule(hp: dict[str, Any]) -> None:
    """The schedule's options agree with each other (``ValueError`` says what to change)."""
    schedule, milestones = hp["lr_schedule"], list(hp["lr_milestones"] or [])
    if schedule in ("plateau", "step") and hp["warmup_steps"]:
        raise ValueError(f"lr_schedule={schedule!r} takes no warmup_steps (use 'constant')")
    if schedule in ("plateau", "step") and not hp["lr_decay"] > 1.0:
        decay = hp["lr_decay"]
        raise ValueError(f"lr_decay must be > 1 (the lr is divided by it), got {decay}")
    if schedule != "step" and milestones:
        raise ValueError(
            f"lr_milestones {milestones} are read by lr_schedule='step' only, not "
            f"{schedule!r}: add lr_schedule='step' or leave the milestones out"
        )
    if schedule == "step" and (
        not milestones or milestones != sorted(set(milestones)) or milestones[0] < 2
    ):
        raise ValueError(
            "lr_schedule='step' needs lr_milestones: increasing epochs (from 2; epoch 1 is the "
            f"first) at whose start the lr is divided by lr_decay, e.g. [5, 6]; got {milestones}"
        )


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

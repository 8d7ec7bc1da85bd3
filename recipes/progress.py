"""What a user reads while ``recipes/lm.py`` trains: step of total, epoch, ETA, tokens/s and lr.

The same fields go to the terminal's progress bar (:class:`RecipeProgressBar`, Lightning's TQDM
bar plus these fields) and, when stdout is not a terminal, to one plain line every ``--log-every``
steps (:class:`LineProgress`), e.g.::

    step 120/1,194  epoch 1/2  loss 6.1203  lr 20  5,712 tokens/s  ETA 6m03s

- total: Lightning's ``estimated_stepping_batches`` (``--max-steps``, or ``--max-epochs`` ×
  batches per epoch, ``--limit-train-batches`` included); unknown (``?``) when only
  ``--max-time`` bounds the run.
- ETA: the wall time per step so far in this process (validation and checkpoints included) times
  the steps left, or the ``--max-time`` budget left at the current pace, whichever ends first.
- tokens/s: :class:`~recipes.language_model.TrainClock`'s training tokens over training time.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from recipes.language_model import TrainClock, current_lr


def duration(seconds: float) -> str:
    """``42s``, ``5m03s``, ``2h07m``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressStats:
    """The fields of a progress report, read from the trainer and the recipe's clock."""

    def __init__(self, clock: TrainClock) -> None:
        self.clock = clock
        self.total: float = math.inf
        self._start: tuple[float, int, float] | None = None  # (wall, global step, train seconds)

    def start(self, trainer: L.Trainer) -> None:
        """Called at train start (after a resume's counters are restored)."""
        self.total = float(trainer.estimated_stepping_batches)
        self._start = (time.perf_counter(), trainer.global_step, self.clock.seconds)

    def eta_seconds(self, trainer: L.Trainer) -> float | None:
        if self._start is None:
            return None
        wall0, step0, train0 = self._start
        wall, steps = time.perf_counter() - wall0, trainer.global_step - step0
        if steps <= 0 or wall <= 0:
            return None
        etas = []
        if math.isfinite(self.total):
            etas.append(max(0.0, self.total - trainer.global_step) * wall / steps)
        budget = self.clock.max_seconds
        trained = self.clock.seconds - train0
        if budget is not None and trained > 0:
            # Training seconds advance slower than the wall clock (validation, checkpoints).
            etas.append(max(0.0, budget - self.clock.seconds) * wall / trained)
        return min(etas) if etas else None

    def fields(self, trainer: L.Trainer) -> dict[str, str]:
        """``step``, ``epoch``, ``lr``, ``tokens/s`` and ``ETA`` as display strings."""
        total = f"{int(self.total):,}" if math.isfinite(self.total) else "?"
        out = {"step": f"{trainer.global_step:,}/{total}"}
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        out["epoch"] = f"{trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        lr = current_lr(trainer)
        if lr is not None:
            out["lr"] = f"{lr:.3g}"
        speed = self.clock.tokens_per_s
        if speed is not None:
            out["tokens/s"] = f"{speed:,.0f}"
        eta = self.eta_seconds(trainer)
        out["ETA"] = duration(eta) if eta is not None else "?"
        return out


class LineProgress(Callback):
    """One line per ``every`` training steps: a log-friendly progress report without ``\\r``;
    also the last step, each epoch end's validation perplexity, and a line as the final
    validation and test start (minutes on a large corpus, else silent)."""

    def __init__(self, every: int, clock: TrainClock) -> None:
        self.every = every
        self.stats = ProgressStats(clock)
        self._printed_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.stats.start(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self._print_step(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._print_step(trainer)  # runs shorter than --log-every, or ending between lines

    def _print_step(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and trainer.global_step != self._printed_step:
            self._printed_step = trainer.global_step
            print(self.line(trainer), flush=True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:  # an epoch end's: after its last step's line
            self._print_step(trainer)
        else:
            self._say(trainer, "final validation", trainer.num_val_batches)

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._say(trainer, "test", trainer.num_test_batches)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        ppl = trainer.callback_metrics.get("val_ppl")
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting and ppl is not None and trainer.is_global_zero:
            print(f"step {trainer.global_step:,}  val_ppl {float(ppl):.2f}", flush=True)

    @staticmethod
    def _say(trainer: L.Trainer, what: str, batches: list[int | float]) -> None:
        if trainer.is_global_zero:
            count = sum(batches)
            size = f" ({int(count):,} batches per rank)" if math.isfinite(count) else ""
            print(f"{what} of the final weights{size} ...", flush=True)

    def line(self, trainer: L.Trainer) -> str:
        f = self.stats.fields(trainer)
        parts = [f"step {f['step']}", f"epoch {f['epoch']}"]
        loss = trainer.callback_metrics.get("train_loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if "lr" in f:
            parts.append(f"lr {f['lr']}")
        if "tokens/s" in f:
            parts.append(f"{f['tokens/s']} tokens/s")
        parts.append(f"ETA {f['ETA']}")
        return "  ".join(parts)


class RecipeProgressBar(TQDMProgressBar):
    """Lightning's bar, with the run's step of total, lr, tokens/s and whole-run ETA added (the
    bar's own counter and time left are per epoch)."""

    def __init__(self, clock: TrainClock) -> None:
        super().__init__()
        self.stats = ProgressStats(clock)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self.stats.start(trainer)

    def get_metrics(self, trainer: L.Trainer, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version number means nothing to a reader here
        if trainer.training:
            fields = self.stats.fields(trainer)
            fields.pop("epoch")  # the bar's title already says "Epoch N"
            items.update(fields)
        return items

"""Observing a run never changes it: evaluations inside ``fit`` leave the random streams alone.

Training draws from the global random streams (dropout masks, a sampled head's noise words, a
shuffling sampler's seed), and so does evaluating: every DataLoader iterator takes its base seed
from the global torch generator when it is created. Without this module, a run with curve points
(``--curve-every``), another ``--limit-val-batches`` or a sanity check trains on other dropout
masks than the same run without them, seed for seed. Here every evaluation inside ``fit`` restores
the torch CPU, CUDA (the model's device), Python ``random`` and numpy states it found.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


@dataclass(frozen=True)
class RandomState:
    """The global random streams at one moment (``capture``), to be put back (``restore``)."""

    torch_cpu: torch.Tensor
    cuda: tuple[torch.device, torch.Tensor] | None
    python: tuple[Any, ...]
    numpy: Any

    @classmethod
    def capture(cls, device: torch.device | None = None) -> RandomState:
        cuda = None
        if device is not None and device.type == "cuda":
            cuda = (device, torch.cuda.get_rng_state(device))
        return cls(torch.get_rng_state(), cuda, random.getstate(), np.random.get_state())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda[1], self.cuda[0])
        random.setstate(self.python)
        np.random.set_state(self.numpy)


@contextmanager
def preserved_random_state(device: torch.device | None = None) -> Iterator[None]:
    """Run the block, then put the global random streams back as they were before it."""
    state = RandomState.capture(device)
    try:
        yield
    finally:
        state.restore()


class EvaluationKeepsRandomState(Callback):
    """Lightning's validations inside ``fit`` (the sanity check, each epoch end) end with the
    random streams as the training left them.

    Lightning creates the validation iterator (drawing its seed) before it calls any validation
    hook, so the state is taken at the end of every training batch (about 60 µs, outside
    ``TrainClock``'s step time) and at the sanity check's start, and put back when the
    validation ends, before any checkpoint of that moment is written (Lightning runs checkpoint
    callbacks last). ``validate``/``test`` outside ``fit`` are left alone: nothing trains after.
    """

    def __init__(self) -> None:
        self._state: RandomState | None = None

    def on_sanity_check_start(self, trainer: L.Trainer, module: Any) -> None:
        self._state = RandomState.capture(module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        self._state = RandomState.capture(module.device)

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.state.fn == "fit" and self._state is not None:
            self._state.restore()

"""The global random streams, captured and put back: so that observing a run never changes it.

Training draws from the global random streams (dropout masks, a sampled head's noise words, a
shuffling sampler's seed), and so does evaluating: every DataLoader iterator takes its base seed
from the global torch generator when it is created. An evaluation in the middle of training would
otherwise change the dropout masks of every step after it, seed for seed. ``LMHeadMixin`` puts
the streams back after each validation inside ``fit``
(:class:`lm_heads.mixin.EvaluationKeepsRandomState`); :func:`preserved_random_state` does it for
any block of code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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

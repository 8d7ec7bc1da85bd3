"""Will training fit in memory? An estimate to check before ``fit``, so that a head too big for the
machine fails in seconds with a reason instead of being killed after the data was prepared.

The estimate, in bytes, for one process:

- the model's parameters, their gradients (dense: embedding gradients are not sparse here) and
  the optimizer's state (Adam/AdamW keep two tensors per parameter, plain SGD none);
- the widest score matrix the head builds (:meth:`lm_heads.base.Head.score_shape`), times three
  (scores, their softmax and its gradient), for the tokens of one step: ``V`` scores per token
  for the full softmax (``chunk_size`` rows at a time when chunked) and the margin/prototype
  heads, ``num_samples + 1`` for sampled heads, the shortlist and the largest cluster for the
  adaptive softmax, the widest node of each level for the tree heads; the spherical family's
  Gram form (a d×d matrix) has none of V's size.

Backbone activations are small beside these at large V and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lm_heads.base import Head

OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0}
"""Tensors of optimizer state per parameter (an unknown optimizer counts as Adam's 2)."""
GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part, and the shape of the head's widest score matrix."""

    parameters: int
    gradients: int
    optimizer: int
    scores: int
    score_shape: tuple[int, int]  # (token rows at once, columns)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.scores

    def describe(self, optimizer: str) -> str:
        rows, cols = self.score_shape
        return (
            f"parameters {self.parameters / GiB:.2f} GiB, gradients {self.gradients / GiB:.2f} "
            f"GiB, {optimizer} state {self.optimizer / GiB:.2f} GiB, head scores "
            f"{self.scores / GiB:.2f} GiB ({rows:,} tokens x {cols:,} columns, x3)"
        )


def estimate(model: torch.nn.Module, head: Head, optimizer: str, tokens: int) -> MemoryEstimate:
    """Bytes to train ``model`` (``head`` among its modules) with ``optimizer`` (``"adam"``,
    ``"adamw"``, ``"sgd"``) on ``tokens`` tokens per step, in one process."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    rows, cols = head.score_shape(tokens)
    return MemoryEstimate(
        parameters=params,
        gradients=trainable,
        optimizer=OPTIMIZER_STATES.get(optimizer, 2) * trainable,
        scores=3 * 4 * rows * cols,  # float32 scores, their softmax, their gradient
        score_shape=(rows, cols),
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory this process could still take: free GPU memory, or the smaller of the system's
    MemAvailable and the cgroup's headroom; ``None`` when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None

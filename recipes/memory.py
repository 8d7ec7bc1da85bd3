"""Will training fit in memory? An estimate checked before ``fit``, so that a head too big for the
machine fails in seconds with a reason instead of being killed after the data was prepared.

The estimate, in bytes, for one rank:

- the model's parameters, their gradients (dense: embedding gradients are not sparse here) and
  the optimizer's state (Adam/AdamW keep two tensors per parameter, plain SGD none);
- the widest per-token score matrix the head builds, times three (scores, their softmax and its
  gradient), for ``--batch-size`` × ``--bptt`` training tokens or the evaluation batch:
  ``V`` scores per token for the full softmax (``chunk_size`` rows at a time when chunked) and the
  margin/prototype heads, ``num_samples`` for sampled heads (whose exact evaluation is chunked),
  the shortlist and the largest cluster for the adaptive softmax, the widest node of each level
  for the tree heads (classes plus the largest class for the class-based softmax); the spherical
  family (a d×d Gram matrix) has none of V's size.

The parameters exist when this runs (the model is built, which settles structures such as
``cutoffs="auto"``), so what must still fit is the rest; backbone activations are small beside
these at large V and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lm_heads.chunked_ce import resolve_chunk_size
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead
from lm_heads.heads.full import FullSoftmaxHead
from lm_heads.heads.hierarchical import TreeSoftmaxHead
from lm_heads.heads.margin import LogitSoftmaxHead

OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0}
GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
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


def score_shape(head: Any, tokens: int) -> tuple[int, int]:
    """``(rows, columns)`` of the widest score matrix ``head`` builds for ``tokens`` tokens."""
    vocab = int(head.vocab_size)
    num_samples = getattr(head, "num_samples", None)
    if num_samples is not None:  # sampled heads: a subclass of the full softmax
        return tokens, int(num_samples) + 1
    if isinstance(head, FullSoftmaxHead):
        if head.chunk_size is None:
            return tokens, vocab
        return min(tokens, resolve_chunk_size(head.chunk_size, head.in_features)), vocab
    if isinstance(head, AdaptiveSoftmaxHead):
        widest = max(b - a for a, b in zip(head.bounds[1:-1], head.bounds[2:], strict=True))
        return tokens, head.shortlist_size + head.num_clusters + widest
    if isinstance(head, TreeSoftmaxHead):
        # Each level scores the children of one node per token: its widest node bounds that.
        width, depth = head.node_width.long(), head.node_depth.long()
        per_depth = torch.zeros(int(depth.max()) + 1, dtype=torch.long).scatter_reduce(
            0, depth, width, reduce="amax"
        )
        return tokens, int(per_depth.sum())
    if isinstance(head, LogitSoftmaxHead):
        return tokens, vocab
    return tokens, 0


def estimate(model: torch.nn.Module, head: Any, optimizer: str, tokens: int) -> MemoryEstimate:
    """Bytes to train ``model`` with ``optimizer`` on ``tokens`` tokens per step (one rank)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    rows, cols = score_shape(head, tokens)
    return MemoryEstimate(
        parameters=params,
        gradients=trainable,
        optimizer=OPTIMIZER_STATES.get(optimizer, 2) * trainable,
        scores=3 * 4 * rows * cols,  # float32 scores, their softmax, their gradient
        score_shape=(rows, cols),
    )


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


def available_bytes(device: torch.device) -> int | None:
    """Memory this process could still take: free GPU memory, or the smaller of the system's
    MemAvailable and the cgroup's headroom; ``None`` when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(known) if known else None


def check_memory(
    model: Any, tokens: int, device: torch.device, available: int | None = None
) -> tuple[MemoryEstimate, int | None]:
    """The estimate for batches of ``tokens`` and the memory available; raises ``MemoryError``
    with the reason and what to change when training cannot fit. ``available`` overrides the
    measured value (tests)."""
    optimizer = model.hparams["optimizer"]
    est = estimate(model, model.head, optimizer, tokens)
    free = available_bytes(device) if available is None else available
    if free is None:
        return est, None
    # The parameters already live on the CPU; on a GPU they are moved there by fit.
    still_needed = est.total - (est.parameters if device.type == "cpu" else 0)
    if still_needed > free:
        raise MemoryError(
            f"--head {model.hparams['head']} cannot train in the memory available: it needs "
            f"about {est.total / GiB:.1f} GiB ({est.describe(optimizer)}) and "
            f"{still_needed / GiB:.1f} GiB of it is still to allocate, but only "
            f"{free / GiB:.1f} GiB is free. Lower --batch-size or --bptt, use a factorized head "
            "(adaptive, class, hierarchical) or a sampled one, --head-option chunk_size=auto for "
            "full, --optimizer sgd (no optimizer state), a smaller --d-model or --max-size"
        )
    return est, free


def describe_memory(est: MemoryEstimate, free: int | None) -> str:
    """The line the recipe prints before training."""
    room = f" of {free / GiB:.1f} GiB free" if free is not None else " (free memory unknown)"
    return f"memory: about {est.total / GiB:.2f} GiB to train{room}"

r"""Hyperspherical prototype head (Mettes, van der Pol, Snoek 2019, "Hyperspherical Prototype
Networks").

Every word ``j`` owns a *fixed* unit prototype ``p_j ∈ S^{d'-1}``, placed before training so that
prototypes are as far apart as possible (the paper minimises the largest pairwise cosine). A
trainable projection maps hidden states to ``z = A h + a ∈ R^{d'}`` and the paper's loss pulls
``z`` towards its word's prototype:

.. math::

    \ell_{\text{proto}} = (1 - \cos(z, p_c))^2

The paper predicts ``argmax_j cos(z, p_j)``; for perplexity we need a normalised distribution,
``p(j | h) = softmax_j(s \cos(z, p_j))``, with a learned inverse temperature ``s = softplus(raw)``
(:class:`~lm_heads.heads.margin.LearnedScale`: in ``log s`` SGD at lr 20 made ``s`` oscillate).
``s`` has no gradient from the paper's loss, so the head adds the cross-entropy of that
distribution, in which the cosines keep their value but pass only ``ce_weight`` of their gradient
on to ``z``:

.. math::

    \ell = (1 - \cos(z, p_c))^2 - \log \operatorname{softmax}(s\,\widetilde{\cos}(z, P))_c,
    \qquad \widetilde{\cos} = \operatorname{sg}(\cos) + w_{ce}\,(\cos - \operatorname{sg}(\cos))

With the default ``ce_weight = 0`` the representation is trained by the paper's loss alone and the
single temperature is fitted by maximum likelihood on top of it: perplexity then measures the
paper's method at its best temperature, rather than a hybrid with a softmax loss (which is what
``ce_weight = 1`` gives). The training loss is not the NLL (``is_exact`` is False while
training); in eval mode ``forward`` returns the exact NLL of ``softmax(s cos)``.

Prototype placement (``hyperspherical_prototypes``), deterministic for a given ``seed``:
    - ``V ≤ d' + 1``: the regular simplex, the exact optimum of the paper's objective (every
      pairwise cosine equals ``−1/(V−1)``), in closed form.
    - ``V > d' + 1``: seeded Gaussian points, then ``proto_steps`` steps of SGD with momentum on
      ``Σ_i max_{j≠i} cos(p_i, p_j)`` (the paper's objective, summed so that each row's step does
      not shrink with ``V``), re-projected onto the sphere after each step. Each step uses a
      random batch of rows against all ``V`` prototypes, sized so the whole optimisation stays
      within about ``2³²`` multiply-adds (seconds on one CPU core). When that budget cannot visit
      every row even once (``V² d' > 2³²``: ``V > 2896`` for ``d' = 512``, ``V > 8192`` for
      ``d' = 64``), the optimisation is skipped: the prototypes are random points, whose largest
      pairwise cosine is ``≈ √(4 ln V / d')`` (0.29 for ``V = 50k``, ``d' = 512``; the Welch
      bound allows no less than ``≈ 1/√d' = 0.044``). Separating 50k points further costs
      ``O(V² d')`` per pass over the rows (~10¹² multiply-adds), minutes on a CPU; how much
      perplexity that would buy is unmeasured.

Shape:
    - hidden: ``[..., d]``; target: ``[...]``
    - log_prob: ``[..., V]``
    - prototypes: ``[V, d']`` (a buffer, saved in the state dict)

DDP: the projection gets gradients from the prototype loss and ``s`` from the
cross-entropy on every step. The prototypes are a buffer (DDP broadcasts it from rank 0 and a
checkpoint restores it), so ranks agree even if their BLAS rounds differently.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_float, check_int
from lm_heads.base import at_least_float32
from lm_heads.heads.margin import LearnedScale, LogitSoftmaxHead, load_log_scale

__all__ = ["HypersphericalPrototypeHead", "hyperspherical_prototypes"]

_BUDGET_MACS = 2**32
"""Multiply-adds allowed for the whole prototype optimisation (forward of all steps)."""
_CACHE_MAX_ELEMENTS = 2**22
"""Placements up to this many floats are memoised (tests and sweeps rebuild the same heads)."""


def hyperspherical_prototypes(
    num: int, dim: int, *, steps: int = 200, seed: int = 0, lr: float = 0.02
) -> Tensor:
    """``num`` well-separated unit vectors in ``R^dim`` ``[num, dim]`` (float32, CPU).

    See the module docstring for the method. Deterministic for given arguments.
    """
    num = check_int("num", num, minimum=1)
    dim = check_int("dim", dim, minimum=1)
    steps = check_int("steps", steps, minimum=0)
    if num * dim <= _CACHE_MAX_ELEMENTS:
        return _cached_prototypes(num, dim, steps, seed, lr).clone()
    return _place_prototypes(num, dim, steps, seed, lr)


@functools.lru_cache(maxsize=16)
def _cached_prototypes(num: int, dim: int, steps: int, seed: int, lr: float) -> Tensor:
    return _place_prototypes(num, dim, steps, seed, lr)


def _place_prototypes(num: int, dim: int, steps: int, seed: int, lr: float) -> Tensor:
    if num <= dim + 1:
        return _simplex(num, dim)
    generator = torch.Generator().manual_seed(seed)
    points = F.normalize(torch.randn(num, dim, generator=generator), dim=-1)
    rows_per_step = min(num, _BUDGET_MACS // max(1, steps * num * dim))
    if steps == 0 or rows_per_step * steps < num:
        return points
    # The objective's gradient is explicit (each row and its nearest neighbour pull on each
    # other), so plain tensor ops replace autograd and an optimizer: fewer, larger kernels.
    velocity = torch.zeros_like(points)
    all_rows = torch.arange(num)
    threads = torch.get_num_threads()
    # Hundreds of small kernels (the budget caps the total at ~1 s of one core): on a busy CPU
    # every parallel region waits for descheduled threads (measured 60x slower with 2 threads
    # than with 1 on a loaded 2-core machine), so run them on one thread.
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            if rows_per_step < num:
                rows = torch.randperm(num, generator=generator)[:rows_per_step]
            else:
                rows = all_rows
            cosines = (points[rows] @ points.t()).scatter_(1, rows.unsqueeze(1), -2.0)
            nearest = cosines.argmax(dim=1)
            # d/dP of Σ_i cos(p_i, p_nearest(i)) with unit rows (the sphere projection follows).
            grad = torch.zeros_like(points)
            grad.index_add_(0, rows, points[nearest]).index_add_(0, nearest, points[rows])
            velocity.mul_(0.9).add_(grad)  # SGD with momentum 0.9
            # Linear decay: settle instead of oscillating between neighbours.
            points.sub_(velocity, alpha=lr * (1.0 - step / steps))
            points = F.normalize(points, dim=-1)
    finally:
        torch.set_num_threads(threads)
    return points


def _simplex(num: int, dim: int) -> Tensor:
    """Vertices of the regular simplex (pairwise cosine ``−1/(num−1)``) for ``num ≤ dim + 1``."""
    if num == 1:
        return F.one_hot(torch.zeros(1, dtype=torch.long), dim).float()
    # Helmert basis of the hyperplane ⟂ (1, …, 1): u_k = (1,…,1, −k, 0,…)/√(k(k+1)), k = 1…num−1.
    k = torch.arange(1, num, dtype=torch.float64).unsqueeze(1)  # [num-1, 1]
    i = torch.arange(num, dtype=torch.float64).unsqueeze(0)  # [1, num]
    basis = torch.where(i < k, 1.0, torch.where(i == k, -k, 0.0)) / torch.sqrt(k * (k + 1))
    # Column i of `basis` holds vertex i's coordinates; centred unit vectors have norm² (n−1)/n.
    vertices = basis.t() * math.sqrt(num / (num - 1))  # [num, num-1]
    return F.pad(vertices, (0, dim - (num - 1))).float()


class HypersphericalPrototypeHead(LogitSoftmaxHead):
    r"""Fixed hyperspherical prototypes, ``(1 − cos)²`` loss, learned softmax temperature.

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        ignore_index: target id that changes neither loss nor gradient.
        proto_dim: ``d'``, the prototype space (``None``: ``d``).
        scale: initial inverse temperature ``s`` of ``softmax(s cos)`` (learned,
            :class:`LearnedScale`); cosines lie in ``[−1, 1]`` so ``s`` must grow past ``ln V``
            for peaked predictions.
        ce_weight: share of the cross-entropy's gradient that reaches the representation
            (0: paper's loss only, the CE fits the temperature; 1: joint training).
        proto_steps: optimisation steps for placing the prototypes (0: random points).
        seed: seed of the prototype placement.
        label_smoothing: ``ε ∈ [0, 1]`` for the cross-entropy while training.
        z_loss: ``λ ≥ 0``, weight of ``(log Z)²`` while training (PaLM).
    """

    prototypes: Tensor

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        ignore_index: int = -100,
        proto_dim: int | None = None,
        scale: float = 16.0,
        ce_weight: float = 0.0,
        proto_steps: int = 200,
        seed: int = 0,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        self._set_loss_options(label_smoothing, z_loss)
        if proto_dim is None:
            proto_dim = in_features
        proto_dim = check_int("proto_dim", proto_dim, minimum=1, hint="or None for d")
        scale = check_float("scale", scale, positive=True, hint="e.g. 16.0")
        self.ce_weight = check_float(
            "ce_weight",
            ce_weight,
            minimum=0.0,
            maximum=1.0,
            hint="0: paper's loss only, 1: joint",
        )
        proto_steps = check_int("proto_steps", proto_steps, minimum=0)
        seed = check_int("seed", seed)
        self.proto_dim = proto_dim
        self.proj = nn.Linear(in_features, proto_dim)
        self.learned_scale = LearnedScale(scale)
        self.register_buffer(
            "prototypes",
            hyperspherical_prototypes(vocab_size, proto_dim, steps=proto_steps, seed=seed),
        )

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object,
                              **kwargs: object) -> None:  # fmt: skip
        load_log_scale(state_dict, prefix, "learned_scale.raw")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _embed(self, hidden: Tensor) -> Tensor:
        z = self.proj(hidden)
        # Normalise in at least float32: the cosines feed a loss and a softmax.
        return F.normalize(at_least_float32(z), dim=-1)

    def _all_cosines(self, z: Tensor) -> Tensor:
        cosines = F.linear(z, self.prototypes.to(z.dtype))
        return at_least_float32(cosines)

    def loss_is_exact(self, training: bool) -> bool:
        return not training

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        # Training only: evaluation reports the NLL of the distribution (the template's
        # -target_log_prob), so perplexity is comparable with the other heads.
        z = self._embed(hidden)
        target_cos = (z * self.prototypes[target].to(z.dtype)).sum(-1)
        proto_loss = (1.0 - target_cos).square()
        if self.ce_weight == 0.0:
            # No gradient reaches z through the CE: skip building its [n, V] backward graph.
            with torch.no_grad():
                cosines = self._all_cosines(z)
        else:
            cosines = self._all_cosines(z)
            if self.ce_weight < 1.0:
                detached = cosines.detach()
                cosines = detached + self.ce_weight * (cosines - detached)
        logits = self.learned_scale().to(cosines.dtype) * cosines
        return proto_loss + self._cross_entropy(logits, target)

    def _logits(self, hidden: Tensor) -> Tensor:
        cosines = self._all_cosines(self._embed(hidden))
        return self.learned_scale().to(cosines.dtype) * cosines

    def output_embeddings(self) -> None:
        # The prototypes are placed before training, independently of the data: SimLex on them
        # would measure the placement, not anything learned.
        return None

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, proto_dim={self.proto_dim}, "
            f"scale={float(self.learned_scale().detach()):.4g}, ce_weight={self.ce_weight}"
        )

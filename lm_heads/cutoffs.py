r"""Cutoffs for the adaptive softmax: a default rule, and a hardware-aware choice by measured cost.

Grave et al. (2017), "Efficient softmax approximation for GPUs", Section 4: a matmul of a batch of
``B`` rows by ``k`` output columns costs ``g(k, B)``, which is flat while the device is
under-occupied and then grows linearly. For a head of ``k_h`` words and ``J`` tail clusters, where
cluster ``i`` holds ``k_i`` words carrying probability mass ``p_i`` and projects ``d`` to ``d_i``
dims, the expected cost of one batch is::

    C = g(B, d, k_h + J) + Σ_i [ g(p_i B, d, d_i) + g(p_i B, d_i, k_i) ]

with ``g(rows, in_dim, out_dim)`` the time of ``[rows, in_dim] × [in_dim, out_dim]`` (here: forward
and backward of the adaptive head's fused linear + cross-entropy, which is what the head runs).
:func:`choose_cutoffs` measures ``g`` on the device it runs on (:func:`measure_matmul_cost`,
about a second, cached per device and shape), then minimises ``C`` by dynamic programming over cut
positions on a geometric grid of candidate cutoffs, for every number of clusters ``J ≤
max_clusters``. The result is a plain ``list[int]``: print it, store it in a config, and pass it
back as ``cutoffs=[...]`` so that every run (and every DDP rank) uses the same structure.

A cost model is any callable ``cost(rows, in_dim, out_dim) -> seconds`` that broadcasts over float64
tensors ``rows`` and ``out_dim`` (``in_dim`` is an int); tests inject synthetic ones.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from lm_heads._check import check_int
from lm_heads.chunked_ce import linear_cross_entropy
from lm_heads.counts import as_counts

CostModel = Callable[[Tensor, int, Tensor], Tensor]
"""``cost(rows, in_dim, out_dim) -> seconds``, broadcasting over float64 tensors."""

__all__ = [
    "CostModel",
    "MatmulCost",
    "choose_cutoffs",
    "default_cutoffs",
    "measure_matmul_cost",
    "projection_dims",
]


def projection_dims(in_features: int, num_clusters: int, div_value: float) -> list[int]:
    """Tail cluster ``i`` (0-based) projects to ``int(d // div_value ** (i + 1))`` dims (torch)."""
    return [int(in_features // (div_value ** (i + 1))) for i in range(num_clusters)]


def max_clusters_for(in_features: int, div_value: float, limit: int) -> int:
    """The most tail clusters (≤ ``limit``) whose projections keep at least one dimension."""
    dims = projection_dims(in_features, limit, div_value)
    return next((i for i, dim in enumerate(dims) if dim < 1), limit)


def default_div_value(in_features: int) -> float:
    """The adaptive head's default ``div_value``: 2 below ``d = 512``, else 4 (the paper's).

    Grave et al. divide by 4 at ``d = 512`` (One Billion Word), so the first tail projects to 128
    dims. At ``d = 200`` a division by 4 leaves the 29k-word WikiText-2 tail 50 dims and
    costs perplexity per epoch; 100 dims (``div_value = 2``) closes the gap to the full softmax
    (RESULTS.md, "An adaptive head that matches full").
    """
    return 2.0 if in_features < 512 else 4.0


def default_cutoffs(vocab_size: int, in_features: int, div_value: float | None = None) -> list[int]:
    """Cutoffs from ``V`` alone: a head of ``min(4000, V // 5)`` words, then tails growing ×5.

    Close to the paper's choices (One Billion Word: ``[4000, 40000, 200000]``; WikiText-103 on GPU:
    ``[20000, 60000]``) while favouring a small head, which is what pays off when matmul time is
    linear in size (CPU, or large batches). A further cluster is only opened when the remaining
    vocabulary is at least twice its start (so the last cluster is never a sliver), and only while
    its projection keeps 4 dims or more (at least 1 for the first). ``V = 50`` gives ``[10]``;
    ``V = 267,735`` gives ``[4000, 20000, 100000]``.
    """
    vocab_size = check_int("vocab_size", vocab_size, minimum=2)
    div_value = default_div_value(in_features) if div_value is None else div_value
    dims = projection_dims(in_features, 8, div_value)
    if dims[0] < 1:
        return []
    cutoffs = [min(4000, max(1, vocab_size // 5))]
    while True:
        nxt = cutoffs[-1] * 5
        if vocab_size < 2 * nxt or dims[len(cutoffs)] < 4:
            return cutoffs
        cutoffs.append(nxt)


# --------------------------------------------------------------------------------------------
# The measured cost model.
@dataclass(frozen=True)
class MatmulCost:
    """Fitted cost ``call + flop·rows·in·out + output·rows·out + weight·in·out`` seconds.

    ``flop`` prices the multiply-adds, ``output`` the elementwise work on each logit (exp, sums:
    memory bound), ``weight`` reading the weight, ``call`` a fixed per-call overhead (kernel
    launch, dispatch). Each is fitted non-negative, so the model is monotone in every size.
    """

    call: float
    flop: float
    output: float
    weight: float

    def __call__(self, rows: Tensor, in_dim: int, out_dim: Tensor) -> Tensor:
        rows = torch.as_tensor(rows, dtype=torch.float64)
        out_dim = torch.as_tensor(out_dim, dtype=torch.float64)
        return (
            self.call
            + self.flop * rows * in_dim * out_dim
            + self.output * rows * out_dim
            + self.weight * in_dim * out_dim
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> MatmulCost:
        return cls(**{key: float(data[key]) for key in ("call", "flop", "output", "weight")})


_CACHE: dict[tuple[object, ...], MatmulCost] = {}


def measure_matmul_cost(
    in_features: int,
    batch_tokens: int,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    div_value: float = 4.0,
    max_macs: int = 2**25,
    repeats: int = 3,
    refresh: bool = False,
) -> MatmulCost:
    """Time the head's fused linear + cross-entropy (forward and backward) on a grid of shapes
    and fit a :class:`MatmulCost`. Cached per device, dtype and shape unless ``refresh``.

    Shapes: ``rows`` in ``{16, 128, 1024}`` (at most ``batch_tokens``), ``in_dim`` in ``{d, d /
    div_value²}``, ``out_dim`` in ``{64, 1024, 8192}``, skipping those over ``max_macs``
    multiply-adds (the fit extrapolates linearly beyond): about a second on a CPU, far less on a
    GPU. Each shape: one warm-up, then the fastest of ``repeats`` runs.
    """
    device = _resolve_device(device)
    key = (str(device), _device_name(device), in_features, batch_tokens, dtype, div_value, max_macs)
    if key in _CACHE and not refresh:
        return _CACHE[key]
    generator = torch.Generator().manual_seed(0)
    in_dims = sorted({in_features, max(1, int(in_features // div_value**2))})
    row_grid = sorted({min(rows, batch_tokens) for rows in (16, 128, 1024)})
    shapes = [
        (rows, in_dim, out_dim)
        for rows in row_grid
        for in_dim in in_dims
        for out_dim in (64, 1024, 8192)
        if rows * in_dim * out_dim <= max_macs
    ]
    features, times = [], []
    for rows, in_dim, out_dim in shapes:
        x = torch.randn(rows, in_dim, generator=generator).to(device, dtype).requires_grad_()
        w = torch.randn(out_dim, in_dim, generator=generator).to(device, dtype).requires_grad_()
        target = torch.randint(out_dim, (rows,), generator=generator).to(device)
        runs = []
        for _ in range(repeats + 1):
            _synchronize(device)
            start = time.perf_counter()
            linear_cross_entropy(x, w, None, target, chunk_size=None).loss.backward()
            _synchronize(device)
            runs.append(time.perf_counter() - start)
        features.append([1.0, rows * in_dim * out_dim, rows * out_dim, in_dim * out_dim])
        # The minimum: contention from other processes only ever adds time.
        times.append(min(runs[1:]))
    coef = _nonnegative_fit(torch.tensor(features, dtype=torch.float64), torch.tensor(times))
    model = MatmulCost(*coef.tolist())
    _CACHE[key] = model
    return model


def _nonnegative_fit(features: Tensor, times: Tensor) -> Tensor:
    """Least squares in *relative* error with coefficients ≥ 0 (exhaustive over active sets)."""
    weights = 1.0 / times.double().clamp_min(1e-9)
    a = features * weights[:, None]
    b = torch.ones_like(weights)
    num = features.shape[1]
    best, best_err = torch.zeros(num, dtype=torch.float64), math.inf
    for mask in range(1, 2**num):
        active = [j for j in range(num) if mask >> j & 1]
        # Columns differ by orders of magnitude: scale them so lstsq stays well conditioned.
        scale = a[:, active].abs().amax(0).clamp_min(1e-300)
        sol = torch.linalg.lstsq(a[:, active] / scale, b[:, None]).solution.squeeze(1) / scale
        if bool((sol < 0).any()):
            continue
        coef = torch.zeros(num, dtype=torch.float64)
        coef[active] = sol
        err = float(((a @ coef - b) ** 2).sum())
        if err < best_err:
            best, best_err = coef, err
    return best


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    accelerator = (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    )
    return accelerator or torch.device("cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


# --------------------------------------------------------------------------------------------
# The dynamic programme.
def choose_cutoffs(
    counts: Tensor | Sequence[float],
    in_features: int,
    batch_tokens: int = 4096,
    device: torch.device | str | None = None,
    *,
    div_value: float = 4.0,
    max_clusters: int = 5,
    cost_model: CostModel | None = None,
    candidates: Sequence[int] | None = None,
    num_candidates: int = 96,
) -> list[int]:
    """Cutoffs (rank space) minimising the expected cost per batch of an adaptive softmax.

    Args:
        counts: corpus frequency of each word id, any id order (``[V]``).
        in_features: ``d``.
        batch_tokens: ``B``, tokens per training step on one device.
        device: where to measure the cost (default: the accelerator if any, else CPU); unused
            when ``cost_model`` is given.
        div_value: projection of cluster ``i`` (0-based) has ``d // div_value ** (i + 1)`` dims.
        max_clusters: most tail clusters considered (fewer if projections would vanish).
        cost_model: ``cost(rows, in_dim, out_dim) -> seconds`` (see module docstring); default:
            :func:`measure_matmul_cost` on ``device``.
        candidates: allowed cut positions (ranks in ``[1, V)``); default: ``num_candidates``
            points on a geometric grid, rounded to multiples of 8 where large.

    Returns:
        Strictly increasing cutoffs in ``(0, V)``; ``[]`` means a single full softmax is cheapest.
    """
    vocab_size = int(torch.as_tensor(counts).numel())
    counts_t = as_counts(counts, vocab_size, "adaptive")
    max_clusters = check_int("max_clusters", max_clusters, minimum=0)
    batch_tokens = check_int("batch_tokens", batch_tokens, minimum=1, hint="tokens per step")
    if cost_model is None:
        cost_model = measure_matmul_cost(in_features, batch_tokens, device, div_value=div_value)
    grid = _candidate_grid(vocab_size, candidates, num_candidates)
    # prefix[k] = probability mass of the k most frequent words.
    sorted_counts = torch.sort(counts_t, descending=True).values
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_counts, 0)])
    prefix = prefix / prefix[-1]
    starts = torch.tensor(grid, dtype=torch.long)
    ends = torch.cat([starts, torch.tensor([vocab_size])])
    batch = float(batch_tokens)
    cost = _checked(cost_model)

    best_cost = float(cost(torch.tensor(batch), in_features, torch.tensor(float(vocab_size))))
    best: list[int] = []
    dims = projection_dims(in_features, max_clusters, div_value)
    for num in range(1, max_clusters_for(in_features, div_value, max_clusters) + 1):
        # tail[i][a, b]: cost of cluster i spanning ranks [starts[a], ends[b]) (inf unless b > a).
        size = (ends[None, :] - starts[:, None]).double()
        valid = size > 0
        # Invalid spans (masked below) get harmless sizes so that cost models see real shapes.
        size = size.clamp_min(1.0)
        rows = ((prefix[ends][None, :] - prefix[starts][:, None]) * batch).clamp_min(0.0)
        # below[i][a]: best cost of clusters i..num-1 when cluster i starts at starts[a].
        last = cost(rows[:, -1], in_features, torch.tensor(float(dims[num - 1])))
        below = last + cost(rows[:, -1], dims[num - 1], size[:, -1])
        choices: list[Tensor] = []
        for i in range(num - 2, -1, -1):
            step = cost(rows, in_features, torch.tensor(float(dims[i]))) + cost(rows, dims[i], size)
            total = torch.where(valid[:, :-1], step[:, :-1], math.inf) + below[None, :]
            below, arg = total.min(1)
            choices.append(arg)
        head = cost(torch.tensor(batch), in_features, starts.double() + num)
        total = head + below
        if not bool(torch.isfinite(total).any()):
            continue
        value, first = total.min(0)
        if float(value) < best_cost:
            best_cost = float(value)
            path = [int(first)]
            for arg in reversed(choices):
                path.append(int(arg[path[-1]]))
            best = [grid[a] for a in path]
    return best


def _checked(cost_model: CostModel) -> CostModel:
    def cost(rows: Tensor, in_dim: int, out_dim: Tensor) -> Tensor:
        value = torch.as_tensor(cost_model(rows, in_dim, out_dim), dtype=torch.float64)
        if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise ValueError("cost_model must return finite, non-negative costs")
        return value

    return cost


def _candidate_grid(vocab_size: int, candidates: Sequence[int] | None, num: int) -> list[int]:
    if candidates is not None:
        grid = sorted({int(c) for c in candidates})
        if not grid or grid[0] < 1 or grid[-1] >= vocab_size:
            raise ValueError(
                f"candidates must be non-empty ranks in [1, {vocab_size}) (vocab_size), "
                f"got {list(candidates)[:10]}"
            )
        return grid
    if vocab_size - 1 <= num:
        return list(range(1, vocab_size))
    points = torch.logspace(0, math.log10(vocab_size - 1), num, dtype=torch.float64).tolist()
    # Multiples of 8 keep large clusters aligned to matmul tiles.
    snapped = {int(round(p / 8) * 8) if p > 64 else round(p) for p in points}
    return sorted(c for c in snapped if 1 <= c < vocab_size)


# --------------------------------------------------------------------------------------------
# Checks shared by the adaptive head and the adaptive input.
def check_cutoffs(
    cutoffs: Sequence[int] | Tensor, vocab_size: int, in_features: int, div_value: float
) -> list[int]:
    if isinstance(cutoffs, Tensor):
        cutoffs = cutoffs.tolist()
    try:
        cuts = list(cutoffs)
    except TypeError:
        raise ValueError(
            f"cutoffs must be a list of ints, None or 'auto', got {cutoffs!r}"
        ) from None
    try:
        cuts = [check_int("cutoff", c) for c in cuts]  # numpy and tensor ints too
    except ValueError:
        raise ValueError(f"cutoffs must be ints (word ranks), got {cuts}") from None
    if any(b <= a for a, b in itertools.pairwise(cuts)):
        raise ValueError(f"cutoffs must be strictly increasing, got {cuts}")
    if cuts and (cuts[0] <= 0 or cuts[-1] >= vocab_size):
        raise ValueError(
            f"cutoffs must lie in [1, {vocab_size - 1}] (ranks below vocab_size={vocab_size}), "
            f"got {cuts}"
        )
    dims = projection_dims(in_features, len(cuts), div_value)
    if dims and dims[-1] < 1:
        # torch allows it too: the cluster's logits are all zero, a uniform distribution inside it.
        warnings.warn(
            f"with in_features={in_features} and div_value={div_value}, tail cluster "
            f"{len(cuts)} projects to 0 dims (d // div_value**{len(cuts)}), so its words are "
            "equiprobable within it; use fewer cutoffs or a smaller div_value to learn them",
            stacklevel=3,
        )
    return cuts


def check_saved_cutoffs(
    state_dict: dict[str, Any], prefix: str, cutoffs: list[int], module: str
) -> None:
    """Refuse a checkpoint whose ``cutoffs`` buffer differs from this module's, before any copy
    (the parameters' shapes follow from the cutoffs, so torch's own message would be a size
    mismatch that does not say why)."""
    stored = state_dict.get(prefix + "cutoffs")
    if stored is not None and stored.tolist() != cutoffs:
        raise ValueError(
            f"this checkpoint was saved with cutoffs={stored.tolist()} but this {module} has "
            f"cutoffs={cutoffs}: build the {module} with cutoffs={stored.tolist()}"
        )

r"""Adaptive input embeddings (Baevski & Auli 2019, "Adaptive Input Representations for Neural
Language Modeling"), on the clusters of the adaptive softmax and optionally tied to it.

Words are ranked by corpus frequency and cut into the adaptive softmax's clusters (same
``cutoffs``, same frequency permutation; :mod:`lm_heads.heads.adaptive`): band 0 holds ranks
``[0, c_1)`` and band ``i ≥ 1`` ranks ``[c_i, c_{i+1})`` (``c_{J+1} = V``). Band ``i`` stores
``k_i`` vectors of ``d_i = d // div_value^i`` dims and maps them to ``d`` with ``Q_i [d_i, d]``:

.. math::

    e(w) = E_0[r]                         \quad r = \mathrm{rank}(w) < c_1
    \qquad
    e(w) = E_i[r - c_i]\, Q_i              \quad c_i \le r < c_{i+1}

Rare words get few dimensions, so the embedding costs ``Σ_i k_i d_i + d_i d`` parameters instead
of ``V d``: 8.1M instead of 137M at ``V = 267,735``, ``d = 512`` with the default cutoffs.
Band 0 has ``d_0 = d`` and no projection (a ``d×d`` map there would only reparametrise ``E_0``).

Tying (fairseq's ``tie_adaptive_weights`` / ``tie_adaptive_proj``): the adaptive softmax scores
band 0 with its head rows ``A[:c_1]`` and cluster ``i`` with ``B_i (P_i h)``, ``B_i [k_i, d_i]``,
``P_i [d_i, d]``. ``tie_weights=True`` makes ``E_0`` the head's weight (rows ``< c_1`` are the
words; the cluster rows after them are never looked up) and ``E_i = B_i``: one vector per word
serves as input and output. ``tie_proj=True`` also shares ``Q_i = P_i``, read as ``d_i → d``
here and ``d → d_i`` in the head. Shared tensors are the *same* ``Parameter`` objects, so
``model.parameters()`` yields them once and optimizers, DDP and ``module.double()`` see one
tensor.

How a lookup runs: every band gathers (clamped) rows for *all* tokens, zeroes tokens outside the
band and projects; the bands are summed. That is ``n·d·Σ_{i≥1} d_i`` extra multiply-adds (about
``n d²/3`` with ``div_value = 4``) and no host sync, and every parameter takes part in every step
(plain DDP needs no ``find_unused_parameters``, even when a batch misses a band).

Initialisation (untied): ``E_i ~ N(0, 1/d_i)`` and Xavier-uniform ``Q_i`` (as fairseq).

Shape:
    - input: ``[...]`` int64 word ids in ``[0, V)`` (no padding id: replace padding by any
      word, e.g. 0, and mask it downstream, as with ``nn.Embedding`` without ``padding_idx``);
      output: ``[..., d]`` in the parameters' dtype
    - ``weights.0``: ``[c_1, d]`` (tied: the head's ``[c_1 + J, d]``); ``weights.i``: ``[k_i, d_i]``
    - ``projections.{i-1}``: ``[d_i, d]`` for bands ``i ≥ 1``
    - buffers: ``cutoffs [J]``, ``rank_of_id [V]`` (int64)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_float, check_int
from lm_heads.base import Head, check_ids
from lm_heads.counts import as_counts, frequency_order
from lm_heads.cutoffs import check_cutoffs, check_saved_cutoffs, default_cutoffs, projection_dims
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead

__all__ = ["AdaptiveInput"]


class AdaptiveInput(nn.Module):
    """Word embeddings whose size shrinks with frequency band (see the module docstring).

    Args:
        vocab_size: ``V``.
        embedding_dim: ``d``, the size of every output vector.
        counts: corpus frequency of each word id (required; any id order).
        cutoffs: rank-space cut points ``0 < c_1 < … < c_J < V``; ``None`` for the adaptive
            softmax's default rule (:func:`~lm_heads.cutoffs.default_cutoffs`).
        div_value: band ``i`` has ``int(d // div_value ** i)`` dims.

    Use :meth:`from_head` to take the clusters of an adaptive softmax, and to tie to it.
    """

    cutoffs: Tensor
    rank_of_id: Tensor
    _awaiting: str | None = None
    """Why this input has no structure yet (``None`` once it has: see :meth:`from_head`)."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        *,
        counts: Tensor | Sequence[float] | None = None,
        cutoffs: Sequence[int] | None = None,
        div_value: float = 4.0,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, minimum=1)
        self.div_value = check_float("div_value", div_value, positive=True)
        counts_t = as_counts(counts, vocab_size, "adaptive input")
        if cutoffs is None:
            cutoffs = default_cutoffs(vocab_size, embedding_dim, self.div_value)
        cuts = check_cutoffs(cutoffs, vocab_size, embedding_dim, self.div_value)
        self.bounds = [0, *cuts, vocab_size]
        """Rank ranges: band ``i`` holds ranks ``[bounds[i], bounds[i + 1])``."""
        _, rank_of_id = frequency_order(counts_t)
        self.register_buffer("cutoffs", torch.tensor(cuts, dtype=torch.long))
        self.register_buffer("rank_of_id", rank_of_id)
        dims = [embedding_dim, *projection_dims(embedding_dim, len(cuts), self.div_value)]
        sizes = [high - low for low, high in zip(self.bounds, self.bounds[1:], strict=False)]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(size, dim) / math.sqrt(max(dim, 1)))
            for size, dim in zip(sizes, dims, strict=True)
        )
        self.projections = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, embedding_dim)))
            if dim
            else nn.Parameter(torch.empty(0, embedding_dim))
            for dim in dims[1:]
        )

    @classmethod
    def from_head(
        cls,
        head: Head,
        *,
        embedding_dim: int | None = None,
        tie_weights: bool = False,
        tie_proj: bool = False,
    ) -> AdaptiveInput:
        """Adaptive input over ``head``'s clusters (same cutoffs, frequency order, div_value).

        ``head`` may also be an adaptive head that ``LMHeadMixin.configure_head`` made without
        counts, which waits for a checkpoint's structure: the input then waits with it, and
        is built (and tied) when ``load_state_dict`` / ``load_from_checkpoint`` builds the head.

        Args:
            head: the adaptive softmax.
            embedding_dim: ``d`` (``None``: the head's ``in_features``, which tying requires).
            tie_weights: share every band's word vectors with the head (see the module docstring).
            tie_proj: share the tail projections too (needs ``tie_weights``, as in fairseq).
        """
        dim = head.in_features if embedding_dim is None else embedding_dim
        if (tie_weights or tie_proj) and dim != head.in_features:
            raise ValueError(
                f"tying needs embedding_dim == the head's in_features ({head.in_features}), got "
                f"{dim}; make the backbone's hidden size (or its output projection) equal to it"
            )
        if tie_proj and not tie_weights:
            raise ValueError("tie_proj=True needs tie_weights=True (fairseq's semantics)")
        if tie_proj and not getattr(head, "tail_projection", True):
            raise ValueError(
                "tie_proj=True shares the head's tail projections, and this head has none "
                "(tail_projection=False): tie the weights only"
            )
        waiting = getattr(head, "when_built", None)
        if not isinstance(head, AdaptiveSoftmaxHead) and isinstance(waiting, list):
            return cls._waiting_for(head, waiting, dim, tie_weights, tie_proj)
        if not isinstance(head, AdaptiveSoftmaxHead):
            raise TypeError(
                f"adaptive input takes the clusters of an AdaptiveSoftmaxHead, got "
                f"{type(head).__name__}; build it with counts= and cutoffs= instead"
            )
        # Counts that rank words exactly as the head does: rank 0 gets the largest count.
        order = torch.empty(head.vocab_size, dtype=torch.float64)
        order[head.id_of_rank.cpu()] = torch.arange(head.vocab_size, 0, -1, dtype=torch.float64)
        module = cls(
            head.vocab_size,
            dim,
            counts=order,
            cutoffs=head.bounds[1:-1],
            div_value=head.div_value,
        )
        param = head.head.weight
        module.to(param.device, param.dtype)
        if tie_weights:
            module.weights[0] = head.head.weight
            for i, (project, out) in enumerate(head.clusters()):
                module.weights[i + 1] = out.weight
                if tie_proj:
                    module.projections[i] = cast(nn.Linear, project).weight
        return module

    @classmethod
    def _waiting_for(
        cls,
        head: Head,
        when_built: list[Callable[[Head], None]],
        dim: int,
        tie_weights: bool,
        tie_proj: bool,
    ) -> AdaptiveInput:
        """An input without structure that becomes ``from_head(built head)`` when the head is."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.vocab_size, module.embedding_dim = head.vocab_size, dim
        module._awaiting = (
            f"this adaptive input waits for the structure of its {getattr(head, 'name', '')!r} "
            "head, configured without counts: "
            "pass them to configure_head, or load a checkpoint saved by LMHeadMixin "
            "(MyLM.load_from_checkpoint(path), ckpt_path=..., load_state_dict), which builds both"
        )

        def build(built: Head) -> None:
            ready = cls.from_head(
                built, embedding_dim=dim, tie_weights=tie_weights, tie_proj=tie_proj
            )
            # The model already holds `module` (and its optimizer may be made later): it takes
            # on the built input's state in place rather than being replaced.
            vars(module).update(vars(ready))
            module._awaiting = None

        when_built.append(build)
        return module

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [...]`` (word ids) → embeddings ``[..., d]``."""
        if self._awaiting is not None:
            raise RuntimeError(self._awaiting)
        if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"tokens must be an integer tensor of word ids, got {tokens!r:.80}")
        flat = tokens.reshape(-1).long()
        # Indexing would wrap negative ids (-100 would read word V - 100): refuse them, padding
        # included, as nn.Embedding does.
        check_ids(flat, self.vocab_size, None, name="token")
        rank = self.rank_of_id[flat]
        band = torch.bucketize(rank, self.cutoffs, right=True)
        out = F.embedding(rank.clamp(max=self.bounds[1] - 1), self.weights[0])
        out = torch.where((band == 0).unsqueeze(1), out, 0.0)
        for i, projection in enumerate(self.projections, start=1):
            low, high = self.bounds[i], self.bounds[i + 1]
            local = (rank - low).clamp(0, high - low - 1)
            vectors = torch.where(
                (band == i).unsqueeze(1), F.embedding(local, self.weights[i]), 0.0
            )
            out = out + vectors @ projection
        return out.reshape(*tokens.shape, self.embedding_dim)

    @property
    def weight(self) -> Tensor:
        """``[V, d]``: every word's vector in id order, computed (as ``nn.Embedding.weight`` reads,
        for similarity evaluation and export; not a parameter)."""
        return self(torch.arange(self.vocab_size, device=self.rank_of_id.device))

    def extra_repr(self) -> str:
        if self._awaiting is not None:
            return f"vocab_size={self.vocab_size}, embedding_dim={self.embedding_dim}, awaiting"
        return (
            f"vocab_size={self.vocab_size}, embedding_dim={self.embedding_dim}, "
            f"cutoffs={self.bounds[1:-1]}, div_value={self.div_value}"
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if self._awaiting is not None:
            raise RuntimeError(
                f"{self._awaiting}. This state dict has no head structure to build it from"
            )
        check_saved_cutoffs(state_dict, prefix, self.bounds[1:-1], "adaptive input")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

r"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Words are ranked by corpus frequency (rank 0 = most frequent) and cut at ``cutoffs = [c_1, …,
c_J]`` (rank space): the *head* holds ranks ``[0, c_1)`` plus one token per tail cluster; tail
cluster ``i`` (1-based) holds ranks ``[c_i, c_{i+1})`` (``c_{J+1} = V``) and first projects ``h`` to
``d_i = d // div_value^i`` dims::

    log p(w | h) = log softmax(A h + a)_w                            w in the head
    log p(w | h) = log softmax(A h + a)_{c_1 + i − 1}                w in cluster i
                   + log softmax(B_i P_i h + b_i)_{rank(w) − c_i}

with ``A [c_1 + J, d]`` (and bias ``a`` if ``head_bias``), ``P_i [d_i, d]``, ``B_i [k_i, d_i]``
(and bias ``b_i`` if ``tail_bias``), ``k_i = c_{i+1} − c_i``. A token costs ``O(d·(c_1 + J))``
plus, if its word is in cluster ``i``, ``O(d·d_i + d_i·k_i)``.

Parameters mirror ``torch.nn.AdaptiveLogSoftmaxWithLoss`` name for name (``head.weight``,
``head.bias``, ``tail.{i}.0.weight`` = ``P_i``, ``tail.{i}.1.weight`` = ``B_i``), in rank space:
row ``r`` of the head / of a cluster is the word ``id_of_rank[r]``. With frequency-sorted ids
(``id_of_rank = arange``) both modules compute the same values;
:meth:`AdaptiveSoftmaxHead.from_torch` converts one. Unlike torch:

- *DDP*: every parameter takes part in every step. Tokens are sorted by cluster once (one argsort)
  and every cluster runs on its slice, empty or not, so a cluster without targets still returns a
  (zero) gradient; torch's ``if row_indices.numel() == 0: continue`` skips its parameters, which
  breaks plain DDP. The price is one small host sync per training step (the cluster sizes, one
  ``.tolist()`` of ``J + 1`` ints), not one per cluster.
- *Speed*: while training, each softmax runs in the fused linear + cross-entropy of
  :mod:`lm_heads.chunked_ce` (one chunk), which exponentiates the logits once, in place, and
  turns them into the gradient during forward: no ``[n, k]`` log-softmax copy, no zero-filled
  gather gradient.
- counts may come in any id order; ``cutoffs="auto"`` measures the device
  (:mod:`lm_heads.cutoffs`).
- *Biases, by default*: torch's module has a head bias at most, off by default. Here the head
  and every tail word have one (``head_bias``, ``tail_bias``): a rare word's own frequency is
  then one parameter, not something the ``d_i``-dim projection must learn. ``bias_init=
  "unigram"`` starts every bias at the log unigram (the head's cluster entries at their
  clusters' log mass), so training starts from the unigram model instead of the uniform one.
- *Narrower models keep wider tails*: ``div_value`` defaults to 2 below ``d = 512`` (4 from
  there, as the paper). With both defaults, adaptive is ahead of the full softmax after one
  epoch on WikiText-2 at ``d = 200`` (RESULTS.md); torch's defaults (no bias, ``div_value = 4``)
  are not. Trained longer, the tail overfits (its ``P_iᵀ B_i`` rows grow to about four times
  the full softmax's word vectors): ``tail_dropout`` is the regulariser for that.

Shape:
    - hidden: ``[..., d]``; target: ``[...]``
    - head.weight: ``[c_1 + J, d]``; head.bias: ``[c_1 + J]`` (``head_bias``)
    - tail.{i}.0.weight: ``[d_i, d]``; tail.{i}.1.weight: ``[k_i, d_i]``; tail.{i}.1.bias:
      ``[k_i]`` (``tail_bias``)
    - buffers: ``cutoffs [J]``, ``id_of_rank [V]``, ``rank_of_id [V]`` (int64)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_float
from lm_heads.base import Head, at_least_float32, linear_f32, sample_categorical
from lm_heads.chunked_ce import linear_cross_entropy, linear_nll
from lm_heads.counts import as_counts, frequency_order
from lm_heads.cutoffs import (
    CostModel,
    check_cutoffs,
    check_saved_cutoffs,
    choose_cutoffs,
    default_cutoffs,
    default_div_value,
    projection_dims,
)

__all__ = ["AdaptiveSoftmaxHead"]


class AdaptiveSoftmaxHead(Head):
    """Adaptive softmax: a frequent-word head plus tail clusters with reduced projections.

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        counts: corpus frequency of each word id (required; any id order).
        ignore_index: padding target id.
        cutoffs: rank-space cut points ``0 < c_1 < … < c_J < V`` (``[2000, 10000]``: ranks
            ``0..1999`` in the head, ``2000..9999`` in cluster 1, the rest in cluster 2); ``[]``
            for no tail cluster (a plain softmax); ``None`` for the rule of
            :func:`~lm_heads.cutoffs.default_cutoffs` (``[4000, 20000, 100000]`` at
            ``V = 267,735``); ``"auto"`` to measure this machine's accelerator (else CPU) and
            pick the cheapest cutoffs for ``batch_tokens`` with
            :func:`~lm_heads.cutoffs.choose_cutoffs` (read them back from ``head.cutoffs`` and
            pass them explicitly to rebuild the head).
        div_value: cluster ``i`` projects to ``int(d // div_value ** i)`` dims (as torch);
            ``None``: :func:`~lm_heads.cutoffs.default_div_value` (2 below ``d = 512``, else 4).
        head_bias: learn a bias for the head (torch's default is ``False``).
        tail_bias: learn a bias for every tail word (torch has none).
        bias_init: ``"default"``: the head bias as ``nn.Linear`` (and torch) initialises it, tail
            biases at zero; ``"unigram"``: every bias at the log unigram probability of the
            training counts (within its cluster for tail biases).
        tail_dropout: dropout on each tail cluster's projection ``P_i h`` in the training loss
            (fairseq's ``adaptive_softmax_dropout``; Baevski & Auli 2019 use 0.2). That loss is
            then a thinned network's NLL, not the model's: ``is_exact`` is False while training
            and ``nll_sum`` is ``None`` (no ``train_ppl``). ``log_prob``, ``target_log_prob``,
            ``predict``, ``sample`` and evaluation are the model's, without dropout, in any mode.
        tail_projection: ``False`` scores each cluster on ``h`` itself, ``B_i h + b_i``
            (``div_value`` must be 1, its default then): a tail word has one ``d``-dim vector,
            as in the full softmax, instead of the product ``B_i P_i``, whose two factors SGD
            grows together.
        batch_tokens: tokens per step that ``cutoffs="auto"`` optimises for.
        cost_model: ``cost(rows, in_dim, out_dim) -> seconds`` for ``cutoffs="auto"`` instead
            of measuring (see :mod:`lm_heads.cutoffs`).
    """

    uses_counts = True
    cutoffs: Tensor
    id_of_rank: Tensor
    rank_of_id: Tensor
    _starts: Tensor

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        cutoffs: Sequence[int] | str | None = None,
        div_value: float | None = None,
        head_bias: bool = True,
        tail_bias: bool = True,
        bias_init: str = "default",
        tail_dropout: float = 0.0,
        tail_projection: bool = True,
        batch_tokens: int = 4096,
        cost_model: CostModel | None = None,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        counts_t = as_counts(counts, vocab_size, "adaptive")
        if div_value is None:
            div_value = default_div_value(in_features) if tail_projection else 1.0
        div_value = check_float("div_value", div_value, positive=True)
        if isinstance(cutoffs, str):
            if cutoffs != "auto":
                raise ValueError(f"cutoffs must be a list of ints, None or 'auto', got {cutoffs!r}")
            cutoffs = choose_cutoffs(
                counts_t, in_features, batch_tokens, div_value=div_value, cost_model=cost_model
            )
        elif cutoffs is None:
            cutoffs = default_cutoffs(vocab_size, in_features, div_value)
        cuts = check_cutoffs(cutoffs, vocab_size, in_features, div_value)
        if bias_init not in ("default", "unigram"):
            raise ValueError(f"bias_init must be 'default' or 'unigram', got {bias_init!r}")
        tail_dropout = check_float("tail_dropout", tail_dropout)
        if not 0.0 <= tail_dropout < 1.0:
            raise ValueError(f"tail_dropout must be in [0, 1), got {tail_dropout}")
        self.tail_dropout = tail_dropout
        self.tail_projection = bool(tail_projection)
        if not self.tail_projection and div_value != 1.0:
            raise ValueError(
                f"tail_projection=False scores every cluster on the {in_features}-dim hidden "
                f"itself, so it needs div_value=1 (got {div_value})"
            )
        self.div_value = float(div_value)
        self.head_bias, self.tail_bias, self.bias_init = bool(head_bias), bool(tail_bias), bias_init
        self.shortlist_size = cuts[0] if cuts else vocab_size
        self.num_clusters = len(cuts)
        self.bounds = [0, *cuts, vocab_size]
        """Rank ranges: head ``[0, bounds[1])``, cluster ``i`` ``[bounds[i], bounds[i + 1])``."""

        id_of_rank, rank_of_id = frequency_order(counts_t)
        self.register_buffer("cutoffs", torch.tensor(cuts, dtype=torch.long))
        self.register_buffer("id_of_rank", id_of_rank)
        self.register_buffer("rank_of_id", rank_of_id)
        self.register_buffer("_starts", torch.tensor(self.bounds[:-1]), persistent=False)

        self.head = nn.Linear(in_features, self.shortlist_size + self.num_clusters, bias=head_bias)
        self.tail = nn.ModuleList(
            nn.Sequential(
                nn.Linear(in_features, dim, bias=False) if self.tail_projection else nn.Identity(),
                nn.Linear(dim, self.bounds[i + 2] - self.bounds[i + 1], bias=self.tail_bias),
            )
            for i, dim in enumerate(projection_dims(in_features, self.num_clusters, div_value))
        )
        for _, out in self.clusters():
            if out.bias is not None:
                nn.init.zeros_(out.bias)  # nn.Linear's default is random, not "no prior"
        if bias_init == "unigram":
            self._unigram_biases(counts_t[id_of_rank].double())

    @torch.no_grad()
    def _unigram_biases(self, ranked_counts: Tensor) -> None:
        """Each bias at its log unigram probability (add-one smoothed: unseen words stay finite).

        Head entries get ``log p(word)`` and ``log p(cluster)``; tail words ``log p(word | its
        cluster)``. With zero weights this is exactly the unigram model.
        """
        smoothed = ranked_counts + 1.0
        total = smoothed.sum()
        if self.head.bias is not None:
            masses = [smoothed[low:high].sum() for low, high in itertools.pairwise(self.bounds[1:])]
            head = (
                torch.cat([smoothed[: self.shortlist_size], torch.stack(masses)])
                if masses
                else (smoothed[: self.shortlist_size])
            )
            self.head.bias.copy_((head / total).log())
        for (_, out), low, high in zip(
            self.clusters(), self.bounds[1:-1], self.bounds[2:], strict=True
        ):
            if out.bias is not None:
                band = smoothed[low:high]
                out.bias.copy_((band / band.sum()).log())

    @classmethod
    def from_torch(
        cls,
        module: nn.AdaptiveLogSoftmaxWithLoss,
        *,
        counts: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
    ) -> AdaptiveSoftmaxHead:
        """The same model as a torch ``AdaptiveLogSoftmaxWithLoss`` (weights copied).

        torch's ids are ranks; with ``counts=None`` the ids here are the same (most frequent
        first). With ``counts``, word ``id_of_rank[r]`` here is torch's class ``r``.
        """
        vocab_size = module.n_classes
        if counts is None:
            counts = torch.arange(vocab_size, 0, -1, dtype=torch.float64)
        head = cls(
            module.in_features,
            vocab_size,
            counts=counts,
            ignore_index=ignore_index,
            cutoffs=module.cutoffs[:-1],
            div_value=module.div_value,
            head_bias=module.head_bias,
            tail_bias=False,
        )
        param = next(module.parameters())
        head.to(param.device, param.dtype)
        with torch.no_grad():
            for name, value in module.state_dict().items():
                head.get_parameter(name).copy_(value)
        return head

    # ----------------------------------------------------------------------------------------
    def _loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        loss, nll = self._fused_sums(hidden, target, keep, dropout=True)
        # Under tail dropout the objective is the NLL of a thinned network, not of the model:
        # it is no perplexity, so no exact NLL is claimed (the mixin logs no train_ppl then).
        return loss, (None if self.tail_dropout else nll)

    def _exact_loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self._fused_sums(hidden, target, keep, dropout=False)

    def _fused_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor, *, dropout: bool
    ) -> tuple[Tensor, Tensor]:
        """``(Σ NLL, Σ NLL detached)`` with every softmax in the fused kernel (the padding mask
        as token weights); with ``dropout``, of the network thinned by ``tail_dropout``."""
        weight = keep.to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
        head_target, rows, relative, sizes = self._route(target, keep)
        loss, nll = linear_cross_entropy(
            hidden,
            self.head.weight,
            self.head.bias,
            head_target,
            token_weight=weight,
            chunk_size=None,
        )
        for (project, out), h, t, a in zip(
            self.clusters(),
            hidden.index_select(0, rows).split(sizes),
            relative.split(sizes),
            weight.index_select(0, rows).split(sizes),
            strict=True,
        ):
            part = linear_cross_entropy(
                self._tail_input(h, project, dropout),
                out.weight,
                out.bias,
                t,
                token_weight=a,
                chunk_size=None,
            )
            loss, nll = loss + part.loss, nll + part.nll
        return loss, nll

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._token_nll(hidden, target, dropout=True)

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        # The model's distribution in every mode: dropout belongs to the training objective.
        return -self._token_nll(hidden, target, dropout=False)

    def _token_nll(self, hidden: Tensor, target: Tensor, *, dropout: bool = False) -> Tensor:
        """Per-token NLL ``[n]``; with ``dropout``, of the network thinned by ``tail_dropout``."""
        keep = torch.ones_like(target, dtype=torch.bool)
        head_target, rows, relative, sizes = self._route(target, keep)
        loss = linear_nll(hidden, self.head.weight, self.head.bias, head_target, chunk_size=None)
        parts = [
            linear_nll(
                self._tail_input(h, project, dropout), out.weight, out.bias, t, chunk_size=None
            )
            for (project, out), h, t in zip(
                self.clusters(),
                hidden.index_select(0, rows).split(sizes),
                relative.split(sizes),
                strict=True,
            )
        ]
        return loss.index_add(0, rows, torch.cat([loss[:0], *parts]).to(loss.dtype))

    def _tail_input(self, hidden: Tensor, project: nn.Module, dropout: bool) -> Tensor:
        """A cluster's input ``P_i h`` (or ``h``); under ``tail_dropout`` if ``dropout`` and
        training (the objective's thinned network, never the model's distribution)."""
        return F.dropout(_projected(hidden, project), self.tail_dropout, dropout and self.training)

    def score_shape(self, tokens: int) -> tuple[int, int]:
        widest = max((hi - lo for lo, hi in itertools.pairwise(self.bounds[1:])), default=0)
        return tokens, self.shortlist_size + self.num_clusters + widest

    def loss_is_exact(self, training: bool) -> bool:
        # Under tail dropout the training loss is the thinned network's NLL, not the model's.
        return not (training and self.tail_dropout > 0)

    def _route(self, target: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Head targets ``[n]``; the rows of tail tokens grouped by cluster, their within-cluster
        ranks, and the group sizes. Padding goes to the head (rank 0): no cluster runs for it."""
        rank = torch.where(keep, self.rank_of_id[target], 0)
        if self.num_clusters == 0:
            return rank, rank[:0], rank[:0], []
        cluster = torch.bucketize(rank, self.cutoffs, right=True)
        head_target = torch.where(cluster == 0, rank, self.shortlist_size - 1 + cluster)
        # One sort groups the tail tokens by cluster; the sizes are the step's single host sync.
        # Every cluster runs, on an empty slice if need be: its parameters still get a (zero)
        # gradient, which plain DDP requires.
        order = torch.argsort(cluster, stable=True)
        sizes = torch.bincount(cluster, minlength=self.num_clusters + 1).tolist()
        rows = order[sizes[0] :]
        relative = (rank - self._starts[cluster]).index_select(0, rows)
        return head_target, rows, relative, sizes[1:]

    def _log_prob(self, hidden: Tensor) -> Tensor:
        head = self._head_log_prob(hidden)
        out = head.new_empty(hidden.shape[0], self.vocab_size)
        ids = self.id_of_rank
        out.index_copy_(1, ids[: self.shortlist_size], head[:, : self.shortlist_size])
        for i, (low, high) in enumerate(zip(self.bounds[1:-1], self.bounds[2:], strict=True)):
            block = self._cluster_logits(hidden, i).log_softmax(1)
            block += head[:, self.shortlist_size + i, None]
            out.index_copy_(1, ids[low:high], block)
        return out

    def _predict(self, hidden: Tensor) -> Tensor:
        head = self._head_log_prob(hidden)
        best, best_rank = head[:, : self.shortlist_size].max(1)
        for i, low in enumerate(self.bounds[1:-1]):
            # A word of cluster i is no likelier than the cluster token, so only rows whose
            # cluster token beats the best so far can change their answer (torch's trick, per
            # row). Data-dependent rows (a host sync): fine at inference, unlike in training.
            rows = torch.nonzero(head[:, self.shortlist_size + i] > best).squeeze(1)
            logits = self._cluster_logits(hidden.index_select(0, rows), i)
            top, arg = logits.max(1)
            value = head[rows, self.shortlist_size + i] + top - logits.logsumexp(1)
            better = value > best[rows]
            best[rows] = torch.where(better, value, best[rows])
            best_rank[rows] = torch.where(better, arg + low, best_rank[rows])
        return self.id_of_rank[best_rank]

    def _sample(self, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
        # Ancestral: a head entry, then a word inside the chosen cluster for rows that chose one.
        rank = sample_categorical(self._head_log_prob(hidden), generator)
        choice = rank.clone()
        for i, low in enumerate(self.bounds[1:-1]):
            rows = torch.nonzero(choice == self.shortlist_size + i).squeeze(1)
            logits = self._cluster_logits(hidden.index_select(0, rows), i)
            rank[rows] = low + sample_categorical(logits.log_softmax(1), generator)
        return self.id_of_rank[rank]

    def output_embeddings(self) -> Tensor:
        """``[V, d]``: head rows for head words, ``P_iᵀ B_i`` rows (the linear map from ``h`` to a
        word's within-cluster logit) for tail words. Cosines across clusters mix two spaces."""
        blocks = [self.head.weight[: self.shortlist_size]]
        blocks += [
            out.weight @ project.weight if isinstance(project, nn.Linear) else out.weight
            for project, out in self.clusters()
        ]
        out = torch.empty(self.vocab_size, self.in_features, dtype=self.head.weight.dtype)
        out = out.to(self.head.weight.device)
        return out.index_copy(0, self.id_of_rank, torch.cat(blocks))

    def clusters(self) -> list[tuple[nn.Module, nn.Linear]]:
        """``(projection d → d_i, output d_i → |cluster i|)`` of each tail cluster (the
        projection is ``nn.Identity`` with ``tail_projection=False``)."""
        # tail[i] is nn.Sequential(projection, output): torch's layout (state dict keys tail.i.0
        # and tail.i.1, which from_torch copies by name). ModuleList cannot type its elements.
        return [
            cast("tuple[nn.Module, nn.Linear]", tuple(cluster.children())) for cluster in self.tail
        ]

    def resolved_options(self) -> dict[str, Any]:
        # "auto" measured the machine: a rebuild takes the cutoffs it chose, without a cost model.
        return {"cutoffs": self.bounds[1:-1], "cost_model": None}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, cutoffs={self.bounds[1:-1]}, div_value={self.div_value}, "
            f"head_bias={self.head_bias}, tail_bias={self.tail_bias}"
            + (f", bias_init={self.bias_init}" if self.bias_init != "default" else "")
            + (f", tail_dropout={self.tail_dropout}" if self.tail_dropout else "")
            + ("" if self.tail_projection else ", tail_projection=False")
        )

    # ----------------------------------------------------------------------------------------
    def _head_log_prob(self, hidden: Tensor) -> Tensor:
        return linear_f32(hidden, self.head.weight, self.head.bias).log_softmax(1)

    def _cluster_logits(self, hidden: Tensor, i: int) -> Tensor:
        project, out = self.clusters()[i]
        return at_least_float32(F.linear(_projected(hidden, project), out.weight, out.bias))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        check_saved_cutoffs(state_dict, prefix, self.bounds[1:-1], "head")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _projected(hidden: Tensor, project: nn.Module) -> Tensor:
    return F.linear(hidden, project.weight) if isinstance(project, nn.Linear) else hidden

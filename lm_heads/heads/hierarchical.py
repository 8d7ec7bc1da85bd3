r"""Hierarchical softmax over a tree of softmax nodes built from word frequencies.

References:
    - Morin & Bengio (2005), "Hierarchical probabilistic neural network language model".
    - Mnih & Hinton (2009), "A scalable hierarchical distributed language model".
    - Mikolov et al. (2013), "Distributed representations of words and phrases and their
      compositionality" (word2vec: a binary Huffman tree, frequent words on short paths).
    - Goodman (2001); Mikolov et al. (2011): the class-based softmax is the depth-2 case
      (:mod:`lm_heads.heads.class_based`).

Every word is one leaf of a tree (:mod:`lm_heads.heads.tree`); internal node ``j`` is a softmax over
its children with logits ``W[r] · h + b[r]`` for its rows ``r ∈ offset[j] + [0, width[j])`` of
one ``[E, d]`` matrix (one row per edge, ``E = V + N - 1``), and

.. math::

    \log p(w \mid h) = \sum_{(j, c)\ \in\ \mathrm{path}(w)}
        \Big( z_{o_j + c} - \log\!\sum_{c' < |j|} e^{z_{o_j + c'}} \Big),
    \qquad z_r = W_r \cdot h + b_r

``tree="huffman"`` is the binary Huffman tree (each node a 2-way softmax, i.e. a sigmoid);
``tree="kary"`` is a shallow tree by recursive equal-mass frequency binning (depth 2-3 with the
default ``branching ≈ √V``), which does few, wide, batched levels instead of ~log₂V thin ones.

How a training step runs (no Python loop over tokens; one loop over depth):
    - a depth holding a single node (the root) is one ``[n, d] × [d, width]`` matmul;
    - nodes of width ≤ ``gather_width`` (16): each token gathers its node's rows, padded to the
      widest such node, and does one batched dot (``bmm``), masked log-sum-exp;
    - wider nodes (a class of rare words can hold thousands): tokens are sorted by node and each
      node does one matmul of its tokens against its rows, so a node's rows are read once per
      step, not once per token. This needs the number of tokens per node on the host: one
      device sync per depth that has wide nodes.
The log-sum-exp and every log-probability are float32 (the matmuls follow autocast).

Shape:
    - hidden: ``[..., d]``; target: ``[...]``
    - log_prob: ``[..., V]``, built from all ``E`` edge logits, one per-node log-sum-exp and a
      top-down sum per depth (evaluation only; the loss never builds ``[n, V]``)
    - weight: ``[E, d]``, bias: ``[E]``; path buffers ``[V, D]`` (see :mod:`lm_heads.heads.tree`)

DDP: all nodes share the one ``weight``/``bias`` pair, so every parameter gets a gradient (zero
rows for nodes no token visited) on every step, whatever the targets. ``output_embeddings`` is
``None``: rows belong to tree edges, not to words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_int
from lm_heads.base import Head, add_gumbel_, linear_f32
from lm_heads.counts import as_counts
from lm_heads.heads.tree import Tree, binned_tree, huffman_tree, tree_tensors

__all__ = ["HierarchicalSoftmaxHead", "TreeSoftmaxHead"]

# fn(logits [t, w] float32 with -inf past each node's width, aux [t]) -> [t]
NodeFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class _Depth:
    """Host-side plan for the nodes at one depth (derived from the buffers)."""

    dense: tuple[int, int, int] | None  # (segment, offset, width) when the depth has one node
    gather_width: int  # widest node gathered per token (0: none)
    wide_segments: tuple[int, ...]  # segment index of each wide node, in node order


class TreeSoftmaxHead(Head):
    """Softmax over any :class:`~lm_heads.heads.tree.Tree` whose leaves are the words.

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        tree: the tree (e.g. from :func:`~lm_heads.heads.tree.huffman_tree`).
        ignore_index: target value that is ignored.
        gather_width: nodes at most this wide are computed by a per-token gather and ``bmm``,
            wider ones by sorting tokens by node (see the module docstring).
    """

    # Buffers: the tree's TreeTensors (registered by name in __init__), and _plan's slot table.
    path_nodes: Tensor
    path_children: Tensor
    path_mask: Tensor
    node_offset: Tensor
    node_width: Tensor
    node_depth: Tensor
    node_parent_row: Tensor
    edge_node: Tensor
    edge_child: Tensor
    word_row: Tensor
    _wide_slot: Tensor

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        tree: Tree,
        ignore_index: int = -100,
        gather_width: int = 16,
    ) -> None:
        super().__init__(in_features, vocab_size, ignore_index=ignore_index)
        if tree.vocab_size != vocab_size:
            raise ValueError(f"tree has {tree.vocab_size} words but vocab_size is {vocab_size}")
        self.gather_width = check_int("gather_width", gather_width, minimum=0)
        for name, value in tree_tensors(tree)._asdict().items():
            self.register_buffer(name, value)
        self.weight = nn.Parameter(torch.empty(tree.num_edges, in_features))
        self.bias = nn.Parameter(torch.zeros(tree.num_edges))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self._plan()
        # A checkpoint may hold another tree of the same shapes: re-plan from the loaded buffers.
        self.register_load_state_dict_post_hook(lambda module, _: module._plan())

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checked before anything is copied: the post-load hook re-plans from the buffers, and a
        # tree of another shape would leave it half-loaded (and fail inside the plan).
        mine = {**dict(self.named_buffers(recurse=False)), **dict(self.named_parameters())}
        wrong = [
            f"{name} {tuple(state_dict[prefix + name].shape)} vs {tuple(value.shape)}"
            for name, value in mine.items()
            if prefix + name in state_dict and state_dict[prefix + name].shape != value.shape
        ]
        if wrong:
            raise ValueError(
                f"this checkpoint holds another tree than this head ({self.extra_repr()}): "
                f"checkpoint vs head shapes {', '.join(wrong)}. Build the head with the counts "
                "and tree options of the checkpoint's run (the tree is built from the counts)"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------------------------
    def _plan(self) -> None:
        """Split rows into segments (each wide or lone node its own) and plan every depth."""
        width = self.node_width.tolist()
        offset = self.node_offset.tolist()
        depth = self.node_depth.tolist()
        max_depth = self.path_nodes.shape[1]
        by_depth: list[list[int]] = [[] for _ in range(max_depth)]
        for node, level in enumerate(depth):
            by_depth[level].append(node)
        own = {nodes[0] for nodes in by_depth if len(nodes) == 1}
        own |= {j for j in range(len(width)) if width[j] > self.gather_width}
        sizes: list[int] = []
        segment_of: dict[int, int] = {}
        cursor = 0
        for node in sorted(own):
            if offset[node] > cursor:
                sizes.append(offset[node] - cursor)
            segment_of[node] = len(sizes)
            sizes.append(width[node])
            cursor = offset[node] + width[node]
        if cursor < len(self.edge_node):
            sizes.append(len(self.edge_node) - cursor)
        self._segment_sizes = sizes
        slot = torch.full((len(width),), -1, dtype=torch.long)
        plans = []
        for nodes in by_depth:
            if len(nodes) == 1:
                node = nodes[0]
                plans.append(_Depth((segment_of[node], offset[node], width[node]), 0, ()))
                continue
            wide = [j for j in nodes if width[j] > self.gather_width]
            narrow = [width[j] for j in nodes if width[j] <= self.gather_width]
            slot[wide] = torch.arange(len(wide))
            plans.append(_Depth(None, max(narrow, default=0), tuple(segment_of[j] for j in wide)))
        self._depths = plans
        # Breadth-first numbering: the nodes of one depth are a contiguous range.
        self._depth_ranges = [(nodes[0], nodes[-1] + 1) for nodes in by_depth if nodes]
        self.register_buffer("_wide_slot", slot.to(self.node_width.device), persistent=False)

    def _per_node(
        self,
        depth: int,
        hidden: Tensor,
        node: Tensor,
        active: Tensor,
        fn: NodeFn,
        aux: Tensor,
        segments: tuple[tuple[Tensor, ...], tuple[Tensor, ...]],
        narrow: Tensor | None = None,
    ) -> Tensor:
        """``fn(children logits of node[i], aux[i])`` for each token at ``depth`` (junk where not
        ``active``); ``narrow``: this depth's slice of :meth:`_gather_logits` if already made."""
        plan = self._depths[depth]
        weights, biases = segments
        if plan.dense is not None:
            seg = plan.dense[0]
            return fn(linear_f32(hidden, weights[seg], biases[seg]), aux)

        result = None
        if plan.gather_width:
            if narrow is None:
                narrow = self._gather_logits(hidden, [node], [depth])[0]
            # Tokens at wide nodes may hold child ids past the gathered width: clamp, discard.
            result = fn(narrow, aux.clamp(max=plan.gather_width - 1))
        if not plan.wide_segments:
            # _plan gives a depth that is not dense a gather width or wide nodes, or both.
            assert result is not None
            return result

        num_wide = len(plan.wide_segments)
        slot = self._wide_slot[node]
        key = torch.where(active & (slot >= 0), slot, num_wide)
        order = torch.argsort(key, stable=True)
        sizes = torch.bincount(key, minlength=num_wide + 1).tolist()  # the one host sync
        groups = zip(hidden[order].split(sizes), aux[order].split(sizes), strict=True)
        parts = [
            fn(linear_f32(h, weights[seg], biases[seg]), a)
            for seg, (h, a) in zip(plan.wide_segments, groups, strict=False)
            if h.shape[0]
        ]
        # Tokens that are inactive or at narrow nodes sort last; fn on no logits gives the dtype.
        empty = fn(hidden.new_zeros(0, 1, dtype=self._dtype()), aux[:0])
        parts.append(empty.new_zeros(sizes[-1]))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        by_token = torch.cat(parts)[inverse]
        if result is None:
            return by_token
        return torch.where(slot >= 0, by_token, result)

    def _gather_logits(
        self, hidden: Tensor, nodes: list[Tensor], depths: list[int]
    ) -> list[Tensor]:
        """Logits ``[n, G_l]`` of each token's node's children at each depth whose plan gathers,
        ``-inf`` past the node's width. All depths go through *one* gather of rows, so the
        backward makes one dense ``[E, d]`` gradient, not one per depth."""
        widths = [self._depths[depth].gather_width for depth in depths]
        cols = torch.cat([torch.arange(w, device=hidden.device) for w in widths])
        node = torch.cat(
            [nd.unsqueeze(1).expand(-1, w) for nd, w in zip(nodes, widths, strict=True)], 1
        )
        valid = cols < self.node_width[node]
        rows = torch.where(valid, self.node_offset[node] + cols, 0)  # [n, ΣG]
        dots = torch.bmm(F.embedding(rows, self.weight), hidden.unsqueeze(-1)).squeeze(-1)
        logits = dots + F.embedding(rows, self.bias.unsqueeze(1)).squeeze(-1)
        if logits.dtype != torch.float64:
            logits = logits.float()
        return list(logits.masked_fill(~valid, -math.inf).split(widths, 1))

    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.weight.dtype == torch.float64 else torch.float32

    def _segments(self) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        # One split per call: its backward is a single concatenation into dense [E, d] grads.
        return (
            torch.split(self.weight, self._segment_sizes),
            torch.split(self.bias, self._segment_sizes),
        )

    # ----------------------------------------------------------------------------------------
    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        nodes = self.path_nodes[target]
        children = self.path_children[target]
        mask = self.path_mask[target]
        segments = self._segments()
        gathered = [depth for depth, plan in enumerate(self._depths) if plan.gather_width]
        narrow = dict.fromkeys(gathered)
        if gathered:
            logits = self._gather_logits(hidden, [nodes[:, depth] for depth in gathered], gathered)
            narrow.update(zip(gathered, logits, strict=True))
        total = hidden.new_zeros(target.shape[0], dtype=self._dtype())
        for depth in range(nodes.shape[1]):
            step = self._per_node(
                depth, hidden, nodes[:, depth], mask[:, depth], _child_log_prob,
                children[:, depth], segments, narrow.get(depth),
            )  # fmt: skip
            total = total + torch.where(mask[:, depth], step, 0.0)
        return total

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return -self._target_log_prob(hidden, target)

    def _log_prob(self, hidden: Tensor) -> Tensor:
        n = hidden.shape[0]
        logits = linear_f32(hidden, self.weight, self.bias)  # [n, E]
        num_nodes = self.node_width.numel()
        index = self.edge_node.expand(n, -1)
        # The per-node max only shifts the log-sum-exp for stability: no gradient through it.
        peak = logits.new_full((n, num_nodes), -math.inf).scatter_reduce(
            1, index, logits.detach(), "amax"
        )
        shifted = torch.exp(logits - peak.gather(1, index))
        norm = logits.new_zeros(n, num_nodes).index_add(1, self.edge_node, shifted)
        edge_lp = logits - (norm.log() + peak).gather(1, index)
        # Top-down, one depth at a time: log p(node) = log p(parent) + log p(edge into node).
        node_lp = logits.new_zeros(n, 1)
        for lo, hi in self._depth_ranges[1:]:
            rows = self.node_parent_row[lo:hi]
            step = node_lp[:, self.edge_node[rows]] + edge_lp[:, rows]
            node_lp = torch.cat([node_lp, step], 1)
        return node_lp[:, self.edge_node[self.word_row]] + edge_lp[:, self.word_row]

    def _sample(self, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
        n = hidden.shape[0]
        device = hidden.device
        segments = self._segments()
        node = torch.zeros(n, dtype=torch.long, device=device)
        word = torch.zeros(n, dtype=torch.long, device=device)
        active = torch.ones(n, dtype=torch.bool, device=device)

        def gumbel_argmax(logits: Tensor, _: Tensor) -> Tensor:
            return add_gumbel_(logits.detach().clone(), generator).argmax(-1)

        for depth in range(self.path_nodes.shape[1]):
            child = self._per_node(depth, hidden, node, active, gumbel_argmax, node, segments)
            code = self.edge_child[self.node_offset[node] + child]
            leaf = active & (code < self.vocab_size)
            word = torch.where(leaf, code, word)
            node = torch.where(active & ~leaf, code - self.vocab_size, node)
            active = active & ~leaf
        return word

    def score_shape(self, tokens: int) -> tuple[int, int]:
        # Each level scores the children of one node per token: its widest node bounds that.
        width, depth = self.node_width.long(), self.node_depth.long()
        per_depth = torch.zeros(int(depth.max()) + 1, dtype=torch.long).scatter_reduce(
            0, depth.cpu(), width.cpu(), reduce="amax"
        )
        return tokens, int(per_depth.sum())

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, nodes={self.node_width.numel()}, "
            f"depth={self.path_nodes.shape[1]}, edges={self.weight.shape[0]}"
        )


def _child_log_prob(logits: Tensor, child: Tensor) -> Tensor:
    return logits.gather(1, child.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, 1)


class HierarchicalSoftmaxHead(TreeSoftmaxHead):
    """Hierarchical softmax over a frequency-built tree (see the module docstring).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        counts: corpus frequency of each word id (any id order); required.
        ignore_index: target value that is ignored.
        tree: ``"kary"`` (shallow tree by recursive equal-mass frequency binning) or
            ``"huffman"`` (binary Huffman tree, word2vec).
        branching: children per node of the ``"kary"`` tree; default ``ceil(√V)`` (depth 2-3).
    """

    uses_counts = True

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | None = None,
        ignore_index: int = -100,
        tree: str = "kary",
        branching: int | None = None,
    ) -> None:
        counts = as_counts(counts, vocab_size, "hierarchical")
        if tree == "huffman":
            if branching is not None:
                raise ValueError("branching only applies to tree='kary'; drop it for 'huffman'")
            built = huffman_tree(counts)
        elif tree == "kary":
            if branching is None:
                branching = max(2, math.ceil(math.sqrt(vocab_size)))
            branching = check_int("branching", branching, minimum=2, hint="or None for ceil(√V)")
            built = binned_tree(counts, branching)
        else:
            raise ValueError(f"tree must be 'kary' or 'huffman', got {tree!r}")
        super().__init__(in_features, vocab_size, tree=built, ignore_index=ignore_index)
        self.tree_kind = tree
        self.branching = branching

"""Trees of softmax nodes over a vocabulary, and their padded-path tensors (pure, deterministic).

A :class:`Tree` has internal nodes ``0..N-1`` in breadth-first order (node 0 is the root, nodes of
one depth are contiguous) whose children are words (leaves) or other internal nodes. Every word is
exactly one leaf. The hierarchical and class-based heads give each *edge* one output row, so node
``j`` owns the rows ``offset[j] : offset[j] + width[j]`` of one ``[E, d]`` matrix
(``E = Σ_j width[j] = V + N - 1``), and
``log p(w) = Σ_{(j, c) on w's path} log softmax(rows of j)[c]``.

Builders (counts in any id order; structure is built in frequency-rank order, ties by id):
    - :func:`huffman_tree`: binary Huffman tree (word2vec): frequent words get short paths, the
      expected path length is the optimal code length.
    - :func:`binned_tree`: k-ary tree by recursive equal-mass frequency binning; with
      ``max_depth=2`` it is the class-based softmax (root = classes, class nodes = words).

Shapes of :func:`tree_tensors` (``D`` = the deepest leaf's depth):
    - ``path_nodes``, ``path_children``: ``[V, D]`` long, the node and child index at each depth
      of word ``w``'s path (0 past its end); ``path_mask``: ``[V, D]`` bool
    - ``node_offset``, ``node_width``, ``node_depth``, ``node_parent_row``: ``[N]`` long
    - ``edge_node``, ``edge_child``: ``[E]`` long (child codes: ``< V`` word, ``≥ V`` node ``+ V``)
    - ``word_row``: ``[V]`` long, the row of the edge that ends at each word
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lm_heads._check import check_int
from lm_heads.counts import equal_mass_bins, frequency_order

__all__ = ["Tree", "TreeTensors", "binned_tree", "huffman_tree", "tree_tensors"]


@dataclass(frozen=True)
class Tree:
    """Internal nodes in breadth-first order; ``children[j]`` lists codes: word ``w`` is ``w``,
    internal node ``k`` is ``vocab_size + k``."""

    vocab_size: int
    children: tuple[tuple[int, ...], ...]

    @property
    def num_nodes(self) -> int:
        return len(self.children)

    @property
    def num_edges(self) -> int:
        return sum(len(c) for c in self.children)


class TreeTensors(NamedTuple):
    """The padded-path representation of a :class:`Tree` (see the module docstring)."""

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


def huffman_tree(counts: Tensor) -> Tree:
    """Binary Huffman tree over ``counts [V]`` (any id order), heavier child first.

    Two-queue construction over the frequency-sorted words (O(V) after the sort): leaves in
    ascending count order, merged nodes in the order they are made (also ascending); on a tie the
    leaf is taken first, which keeps the tree shallow.
    """
    vocab_size = counts.numel()
    id_of_rank, _ = frequency_order(counts)
    leaf_count = counts[id_of_rank].flip(0).tolist()
    leaf_code = id_of_rank.flip(0).tolist()
    node_count: list[float] = []
    children: list[tuple[int, int]] = []
    i = j = 0  # fronts of the leaf queue and of the merged-node queue

    def pop() -> tuple[float, int]:
        nonlocal i, j
        if i < vocab_size and (j >= len(node_count) or leaf_count[i] <= node_count[j]):
            i += 1
            return leaf_count[i - 1], leaf_code[i - 1]
        j += 1
        return node_count[j - 1], vocab_size + j - 1

    for _ in range(vocab_size - 1):
        c0, a = pop()
        c1, b = pop()
        children.append((b, a))
        node_count.append(c0 + c1)
    return _breadth_first(vocab_size, children, len(children) - 1)


def binned_tree(counts: Tensor, branching: int, max_depth: int | None = None) -> Tree:
    """k-ary tree by recursive equal-mass frequency binning (counts in any id order).

    A node over a frequency-sorted range of ``s`` words holds them all as leaves when
    ``s <= branching`` or when its children would exceed ``max_depth``. Otherwise it splits the
    range into contiguous bins of about equal unigram mass
    (:func:`~lm_heads.counts.equal_mass_bins`), a bin of one word being a leaf and a larger bin a
    child node: the root into ``branching`` bins, a deeper node into ``ceil(s / branching)`` bins
    (at most ``branching``) so that its children hold about ``branching`` words each instead of
    making many tiny nodes. Frequent words thus sit near the root; with ``max_depth=2`` the tree
    is the class-based softmax with ``branching`` equal-mass classes.
    """
    vocab_size = counts.numel()
    branching = check_int("branching", branching, minimum=1)
    if max_depth is not None:
        max_depth = check_int("max_depth", max_depth, minimum=1, hint="or None")
    id_of_rank, _ = frequency_order(counts)
    sorted_counts = counts[id_of_rank]
    ids = id_of_rank.tolist()
    children: list[tuple[int, ...]] = []

    def build(lo: int, hi: int, depth: int) -> int:
        node = len(children)
        children.append(())
        if hi - lo <= branching or (max_depth is not None and depth + 1 >= max_depth):
            children[node] = tuple(ids[lo:hi])
            return node
        num_bins = branching if depth == 0 else min(branching, -(-2 * (hi - lo) // branching))
        bounds = (equal_mass_bins(sorted_counts[lo:hi], num_bins) + lo).tolist()
        codes = []
        for a, b in itertools.pairwise(bounds):
            codes.append(ids[a] if b - a == 1 else vocab_size + build(a, b, depth + 1))
        children[node] = tuple(codes)
        return node

    root = build(0, vocab_size, 0)
    return _breadth_first(vocab_size, children, root)


def _breadth_first(vocab_size: int, children: Sequence[tuple[int, ...]], root: int) -> Tree:
    """Renumber internal nodes breadth-first from ``root`` (child order is kept)."""
    order = [root]
    for node in order:  # grows while iterating: a queue
        order.extend(c - vocab_size for c in children[node] if c >= vocab_size)
    new_id = {old: new for new, old in enumerate(order)}
    relabel = [
        tuple(c if c < vocab_size else vocab_size + new_id[c - vocab_size] for c in children[old])
        for old in order
    ]
    return Tree(vocab_size, tuple(relabel))


def tree_tensors(tree: Tree) -> TreeTensors:
    """Padded paths and per-node/per-edge index tensors of ``tree`` (CPU, long/bool)."""
    vocab_size, num_nodes = tree.vocab_size, tree.num_nodes
    width = torch.tensor([len(c) for c in tree.children], dtype=torch.long)
    if bool((width < 1).any()):
        raise ValueError("every internal node needs at least one child")
    offset = torch.cumsum(width, 0) - width
    edge_child = torch.tensor([c for cs in tree.children for c in cs], dtype=torch.long)
    num_edges = edge_child.numel()
    edge_node = torch.repeat_interleave(torch.arange(num_nodes), width)
    edge_pos = torch.arange(num_edges) - offset[edge_node]

    is_word = edge_child < vocab_size
    words = edge_child[is_word]
    if words.numel() != vocab_size or not torch.equal(
        torch.sort(words).values, torch.arange(vocab_size)
    ):
        raise ValueError("every word must be exactly one leaf of the tree")
    word_row = torch.empty(vocab_size, dtype=torch.long)
    word_row[words] = torch.nonzero(is_word).squeeze(1)
    parent_row = torch.zeros(num_nodes, dtype=torch.long)
    child_nodes = edge_child[~is_word] - vocab_size
    parent_row[child_nodes] = torch.nonzero(~is_word).squeeze(1)
    parent_node = edge_node[parent_row]
    if num_nodes > 1 and not bool((parent_node[1:] < torch.arange(1, num_nodes)).all()):
        raise ValueError("internal nodes must be numbered breadth-first (parents first)")

    # Level by level from the root: the depth of the deepest node passes of whole-tensor updates.
    node_depth = torch.zeros(num_nodes, dtype=torch.long)
    frontier = torch.zeros(num_nodes, dtype=torch.bool)
    frontier[0] = True
    while bool(frontier.any()):
        reached = frontier[parent_node] & ~frontier
        reached[0] = False
        node_depth[reached] = node_depth[parent_node[reached]] + 1
        frontier = reached

    # Walk every word's path from its leaf up, all words at once; a row at depth l sits in column l.
    word_depth = node_depth[edge_node[word_row]] + 1
    max_depth = int(word_depth.max())
    path_rows = torch.zeros(vocab_size, max_depth, dtype=torch.long)
    words_all = torch.arange(vocab_size)
    row = word_row.clone()
    alive = torch.ones(vocab_size, dtype=torch.bool)
    while bool(alive.any()):
        node = edge_node[row]
        path_rows[words_all[alive], node_depth[node[alive]]] = row[alive]
        alive = alive & (node != 0)
        row = parent_row[node]
    path_mask = torch.arange(max_depth) < word_depth.unsqueeze(1)
    path_nodes = torch.where(path_mask, edge_node[path_rows], 0)
    path_children = torch.where(path_mask, edge_pos[path_rows], 0)
    return TreeTensors(
        path_nodes=path_nodes,
        path_children=path_children,
        path_mask=path_mask,
        node_offset=offset,
        node_width=width,
        node_depth=node_depth,
        node_parent_row=parent_row,
        edge_node=edge_node,
        edge_child=edge_child,
        word_row=word_row,
    )

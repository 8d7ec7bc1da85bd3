"""Tree invariants: one leaf per word, consistent padded paths, Huffman optimality, binning."""

from __future__ import annotations

import heapq
import itertools

import pytest
import torch

from lm_heads.counts import equal_mass_bins, frequency_order
from lm_heads.heads.tree import Tree, binned_tree, huffman_tree, tree_tensors
from tests.heads.utils import zipf_counts

TREES = {
    "huffman": lambda c: huffman_tree(c),
    "kary3": lambda c: binned_tree(c, 3),
    "kary-sqrt": lambda c: binned_tree(c, 10),
    "class": lambda c: binned_tree(c, 9, max_depth=2),
}


def walk(tree: Tree, word: int) -> list[tuple[int, int]]:
    """(node, child index) pairs from the root to ``word``, by search over ``children``."""
    parent = {}
    for node, codes in enumerate(tree.children):
        for index, code in enumerate(codes):
            parent[code] = (node, index)
    path, code = [], word
    while code in parent:
        node, index = parent[code]
        path.append((node, index))
        code = tree.vocab_size + node
    return path[::-1]


@pytest.mark.parametrize("kind", sorted(TREES))
def test_paths_are_consistent(kind: str) -> None:
    counts = zipf_counts(97).double()
    tree = TREES[kind](counts)
    tt = tree_tensors(tree)
    leaves = sorted(c for codes in tree.children for c in codes if c < tree.vocab_size)
    assert leaves == list(range(97)), "every word is exactly one leaf"
    assert tt.path_nodes.shape == tt.path_mask.shape == (97, int(tt.path_mask.sum(1).max()))
    for word in range(97):
        expected = walk(tree, word)
        length = int(tt.path_mask[word].sum())
        assert tt.path_mask[word].tolist() == [True] * length + [False] * (
            tt.path_mask.shape[1] - length
        )
        got = list(
            zip(
                tt.path_nodes[word, :length].tolist(),
                tt.path_children[word, :length].tolist(),
                strict=False,
            )
        )
        assert got == expected
        assert tt.path_nodes[word, 0] == 0, "paths start at the root"
        assert tt.node_depth[tt.path_nodes[word, :length]].tolist() == list(range(length))
        rows = tt.node_offset[tt.path_nodes[word, :length]] + tt.path_children[word, :length]
        assert tt.edge_child[rows[-1]] == word and tt.word_row[word] == rows[-1]
        assert (tt.edge_child[rows[:-1]] == 97 + tt.path_nodes[word, 1:length]).all()
    assert (tt.node_depth[1:] >= tt.node_depth[:-1]).all(), "breadth-first numbering"
    assert int(tt.node_width.sum()) == tree.num_edges == 97 + tree.num_nodes - 1


def reference_huffman_lengths(weights: list[float]) -> list[int]:
    """Textbook heap Huffman: each merge adds one bit to every word below it."""
    heap = [(w, i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    lengths = [0] * len(weights)
    tiebreak = len(weights)
    while len(heap) > 1:
        w0, _, a = heapq.heappop(heap)
        w1, _, b = heapq.heappop(heap)
        for i in a + b:
            lengths[i] += 1
        heapq.heappush(heap, (w0 + w1, tiebreak, a + b))
        tiebreak += 1
    return lengths


def test_huffman_lengths_match_a_reference_implementation() -> None:
    # Distinct generic weights: the optimal code lengths are unique.
    counts = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tt = tree_tensors(huffman_tree(counts))
    assert tt.path_mask.sum(1).tolist() == reference_huffman_lengths(counts.tolist())


def test_huffman_expected_length_is_optimal_with_ties() -> None:
    counts = zipf_counts(300).double()  # many tied counts in the tail
    lengths = tree_tensors(huffman_tree(counts)).path_mask.sum(1).double()
    reference = torch.tensor(reference_huffman_lengths(counts.tolist()), dtype=torch.float64)
    torch.testing.assert_close((counts * lengths).sum(), (counts * reference).sum())
    kraft = (2.0**-lengths).sum()
    torch.testing.assert_close(kraft, torch.tensor(1.0, dtype=torch.float64))
    # Frequent words get paths no longer than rarer ones.
    id_of_rank, _ = frequency_order(counts)
    assert (lengths[id_of_rank][1:] >= lengths[id_of_rank][:-1]).all()


def test_class_tree_has_equal_mass_bins() -> None:
    counts = zipf_counts(500).double()
    tree = binned_tree(counts, 22, max_depth=2)
    id_of_rank, _ = frequency_order(counts)
    bounds = equal_mass_bins(counts[id_of_rank], 22).tolist()
    assert len(tree.children[0]) == 22
    for c, code in enumerate(tree.children[0]):
        members = id_of_rank[bounds[c] : bounds[c + 1]].tolist()
        if len(members) == 1:
            assert code == members[0], "a one-word class is a leaf of the root"
        else:
            assert list(tree.children[code - 500]) == members
    masses = torch.tensor(
        [float(counts[id_of_rank[a:b]].sum() + (b - a)) for a, b in itertools.pairwise(bounds)]
    )
    multi = torch.tensor([b - a > 1 for a, b in itertools.pairwise(bounds)])
    # Classes of several words each hold about 1/C of the (smoothed) mass.
    share = masses[multi] / masses.sum()
    assert share.max() < 2.5 / 22 and share.min() > 0.3 / 22


def test_kary_tree_is_shallow_and_frequency_ordered() -> None:
    counts = zipf_counts(5000).double()
    tree = binned_tree(counts, 71)
    tt = tree_tensors(tree)
    assert int(tt.node_width.max()) <= 71
    assert tt.path_mask.shape[1] <= 3
    depth = tt.path_mask.sum(1)
    id_of_rank, _ = frequency_order(counts)
    assert (depth[id_of_rank][1:] >= depth[id_of_rank][:-1]).all()


@pytest.mark.parametrize("kind", sorted(TREES))
def test_counts_order_only_relabels_words(kind: str) -> None:
    sorted_counts = torch.arange(60, 0, -1, dtype=torch.float64) ** 1.3  # distinct: no ties
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    shuffled = torch.empty_like(sorted_counts)
    shuffled[perm] = sorted_counts  # word i of the sorted vocabulary is word perm[i] here
    a, b = TREES[kind](sorted_counts), TREES[kind](shuffled)
    relabel = [tuple(int(perm[c]) if c < 60 else c for c in codes) for codes in a.children]
    assert tuple(relabel) == b.children


def test_builders_are_deterministic_and_validate() -> None:
    counts = zipf_counts(80).double()
    assert huffman_tree(counts) == huffman_tree(counts.clone())
    assert binned_tree(counts, 5) == binned_tree(counts.clone(), 5)
    with pytest.raises(ValueError, match="branching"):
        binned_tree(counts, 0)
    with pytest.raises(ValueError, match="exactly one leaf"):
        tree_tensors(Tree(3, ((0, 1, 1),)))
    two = tree_tensors(huffman_tree(torch.tensor([3.0, 5.0])))
    assert two.path_mask.tolist() == [[True], [True]]


def test_class_head_says_how_many_classes_it_built() -> None:
    # Frequency binning gives a word above 1/C of the mass a class of its own: 200 classes asked
    # on Zipfian counts build 108, which the repr once showed only as "nodes=109".
    from lm_heads import build_head

    zipf = 1e6 / torch.arange(1, 33_279, dtype=torch.float64)
    head = build_head("class", 16, 33_278, counts=zipf, num_classes=200)
    assert head.classes_built == 108 < head.num_classes
    assert "num_classes=200 (108 built" in repr(head)
    even = build_head("class", 16, 1000, counts=torch.ones(1000), num_classes=10)
    assert even.classes_built == 10
    assert "num_classes=10, largest class=100" in repr(even)

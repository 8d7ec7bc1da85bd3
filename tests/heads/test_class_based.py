"""Class-based softmax against a naive per-token formula, and its options."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lm_heads import build_head
from lm_heads.counts import equal_mass_bins, frequency_order
from lm_heads.heads.class_based import ClassBasedSoftmaxHead
from tests.heads.utils import zipf_counts

V, D, C = 40, 6, 6


def naive_log_prob(hidden, class_w, class_b, word_w, word_b, classes):
    """log p(w|h) = log softmax_c(U h + a)[class(w)] + log softmax_{w' in class}(X h + e)[w]."""
    out = torch.empty(hidden.shape[0], V, dtype=hidden.dtype)
    for i in range(hidden.shape[0]):
        class_logits = [float(class_w[c] @ hidden[i] + class_b[c]) for c in range(len(classes))]
        class_norm = math.log(sum(math.exp(z) for z in class_logits))
        for c, members in enumerate(classes):
            word_logits = {w: float(word_w[w] @ hidden[i] + word_b[w]) for w in members}
            word_norm = math.log(sum(math.exp(z) for z in word_logits.values()))
            for w in members:
                within = 0.0 if len(members) == 1 else word_logits[w] - word_norm
                out[i, w] = class_logits[c] - class_norm + within
    return out


@pytest.mark.parametrize("gather_width", [16, 0], ids=["gather", "sorted"])
def test_matches_naive_formula(gather_width: int) -> None:
    counts = zipf_counts(V)
    head = ClassBasedSoftmaxHead(D, V, counts=counts, num_classes=C).double()
    head.gather_width = gather_width
    head._plan()
    id_of_rank, _ = frequency_order(counts.double())
    bounds = equal_mass_bins(counts.double()[id_of_rank], C).tolist()
    classes = [id_of_rank[a:b].tolist() for a, b in itertools.pairwise(bounds)]
    g = torch.Generator().manual_seed(0)
    class_w, class_b = (
        torch.randn(C, D, generator=g, dtype=torch.float64),
        torch.randn(C, generator=g, dtype=torch.float64),
    )
    word_w, word_b = (
        torch.randn(V, D, generator=g, dtype=torch.float64),
        torch.randn(V, generator=g, dtype=torch.float64),
    )
    # Put the naive parameters where the head keeps them: root rows are the classes in bin order,
    # a class node's rows its words in frequency order (a one-word class is the word's root row).
    with torch.no_grad():
        for c, members in enumerate(classes):
            head.weight[c], head.bias[c] = class_w[c], class_b[c]
            if len(members) > 1:
                node = int(head.edge_child[c]) - V
                rows = int(head.node_offset[node]) + torch.arange(len(members))
                assert head.edge_child[rows].tolist() == members
                head.weight[rows], head.bias[rows] = word_w[members], word_b[members]
            else:
                assert int(head.edge_child[c]) == members[0]
    hidden = torch.randn(7, D, generator=g, dtype=torch.float64)
    expected = naive_log_prob(hidden, class_w, class_b, word_w, word_b, classes)
    torch.testing.assert_close(head.log_prob(hidden), expected)
    target = torch.randint(0, V, (7,), generator=g)
    torch.testing.assert_close(
        head.target_log_prob(hidden, target), expected.gather(1, target[:, None]).squeeze(1)
    )
    loss = head(hidden, target).loss
    torch.testing.assert_close(loss, -expected.gather(1, target[:, None]).mean())


def test_shuffled_counts_give_the_same_distribution_relabelled() -> None:
    sorted_counts = (torch.arange(V, 0, -1, dtype=torch.float64) ** 1.5).round()
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(2))
    shuffled = torch.empty_like(sorted_counts)
    shuffled[perm] = sorted_counts
    torch.manual_seed(0)
    a = ClassBasedSoftmaxHead(D, V, counts=sorted_counts)
    torch.manual_seed(0)
    b = ClassBasedSoftmaxHead(D, V, counts=shuffled)
    hidden = torch.randn(5, D)
    torch.testing.assert_close(b.log_prob(hidden)[:, perm], a.log_prob(hidden))
    target = torch.randint(0, V, (5,))
    torch.testing.assert_close(
        b.target_log_prob(hidden, perm[target]), a.target_log_prob(hidden, target)
    )


def test_default_and_extreme_class_counts() -> None:
    counts = zipf_counts(V)
    assert ClassBasedSoftmaxHead(D, V, counts=counts).num_classes == round(math.sqrt(V))
    hidden = torch.randn(4, D)
    for num_classes in (1, V):  # one class / one word per class: both are a plain softmax
        head = ClassBasedSoftmaxHead(D, V, counts=counts, num_classes=num_classes)
        torch.testing.assert_close(
            head.log_prob(hidden).logsumexp(-1), torch.zeros(4), atol=1e-5, rtol=0
        )
    assert ClassBasedSoftmaxHead(D, V, counts=counts, num_classes=V).path_mask.shape[1] == 1


@pytest.mark.parametrize("bad", [0, V + 1, 2.5, True])
def test_bad_num_classes(bad) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_head("class", D, V, counts=zipf_counts(V), num_classes=bad)


def test_needs_counts() -> None:
    with pytest.raises(ValueError, match="needs counts"):
        build_head("class", D, V)

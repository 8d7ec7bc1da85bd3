"""Hierarchical softmax: both trees and both compute paths (per-token gather, sorted by node)."""

from __future__ import annotations

import math

import pytest
import torch

from lm_heads import build_head
from lm_heads.heads.hierarchical import HierarchicalSoftmaxHead, TreeSoftmaxHead
from lm_heads.heads.tree import binned_tree
from tests.heads.utils import zipf_counts, zipf_targets

V, D = 60, 5
# gather_width 0 sorts tokens by node everywhere; 3 mixes both paths at one depth.
CONFIGS = [
    ({"tree": "huffman"}, 16),
    ({"tree": "kary"}, 16),
    ({"tree": "kary"}, 0),
    ({"tree": "kary", "branching": 4}, 3),
    ({"tree": "kary", "branching": 4}, 0),
]
ids = [f"{o.get('tree')}-{o.get('branching', 'sqrt')}-gw{g}" for o, g in CONFIGS]
configs = pytest.mark.parametrize(("options", "gather_width"), CONFIGS, ids=ids)


def make(
    options: dict, gather_width: int, counts: torch.Tensor | None = None
) -> HierarchicalSoftmaxHead:
    torch.manual_seed(0)
    head = HierarchicalSoftmaxHead(
        D, V, counts=zipf_counts(V) if counts is None else counts, **options
    )
    with torch.no_grad():
        head.bias.normal_()  # non-zero biases catch row mix-ups
    head.gather_width = gather_width
    head._plan()
    if gather_width == 3:  # the mixed configuration really mixes
        assert any(p.gather_width and p.wide_segments for p in head._depths)
    return head


@configs
def test_normalised_and_target_equals_gather(options, gather_width) -> None:
    head = make(options, gather_width)
    hidden = torch.randn(33, D)
    target = zipf_targets(zipf_counts(V), (33,), seed=3)
    log_prob = head.log_prob(hidden)
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(33), atol=1e-5, rtol=0)
    expected = log_prob.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(head.target_log_prob(hidden, target), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head(hidden, target).loss, -expected.mean(), atol=1e-5, rtol=1e-5)
    assert torch.equal(head.predict(hidden), log_prob.argmax(-1))


@configs
def test_gradcheck_float64(options, gather_width) -> None:
    head = make(options, gather_width).double()
    hidden = torch.randn(7, D, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 5, 17, V - 1, 30])
    assert torch.autograd.gradcheck(lambda h: head.target_log_prob(h, target), (hidden,))
    weight = head.weight.detach().clone().requires_grad_()

    def by_weight(w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"weight": w}, (hidden.detach(), target)).loss

    assert torch.autograd.gradcheck(by_weight, (weight,))


@configs
def test_every_parameter_gets_a_gradient(options, gather_width) -> None:
    head = make(options, gather_width)
    hidden = torch.randn(8, D)
    frequent = torch.sort(zipf_counts(V), descending=True).indices[0]
    head(hidden, frequent.repeat(8)).loss.backward()
    for p in head.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@configs
def test_sampling_follows_the_distribution(options, gather_width) -> None:
    head = make(options, gather_width)
    hidden = torch.randn(1, D).expand(20000, D)
    draws = head.sample(hidden, generator=torch.Generator().manual_seed(0))
    empirical = torch.bincount(draws, minlength=V).double() / draws.numel()
    expected = head.log_prob(hidden[:1])[0].double().exp()
    assert 0.5 * (empirical - expected).abs().sum() < 0.04


@configs
def test_state_dict_round_trip_from_another_id_order(options, gather_width) -> None:
    head = make(options, gather_width)
    other = make(options, gather_width, counts=zipf_counts(V, seed=9))
    other.load_state_dict(head.state_dict())
    hidden, target = torch.randn(9, D), torch.randint(0, V, (9,))
    torch.testing.assert_close(other.log_prob(hidden), head.log_prob(hidden))
    torch.testing.assert_close(
        other.target_log_prob(hidden, target), head.target_log_prob(hidden, target)
    )


@configs
def test_bf16_autocast(options, gather_width) -> None:
    head = make(options, gather_width)
    hidden, target = torch.randn(9, D), torch.randint(0, V, (9,))
    reference = head(hidden, target).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(hidden, target).loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, atol=5e-2, rtol=5e-2)


def test_huffman_uniform_nodes_give_two_to_the_minus_code_length() -> None:
    head = HierarchicalSoftmaxHead(D, V, counts=zipf_counts(V), tree="huffman")
    with torch.no_grad():
        head.weight.zero_()
    lengths = head.path_mask.sum(1).float()
    torch.testing.assert_close(
        head.log_prob(torch.randn(2, D)), (-lengths * math.log(2)).expand(2, V)
    )


def test_shuffled_counts_give_the_same_distribution_relabelled() -> None:
    sorted_counts = (torch.arange(V, 0, -1, dtype=torch.float64) ** 1.2).round()
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(4))
    shuffled = torch.empty_like(sorted_counts)
    shuffled[perm] = sorted_counts
    for tree in ("huffman", "kary"):
        a, b = make({"tree": tree}, 16, sorted_counts), make({"tree": tree}, 16, shuffled)
        hidden = torch.randn(6, D)
        torch.testing.assert_close(b.log_prob(hidden)[:, perm], a.log_prob(hidden))


def test_default_kary_is_shallow() -> None:
    head = HierarchicalSoftmaxHead(D, 3000, counts=zipf_counts(3000))
    assert head.branching == math.ceil(math.sqrt(3000))
    assert head.path_mask.shape[1] <= 3


def test_tree_head_accepts_any_tree() -> None:
    counts = zipf_counts(V).double()
    head = TreeSoftmaxHead(D, V, tree=binned_tree(counts, 7, max_depth=2))
    torch.testing.assert_close(
        head.log_prob(torch.randn(3, D)).logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="vocab_size"):
        TreeSoftmaxHead(D, V + 1, tree=binned_tree(counts, 7))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"tree": "binary"}, "'kary' or 'huffman'"),
        ({"tree": "kary", "branching": 1}, "branching"),
        ({"tree": "huffman", "branching": 4}, "only applies"),
    ],
)
def test_bad_options(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_head("hierarchical", D, V, counts=zipf_counts(V), **options)


def test_loading_a_deeper_tree_fails_clearly_and_changes_nothing() -> None:
    deep = build_head("hierarchical", 8, 400, counts=torch.arange(1, 401) ** 3, tree="huffman")
    shallow = build_head("hierarchical", 8, 400, counts=torch.ones(400), tree="huffman")
    before = {k: v.clone() for k, v in shallow.state_dict().items()}
    hidden = torch.randn(3, 8)
    log_prob = shallow.log_prob(hidden)
    with pytest.raises(ValueError, match=r"another tree.*path_nodes \(400, 29\) vs \(400, 9\)"):
        shallow.load_state_dict(deep.state_dict())
    for key, value in shallow.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    torch.testing.assert_close(shallow.log_prob(hidden), log_prob)

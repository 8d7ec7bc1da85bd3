"""Hyperspherical prototype head: prototype placement, loss formula, gradient routing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm_heads.heads.prototypes import HypersphericalPrototypeHead, hyperspherical_prototypes


def max_pairwise_cosine(points: torch.Tensor) -> float:
    cosines = points @ points.t()
    cosines.fill_diagonal_(-2.0)
    return float(cosines.max())


# ---------------------------------------------------------------------------------------------
# Placement
@pytest.mark.parametrize(("num", "dim"), [(2, 3), (10, 16), (17, 16), (64, 64)])
def test_simplex_is_optimal_for_few_words(num: int, dim: int) -> None:
    points = hyperspherical_prototypes(num, dim)
    assert points.shape == (num, dim)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(num))
    cosines = points @ points.t()
    off_diagonal = cosines[~torch.eye(num, dtype=torch.bool)]
    # The regular simplex: every pair at cosine −1/(V−1), the minimum possible maximum.
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, -1 / (num - 1)))


def test_optimisation_separates_random_points() -> None:
    num, dim = 150, 16
    random = F.normalize(torch.randn(num, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    points = hyperspherical_prototypes(num, dim, steps=200, seed=0)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(num))
    assert max_pairwise_cosine(points) < 0.6 * max_pairwise_cosine(random)
    assert max_pairwise_cosine(points) < 0.5


def test_placement_is_deterministic_per_seed() -> None:
    a = hyperspherical_prototypes(80, 8, steps=20, seed=3)
    b = hyperspherical_prototypes(80, 8, steps=20, seed=3)
    c = hyperspherical_prototypes(80, 8, steps=20, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    a.zero_()  # the memoised copy must not be shared with callers
    assert torch.equal(hyperspherical_prototypes(80, 8, steps=20, seed=3), b)


def test_large_vocabularies_skip_the_quadratic_optimisation() -> None:
    # V² d' > 2³²: the budget cannot visit every row, so the points stay random (and cheap).
    points = hyperspherical_prototypes(3000, 512, steps=200, seed=0)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(3000))
    assert max_pairwise_cosine(points) < math.sqrt(4 * math.log(3000) / 512) * 1.3


# ---------------------------------------------------------------------------------------------
# The head
def make(d: int = 12, v: int = 40, **options) -> HypersphericalPrototypeHead:
    head = HypersphericalPrototypeHead(d, v, **options).double()
    return head


def naive_cosines(head, hidden):
    # Prototypes are unit vectors by construction (to float32 rounding, which is why the
    # cosine is taken against them as stored rather than renormalised).
    torch.testing.assert_close(
        head.prototypes.norm(dim=-1), torch.ones_like(head.prototypes[:, 0]), atol=1e-6, rtol=0
    )
    z = head.proj(hidden)
    return (z / z.norm(dim=-1, keepdim=True)) @ head.prototypes.t()


def naive_loss(head, hidden, target):
    cos_all = naive_cosines(head, hidden)
    cos_target = cos_all.gather(1, target[:, None]).squeeze(1)
    ce = F.cross_entropy(F.softplus(head.learned_scale.raw) * cos_all, target, reduction="none")
    return (1 - cos_target) ** 2, ce


@pytest.mark.parametrize("ce_weight", [0.0, 0.3, 1.0])
def test_training_loss_value_and_gradient_routing(ce_weight: float) -> None:
    head = make(ce_weight=ce_weight).train()
    hidden = torch.randn(15, 12, dtype=torch.float64)
    target = torch.randint(0, 40, (15,))

    loss = head(hidden, target).loss
    grads = torch.autograd.grad(loss, [head.proj.weight, head.learned_scale.raw])

    proto, ce = naive_loss(head, hidden, target)
    torch.testing.assert_close(loss, (proto + ce).mean())
    # The prototype loss drives the projection; the CE reaches it with weight ce_weight and
    # always trains the temperature.
    g_proto = torch.autograd.grad(proto.mean(), head.proj.weight, retain_graph=True)[0]
    g_ce, g_scale = torch.autograd.grad(ce.mean(), [head.proj.weight, head.learned_scale.raw])
    torch.testing.assert_close(grads[0], g_proto + ce_weight * g_ce)
    torch.testing.assert_close(grads[1], g_scale)
    assert not head.is_exact


def test_eval_loss_is_the_nll_of_a_normalised_distribution() -> None:
    head = make().eval()
    hidden = torch.randn(15, 12, dtype=torch.float64)
    target = torch.randint(0, 40, (15,))
    log_prob = head.log_prob(hidden)
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(15, dtype=torch.float64))
    cos_all = naive_cosines(head, hidden)
    s = F.softplus(head.learned_scale.raw)
    torch.testing.assert_close(log_prob, (s * cos_all).log_softmax(-1).detach())
    nll = -log_prob.gather(1, target[:, None]).squeeze(1)
    assert head.is_exact
    torch.testing.assert_close(head(hidden, target).loss, nll.mean())
    torch.testing.assert_close(head.target_log_prob(hidden, target), -nll)


def test_prototypes_are_a_fixed_buffer_restored_by_state_dict() -> None:
    head = HypersphericalPrototypeHead(12, 40, seed=0)
    assert "prototypes" in dict(head.named_buffers())
    assert all(p is not head.prototypes for p in head.parameters())
    other = HypersphericalPrototypeHead(12, 40, seed=1)
    assert not torch.equal(other.prototypes, head.prototypes)
    other.load_state_dict(head.state_dict())
    assert torch.equal(other.prototypes, head.prototypes)
    hidden = torch.randn(5, 12)
    torch.testing.assert_close(other.log_prob(hidden), head.log_prob(hidden))


def test_proto_dim_and_defaults() -> None:
    head = HypersphericalPrototypeHead(12, 40, proto_dim=6)
    assert head.prototypes.shape == (40, 6)
    assert head.proj.weight.shape == (6, 12)
    assert HypersphericalPrototypeHead(12, 40).prototypes.shape == (40, 12)
    assert head.output_embeddings() is None
    assert math.isclose(float(head.learned_scale().detach()), 16.0, rel_tol=1e-6)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="proto_dim must be an int ≥ 1"):
        HypersphericalPrototypeHead(4, 10, proto_dim=0)
    with pytest.raises(ValueError, match=r"ce_weight must be a number in \[0.0, 1.0\]"):
        HypersphericalPrototypeHead(4, 10, ce_weight=2.0)
    with pytest.raises(ValueError, match="scale must be a positive"):
        HypersphericalPrototypeHead(4, 10, scale=-1.0)
    with pytest.raises(ValueError, match="proto_steps must be an int ≥ 0"):
        HypersphericalPrototypeHead(4, 10, proto_steps=-1)


def test_prototype_sizes_go_through_the_shared_integer_check() -> None:
    assert hyperspherical_prototypes(np.int64(5), np.int64(3), steps=np.int64(2)).shape == (5, 3)
    with pytest.raises(ValueError, match=r"steps must be an int ≥ 0, got 2\.5"):
        hyperspherical_prototypes(5, 3, steps=2.5)
    with pytest.raises(ValueError, match="dim must be an int ≥ 1, got 0"):
        hyperspherical_prototypes(5, 0)

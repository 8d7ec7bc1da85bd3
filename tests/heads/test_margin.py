"""Cosine (AM-Softmax) and RBF-Softmax heads against explicit formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lm_heads.heads.margin import CosineSoftmaxHead, LearnedScale, RBFSoftmaxHead
from lm_heads.heads.prototypes import HypersphericalPrototypeHead


def explicit_cosine_logits(hidden, weight, scale):
    return scale * F.cosine_similarity(hidden[:, None, :], weight[None, :, :], dim=-1)


def explicit_rbf_logits(hidden, weight, scale, gamma):
    return scale * torch.exp(-torch.cdist(hidden, weight).square() / gamma)


# ---------------------------------------------------------------------------------------------
# Cosine / AM-Softmax
def test_cosine_eval_distribution_is_softmax_of_scaled_cosines() -> None:
    head = CosineSoftmaxHead(10, 70, scale=12.0, margin=0.3).double().eval()
    hidden = torch.randn(9, 10, dtype=torch.float64)
    target = torch.randint(0, 70, (9,))
    expected = explicit_cosine_logits(hidden, head.weight, 12.0).log_softmax(-1).detach()
    torch.testing.assert_close(head.log_prob(hidden), expected)
    nll = -expected.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(head.target_log_prob(hidden, target), -nll)
    torch.testing.assert_close(head(hidden, target).loss, nll.mean())
    assert head.is_exact


def test_cosine_margin_hits_only_the_target_and_only_in_training() -> None:
    scale, margin = 12.0, 0.3
    head = CosineSoftmaxHead(10, 70, scale=scale, margin=margin).double().train()
    hidden = torch.randn(9, 10, dtype=torch.float64)
    target = torch.randint(0, 70, (9,))
    logits = explicit_cosine_logits(hidden, head.weight, scale)
    with_margin = logits - scale * margin * F.one_hot(target, 70)
    expected = F.cross_entropy(with_margin, target)
    torch.testing.assert_close(head(hidden, target).loss, expected)
    assert not head.is_exact
    # The margin makes training harder than evaluation: the training loss is larger.
    eval_loss = head.eval()(hidden, target).loss
    torch.testing.assert_close(eval_loss, F.cross_entropy(logits, target))
    assert head.train()(hidden, target).loss > eval_loss
    # log_prob is the eval distribution even while training.
    torch.testing.assert_close(head.log_prob(hidden), logits.log_softmax(-1).detach())


def test_cosine_without_margin_is_exact_in_training() -> None:
    head = CosineSoftmaxHead(10, 70, margin=0.0).train()
    assert head.is_exact
    hidden, target = torch.randn(9, 10), torch.randint(0, 70, (9,))
    torch.testing.assert_close(
        head(hidden, target).loss, -head.target_log_prob(hidden, target).mean()
    )


def test_cosine_is_scale_invariant_in_hidden_and_weight() -> None:
    head = CosineSoftmaxHead(10, 70).eval()
    hidden = torch.randn(9, 10)
    reference = head.log_prob(hidden)
    with torch.no_grad():
        head.weight.mul_(7.0)
    torch.testing.assert_close(head.log_prob(0.01 * hidden), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_cosine_gradcheck(learn_scale: bool) -> None:
    head = CosineSoftmaxHead(5, 11, learn_scale=learn_scale).double().train()
    hidden = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 10, 10, 1, -100])

    def loss(h, w):
        return functional_call(head, {"weight": w}, (h, target)).loss

    assert torch.autograd.gradcheck(loss, (hidden, weight))


def test_cosine_scale_is_a_buffer_unless_learned() -> None:
    fixed = CosineSoftmaxHead(4, 10, scale=20.0)
    assert "log_scale" in dict(fixed.named_buffers())
    assert "log_scale" in fixed.state_dict()
    assert math.isclose(math.exp(float(fixed.log_scale)), 20.0, rel_tol=1e-6)
    learned = CosineSoftmaxHead(4, 10, scale=20.0, learn_scale=True)
    assert "log_scale" not in learned.state_dict()
    assert math.isclose(float(learned.scale().detach()), 20.0, rel_tol=1e-6)
    learned(torch.randn(5, 4), torch.randint(0, 10, (5,))).loss.backward()
    assert learned.learned_scale.raw.grad is not None and learned.learned_scale.raw.grad != 0


def _fit_scale(param: torch.nn.Parameter, scale, cos: torch.Tensor, target: torch.Tensor) -> list:
    """The recipe's update of a temperature: SGD at lr 20 after clipping the norm to 0.25."""
    opt = torch.optim.SGD([param], lr=20.0)
    history = []
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(scale() * cos, target).backward()
        torch.nn.utils.clip_grad_norm_([param], 0.25)
        opt.step()
        history.append(float(scale().detach()))
    return history


def test_learned_scale_settles_at_the_maximum_likelihood_temperature_under_sgd_at_lr_20() -> None:
    g = torch.Generator().manual_seed(0)
    n, vocab = 512, 2000
    cos = torch.randn(n, vocab, generator=g) * 0.1
    target = torch.randint(0, vocab, (n,), generator=g)
    cos[torch.arange(n), target] += 0.3
    # The likelihood is convex in s and d/ds = E_p[cos] − cos_c rises with s: bisect its root.
    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = torch.tensor((lo + hi) / 2, requires_grad=True)
        F.cross_entropy(mid * cos, target).backward()
        lo, hi = (float(mid), hi) if mid.grad < 0 else (lo, float(mid))
    learned = LearnedScale(16.0)
    settled = _fit_scale(learned.raw, learned, cos, target)[-50:]
    assert settled == pytest.approx([lo] * 50, rel=1e-3)
    # The parameterisation it replaced, log s, swings by e^{lr·clip} = e^5 at every step.
    log_scale = torch.nn.Parameter(torch.tensor(math.log(16.0)))
    swings = _fit_scale(log_scale, log_scale.exp, cos, target)[-50:]
    assert max(swings) / min(swings) > 100


@pytest.mark.parametrize("make", [
    lambda: CosineSoftmaxHead(6, 30, scale=12.0, learn_scale=True),
    lambda: HypersphericalPrototypeHead(6, 30, scale=12.0),
])  # fmt: skip
def test_a_checkpoint_with_log_scale_loads_into_the_softplus_scale(make) -> None:
    """lm_heads ≤ 0.3 saved the learned temperature as ``log_scale``: it loads unchanged."""
    head = make()
    with torch.no_grad():
        head.learned_scale.raw.fill_(7.0)
    old = {k: v for k, v in head.state_dict().items() if k != "learned_scale.raw"}
    old["log_scale"] = head.learned_scale().detach().log()
    fresh = make()
    fresh.load_state_dict(old)
    hidden = torch.randn(4, 6)
    torch.testing.assert_close(fresh.learned_scale(), head.learned_scale())
    torch.testing.assert_close(fresh.log_prob(hidden), head.log_prob(hidden))


# ---------------------------------------------------------------------------------------------
# RBF-Softmax
def test_rbf_matches_cdist_formula() -> None:
    head = RBFSoftmaxHead(10, 70, scale=9.0, gamma=4.0).double()
    hidden = torch.randn(9, 10, dtype=torch.float64)
    target = torch.randint(0, 70, (9,))
    logits = explicit_rbf_logits(hidden, head.weight, 9.0, 4.0).detach()
    torch.testing.assert_close(head.log_prob(hidden), logits.log_softmax(-1))
    torch.testing.assert_close(head(hidden, target).loss, F.cross_entropy(logits, target))
    torch.testing.assert_close(
        head.target_log_prob(hidden, target),
        logits.log_softmax(-1).gather(1, target[:, None]).squeeze(1),
    )
    assert head.is_exact and head.train().is_exact


def test_rbf_default_gamma_is_in_features() -> None:
    assert RBFSoftmaxHead(24, 10).gamma == 24.0


def test_rbf_squared_distances_are_non_negative_at_coincident_points() -> None:
    head = RBFSoftmaxHead(16, 30)
    hidden = 50 * head.weight.detach()[:5].clone()
    with torch.no_grad():
        head.weight.mul_(50)
    distances = head.squared_distances(hidden)
    assert (distances >= 0).all()
    # ‖h‖² − 2h·w + ‖w‖² cancels: its error is a few ulps of ‖h‖², not of the distance.
    tolerance = 8 * torch.finfo(torch.float32).eps * float(hidden.square().sum(-1).max())
    diagonal = distances[torch.arange(5), torch.arange(5)]
    torch.testing.assert_close(diagonal, torch.zeros(5), atol=tolerance, rtol=0)


def test_rbf_distances_ignore_bf16_autocast() -> None:
    head = RBFSoftmaxHead(32, 100)
    hidden = 3 * torch.randn(20, 32)
    reference = head.squared_distances(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distances = head.squared_distances(hidden)
    assert distances.dtype == torch.float32
    torch.testing.assert_close(distances, reference)


def test_rbf_gradcheck() -> None:
    head = RBFSoftmaxHead(5, 11, gamma=3.0).double()
    hidden = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 10, 10, 1, -100])

    def loss(h, w):
        return functional_call(head, {"weight": w}, (h, target)).loss

    assert torch.autograd.gradcheck(loss, (hidden, weight))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [CosineSoftmaxHead, RBFSoftmaxHead], ids=["cosine", "rbf"])
def test_output_embeddings_are_the_weight(cls) -> None:
    head = cls(6, 40)
    assert head.output_embeddings() is head.weight


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="scale must be a positive"):
        CosineSoftmaxHead(4, 10, scale=0.0)
    with pytest.raises(ValueError, match=r"margin must be a finite number ≥ 0"):
        CosineSoftmaxHead(4, 10, margin=-0.1)
    with pytest.raises(ValueError, match=r"margin must lie in \[0, 2\)"):
        CosineSoftmaxHead(4, 10, margin=2.0)
    with pytest.raises(ValueError, match="learn_scale must be True or False"):
        CosineSoftmaxHead(4, 10, learn_scale=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma must be a positive"):
        RBFSoftmaxHead(4, 10, gamma=-1.0)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        RBFSoftmaxHead(4, 10, scale=float("inf"))


@pytest.mark.parametrize(
    ("scale", "margin"),
    [(16.0, 0.9), (40.0, 0.4), (64.0, 0.1), (64.0, 0.35), (64.0, 0.625), (100.0, 0.4)],
)
def test_cosine_margin_loss_is_accurate_for_confident_targets(scale, margin) -> None:
    # s·m from 6.4 to 40 with every hidden state on its target's row (cos = 1): the float32
    # loss and gradient must follow float64 cross-entropy of the margin logits.
    torch.manual_seed(0)
    vocab, d = 50, 16
    head = CosineSoftmaxHead(d, vocab, scale=scale, margin=margin).train()
    target = torch.arange(0, vocab, 5)
    hidden = (head.weight.detach()[target] * 3.0).requires_grad_()
    loss = head(hidden, target).loss
    loss.backward()
    h64 = hidden.detach().double().requires_grad_()
    logits = explicit_cosine_logits(h64, head.weight.detach().double(), scale)
    expected = F.cross_entropy(logits - scale * margin * F.one_hot(target, vocab), target)
    expected.backward()
    assert expected > 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert h64.grad is not None and hidden.grad is not None
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-6)

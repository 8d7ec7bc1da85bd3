"""Spherical and Taylor softmax: the O(d²) Gram-matrix loss against the naive O(V d) formula."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from lm_heads import build_head
from lm_heads.heads.spherical import SphericalSoftmaxHead, TaylorSoftmaxHead, gram_matrix

HEADS = [SphericalSoftmaxHead, TaylorSoftmaxHead]
heads = pytest.mark.parametrize("cls", HEADS, ids=["spherical", "taylor"])


def pair(cls, d: int, v: int, dtype: torch.dtype = torch.float32, **options):
    """A Gram head and a naive twin with the same (random, biased) parameters."""
    gram = cls(d, v, **options).to(dtype)
    with torch.no_grad():
        gram.bias.normal_(0.0, 0.5)  # a non-zero bias exercises the bᵀW and bᵀb terms
    naive = cls(d, v, gram=False, **options).to(dtype)
    naive.load_state_dict(gram.state_dict())
    return gram, naive


def explicit_log_prob(cls, hidden, weight, bias, eps: float = 1e-2):
    """The papers' formulas, written out independently of the head code."""
    o = hidden @ weight.t() + bias
    score = o**2 + eps if cls is SphericalSoftmaxHead else 1 + o + o**2 / 2
    return torch.log(score / score.sum(-1, keepdim=True))


@heads
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=["f64", "f32"]
)
def test_gram_loss_and_gradients_match_naive(cls, dtype, tol) -> None:
    d, v = 12, 300
    gram, naive = pair(cls, d, v, dtype)
    hidden = torch.randn(40, d, dtype=dtype)
    target = torch.randint(0, v, (40,))
    target[::7] = -100
    losses, grads = [], []
    for head in (gram, naive):
        h = hidden.clone().requires_grad_()
        loss = head(h, target).loss
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [h, head.weight, head.bias]))
    torch.testing.assert_close(losses[0], losses[1], rtol=tol, atol=tol)
    for a, b, name in zip(grads[0], grads[1], ["hidden", "weight", "bias"], strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"d loss / d {name}")


@heads
def test_naive_formula_matches_the_papers(cls) -> None:
    head = cls(8, 50).double()
    with torch.no_grad():
        head.bias.normal_()
    hidden = torch.randn(10, 8, dtype=torch.float64)
    expected = explicit_log_prob(cls, hidden, head.weight, head.bias).detach()
    torch.testing.assert_close(head.log_prob(hidden), expected)
    target = torch.randint(0, 50, (10,))
    torch.testing.assert_close(
        head.target_log_prob(hidden, target), expected.gather(1, target[:, None]).squeeze(1)
    )


@heads
def test_log_prob_is_normalised_and_loss_is_its_nll(cls) -> None:
    head = cls(16, 200)
    hidden = 3 * torch.randn(4, 7, 16)
    target = torch.randint(0, 200, (4, 7))
    log_prob = head.log_prob(hidden)
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(4, 7), atol=1e-5, rtol=0)
    nll = -log_prob.gather(-1, target[..., None]).squeeze(-1)
    torch.testing.assert_close(head(hidden, target).loss, nll.mean(), rtol=1e-5, atol=1e-5)


@heads
def test_gradcheck_gram_loss_in_all_inputs(cls) -> None:
    head = cls(5, 9).double()
    hidden = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 8, 8, 1, -100])

    def loss(h, w, b):
        return functional_call(head, {"weight": w, "bias": b}, (h, target)).loss

    assert torch.autograd.gradcheck(loss, (hidden, weight, bias))


def test_gram_matrix_one_matmul_backward() -> None:
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(gram_matrix(weight), weight.t() @ weight)
    assert torch.autograd.gradcheck(gram_matrix, (weight,))


@heads
def test_float32_gram_is_accurate_for_full_rank_weights(cls) -> None:
    # V ≫ d (every LM): q ≥ σ_min(W̃)²‖h̃‖², so the Gram form's relative error is ~ u·d·cond(G̃).
    d, v = 64, 5000
    gram, _ = pair(cls, d, v, torch.float32)
    hidden = 4 * torch.randn(256, d)
    target = torch.randint(0, v, (256,))
    exact = (
        explicit_log_prob(cls, hidden.double(), gram.weight.double(), gram.bias.double())
        .gather(1, target[:, None])
        .squeeze(1)
    )
    torch.testing.assert_close(
        gram.target_log_prob(hidden, target).double(), exact.detach(), rtol=1e-5, atol=1e-5
    )


@heads
def test_quadratic_form_cancellation_stays_finite(cls) -> None:
    # Adversarial: h (large) in the null space of W (V < d), so q = ‖W h‖² ≈ 0 is a difference of
    # large terms in float32 and may round below zero. The value is then inaccurate (documented;
    # use gram=False) but the clamp keeps loss and gradients finite.
    d, v = 32, 8
    head = cls(d, v)
    with torch.no_grad():
        head.weight.mul_(100.0)
        null_space = torch.linalg.svd(head.weight.double(), full_matrices=True).Vh[v:]
        hidden = (1e3 * torch.randn(20, d - v).double() @ null_space).float()
    hidden.requires_grad_()
    loss = head(hidden, torch.randint(0, v, (20,))).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(head.weight.grad).all()


@heads
def test_bf16_autocast_keeps_the_normaliser_in_float32(cls) -> None:
    head = cls(32, 500)
    hidden = torch.randn(64, 32)
    target = torch.randint(0, 500, (64,))
    reference = head(hidden, target).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(hidden, target).loss
    # The Gram path runs with autocast off, so it is unaffected by bf16.
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)


def test_predict_uses_the_score_not_the_logit() -> None:
    hidden = torch.randn(30, 6)
    spherical = SphericalSoftmaxHead(6, 40)
    o = hidden @ spherical.weight.t() + spherical.bias
    assert torch.equal(spherical.predict(hidden), o.abs().argmax(-1))
    taylor = TaylorSoftmaxHead(6, 40)
    o = hidden @ taylor.weight.t() + taylor.bias
    assert torch.equal(taylor.predict(hidden), (o + 1).abs().argmax(-1))


@heads
def test_output_embeddings_are_the_weight(cls) -> None:
    head = cls(6, 40)
    assert head.output_embeddings() is head.weight


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="eps must be a positive"):
        SphericalSoftmaxHead(4, 10, eps=0.0)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        SphericalSoftmaxHead(4, 10, eps=float("inf"))
    with pytest.raises(ValueError, match="gram must be True or False"):
        TaylorSoftmaxHead(4, 10, gram="yes")  # type: ignore[arg-type]


@heads
def test_gram_path_never_computes_the_logits(cls, monkeypatch) -> None:
    # The loss and target_log_prob must not go through the [n, V] logits (that is the point).
    import lm_heads.heads.spherical as spherical

    def forbidden(*args, **kwargs):
        raise AssertionError("the Gram path built [n, V] logits")

    head = cls(8, 1000)
    hidden = torch.randn(5, 8, requires_grad=True)
    target = torch.randint(0, 1000, (5,))
    monkeypatch.setattr(spherical, "linear_f32", forbidden)
    head(hidden, target).loss.backward()
    head.target_log_prob(hidden, target)
    with pytest.raises(AssertionError, match="built"):
        head.log_prob(hidden)


@heads
def test_gradient_penalty_through_the_gram_loss_matches_naive(cls) -> None:
    gram, naive = pair(cls, 6, 30, torch.float64)
    hidden = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 30, (10,))

    def penalty_grad(head) -> torch.Tensor:
        # A penalty on the weight's gradient differentiates the Gram matrix's backward itself.
        (grad,) = torch.autograd.grad(head(hidden, target).loss, head.weight, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), [head.weight, hidden])

    torch.testing.assert_close(penalty_grad(gram), penalty_grad(naive))


def _gram_error(bias_from: str) -> float:
    torch.manual_seed(0)
    vocab, d = 2000, 16
    head = build_head("spherical", d, vocab)
    h0 = torch.randn(d)
    h0 = 100.0 * h0 / h0.norm()
    with torch.no_grad():
        head.weight.normal_()
        if bias_from == "rank_deficient":
            head.bias.copy_(-head.weight @ h0)  # [W, b] = W [I, -h0]: rank d, not d + 1
        else:
            head.bias.normal_()
    hidden = (h0 + torch.randn(64, d)) if bias_from == "rank_deficient" else torch.randn(64, d)
    target = torch.randint(0, vocab, (64,))
    gram = head.target_log_prob(hidden, target).double()
    exact = head.double().log_prob(hidden.double()).gather(1, target[:, None]).squeeze(1)
    return float((gram - exact).abs().max().detach())


def test_gram_accuracy_needs_full_rank() -> None:
    assert _gram_error("full_rank") < 1e-5
    # The documented exception: h̃ nearly orthogonal to the null space's complement loses digits.
    assert _gram_error("rank_deficient") > 1e-4

"""The full softmax head and its memory-efficient exact loss, against ``F.cross_entropy``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lm_heads.chunked_ce import (
    linear_argmax,
    linear_cross_entropy,
    linear_nll,
    resolve_chunk_size,
)
from lm_heads.heads.full import FullSoftmaxHead

D, V, N = 16, 50, 37


def reference_grads(head: FullSoftmaxHead, hidden: torch.Tensor, target: torch.Tensor):
    """Loss and gradients of the plain ``F.cross_entropy`` on the same parameters."""
    h = hidden.detach().clone().requires_grad_()
    w = head.weight.detach().clone().requires_grad_()
    b = None if head.bias is None else head.bias.detach().clone().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w, b), target, ignore_index=head.ignore_index)
    loss.backward()
    return loss, h.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("chunk_size", [None, 1, 7, N, 1000, "auto"])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_gradients_match_cross_entropy(chunk_size, bias: bool) -> None:
    head = FullSoftmaxHead(D, V, bias=bias, chunk_size=chunk_size)
    if bias:
        torch.nn.init.normal_(head.bias)
    hidden = torch.randn(N, D, requires_grad=True)
    target = torch.randint(V, (N,))
    target[::5] = -100  # padding, including in chunks that do not divide N
    loss, grad_h, grad_w, grad_b = reference_grads(head, hidden, target)

    out = head(hidden, target)
    out.loss.backward()
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.nll_sum, loss.detach() * int((target != -100).sum()))
    torch.testing.assert_close(hidden.grad, grad_h)
    torch.testing.assert_close(head.weight.grad, grad_w)
    if bias:
        torch.testing.assert_close(head.bias.grad, grad_b)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 100, None])
def test_per_token_and_weighted_sum_match_reference(chunk_size: int | None) -> None:
    hidden = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    target = torch.randint(V, (N,))
    upstream = torch.randn(N, dtype=torch.float64)
    reference = F.cross_entropy(F.linear(hidden, weight, bias), target, reduction="none")
    expected = torch.autograd.grad((reference * upstream).sum(), (hidden, weight, bias))

    per_token = linear_nll(hidden, weight, bias, target, chunk_size=chunk_size)
    torch.testing.assert_close(per_token, reference)
    got = torch.autograd.grad((per_token * upstream).sum(), (hidden, weight, bias))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)

    total = linear_cross_entropy(
        hidden, weight, bias, target, chunk_size=chunk_size, token_weight=upstream
    )
    torch.testing.assert_close(total.loss, (reference * upstream).sum())
    torch.testing.assert_close(total.nll, (reference * upstream).sum().detach())
    assert not total.nll.requires_grad
    got = torch.autograd.grad(3.0 * total.loss, (hidden, weight, bias))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, 3.0 * b)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize(("smoothing", "z_loss"), [(0.0, 0.0), (0.2, 0.0), (0.0, 0.1), (0.3, 0.05)])
def test_kernel_gradchecks_with_smoothing_and_z_loss(chunk_size, smoothing, z_loss) -> None:
    torch.manual_seed(1)
    hidden = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 5, 2, 2, 4])
    token_weight = torch.rand(5, dtype=torch.float64)

    def loss(h, w, b):
        return linear_cross_entropy(
            h,
            w,
            b,
            target,
            chunk_size=chunk_size,
            token_weight=token_weight,
            label_smoothing=smoothing,
            z_loss=z_loss,
        ).loss

    assert torch.autograd.gradcheck(loss, (hidden, weight, bias))
    assert torch.autograd.gradcheck(lambda h, w: loss(h, w, None), (hidden, weight))
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_nll(h, w, b, target, chunk_size=2), (hidden, weight, bias)
    )


def test_fused_loss_can_backward_through_a_retained_graph_twice() -> None:
    head = FullSoftmaxHead(D, V, chunk_size=8)
    hidden, target = torch.randn(N, D), torch.randint(V, (N,))
    loss = head(hidden, target).loss
    loss.backward(retain_graph=True)
    first = head.weight.grad.clone()
    loss.backward()
    torch.testing.assert_close(head.weight.grad, 2 * first)


def test_only_requested_gradients_are_formed() -> None:
    head = FullSoftmaxHead(D, V, chunk_size=8)
    head.bias.requires_grad_(False)
    hidden = torch.randn(N, D, requires_grad=True)
    head(hidden, torch.randint(V, (N,))).loss.backward()
    assert head.bias.grad is None and head.weight.grad is not None and hidden.grad is not None
    with torch.no_grad():
        assert head(hidden, torch.randint(V, (N,))).loss.grad_fn is None


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_chunked_mode_never_builds_n_by_v(chunk_size) -> None:
    n, d, v = 64, 8, 100  # n·V = 6400 > V·d, chunk·V
    head = FullSoftmaxHead(d, v, chunk_size=chunk_size)
    hidden, target = torch.randn(n, d, requires_grad=True), torch.randint(v, (n,))
    with _LargestTensor() as mode:
        head(hidden, target).loss.backward()
        head.target_log_prob(hidden, target).sum().backward()
        head.predict(hidden)
        head.sample(hidden)
    if chunk_size is None:
        assert mode.largest >= n * v
    else:
        assert mode.largest < n * v, mode.largest


def test_chunked_target_log_prob_predict_and_sample_match_naive() -> None:
    naive = FullSoftmaxHead(D, V)
    torch.nn.init.normal_(naive.bias)
    chunked = FullSoftmaxHead(D, V, chunk_size=6)
    chunked.load_state_dict(naive.state_dict())
    hidden, target = 3 * torch.randn(4, 10, D), torch.randint(V, (4, 10))
    torch.testing.assert_close(
        chunked.target_log_prob(hidden, target), naive.target_log_prob(hidden, target)
    )
    assert torch.equal(chunked.predict(hidden), naive.predict(hidden))
    assert torch.equal(chunked.predict(hidden), naive.log_prob(hidden).argmax(-1))
    # Chunks consume the generator's uniforms row by row, so draws do not depend on chunking.
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(chunked.sample(hidden, g1), naive.sample(hidden, g2))
    flat = hidden.reshape(-1, D)
    assert torch.equal(
        linear_argmax(flat, naive.weight, None, chunk_size=3),
        F.linear(flat, naive.weight).argmax(-1),
    )


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_bf16_autocast_is_finite_and_close(chunk_size) -> None:
    head = FullSoftmaxHead(D, V, chunk_size=chunk_size)
    hidden, target = torch.randn(N, D), torch.randint(V, (N,))
    reference = head(hidden, target)
    reference.loss.backward()
    expected = head.weight.grad.clone()
    head.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hidden, target)
        per_token = head.target_log_prob(hidden, target)
    out.loss.backward()
    assert out.loss.dtype == per_token.dtype == torch.float32
    assert head.weight.grad.dtype == torch.float32
    assert torch.isfinite(out.loss) and torch.isfinite(head.weight.grad).all()
    torch.testing.assert_close(out.loss, reference.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(head.weight.grad, expected, rtol=5e-2, atol=5e-3)


def test_auto_chunk_keeps_logits_within_the_weight_gradient() -> None:
    # c·V·4 bytes ≤ V·d·4 (c = d) whatever V, but never under 256 rows.
    assert resolve_chunk_size("auto", 512) == 512
    assert resolve_chunk_size("auto", 4096) == 4096
    assert resolve_chunk_size("auto", 16) == 256
    assert resolve_chunk_size(None, 16) >= 2**31
    head = FullSoftmaxHead(D, V, chunk_size="auto")
    assert head.output_embeddings() is head.weight


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "big", True])
def test_bad_chunk_size_is_rejected(chunk_size) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        FullSoftmaxHead(D, V, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize(("smoothing", "z_loss"), [(0.1, 0.0), (0.0, 1e-2), (0.25, 1e-3)])
def test_label_smoothing_and_z_loss_match_cross_entropy_and_the_formula(
    chunk_size, smoothing: float, z_loss: float
) -> None:
    head = FullSoftmaxHead(D, V, chunk_size=chunk_size, label_smoothing=smoothing, z_loss=z_loss)
    torch.nn.init.normal_(head.bias)
    hidden = torch.randn(N, D, requires_grad=True)
    target = torch.randint(V, (N,))
    target[::5] = -100
    keep = target != -100
    h = hidden.detach().clone().requires_grad_()
    w = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_()
    logits = F.linear(h, w, b)
    log_z = logits.logsumexp(-1)[keep]
    # torch's label smoothing, plus PaLM's z-loss λ·(log Z)² averaged over the counted tokens.
    expected = (
        F.cross_entropy(logits, target, label_smoothing=smoothing) + z_loss * log_z.square().mean()
    )
    expected.backward()
    nll = F.cross_entropy(logits.detach(), target, reduction="sum")

    out = head(hidden, target)
    out.loss.backward()
    assert not head.is_exact
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.nll_sum, nll)  # perplexity stays the exact NLL
    torch.testing.assert_close(hidden.grad, h.grad)
    torch.testing.assert_close(head.weight.grad, w.grad)
    torch.testing.assert_close(head.bias.grad, b.grad)
    # Evaluation reports the exact NLL.
    head.eval()
    assert head.is_exact
    torch.testing.assert_close(head(hidden, target).loss, nll / keep.sum())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"z_loss": -1.0}, "z_loss"),
        ({"z_loss": "big"}, "z_loss"),
    ],
)
def test_bad_loss_options_are_rejected(options, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FullSoftmaxHead(D, V, **options)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(("smoothing", "z_loss"), [(0.0, 0.0), (0.1, 1e-3)])
def test_non_finite_hidden_at_ignored_positions_changes_nothing(bad, smoothing, z_loss) -> None:
    # Padding after fully masked attention can be NaN; ignored tokens must stay inert.
    head = FullSoftmaxHead(D, V, chunk_size=4, label_smoothing=smoothing, z_loss=z_loss)
    hidden = torch.randn(12, D)
    target = torch.randint(V, (12,))
    target[7:] = -100
    clean = head(hidden[:7].clone().requires_grad_(), target[:7])
    clean.loss.backward()
    expected = head.weight.grad.clone(), head.bias.grad.clone()
    head.zero_grad()
    hidden[7:] = bad
    hidden.requires_grad_()
    out = head(hidden, target)
    out.loss.backward()
    torch.testing.assert_close(out.loss, clean.loss)
    torch.testing.assert_close(out.nll_sum, clean.nll_sum)
    torch.testing.assert_close(head.weight.grad, expected[0])
    torch.testing.assert_close(head.bias.grad, expected[1])
    assert torch.equal(hidden.grad[7:], torch.zeros(5, D))


def test_fused_loss_peak_memory_is_one_weight_gradient() -> None:
    # Backward scales ∂W in place and hands it over: no second [V, d] tensor is allocated.
    d, v = 8, 4000
    head = FullSoftmaxHead(d, v, chunk_size=2)
    hidden, target = torch.randn(64, d), torch.randint(v, (64,))
    with _LargestTensor() as mode:
        head(hidden, target).loss.backward()
    assert mode.largest <= v * d
    storages: set[int] = set()

    class _Storages(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() >= v * d:
                storages.add(out.untyped_storage().data_ptr())
            return out

    head.zero_grad(set_to_none=True)
    with _Storages():
        head(hidden, target).loss.backward()
    storages.discard(head.weight.untyped_storage().data_ptr())
    assert storages == {head.weight.grad.untyped_storage().data_ptr()}


def test_gradient_penalty_through_the_fused_loss_raises() -> None:
    # Its gradients are formed in forward as constants: a second-order term would be dropped.
    head = FullSoftmaxHead(D, V, chunk_size=7)
    hidden = torch.randn(N, D, requires_grad=True)
    loss = head(hidden, torch.randint(0, V, (N,))).loss
    with pytest.raises(RuntimeError, match=r"not twice differentiable.*chunk_size=None"):
        torch.autograd.grad(loss, hidden, create_graph=True)

"""The contract of ``lm_heads.base.Head``, checked for every registered head configuration.

Each case in ``HEAD_CASES`` is a (registered name, options) pair; each head's own oracle (naive
formula, torch reference module, gradcheck of its internals) lives in ``test_<head>.py``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from lm_heads import HEADS, Head, build_head
from tests.heads.cases import HEAD_CASES, case_id
from tests.heads.utils import zipf_counts, zipf_targets

D, V = 16, 57
REQUIRED = {"full", "class", "hierarchical", "adaptive", "importance", "nce", "spherical", "taylor"}

cases = pytest.mark.parametrize("case", HEAD_CASES, ids=[case_id(c) for c in HEAD_CASES])


def make(case: tuple[str, dict[str, Any]], *, d: int = D, v: int = V, seed: int = 0) -> Head:
    name, options = case
    torch.manual_seed(seed)
    return build_head(name, d, v, counts=zipf_counts(v), **options)


def batch(d: int = D, v: int = V, shape: tuple[int, ...] = (3, 5), seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, generator=generator)
    return hidden, zipf_targets(zipf_counts(v), shape, seed=seed)


def test_registry_has_every_head_family() -> None:
    assert set(HEADS) >= REQUIRED
    assert {name for name, _ in HEAD_CASES} == set(HEADS), "every head needs a conformance case"


def test_unknown_head_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"valid heads: .*full"):
        build_head("softmaxx", D, V)


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(TypeError, match=r"unknown option.*valid options"):
        build_head("full", D, V, counts=zipf_counts(V), not_an_option=1)


@cases
def test_log_prob_is_normalised(case) -> None:
    head = make(case)
    hidden, _ = batch()
    log_prob = head.log_prob(hidden)
    assert log_prob.shape == (3, 5, V)
    assert log_prob.dtype == torch.float32
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)


@cases
def test_target_log_prob_equals_gather(case) -> None:
    head = make(case)
    hidden, target = batch()
    expected = head.log_prob(hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(head.target_log_prob(hidden, target), expected, atol=1e-5, rtol=1e-5)


@cases
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_exact_loss_is_mean_nll(case, training: bool) -> None:
    head = make(case).train(training)
    hidden, target = batch()
    out = head(hidden, target)
    nll = -head.target_log_prob(hidden, target)
    if not head.is_exact:
        # Perplexity stays the exact NLL whatever the training loss: nll_sum is it, or None.
        if out.nll_sum is not None:
            torch.testing.assert_close(out.nll_sum, nll.sum(), atol=1e-4, rtol=1e-5)
        pytest.skip("this head's loss in this mode is not the NLL by design")
    torch.testing.assert_close(out.loss, nll.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.nll_sum, nll.sum(), atol=1e-4, rtol=1e-5)
    assert int(out.num_tokens) == target.numel()


@cases
def test_eval_loss_is_exact(case) -> None:
    assert make(case).eval().is_exact, "perplexity needs the exact NLL at evaluation"


@cases
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_ignore_index_changes_neither_loss_nor_gradient(case, training: bool) -> None:
    head = make(case).train(training)
    twin = copy.deepcopy(head)
    hidden, target = batch(shape=(12,))
    padded_hidden = torch.cat([hidden, 100 * torch.randn(4, D)])
    padded_target = torch.cat([target, torch.full((4,), -100)])

    # The same random state for both: training noise (tail dropout) then draws alike.
    torch.manual_seed(2)
    out = head(hidden, target)
    out.loss.backward()
    torch.manual_seed(2)
    padded = twin(padded_hidden, padded_target)
    padded.loss.backward()

    torch.testing.assert_close(padded.loss, out.loss)
    assert int(padded.num_tokens) == 12
    for (name, p), q in zip(head.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=f"gradient of {name} changed")
    assert head.target_log_prob(padded_hidden, padded_target)[12:].eq(0).all()


@cases
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_non_finite_padding_changes_neither_loss_nor_gradient(case, training: bool) -> None:
    # Padding after fully masked attention is often NaN; 0 * NaN must not reach any gradient.
    head = make(case).train(training)
    twin = copy.deepcopy(head)
    hidden, target = batch(shape=(12,))
    target[7:] = -100
    finite = hidden.clone().requires_grad_()
    broken = hidden.clone()
    broken[7:9] = float("nan")
    broken[9:11] = float("inf")
    broken[11, ::2] = -float("inf")
    broken.requires_grad_()

    torch.manual_seed(2)  # training noise (tail dropout) draws alike in both calls
    out = head(finite, target)
    out.loss.backward()
    torch.manual_seed(2)
    bad = twin(broken, target)
    bad.loss.backward()

    torch.testing.assert_close(bad.loss, out.loss)
    torch.testing.assert_close(broken.grad, finite.grad)
    assert broken.grad[7:].eq(0).all()
    for (name, p), q in zip(head.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=f"gradient of {name} changed")
    assert twin.target_log_prob(broken, target)[7:].eq(0).all()


@cases
def test_hidden_dtype_must_match_the_head(case) -> None:
    head = make(case)
    hidden, target = batch()
    wide = hidden.double()
    for call in (
        lambda: head(wide, target),
        lambda: head.log_prob(wide),
        lambda: head.target_log_prob(wide, target),
        lambda: head.predict(wide),
        lambda: head.sample(wide),
    ):
        with pytest.raises(TypeError, match=r"hidden is torch.float64 but the head's parameters"):
            call()
    assert torch.isfinite(head.double().log_prob(wide)).all()


@cases
def test_all_ignored_batch_gives_zero_loss_and_grads(case) -> None:
    head = make(case).train()
    hidden, target = batch(shape=(6,))
    out = head(hidden.requires_grad_(), torch.full_like(target, -100))
    out.loss.backward()
    assert float(out.loss) == 0.0 and int(out.num_tokens) == 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() == 0, name


@cases
def test_every_parameter_gets_a_finite_gradient_on_frequent_words(case) -> None:
    # Plain DDP (no find_unused_parameters) needs every parameter in every step, even when a
    # batch only holds the most frequent words.
    head = make(case).train()
    frequent = torch.sort(zipf_counts(V), descending=True).indices[:2]
    target = frequent[torch.arange(20) % 2]
    hidden = torch.randn(20, D, requires_grad=True)
    head(hidden, target).loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert torch.isfinite(hidden.grad).all()


@cases
def test_state_dict_round_trip_restores_structure(case) -> None:
    name, options = case
    head = make(case, seed=0).eval()
    # Same multiset of counts in another id order: equal shapes, other structure until loaded.
    other_counts = zipf_counts(V, seed=123)
    torch.manual_seed(7)
    restored = build_head(name, D, V, counts=other_counts, **options).eval()
    restored.load_state_dict(head.state_dict())
    hidden, target = batch()
    torch.testing.assert_close(restored.log_prob(hidden), head.log_prob(hidden))
    torch.testing.assert_close(
        restored.target_log_prob(hidden, target), head.target_log_prob(hidden, target)
    )


@cases
def test_score_shape_is_at_most_one_score_per_output_unit_and_token(case) -> None:
    head = make(case)
    rows, cols = head.score_shape(15)
    assert type(rows) is int and type(cols) is int  # not bools, not tensors
    # Output units: a score per word (or per sampled word), plus the clusters / tree nodes.
    nodes = getattr(head, "num_clusters", 0) + getattr(head, "node_width", torch.empty(0)).numel()
    assert 1 <= rows <= 15 and 0 <= cols <= max(V, getattr(head, "num_samples", 0) + 1) + nodes


@cases
def test_predict_is_argmax(case) -> None:
    head = make(case)
    hidden, _ = batch(shape=(40,))
    assert torch.equal(head.predict(hidden), head.log_prob(hidden).argmax(-1))


@cases
def test_sample_follows_the_distribution(case) -> None:
    head = make(case)
    hidden = 2 * torch.randn(1, D).expand(20000, D)
    generator = torch.Generator().manual_seed(3)
    draws = head.sample(hidden, generator=generator)
    assert draws.shape == (20000,) and draws.dtype == torch.long
    empirical = torch.bincount(draws, minlength=V).double() / draws.numel()
    expected = head.log_prob(hidden[:1])[0].double().exp()
    total_variation = 0.5 * (empirical - expected).abs().sum()
    assert total_variation < 0.04, f"total variation {total_variation:.3f}"


@cases
def test_learns_a_synthetic_task(case) -> None:
    # Each word has a fixed feature vector; a head must learn to read the word back from it.
    torch.manual_seed(0)
    d = 32
    head = make(case, d=d).train()
    features = 3 * torch.randn(V, d)
    targets = zipf_targets(zipf_counts(V), (4096,), seed=5)
    optimizer = torch.optim.Adam(head.parameters(), lr=2e-2)
    for step in range(300):
        idx = torch.randint(
            0, targets.numel(), (256,), generator=torch.Generator().manual_seed(step)
        )
        t = targets[idx]
        loss = head(features[t] + 0.1 * torch.randn(256, d), t).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        nll = -head.target_log_prob(features[targets], targets).mean()
    unigram = zipf_counts(V).double() / zipf_counts(V).sum()
    unigram_entropy = -(unigram * unigram.log()).sum()
    assert nll < 0.5 * unigram_entropy, f"NLL {nll:.3f} vs unigram entropy {unigram_entropy:.3f}"


@cases
def test_bad_inputs_get_clear_errors(case) -> None:
    head = make(case)
    hidden, target = batch()
    with pytest.raises(ValueError, match=r"\[0, 57\)"):
        head(hidden, target.clone().fill_(V))
    with pytest.raises(ValueError, match="ignore_index"):
        head(hidden, target.clone().fill_(-1))
    with pytest.raises(ValueError, match="in_features"):
        head(torch.randn(3, 5, D + 1), target)
    with pytest.raises(TypeError, match="floating-point"):
        head(hidden.long(), target)
    with pytest.raises(ValueError, match="leading shape"):
        head(hidden, target[:, :4])
    with pytest.raises(TypeError, match="integer word ids"):
        head(hidden, target.float())
    with pytest.raises(ValueError, match="empty batch"):
        head(torch.empty(0, D), torch.empty(0, dtype=torch.long))


@cases
def test_bad_counts_get_clear_errors(case) -> None:
    name, options = case
    with pytest.raises(ValueError, match="entries but vocab_size"):
        build_head(name, D, V, counts=torch.ones(V - 1), **options)
    with pytest.raises(ValueError, match="non-negative"):
        build_head(name, D, V, counts=-torch.ones(V), **options)


@cases
def test_bf16_autocast_keeps_float32_losses(case) -> None:
    head = make(case).eval()
    hidden, target = batch()
    reference = head(hidden, target).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hidden, target)
        log_prob = head.log_prob(hidden)
    assert out.loss.dtype == torch.float32 and log_prob.dtype == torch.float32
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, reference, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(3, 5), atol=1e-4, rtol=0)


@cases
def test_gradcheck_float64(case) -> None:
    head = make(case, d=4).eval().double()
    hidden = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, V - 1, -100])
    assert torch.autograd.gradcheck(lambda h: head(h, target).loss, (hidden,))
    assert torch.autograd.gradcheck(lambda h: head.target_log_prob(h, target), (hidden,))

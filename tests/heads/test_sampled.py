"""Sampled heads (importance sampling, NCE) and their proposal distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from lm_heads import build_head
from lm_heads.counts import frequency_order
from lm_heads.heads.full import FullSoftmaxHead
from lm_heads.heads.sampled import ImportanceSamplingHead, NCEHead
from lm_heads.heads.samplers import CategoricalSampler, log_uniform_probs, proposal_probs
from tests.heads.utils import zipf_counts, zipf_targets

D, V = 16, 200


# ------------------------------------------------------------------------------------------
# Proposals and the sampler.
@pytest.mark.parametrize("proposal", ["unigram", "log_uniform", "uniform"])
def test_proposals_are_distributions(proposal: str) -> None:
    probs = proposal_probs(proposal, V, zipf_counts(V))
    assert probs.shape == (V,) and bool((probs > 0).all())
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    sampler = CategoricalSampler(probs)
    torch.testing.assert_close(sampler.probs(), probs, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sampler.probs().sum(), torch.tensor(1.0, dtype=torch.float64))
    ids = torch.arange(V)
    torch.testing.assert_close(sampler.log_prob(ids), probs.log().float())


def test_unigram_is_counts_to_the_alpha_and_log_uniform_follows_rank() -> None:
    counts = zipf_counts(V)
    unigram = proposal_probs("unigram", V, counts, alpha=0.5)
    torch.testing.assert_close(unigram, counts.double().sqrt() / counts.double().sqrt().sum())

    id_of_rank, _ = frequency_order(counts.double())
    log_uniform = proposal_probs("log_uniform", V, counts)
    ranks = torch.arange(V, dtype=torch.float64)
    zipf = torch.log((ranks + 2) / (ranks + 1)) / math.log(V + 1)
    torch.testing.assert_close(log_uniform[id_of_rank], zipf)
    # Without counts the ids are taken as already sorted by frequency.
    torch.testing.assert_close(proposal_probs("log_uniform", V, None), zipf)
    torch.testing.assert_close(log_uniform_probs(V), zipf)


def test_zero_counts_keep_a_positive_probability() -> None:
    counts = torch.tensor([5.0, 0.0, 2.0, 1.0])
    probs = proposal_probs("unigram", 4, counts, alpha=1.0)
    expected = torch.tensor([5.0, 1.0, 2.0, 1.0], dtype=torch.float64) / 9
    torch.testing.assert_close(probs, expected)


@pytest.mark.parametrize("proposal", ["unigram", "log_uniform"])
def test_samples_follow_the_proposal(proposal: str) -> None:
    v, draws = 30, 200_000
    sampler = CategoricalSampler(proposal_probs(proposal, v, zipf_counts(v)))
    ids = sampler.sample(draws, torch.Generator().manual_seed(0))
    assert ids.dtype == torch.long and ids.shape == (draws,)
    assert int(ids.min()) >= 0 and int(ids.max()) < v
    observed = torch.bincount(ids, minlength=v).double()
    expected = sampler.probs() * draws
    _, p_value = stats.chisquare(observed.numpy(), expected.numpy())
    assert p_value > 1e-3, f"chi-square p = {p_value:.2e}"


# ------------------------------------------------------------------------------------------
# The generator for negatives.
def test_ranks_draw_different_negatives(monkeypatch: pytest.MonkeyPatch) -> None:
    def noise_on_rank(rank: int) -> torch.Tensor:
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
        head = ImportanceSamplingHead(D, V, counts=zipf_counts(V), num_samples=64, seed=5)
        return head.proposal.sample(64, head.noise_generator())

    assert not torch.equal(noise_on_rank(0), noise_on_rank(1))
    assert torch.equal(noise_on_rank(1), noise_on_rank(1))


def test_generator_lives_on_the_weight_device_and_is_seeded() -> None:
    head = NCEHead(D, V, counts=zipf_counts(V), seed=3)
    generator = head.noise_generator()
    assert generator.device == head.weight.device
    assert head.noise_generator() is generator
    assert generator.initial_seed() == 3


def test_training_steps_draw_fresh_negatives() -> None:
    head = ImportanceSamplingHead(D, V, counts=zipf_counts(V), num_samples=8).train()
    hidden, target = torch.randn(10, D), torch.randint(V, (10,))
    assert head(hidden, target).loss != head(hidden, target).loss


# ------------------------------------------------------------------------------------------
# Importance sampling.
def manual_importance_loss(head, hidden, target, noise, correct_target=False):
    """Per-token loss with Python loops: the formula of the module docstring."""
    logits = F.linear(hidden, head.weight, head.bias)
    log_kq = head.proposal.log_prob(torch.arange(V)) + math.log(len(noise))
    losses = []
    for i, t in enumerate(target.tolist()):
        own = logits[i, t] - (log_kq[t] if correct_target else 0.0)
        terms = [own] + [logits[i, s] - log_kq[s] for s in noise.tolist() if s != t]
        losses.append(torch.logsumexp(torch.stack(terms), 0) - own)
    return torch.stack(losses)


@pytest.mark.parametrize("correct_target", [False, True])
def test_importance_loss_formula_removes_accidental_hits(correct_target: bool) -> None:
    head = ImportanceSamplingHead(
        D, V, counts=zipf_counts(V), num_samples=6, correct_target=correct_target
    )
    hidden, target = torch.randn(4, D), torch.tensor([3, 7, 3, 11])
    noise = torch.tensor([3, 5, 7, 3, 9, 100])  # hits for every target but 11
    got = head._sampled_token_loss(hidden, target, noise)
    expected = manual_importance_loss(head, hidden, target, noise, correct_target)
    torch.testing.assert_close(got, expected)
    assert bool((got >= 0).all()) or correct_target


@pytest.mark.parametrize("proposal", ["unigram", "log_uniform", "uniform"])
def test_importance_loss_tends_to_the_full_softmax_loss(proposal: str) -> None:
    counts = zipf_counts(V)
    hidden, target = torch.randn(256, D), zipf_targets(counts, (256,), seed=1)
    gaps = {}
    for k in (20, 2000):
        torch.manual_seed(0)
        head = build_head("importance", D, V, counts=counts, num_samples=k, proposal=proposal)
        torch.nn.init.normal_(head.weight, std=0.5)
        with torch.no_grad():
            exact = head.eval()(hidden, target).loss
            sampled = torch.stack([head.train()(hidden, target).loss for _ in range(4)]).mean()
        gaps[k] = float((sampled - exact).abs() / exact)
    assert gaps[2000] < 0.03, gaps
    assert gaps[2000] < gaps[20], gaps


# ------------------------------------------------------------------------------------------
# NCE.
def manual_nce_loss(head, hidden, target, noise, negative_sampling, remove_hits):
    logits = F.linear(hidden, head.weight, head.bias)
    log_kq = head.proposal.log_prob(torch.arange(V)) + math.log(len(noise))
    if negative_sampling:
        log_kq = torch.zeros_like(log_kq)
    losses = []
    for i, t in enumerate(target.tolist()):
        loss = -F.logsigmoid(logits[i, t] - log_kq[t])
        for s in noise.tolist():
            if not (remove_hits and s == t):
                loss = loss - F.logsigmoid(-(logits[i, s] - log_kq[s]))
        losses.append(loss)
    return torch.stack(losses)


@pytest.mark.parametrize("negative_sampling", [False, True])
@pytest.mark.parametrize("remove_hits", [False, True])
def test_nce_loss_formula(negative_sampling: bool, remove_hits: bool) -> None:
    head = NCEHead(
        D,
        V,
        counts=zipf_counts(V),
        num_samples=5,
        negative_sampling=negative_sampling,
        remove_accidental_hits=remove_hits,
    )
    torch.nn.init.normal_(head.bias)
    hidden, target = torch.randn(3, D), torch.tensor([3, 7, 11])
    noise = torch.tensor([3, 5, 7, 3, 9])
    got = head._sampled_token_loss(hidden, target, noise)
    expected = manual_nce_loss(head, hidden, target, noise, negative_sampling, remove_hits)
    torch.testing.assert_close(got, expected)


def test_trained_nce_self_normalises() -> None:
    # Contexts with their own next-word distributions; NCE learns o ≈ log p, so Z ≈ 1.
    torch.manual_seed(0)
    v, d, contexts = 100, 16, 8
    head = build_head("nce", d, v, counts=zipf_counts(v), num_samples=32)
    features, true_logits = torch.randn(contexts, d), 2 * torch.randn(contexts, v)
    optimizer = torch.optim.Adam(head.parameters(), lr=2e-2)
    for _ in range(250):
        c = torch.randint(contexts, (128,))
        t = torch.distributions.Categorical(logits=true_logits[c]).sample()
        loss = head(features[c] + 0.1 * torch.randn(128, d), t).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        log_z = F.linear(features, head.weight, head.bias).logsumexp(-1)
        head.eval()
        log_p = true_logits.log_softmax(-1)
        kl = (log_p.exp() * (log_p - head.log_prob(features))).sum(-1).mean()
    assert float(log_z.mean().abs()) < 0.35, log_z
    assert float(kl) < 0.5, kl


# ------------------------------------------------------------------------------------------
# Both heads: exact evaluation, gradients, options.
@pytest.mark.parametrize("name", ["importance", "nce"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_eval_forward_is_the_full_softmax_loss(name: str, chunk_size) -> None:
    head = build_head(name, D, V, counts=zipf_counts(V), num_samples=8, chunk_size=chunk_size)
    full = FullSoftmaxHead(D, V)
    full.load_state_dict(head.state_dict(), strict=False)
    hidden, target = torch.randn(3, 7, D), torch.randint(V, (3, 7))
    target[0, 0] = -100
    head.eval()
    assert head.is_exact and not head.train().is_exact
    head.eval()
    out, expected = head(hidden, target), full(hidden, target)
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(out.nll_sum, expected.nll_sum)
    torch.testing.assert_close(head.log_prob(hidden), full.log_prob(hidden))
    torch.testing.assert_close(
        head.target_log_prob(hidden, target), full.target_log_prob(hidden, target)
    )
    assert head.train()(hidden, target).nll_sum is None
    assert head.output_embeddings() is head.weight


@pytest.mark.parametrize("name", ["importance", "nce"])
def test_training_gradient_touches_only_target_and_noise_rows(name: str) -> None:
    head = build_head(name, D, V, counts=zipf_counts(V), num_samples=4, seed=1).train()
    hidden, target = torch.randn(5, D), torch.randint(V, (5,))
    noise = head.proposal.sample(4, torch.Generator().manual_seed(1))  # the head's own draw
    head(hidden, target).loss.backward()
    touched = torch.zeros(V, dtype=torch.bool)
    touched[target] = touched[noise] = True
    assert head.weight.grad is not None and head.bias.grad is not None
    assert bool(head.weight.grad[~touched].eq(0).all())
    assert bool(head.weight.grad[touched].abs().sum(-1).gt(0).any())


def test_nce_bias_starts_self_normalised() -> None:
    head = NCEHead(D, V, counts=zipf_counts(V))
    torch.testing.assert_close(head.bias, torch.full((V,), -math.log(V)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"proposal": "zipf"}, "proposal must be one of"),
        ({"alpha": -1.0}, "alpha"),
        ({"seed": "x"}, "seed"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
@pytest.mark.parametrize("cls", [ImportanceSamplingHead, NCEHead])
def test_bad_options_are_rejected(cls, options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(D, V, counts=zipf_counts(V), **options)


def test_unigram_proposal_needs_counts_but_others_do_not() -> None:
    with pytest.raises(ValueError, match="needs counts"):
        NCEHead(D, V)
    ImportanceSamplingHead(D, V, proposal="log_uniform")
    NCEHead(D, V, proposal="uniform")

"""AdaptiveSoftmaxHead against its oracle, ``torch.nn.AdaptiveLogSoftmaxWithLoss`` with copied
weights, plus what torch does not do: gradients for every parameter, any id order, ``"auto"``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm_heads import build_head
from lm_heads.cutoffs import default_cutoffs
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead
from tests.heads.utils import zipf_counts, zipf_targets

D, V = 16, 200


def torch_and_ours(
    cutoffs: list[int], *, head_bias: bool = False, div_value: float = 4.0, shuffle: bool = True
) -> tuple[torch.nn.AdaptiveLogSoftmaxWithLoss, AdaptiveSoftmaxHead, torch.Tensor]:
    """torch's module (class r = rank r) and ours with the same weights, and ``id_of_rank``."""
    torch.manual_seed(0)
    reference = torch.nn.AdaptiveLogSoftmaxWithLoss(
        D, V, cutoffs, div_value=div_value, head_bias=head_bias
    )
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.5)  # larger than the default init, so clusters matter
    ours = AdaptiveSoftmaxHead.from_torch(reference, counts=zipf_counts(V, shuffle=shuffle))
    return reference, ours, ours.id_of_rank


@pytest.mark.parametrize(
    ("cutoffs", "head_bias", "div_value"),
    [
        ([20, 80], False, 4.0),
        ([20, 80], True, 2.0),
        ([5], False, 4.0),
        ([3, 9, 40, 120], True, 2.0),
    ],
)
def test_matches_torch_adaptive_log_softmax(cutoffs, head_bias, div_value) -> None:
    reference, ours, id_of_rank = torch_and_ours(cutoffs, head_bias=head_bias, div_value=div_value)
    hidden = torch.randn(64, D)
    ranks = zipf_targets(torch.ceil(1e6 / torch.arange(1, V + 1)), (64,), seed=2)
    ranks[:4] = torch.tensor([0, cutoffs[0], cutoffs[-1], V - 1])  # every cluster is hit
    ids = id_of_rank[ranks]

    torch.testing.assert_close(ours.log_prob(hidden)[:, id_of_rank], reference.log_prob(hidden))
    expected = reference(hidden, ranks)
    torch.testing.assert_close(ours.target_log_prob(hidden, ids), expected.output)
    assert torch.equal(ours.predict(hidden), id_of_rank[reference.predict(hidden)])

    # Loss and the gradients of every parameter (torch's are complete: every cluster is hit).
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    expected = reference(h1, ranks)
    expected.loss.backward()
    out = ours(h2, ids)
    out.loss.backward()
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(h2.grad, h1.grad)
    theirs = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, msg=name)


def test_parameter_names_and_shapes_follow_torch() -> None:
    reference, ours, _ = torch_and_ours([20, 80], head_bias=True)
    ours_shapes = {k: v.shape for k, v in ours.named_parameters()}
    assert ours_shapes == {k: v.shape for k, v in reference.named_parameters()}
    # A torch state dict loads directly (buffers aside), so copying weights is one call.
    fresh = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80], head_bias=True,
                                div_value=4.0, tail_bias=False)  # fmt: skip
    missing, unexpected = fresh.load_state_dict(reference.state_dict(), strict=False)
    assert set(missing) == {"cutoffs", "id_of_rank", "rank_of_id"} and not unexpected
    hidden = torch.randn(8, D)
    torch.testing.assert_close(fresh.log_prob(hidden), ours.log_prob(hidden))


def test_frequency_sorted_ids_need_no_mapping() -> None:
    reference, _, id_of_rank = torch_and_ours([20, 80], shuffle=False)
    assert torch.equal(id_of_rank, torch.arange(V))
    default = AdaptiveSoftmaxHead.from_torch(reference)  # counts=None: ids already sorted
    hidden = torch.randn(8, D)
    torch.testing.assert_close(default.log_prob(hidden), reference.log_prob(hidden))


def test_shuffled_counts_put_the_most_frequent_words_in_the_head() -> None:
    counts = zipf_counts(V, seed=5)
    head = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20, 80])
    assert torch.equal(counts[head.id_of_rank], torch.sort(counts, descending=True).values)
    assert torch.equal(head.rank_of_id[head.id_of_rank], torch.arange(V))
    head_words = set(head.id_of_rank[:20].tolist())
    assert head_words == set(torch.topk(counts, 20).indices.tolist())


def test_every_parameter_gets_a_gradient_when_all_targets_are_in_the_head() -> None:
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80], head_bias=True)
    target = head.id_of_rank[torch.arange(30) % 20]
    head(torch.randn(30, D), target).loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        if name.startswith("tail"):
            assert p.grad.abs().sum() == 0, name  # untouched clusters: exact zeros, not skipped


def test_ignore_index_tokens_in_tail_clusters_change_nothing() -> None:
    reference, ours, id_of_rank = torch_and_ours([20, 80])
    hidden = torch.randn(10, D)
    ranks = torch.tensor([0, 1, 25, 100, 150, 3, 7, 199, 30, 2])
    ids = id_of_rank[ranks].clone()
    ids[[2, 7]] = -100  # one ignored token in each tail cluster
    keep = ids != -100
    out = ours(hidden, ids)
    torch.testing.assert_close(out.loss, reference(hidden[keep], ranks[keep]).loss)
    assert int(out.num_tokens) == 8


def test_no_tail_cluster_is_a_plain_softmax() -> None:
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[])
    assert len(head.tail) == 0 and head.head.out_features == V
    hidden = torch.randn(6, D)
    expected = F.log_softmax(head.head(hidden), -1)[:, head.rank_of_id]
    torch.testing.assert_close(head.log_prob(hidden), expected)


def test_training_loss_matches_per_token_loss_and_its_gradients() -> None:
    # Training goes through the fused kernel (_loss_sums); evaluation through plain autograd.
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80], head_bias=True)
    hidden = torch.randn(30, D, requires_grad=True)
    target = zipf_targets(zipf_counts(V), (30,))
    target[::7] = -100
    out = head(hidden, target)
    grads = torch.autograd.grad(out.loss, [hidden, *head.parameters()])
    keep = target != -100
    safe = torch.where(keep, target, 0)
    reference = torch.where(keep, head._token_loss(hidden, safe), 0.0).sum() / keep.sum()
    expected = torch.autograd.grad(reference, [hidden, *head.parameters()])
    torch.testing.assert_close(out.loss, reference)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck_whole_head_float64() -> None:
    # Through the private per-token loss: the public loss is float32 by contract.
    head = AdaptiveSoftmaxHead(
        8, 30, counts=zipf_counts(30), cutoffs=[4, 12], head_bias=True, div_value=2.0
    )
    head = head.double()
    hidden = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    target = head.id_of_rank[torch.tensor([0, 3, 4, 11, 12, 29, 5, 1, 20])]
    assert torch.autograd.gradcheck(lambda h: head._token_loss(h, target), (hidden,))
    # Weights: central differences on a few entries of every parameter.
    names, params = zip(*head.named_parameters(), strict=True)
    grads = torch.autograd.grad(head._token_loss(hidden.detach(), target).sum(), params)
    for name, p, g in zip(names, params, grads, strict=True):
        indices = torch.randperm(p.numel())[:5].tolist()
        _assert_central_differences(head, hidden, target, p, g, indices, name)


def _assert_central_differences(
    head: AdaptiveSoftmaxHead,
    hidden: torch.Tensor,
    target: torch.Tensor,
    param: torch.Tensor,
    grad: torch.Tensor,
    indices: list[int],
    name: str,
) -> None:
    """``grad`` (of the summed per-token loss) against central differences at ``param``'s
    flat ``indices``."""
    flat, eps = param.data.view(-1), 1e-6
    for k in indices:
        old = flat[k].item()
        flat[k] = old + eps
        up = head._token_loss(hidden.detach(), target).sum()
        flat[k] = old - eps
        down = head._token_loss(hidden.detach(), target).sum()
        flat[k] = old
        numeric = (up - down) / (2 * eps)
        torch.testing.assert_close(grad.view(-1)[k], numeric, rtol=1e-5, atol=1e-7, msg=name)


def test_backward_twice_through_a_retained_graph() -> None:
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80])
    hidden = torch.randn(12, D, requires_grad=True)
    loss = head(hidden, zipf_targets(zipf_counts(V), (12,))).loss
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    hidden.grad = None
    loss.backward()
    torch.testing.assert_close(hidden.grad, first)


@pytest.mark.parametrize(
    ("cutoffs", "match"),
    [
        ([20, 20], "strictly increasing"),
        ([80, 20], "strictly increasing"),
        ([0, 20], r"\[1, 199\]"),
        ([20, V], r"\[1, 199\]"),
        ([20.5], "ints"),
        ([True], "ints"),
        ("fast", "'auto'"),
        (7, "list of ints"),
    ],
)
def test_bad_cutoffs_get_clear_errors(cutoffs, match) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=cutoffs)


@pytest.mark.parametrize("div_value", [0, -2.0, float("nan"), True])
def test_bad_div_value(div_value) -> None:
    with pytest.raises(ValueError, match="div_value"):
        AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), div_value=div_value)


def test_counts_are_required() -> None:
    with pytest.raises(ValueError, match="needs counts"):
        AdaptiveSoftmaxHead(D, V)


def test_vanishing_projection_warns_like_torch_allows() -> None:
    with pytest.warns(UserWarning, match="0 dims"):
        head = AdaptiveSoftmaxHead(4, V, counts=zipf_counts(V), cutoffs=[10, 30], div_value=4.0)
    torch.testing.assert_close(
        head.log_prob(torch.randn(3, 4)).logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(("vocab_size", "d"), [(2, 16), (50, 16), (57, 4), (1000, 64), (50, 2)])
def test_default_cutoffs_are_valid_for_any_vocabulary(vocab_size: int, d: int) -> None:
    head = AdaptiveSoftmaxHead(d, vocab_size, counts=zipf_counts(vocab_size))
    cuts = head.cutoffs.tolist()
    assert cuts == default_cutoffs(vocab_size, d) == sorted(set(cuts))
    assert all(0 < c < vocab_size for c in cuts)
    lp = head.log_prob(torch.randn(3, d))
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0)


def test_default_div_value_keeps_narrow_models_tails_wide() -> None:
    assert AdaptiveSoftmaxHead(200, 300, counts=_ranked_counts(300)).div_value == 2.0
    assert AdaptiveSoftmaxHead(512, 300, counts=_ranked_counts(300)).div_value == 4.0
    assert AdaptiveSoftmaxHead(200, 300, counts=_ranked_counts(300), div_value=4).div_value == 4.0
    head = AdaptiveSoftmaxHead(200, 300, counts=_ranked_counts(300), cutoffs=[50, 150])
    assert [project.out_features for project, _ in head.clusters()] == [100, 50]


def test_default_cutoffs_follow_the_paper_at_scale() -> None:
    assert default_cutoffs(50, 16) == [10]
    assert default_cutoffs(267_735, 512) == [4000, 20000, 100000]
    assert default_cutoffs(793_471, 512) == [4000, 20000, 100000]  # 4th: 2-dim projection
    # Another cluster only when the vocabulary reaches twice its start (2 × 500,000).
    assert default_cutoffs(1_000_000, 1024) == [4000, 20000, 100000, 500000]
    assert default_cutoffs(10_000, 512) == [2000]


def test_state_dict_round_trip_and_cutoff_mismatch() -> None:
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80])
    state = head.state_dict()
    assert state["cutoffs"].tolist() == [20, 80]
    restored = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V, seed=9), cutoffs=[20, 80])
    restored.load_state_dict(state)
    assert torch.equal(restored.id_of_rank, head.id_of_rank)
    hidden = torch.randn(5, D)
    torch.testing.assert_close(restored.log_prob(hidden), head.log_prob(hidden))
    other = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[30, 80])
    with pytest.raises(ValueError, match=r"build the head with cutoffs=\[20, 80\]"):
        other.load_state_dict(state)


def test_auto_cutoffs_with_an_injected_cost_model() -> None:
    def flops(rows: torch.Tensor, in_dim: int, out_dim: torch.Tensor) -> torch.Tensor:
        return 1e-6 + rows * in_dim * out_dim

    head = build_head(
        "adaptive", 32, 1000, counts=zipf_counts(1000), cutoffs="auto", cost_model=flops
    )
    cuts = head.cutoffs.tolist()
    assert len(cuts) >= 1 and cuts == sorted(set(cuts)) and cuts[0] > 0 and cuts[-1] < 1000
    # Reusable: the printed list rebuilds the same structure.
    again = AdaptiveSoftmaxHead(32, 1000, counts=zipf_counts(1000), cutoffs=cuts)
    again.load_state_dict(head.state_dict())


def test_auto_cutoffs_measured_on_this_machine() -> None:
    head = AdaptiveSoftmaxHead(16, 300, counts=zipf_counts(300), cutoffs="auto", batch_tokens=64)
    cuts = head.cutoffs.tolist()
    assert cuts == sorted(set(cuts)) and all(0 < c < 300 for c in cuts)
    assert head(torch.randn(8, 16), zipf_targets(zipf_counts(300), (8,))).loss.isfinite()


def test_sample_reaches_tail_clusters() -> None:
    head = AdaptiveSoftmaxHead(D, 60, counts=zipf_counts(60), cutoffs=[5, 20])
    with torch.no_grad():
        head.head.weight.zero_()  # head uniform over 5 words + 2 clusters
    draws = head.sample(torch.randn(3000, D), generator=torch.Generator().manual_seed(0))
    ranks = head.rank_of_id[draws]
    share = torch.bincount(torch.bucketize(ranks, head.cutoffs, right=True), minlength=3) / 3000
    torch.testing.assert_close(share, torch.tensor([5 / 7, 1 / 7, 1 / 7]), atol=0.03, rtol=0)


def test_output_embeddings_are_head_rows_and_projected_tail_rows() -> None:
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80])
    emb = head.output_embeddings()
    assert emb.shape == (V, D)
    first_head_word, first_tail_word = head.id_of_rank[0], head.id_of_rank[20]
    torch.testing.assert_close(emb[first_head_word], head.head.weight[0])
    project, out = head.tail[0]
    torch.testing.assert_close(emb[first_tail_word], out.weight[0] @ project.weight)


def test_target_log_prob_with_empty_tail_clusters() -> None:
    # Every target in the head: the clusters' per-token losses run on empty slices.
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V, shuffle=False), cutoffs=[20, 80])
    hidden, target = torch.randn(5, D), torch.arange(5)
    expected = head.log_prob(hidden).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(head.target_log_prob(hidden, target), expected)


# ------------------------------------------------------------------------------------------------
# Biases: a per-word tail bias and a unigram start.
def _ranked_counts(vocab_size: int) -> torch.Tensor:
    return torch.arange(vocab_size, 0, -1, dtype=torch.float64) ** 1.5


def test_tail_bias_enters_the_within_cluster_softmax() -> None:
    head = AdaptiveSoftmaxHead(8, 60, counts=_ranked_counts(60), cutoffs=[10, 30], tail_bias=True)
    head = head.double()
    hidden = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        head.tail[1][1].bias[3] = 2.0  # rank 33: cluster 2, within-cluster index 3
    project, out = head.clusters()[1]
    within = (out(project(hidden))).log_softmax(-1)[:, 3]
    cluster = head.head(hidden).log_softmax(-1)[:, 10 + 1]
    expected = cluster + within
    torch.testing.assert_close(head.log_prob(hidden)[:, 33], expected)
    assert head.tail[0][1].bias is not None and head.tail[0][1].bias.shape == (20,)


def test_biases_are_there_by_default_the_tails_starting_at_zero() -> None:
    plain = AdaptiveSoftmaxHead(8, 60, counts=_ranked_counts(60), cutoffs=[10, 30],
                                head_bias=False, tail_bias=False)  # fmt: skip
    biased = AdaptiveSoftmaxHead(8, 60, counts=_ranked_counts(60), cutoffs=[10, 30])
    assert plain.head.bias is None and all(cluster[1].bias is None for cluster in plain.tail)
    assert biased.head.bias.shape == (10 + 2,)  # initialised as nn.Linear (and torch) do
    assert all(torch.equal(c[1].bias, torch.zeros_like(c[1].bias)) for c in biased.tail)


def test_unigram_bias_init_with_zero_weights_is_the_smoothed_unigram() -> None:
    counts = torch.tensor([5.0, 0.0, 40.0, 3.0, 9.0, 1.0, 20.0, 2.0, 7.0, 0.0])
    head = AdaptiveSoftmaxHead(4, 10, counts=counts, cutoffs=[3, 6], head_bias=True,
                               tail_bias=True, bias_init="unigram").double()  # fmt: skip
    with torch.no_grad():
        for parameter in head.parameters():
            if parameter.dim() == 2:
                parameter.zero_()
    expected = ((counts + 1) / (counts + 1).sum()).log().double()
    torch.testing.assert_close(head.log_prob(torch.randn(3, 4, dtype=torch.float64))[0], expected)


def test_unknown_bias_init_is_refused() -> None:
    with pytest.raises(ValueError, match="bias_init must be"):
        AdaptiveSoftmaxHead(8, 60, counts=_ranked_counts(60), bias_init="normal")


def test_gradient_penalty_raises_instead_of_dropping_second_order_terms() -> None:
    head = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=[20, 80])
    hidden = torch.randn(12, D, requires_grad=True)
    loss = head(hidden, zipf_targets(zipf_counts(V), (12,))).loss
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(loss, hidden, create_graph=True)


def test_log_prob_target_log_prob_and_sampling_in_float64() -> None:
    head = build_head("adaptive", 16, 100, counts=torch.ones(100), cutoffs=[10, 50]).double()
    hidden = torch.randn(4, 16, dtype=torch.float64)
    log_prob = head.log_prob(hidden)
    assert log_prob.dtype == torch.float64
    torch.testing.assert_close(log_prob.logsumexp(-1), torch.zeros(4, dtype=torch.float64))
    target = torch.tensor([0, 20, 60, 99])
    expected = log_prob.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(head.target_log_prob(hidden, target), expected)
    assert head.sample(hidden).shape == (4,) and head.predict(hidden).shape == (4,)


def test_from_a_float64_torch_module() -> None:
    module = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 100, [10, 50]).double()
    head = AdaptiveSoftmaxHead.from_torch(module)
    hidden = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(head.log_prob(hidden), module.log_prob(hidden))


@pytest.mark.parametrize(
    "cutoffs", [np.array([10, 50]), [np.int64(10), np.int32(50)], torch.tensor([10, 50])]
)
def test_cutoffs_of_any_integer_type(cutoffs) -> None:
    head = build_head("adaptive", 16, 100, counts=torch.ones(100), cutoffs=cutoffs)
    assert head.cutoffs.tolist() == [10, 50]


def test_tail_dropout_acts_on_the_tail_projection_while_training_only() -> None:
    counts = zipf_counts(V)
    torch.manual_seed(0)
    plain = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20, 80])
    dropped = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20, 80], tail_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    hidden = torch.randn(64, D)
    in_head = plain.id_of_rank[torch.randint(0, 20, (64,))]
    in_tail = plain.id_of_rank[torch.randint(20, V, (64,))]
    with torch.no_grad():
        assert torch.equal(dropped(hidden, in_head).loss, plain(hidden, in_head).loss)
        assert not torch.equal(dropped(hidden, in_tail).loss, plain(hidden, in_tail).loss)
        dropped.eval(), plain.eval()
        torch.testing.assert_close(dropped(hidden, in_tail).loss, plain(hidden, in_tail).loss)
        torch.testing.assert_close(dropped.log_prob(hidden), plain.log_prob(hidden))


def test_tail_dropout_keeps_the_expected_projection() -> None:
    # Inverted dropout: on average over masks, the training loss's projected hidden is the same,
    # so the mean training NLL of a tail word approaches the no-dropout one from above (Jensen).
    counts = zipf_counts(V)
    head = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20], tail_dropout=0.3).double()
    hidden = torch.randn(4, D, dtype=torch.float64)
    project = head.clusters()[0][0]
    torch.manual_seed(1)
    mean = torch.stack([head._tail_input(hidden, project, True) for _ in range(20000)]).mean(0)
    torch.testing.assert_close(mean, F.linear(hidden, project.weight), rtol=0.05, atol=0.02)


def test_tail_dropout_stays_out_of_the_model_distribution_while_training() -> None:
    # Was: target_log_prob ran the training path, so in train mode it was random (nats away
    # from log_prob) and forward's nll_sum, the mixin's train_ppl, the thinned network's.
    counts = zipf_counts(V)
    torch.manual_seed(0)
    head = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20, 80], tail_dropout=0.5).train()
    hidden = torch.randn(64, D)
    target = head.id_of_rank[torch.randint(20, V, (64,))]  # tail words: dropout's reach
    expected = head.log_prob(hidden).gather(1, target[:, None]).squeeze(1)
    for _ in range(3):
        torch.testing.assert_close(head.target_log_prob(hidden, target), expected)
    torch.testing.assert_close(head.log_prob(hidden), head.eval().log_prob(hidden))
    torch.testing.assert_close(head.target_log_prob(hidden, target), expected)
    head.train()
    # The training loss is the thinned network's: not claimed exact, no NLL reported beside it.
    out = head(hidden, target)
    assert not head.is_exact and out.nll_sum is None
    assert not torch.allclose(out.loss, -expected.mean())
    out = head.eval()(hidden, target)
    assert head.is_exact
    torch.testing.assert_close(out.loss, -expected.mean())
    torch.testing.assert_close(out.nll_sum, -expected.sum())


@pytest.mark.parametrize(
    ("tail_dropout", "logged"), [(0.0, {"train_loss", "train_ppl"}), (0.5, {"train_loss"})]
)
def test_tail_dropout_logs_no_train_ppl(tail_dropout: float, logged: set[str], monkeypatch) -> None:
    import lightning as L

    from lm_heads.mixin import LMHeadMixin

    class Model(LMHeadMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.configure_head(
                "adaptive", D, V, counts=zipf_counts(V), cutoffs=[20, 80], tail_dropout=tail_dropout
            )

    model, names = Model(), []
    monkeypatch.setattr(model, "log", lambda name, *args, **kwargs: names.append(name))
    model.head_training_step(torch.randn(4, 16, D), zipf_targets(zipf_counts(V), (4, 16), seed=3))
    assert set(names) == logged


@pytest.mark.parametrize("tail_dropout", [-0.1, 1.0, float("nan"), "0.2x"])
def test_bad_tail_dropout_is_refused(tail_dropout) -> None:
    with pytest.raises((ValueError, TypeError), match="tail_dropout"):
        AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), tail_dropout=tail_dropout)


def test_without_tail_projection_it_is_the_head_with_an_identity_projection() -> None:
    counts = zipf_counts(V)
    bare = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20, 80], tail_projection=False)
    assert bare.div_value == 1.0 and "tail.0.0.weight" not in bare.state_dict()
    projected = AdaptiveSoftmaxHead(D, V, counts=counts, cutoffs=[20, 80], div_value=1.0)
    state = {**bare.state_dict(), "tail.0.0.weight": torch.eye(D), "tail.1.0.weight": torch.eye(D)}
    projected.load_state_dict(state)
    hidden = torch.randn(12, D)
    target = zipf_targets(counts, (12,))
    torch.testing.assert_close(bare.log_prob(hidden), projected.log_prob(hidden))
    torch.testing.assert_close(bare(hidden, target).loss, projected(hidden, target).loss)
    torch.testing.assert_close(bare.output_embeddings(), projected.output_embeddings())
    # A tail word's output vector is its own row of B_i.
    rank = 100
    row = bare.output_embeddings()[bare.id_of_rank[rank]]
    torch.testing.assert_close(row, bare.clusters()[1][1].weight[rank - 80])


def test_gradcheck_without_tail_projection_float64() -> None:
    head = AdaptiveSoftmaxHead(8, 30, counts=zipf_counts(30), cutoffs=[4, 12],
                               tail_projection=False).double()  # fmt: skip
    hidden = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    target = head.id_of_rank[torch.tensor([0, 3, 4, 11, 12, 29, 5, 1, 20])]
    assert torch.autograd.gradcheck(lambda h: head._token_loss(h, target), (hidden,))
    # The tail rows: central differences of the per-token loss.
    weight = head.clusters()[1][1].weight
    (grad,) = torch.autograd.grad(head._token_loss(hidden.detach(), target).sum(), [weight])
    indices = list(range(0, weight.numel(), 17))
    _assert_central_differences(head, hidden, target, weight, grad, indices, "tail.1.1.weight")


def test_tail_projection_off_needs_div_value_one() -> None:
    with pytest.raises(ValueError, match="needs div_value=1"):
        AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), div_value=2.0, tail_projection=False)

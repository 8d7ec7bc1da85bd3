"""Adaptive input (Baevski & Auli 2019) against its formula, and its tying to the adaptive head."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from lm_heads import AdaptiveInput, build_head
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead
from lm_heads.mixin import LMHeadMixin
from tests.heads.utils import zipf_counts

V, D, CUTOFFS = 120, 32, [10, 40, 90]


def head(**options) -> AdaptiveSoftmaxHead:
    torch.manual_seed(0)
    return build_head("adaptive", D, V, counts=zipf_counts(V), cutoffs=CUTOFFS, **options)


def reference(module: AdaptiveInput, tokens: torch.Tensor) -> torch.Tensor:
    """The formula, one token at a time: E_0[r], or E_i[r - c_i] Q_i in band i."""
    bounds = [0, *CUTOFFS, V]
    rows = []
    for word in tokens.reshape(-1).tolist():
        rank = int(module.rank_of_id[word])
        band = max(i for i, low in enumerate(bounds[:-1]) if rank >= low)
        vector = module.weights[band][rank - bounds[band]]
        rows.append(vector if band == 0 else vector @ module.projections[band - 1])
    return torch.stack(rows).reshape(*tokens.shape, module.embedding_dim)


def test_matches_the_formula() -> None:
    counts = zipf_counts(V)
    module = AdaptiveInput(V, D, counts=counts, cutoffs=CUTOFFS, div_value=2.0)
    assert [tuple(w.shape) for w in module.weights] == [(10, 32), (30, 16), (50, 8), (30, 4)]
    assert [tuple(p.shape) for p in module.projections] == [(16, 32), (8, 32), (4, 32)]
    tokens = torch.randint(0, V, (4, 9))
    torch.testing.assert_close(module(tokens), reference(module, tokens))
    torch.testing.assert_close(module.weight, reference(module, torch.arange(V)))
    # Ranks follow the counts: the most frequent word is row 0 of band 0.
    top = int(torch.argmax(counts))
    torch.testing.assert_close(module(torch.tensor([top]))[0], module.weights[0][0])


def test_parameter_count() -> None:
    module = AdaptiveInput(V, D, counts=zipf_counts(V), cutoffs=CUTOFFS)  # div_value 4
    dims = [32, 8, 2, 0]
    sizes = [10, 30, 50, 30]
    expected = sum(k * d for k, d in zip(sizes, dims, strict=True)) + sum(d * D for d in dims[1:])
    assert sum(p.numel() for p in module.parameters()) == expected < V * D


def test_default_cutoffs_are_the_heads() -> None:
    counts = zipf_counts(500)
    module = AdaptiveInput(500, 64, counts=counts)
    built = build_head("adaptive", 64, 500, counts=counts)
    assert module.bounds == built.bounds
    assert torch.equal(module.rank_of_id, built.rank_of_id)


def test_from_head_uses_the_heads_clusters() -> None:
    softmax = head()
    module = AdaptiveInput.from_head(softmax, embedding_dim=48)
    assert module.bounds == softmax.bounds and module.embedding_dim == 48
    assert torch.equal(module.rank_of_id, softmax.rank_of_id)
    assert not set(map(id, module.parameters())) & set(map(id, softmax.parameters()))


@pytest.mark.parametrize("tie_proj", [False, True])
def test_tied_vectors_are_the_heads(tie_proj: bool) -> None:
    softmax = head(div_value=2.0)
    module = AdaptiveInput.from_head(softmax, tie_weights=True, tie_proj=tie_proj)
    assert module.weights[0] is softmax.head.weight
    for i, (project, out) in enumerate(softmax.tail):
        assert module.weights[i + 1] is out.weight
        assert (module.projections[i] is project.weight) == tie_proj
    # A band-0 word's input vector is its head row; a tail word's (tie_proj) is B_i[r - c_i] P_i.
    tokens = torch.arange(V)
    embedded = module(tokens)
    rank = softmax.rank_of_id
    band0 = rank < CUTOFFS[0]
    torch.testing.assert_close(embedded[band0], softmax.head.weight[rank[band0]])
    if tie_proj:
        low, high = CUTOFFS[0], CUTOFFS[1]
        band1 = (rank >= low) & (rank < high)
        project, out = softmax.tail[0]
        expected = out.weight[rank[band1] - low] @ project.weight
        torch.testing.assert_close(embedded[band1], expected)
    torch.testing.assert_close(embedded, reference(module, tokens))


def test_tied_gradient_is_the_sum_of_both_uses() -> None:
    softmax = head()
    tied = AdaptiveInput.from_head(softmax, tie_weights=True, tie_proj=True)
    # The same model with the sharing undone: the shared gradient must be the sum of the two.
    twin_head = copy.deepcopy(softmax)
    twin_input = copy.deepcopy(tied)  # deepcopy keeps sharing inside one object: unshare by hand
    for i, p in enumerate(tied.weights):
        twin_input.weights[i] = torch.nn.Parameter(p.detach().clone())
    for i, p in enumerate(tied.projections):
        twin_input.projections[i] = torch.nn.Parameter(p.detach().clone())
    tokens = torch.randint(0, V, (6, 5))
    targets = torch.randint(0, V, (6, 5))

    def loss(embed, out):
        return out(torch.tanh(embed(tokens)), targets).loss

    loss(tied, softmax).backward()
    loss(twin_input, twin_head).backward()
    torch.testing.assert_close(
        softmax.head.weight.grad, twin_head.head.weight.grad + twin_input.weights[0].grad
    )
    for i, (project, out) in enumerate(softmax.tail):
        twin_project, twin_out = twin_head.tail[i]
        torch.testing.assert_close(
            out.weight.grad, twin_out.weight.grad + twin_input.weights[i + 1].grad
        )
        torch.testing.assert_close(
            project.weight.grad, twin_project.weight.grad + twin_input.projections[i].grad
        )
    shared = torch.nn.ModuleList([tied, softmax])
    assert sum(p.numel() for p in shared.parameters()) == sum(
        p.numel() for p in softmax.parameters()
    )


def test_every_parameter_gets_a_gradient_when_a_batch_misses_bands() -> None:
    module = AdaptiveInput(V, D, counts=zipf_counts(V), cutoffs=CUTOFFS)
    frequent = torch.argsort(zipf_counts(V), descending=True)[:3]
    module(frequent.repeat(4)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
    assert all(float(p.grad.abs().sum()) == 0 for p in list(module.weights)[1:])


def test_state_dict_round_trip_and_cutoff_mismatch() -> None:
    module = AdaptiveInput(V, D, counts=zipf_counts(V), cutoffs=CUTOFFS)
    other = AdaptiveInput(V, D, counts=zipf_counts(V, seed=5), cutoffs=CUTOFFS)
    other.load_state_dict(module.state_dict())
    tokens = torch.randint(0, V, (20,))
    torch.testing.assert_close(other(tokens), module(tokens))
    with pytest.raises(ValueError, match=r"cutoffs=\[10, 40, 90\].*cutoffs=\[10, 40\]"):
        AdaptiveInput(V, D, counts=zipf_counts(V), cutoffs=[10, 40]).load_state_dict(
            module.state_dict()
        )


def test_float64_and_tied_casting_share_storage() -> None:
    softmax = head()
    module = AdaptiveInput.from_head(softmax, tie_weights=True, tie_proj=True)
    pair = torch.nn.ModuleList([module, softmax]).double()
    assert (
        module.weights[0] is softmax.head.weight and module(torch.arange(5)).dtype == torch.float64
    )
    assert pair[1].log_prob(module(torch.arange(5))).dtype == torch.float64


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="AdaptiveSoftmaxHead"):
        AdaptiveInput.from_head(build_head("full", D, V))
    with pytest.raises(ValueError, match="tie_proj=True needs tie_weights=True"):
        AdaptiveInput.from_head(head(), tie_proj=True)
    with pytest.raises(ValueError, match=r"tying needs embedding_dim == the head's in_features"):
        AdaptiveInput.from_head(head(), embedding_dim=16, tie_weights=True)
    with pytest.raises(ValueError, match="needs counts"):
        AdaptiveInput(V, D)
    with pytest.raises(ValueError, match="strictly increasing"):
        AdaptiveInput(V, D, counts=zipf_counts(V), cutoffs=[40, 10])
    with pytest.raises(TypeError, match="integer tensor of word ids"):
        AdaptiveInput(V, D, counts=zipf_counts(V))(torch.zeros(3))


@pytest.mark.parametrize("bad", [-100, -1, V])
def test_ids_outside_the_vocabulary_raise_like_nn_embedding(bad: int) -> None:
    # Indexing alone would wrap -100 to word V - 100 and return its vector.
    module = AdaptiveInput(V, D, counts=zipf_counts(V), cutoffs=CUTOFFS)
    tokens = torch.tensor([[3, bad], [7, 8]])
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {V}\).*found {bad}"):
        module(tokens)
    with pytest.raises(IndexError):
        torch.nn.Embedding(V, D)(tokens)


class _TiedLM(LMHeadMixin, L.LightningModule):
    """A user's model: adaptive input tied to the adaptive head, both made in ``__init__``."""

    def __init__(self, counts: torch.Tensor | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["counts"])
        self.configure_head("adaptive", D, V, counts=counts, cutoffs=CUTOFFS)
        self.embed = AdaptiveInput.from_head(self.head, tie_weights=True, tie_proj=True)

    def training_step(self, batch, batch_idx):
        return self.head_training_step(self.embed(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_a_tied_model_loads_from_its_checkpoint_without_counts(tmp_path, fit_two_steps) -> None:
    torch.manual_seed(0)
    model = _TiedLM(zipf_counts(V))
    tokens = torch.randint(0, V, (8, 2, 6), generator=torch.Generator().manual_seed(1))
    trainer = fit_two_steps(model, tokens)
    trainer.save_checkpoint(tmp_path / "tied.ckpt")

    waiting = _TiedLM()
    with pytest.raises(RuntimeError, match=r"waits for the structure of its 'adaptive' head"):
        waiting.embed(tokens[0])
    restored = _TiedLM.load_from_checkpoint(tmp_path / "tied.ckpt")  # strict
    embed, head = restored.embed, restored.head
    assert isinstance(head, AdaptiveSoftmaxHead)
    assert embed.weights[0] is head.head.weight
    for i, (project, out) in enumerate(head.clusters()):
        assert embed.weights[i + 1] is out.weight and embed.projections[i] is project.weight
    model.eval(), restored.eval()
    with torch.no_grad():
        expected = model.head.log_prob(model.embed(tokens[0]))
        torch.testing.assert_close(head.log_prob(embed(tokens[0])), expected, rtol=0, atol=0)
    # One set of parameters: an optimizer over the restored model sees each tied tensor once.
    assert len(list(restored.parameters())) == len(list(model.parameters()))


def test_a_head_without_tail_projections_ties_its_words_but_no_projections() -> None:
    softmax = AdaptiveSoftmaxHead(D, V, counts=zipf_counts(V), cutoffs=CUTOFFS,
                                  tail_projection=False)  # fmt: skip
    module = AdaptiveInput.from_head(softmax, tie_weights=True)
    for i, (_, out) in enumerate(softmax.clusters()):
        assert module.weights[i + 1] is out.weight
    with pytest.raises(ValueError, match="has none"):
        AdaptiveInput.from_head(softmax, tie_weights=True, tie_proj=True)

"""tie_weights: one Parameter for the input embedding and the head's output rows, or a clear no."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from lm_heads import HEADS, build_head
from lm_heads.mixin import LMHeadMixin
from lm_heads.tying import tie_weights

VOCAB, DIM = 40, 8
COUNTS = torch.arange(VOCAB, 0, -1).double()
TIEABLE = ["cosine", "full", "importance", "nce", "rbf", "spherical", "taylor"]
UNTIEABLE = {
    "adaptive": "adaptive input",
    "class": "no output embedding per word",
    "hierarchical": "no output embedding per word",
    "prototypes": "no output embedding per word",
}


def test_every_registered_head_is_covered() -> None:
    assert sorted(TIEABLE + list(UNTIEABLE)) == sorted(HEADS)


@pytest.mark.parametrize("name", TIEABLE)
@pytest.mark.parametrize("init", ["head", "embedding"])
def test_tied_heads_share_one_parameter_that_learns_from_both_ends(name: str, init: str) -> None:
    torch.manual_seed(0)
    head = build_head(name, DIM, VOCAB, counts=COUNTS)
    embedding = nn.Embedding(VOCAB, DIM)
    head_rows, embedding_rows = head.output_embeddings().detach().clone(), embedding.weight.detach()
    embedding_rows = embedding_rows.clone()
    assert tie_weights(embedding, head, init=init) == "weight"
    assert embedding.weight is head.weight is head.output_embeddings()
    kept = head_rows if init == "head" else embedding_rows
    torch.testing.assert_close(embedding.weight.detach(), kept, rtol=0, atol=0)
    params = list(embedding.parameters()) + list(head.parameters())
    assert len({id(p) for p in params}) == len(params) - 1  # counted once by an optimizer
    tokens = torch.randint(0, VOCAB, (3, 5))
    head.eval()  # exact loss for every head, so the output rows get a gradient too
    head(embedding(tokens) * 0.5, tokens).loss.backward()
    # Rows of words seen only as inputs or only as targets all get gradient.
    assert embedding.weight.grad is not None
    assert bool((embedding.weight.grad.abs().sum(1) > 0).all())


@pytest.mark.parametrize("name", sorted(UNTIEABLE))
def test_heads_without_one_row_per_word_refuse_clearly(name: str) -> None:
    head = build_head(name, DIM, VOCAB, counts=COUNTS)
    embedding = nn.Embedding(VOCAB, DIM)
    before = [p.detach().clone() for p in head.parameters()]
    with pytest.raises(ValueError, match=UNTIEABLE[name]):
        tie_weights(embedding, head)
    # Nothing half-done: no attribute assigned, no value changed.
    for old, new in zip(before, head.parameters(), strict=True):
        torch.testing.assert_close(new.detach(), old, rtol=0, atol=0)


def test_bad_arguments_are_clear_errors() -> None:
    head = build_head("full", DIM, VOCAB)
    with pytest.raises(ValueError, match="must project"):
        tie_weights(nn.Embedding(VOCAB, DIM + 1), head)
    with pytest.raises(ValueError, match="sparse"):
        tie_weights(nn.Embedding(VOCAB, DIM, sparse=True), head)
    with pytest.raises(TypeError, match=r"nn\.Embedding"):
        tie_weights(nn.Linear(DIM, VOCAB), head)
    with pytest.raises(ValueError, match="init must be one of"):
        tie_weights(nn.Embedding(VOCAB, DIM), head, init="normal")


def test_default_init_keeps_the_heads_scale_not_a_unit_normal() -> None:
    """A default nn.Embedding is N(0, 1); tied with init="head" the rows are U(±1/√d)."""
    torch.manual_seed(0)
    embedding, head = nn.Embedding(VOCAB, DIM), build_head("full", DIM, VOCAB)
    assert float(embedding.weight.detach().abs().max()) > 1.0
    tie_weights(embedding, head)
    assert float(embedding.weight.detach().abs().max()) <= 1.0 / math.sqrt(DIM)
    # At the start, unit-variance hidden states see near-uniform predictions (ppl ≈ V), where
    # N(0, 1) rows would give logits of standard deviation √d.
    hidden = torch.randn(256, DIM)
    ppl = float(torch.exp(-head.log_prob(hidden).mean()))
    assert ppl < 2 * VOCAB


class TiedLM(LMHeadMixin, L.LightningModule):
    def __init__(self, counts: torch.Tensor | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["counts"])
        self.embed = nn.Embedding(VOCAB, DIM)
        self.configure_head("nce", DIM, VOCAB, counts=counts, num_samples=4)
        self.tie_head_weights(self.embed)


def test_mixin_tie_survives_a_head_rebuilt_from_the_state_dict() -> None:
    torch.manual_seed(0)
    model = TiedLM(COUNTS)
    assert model.embed.weight is model.head.weight
    restored = TiedLM()  # nce's unigram noise needs counts: the head waits for the weights
    restored.load_state_dict(model.state_dict())
    assert restored.embed.weight is restored.head.weight
    torch.testing.assert_close(restored.head.weight, model.head.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no output embedding per word"):
        bad = TiedLM.__new__(TiedLM)
        L.LightningModule.__init__(bad)
        bad.embed = nn.Embedding(VOCAB, DIM)
        bad.configure_head("class", DIM, VOCAB, counts=COUNTS)
        bad.tie_head_weights(bad.embed)

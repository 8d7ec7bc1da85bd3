"""recipes/lm.py with ``--input adaptive`` (adaptive input, Baevski & Auli 2019), tied or not."""

from __future__ import annotations

import pytest
import torch

from lm_heads import AdaptiveInput
from recipes.language_model import LanguageModel
from tests.recipes.test_lm_smoke import TINY


def test_adaptive_input_trains_tied_to_the_adaptive_head(lm, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = [*TINY, "--cache-dir", str(tmp_path / "cache"), "--head", "adaptive"]
    common += ["--head-option", "cutoffs=[10,30]", "--max-steps", "2"]
    plain = lm.main([*common, "--output-dir", str(tmp_path / "plain")])
    tied = lm.main(
        [*common, "--input", "adaptive", "--tie-weights", "--output-dir", str(tmp_path / "a")]
    )
    assert tied["input_layer"] == "adaptive" and plain["input_layer"] == "embedding"
    assert tied["parameters"] < plain["parameters"]
    assert 1.0 < tied["val_ppl"] < 10 * tied["vocab_size"]
    assert tied["similarity"]["input"]["measured"] is True


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_language_model_shares_the_heads_clusters_and_rows(model) -> None:
    counts = torch.arange(60, 0, -1)
    options = {"cutoffs": [10, 30]}
    lm = LanguageModel(
        vocab_size=60, counts=counts, head="adaptive", head_options=options, model=model,
        embed_dim=16, d_model=24, tie_weights=True, input_layer="adaptive",
    )  # fmt: skip
    embedding = lm.backbone.embedding
    assert isinstance(embedding, AdaptiveInput) and embedding.bounds == lm.head.bounds
    assert embedding.weights[0] is lm.head.head.weight
    assert embedding.projections[0] is lm.head.tail[0][0].weight
    assert lm(torch.randint(0, 60, (2, 5)))[0].shape == (2, 5, 16)


def test_tying_to_a_head_without_tail_projections_shares_the_words_only() -> None:
    counts = torch.arange(60, 0, -1)
    options = {"cutoffs": [10, 30], "tail_projection": False}
    lm = LanguageModel(
        vocab_size=60, counts=counts, head="adaptive", head_options=options, embed_dim=16,
        tie_weights=True, input_layer="adaptive",
    )  # fmt: skip
    embedding, head = lm.backbone.embedding, lm.head
    assert embedding.weights[0] is head.head.weight
    assert embedding.weights[1] is head.tail[0][1].weight
    # The input keeps projections of its own (d -> d here): the head has none to share.
    assert isinstance(head.tail[0][0], torch.nn.Identity)
    assert embedding.projections[0].shape == (16, 16)
    assert lm(torch.randint(0, 60, (2, 5)))[0].shape == (2, 5, 16)


def test_adaptive_input_with_another_head() -> None:
    counts = torch.arange(60, 0, -1)
    lm = LanguageModel(
        vocab_size=60, counts=counts, head="full", embed_dim=16, input_layer="adaptive"
    )
    assert isinstance(lm.backbone.embedding, AdaptiveInput)
    with pytest.raises(ValueError, match="ties only to the adaptive head"):
        LanguageModel(
            vocab_size=60, counts=counts, head="full", embed_dim=16, tie_weights=True,
            input_layer="adaptive",
        )  # fmt: skip
    with pytest.raises(ValueError, match="input_layer must be"):
        LanguageModel(vocab_size=60, counts=counts, head="full", input_layer="bpe")

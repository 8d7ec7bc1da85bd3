"""The recipe's LanguageModel: loads from its checkpoint without counts (tied or not); compiles."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from conftest import load_recipe
from torch.utils.data import DataLoader, TensorDataset

VOCAB = 50


@pytest.mark.parametrize(
    ("head", "tie"), [("adaptive", False), ("importance", True), ("class", False)]
)
def test_load_from_checkpoint_needs_no_counts(head: str, tie: bool, tmp_path) -> None:
    language_model = load_recipe("language_model")
    torch.manual_seed(0)
    counts = torch.randint(1, 100, (VOCAB,)).double()
    options = {"num_samples": 8} if head == "importance" else {}
    model = language_model.LanguageModel(
        vocab_size=VOCAB, counts=counts, head=head, head_options=options, embed_dim=8,
        d_model=12, dropout=0.0, tie_weights=tie,
    )  # fmt: skip
    tokens = torch.randint(0, VOCAB, (8, 2, 6))
    data = DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    restored = language_model.LanguageModel.load_from_checkpoint(tmp_path / "lm.ckpt")
    if tie:
        assert restored.backbone.embedding.weight is restored.head.weight
    model.eval(), restored.eval()
    with torch.no_grad():
        expected = model.head.target_log_prob(model(tokens[:, 0])[0], tokens[:, 1])
        got = restored.head.target_log_prob(restored(tokens[:, 0])[0], tokens[:, 1])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.slow
def test_recipe_model_trains_compiled_and_saves_eager_names(tmp_path) -> None:
    language_model = load_recipe("language_model")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = language_model.LanguageModel(
        vocab_size=VOCAB, counts=torch.arange(VOCAB, 0, -1), head="adaptive",
        head_options={"cutoffs": [20]}, embed_dim=8, d_model=12, dropout=0.0, compile=True,
    )  # fmt: skip
    eager_keys = set(model.state_dict())
    tokens = torch.randint(0, VOCAB, (8, 2, 6))
    data = DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert model.backbone._compiled_call_impl is not None  # Module.compile() ran at fit start
    assert model.head._compiled_call_impl is not None
    assert set(model.state_dict()) == eager_keys  # compiled in place: checkpoints unchanged

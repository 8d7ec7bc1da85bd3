"""Checkpoints restore every head without the corpus: the structure travels in the state dict."""

from __future__ import annotations

import zipfile
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lm_heads.heads.adaptive
from lm_heads import HEADS
from lm_heads.mixin import STRUCTURE_KEY, LMHeadMixin
from lm_heads.registry import HeadSpec, build_head

VOCAB, DIM = 60, 12
# Zipf-like counts in an id order that is not the frequency order, so that a rebuild from wrong
# or missing counts would give another structure.
_SHUFFLE = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))
COUNTS = (600.0 / torch.arange(1, VOCAB + 1)).round()[_SHUFFLE]
SMALL = {"importance": {"num_samples": 8}, "nce": {"num_samples": 8}}
SPEC = STRUCTURE_KEY + "spec"
CASES = [(name, SMALL.get(name, {})) for name in sorted(HEADS)] + [
    ("hierarchical", {"tree": "huffman"}),
    ("adaptive", {"cutoffs": [10, 30], "div_value": 2.0}),
]


class HeadLM(LMHeadMixin, L.LightningModule):
    def __init__(
        self,
        head: str,
        counts: torch.Tensor | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["counts"])
        self.embed = nn.Embedding(VOCAB, DIM)
        self.configure_head(head, DIM, VOCAB, counts=counts, **(options or {}))

    def training_step(self, batch, batch_idx):
        return self.head_training_step(self.embed(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (8, 2, 6), generator=generator)
    return DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=4)


def _trained_checkpoint(model: HeadLM, path) -> None:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent,
    )  # fmt: skip
    trainer.fit(model, _data())
    trainer.save_checkpoint(path)


def _same_distribution(a: HeadLM, b: HeadLM) -> None:
    tokens = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    a.eval(), b.eval()
    with torch.no_grad():
        expected = a.head.log_prob(a.embed(tokens))
        got = b.head.log_prob(b.embed(tokens))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: c[0] + "".join(f"-{v}" for v in c[1].values())
)
def test_every_head_loads_from_its_checkpoint_without_counts(case, tmp_path) -> None:
    name, options = case
    torch.manual_seed(0)
    model = HeadLM(name, COUNTS, options)
    path = tmp_path / "model.ckpt"
    _trained_checkpoint(model, path)
    checkpoint = torch.load(path, weights_only=True)  # tensors and plain data only
    assert SPEC in checkpoint["state_dict"]
    with zipfile.ZipFile(path) as archive:
        pickled = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))
    assert b"lm_heads" not in pickled  # names no module: it loads after the modules move
    restored = HeadLM.load_from_checkpoint(path)  # strict: every key used, none missing
    assert type(restored.head) is type(model.head)
    assert restored.head.extra_repr() == model.head.extra_repr()
    _same_distribution(model, restored)
    # Saved again, the restored model carries the same structure (and counts where it uses them).
    again = restored.state_dict()
    torch.testing.assert_close(again[SPEC], checkpoint["state_dict"][SPEC])
    if STRUCTURE_KEY + "counts" in again:
        torch.testing.assert_close(again[STRUCTURE_KEY + "counts"], COUNTS.double())


def test_auto_cutoffs_are_not_measured_again(tmp_path, monkeypatch) -> None:
    calls = []

    def choose(*args: Any, **kwargs: Any) -> list[int]:
        calls.append(args)
        return [7, 25] if len(calls) == 1 else [20, 40]  # "another machine" the second time

    monkeypatch.setattr(lm_heads.heads.adaptive, "choose_cutoffs", choose)
    model = HeadLM("adaptive", COUNTS, {"cutoffs": "auto", "div_value": 2.0})
    assert model.head.bounds[1:-1] == [7, 25] and len(calls) == 1
    _trained_checkpoint(model, tmp_path / "auto.ckpt")
    restored = HeadLM.load_from_checkpoint(tmp_path / "auto.ckpt")
    assert len(calls) == 1  # the checkpoint's cutoffs, not a new measurement
    assert restored.head.bounds[1:-1] == [7, 25]
    _same_distribution(model, restored)


def test_a_head_built_from_other_counts_is_rebuilt_from_the_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = HeadLM("class", COUNTS)
    _trained_checkpoint(model, tmp_path / "class.ckpt")
    state = torch.load(tmp_path / "class.ckpt", weights_only=True)["state_dict"]
    other = HeadLM("class", torch.ones(VOCAB))  # the old cryptic "[312, 32] vs [317, 32]"
    assert other.head.weight.shape != model.head.weight.shape
    with pytest.warns(UserWarning, match="differs in structure"):
        other.load_state_dict(state)
    _same_distribution(model, other)
    # Same shapes: the user's head (and its runtime options) is kept, weights loaded.
    full = HeadLM("full", None, {"chunk_size": 7})
    full.load_state_dict(HeadLM("full").state_dict())
    assert full.head.chunk_size == 7


def test_checkpoint_without_structure_and_mismatched_module_fail_clearly() -> None:
    old = HeadLM("class", COUNTS).state_dict()
    for key in ("spec", "counts"):
        del old[STRUCTURE_KEY + key]  # as saved before the structure was stored
    with pytest.raises(RuntimeError, match="pass the counts the head was trained with"):
        HeadLM("class").load_state_dict(old)
    HeadLM("class", COUNTS).load_state_dict(old)  # with the counts it loads as before
    with pytest.raises(ValueError, match="holds a 'class' head"):
        HeadLM("hierarchical").load_state_dict(HeadLM("class", COUNTS).state_dict())


def test_head_spec_rebuilds_outside_lightning() -> None:
    """Without the mixin: save ``build_spec.to_state()`` next to the weights."""
    head = build_head("hierarchical", DIM, VOCAB, counts=COUNTS, branching=4)
    saved = {"spec": head.build_spec.to_state(), "weights": head.state_dict()}
    rebuilt = HeadSpec.from_state(saved["spec"]).build()
    rebuilt.load_state_dict(saved["weights"])
    hidden = torch.randn(4, DIM)
    torch.testing.assert_close(rebuilt.log_prob(hidden), head.log_prob(hidden), rtol=0, atol=0)
    with pytest.raises(TypeError, match="plain values"):
        HeadSpec("full", DIM, VOCAB, options={"chunk_size": object()}).to_state()


def test_training_resumes_from_a_checkpoint_without_counts(tmp_path) -> None:
    """ckpt_path= restores before the optimizer is made, so a pending head trains on."""
    torch.manual_seed(0)
    model = HeadLM("hierarchical", COUNTS)
    _trained_checkpoint(model, tmp_path / "h.ckpt")
    resumed = HeadLM("hierarchical")  # no counts
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(resumed, _data(), ckpt_path=tmp_path / "h.ckpt")
    assert trainer.global_step == 3
    before = torch.load(tmp_path / "h.ckpt", weights_only=True)["state_dict"]["head.weight"]
    assert not torch.equal(resumed.head.weight.detach(), before)  # the rebuilt head was trained

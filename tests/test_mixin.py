"""LMHeadMixin in a user's own LightningModule: the README example, exact logged perplexity."""

from __future__ import annotations

import math
from typing import ClassVar

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lm_heads import build_head
from lm_heads.data import LMDataModule
from lm_heads.metrics import Perplexity
from lm_heads.mixin import LMHeadMixin


# --- The README example, verbatim (keep the two in sync) ---------------------------------------
class MyLM(LMHeadMixin, L.LightningModule):
    def __init__(self, vocab_size: int, counts: torch.Tensor | None = None, dim: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["counts"])  # the checkpoint keeps the head's counts
        self.embed = nn.Embedding(vocab_size, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.configure_head("adaptive", in_features=dim, vocab_size=vocab_size, counts=counts)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.embed(tokens))[0]  # [B, T, dim]

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return self.head_training_step(self.hidden(inputs), targets)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        inputs, targets = batch
        self.head_evaluation_step(self.hidden(inputs), targets, stage="val")

    def test_step(self, batch, batch_idx):
        inputs, targets = batch
        self.head_evaluation_step(self.hidden(inputs), targets, stage="test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


# -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dm(tmp_path_factory) -> LMDataModule:
    cache = tmp_path_factory.mktemp("cache")
    data = LMDataModule(
        "synthetic", batch_size=8, bptt=12, cache_dir=cache, synthetic_vocab_size=200,
        synthetic_tokens=6000, seed=0,
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    return data


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_steps=kwargs.pop("max_steps", 8), default_root_dir=tmp_path,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


def test_readme_example_trains_and_reports_perplexity(dm, tmp_path) -> None:
    torch.manual_seed(0)
    model = MyLM(dm.vocab_size, dm.counts)
    before = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        model, dm, verbose=False
    )[0]["val_ppl"]
    trainer = _trainer(tmp_path, max_steps=15)
    trainer.fit(model, dm)
    assert "train_loss" in trainer.callback_metrics and "train_ppl" in trainer.callback_metrics
    after = trainer.validate(model, dm, verbose=False)[0]["val_ppl"]
    test = trainer.test(model, dm, verbose=False)[0]["test_ppl"]
    assert after < before  # it learned something
    assert math.isfinite(test) and test > 1.0
    assert not (tmp_path / "lightning_logs").exists()


def test_logged_perplexity_is_exact_over_the_split(dm, tmp_path) -> None:
    """val_ppl = exp(Σ −log p / #tokens) over every non-padding token, not a mean of batch ppls."""
    torch.manual_seed(1)
    model = MyLM(dm.vocab_size, dm.counts).eval()
    logged = _trainer(tmp_path).validate(model, dm.val_dataloader(), verbose=False)[0]["val_ppl"]
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for inputs, targets in dm.val_dataloader():
            lp = model.head.target_log_prob(model.hidden(inputs), targets).double()
            nll -= float(lp.sum())
            tokens += int((targets != -100).sum())
    assert tokens == dm.splits["valid"].shape[0]  # padded tail counted once, padding never
    assert logged == pytest.approx(math.exp(nll / tokens), rel=1e-6)


def test_metric_resets_between_epochs(dm, tmp_path) -> None:
    torch.manual_seed(2)
    model = MyLM(dm.vocab_size, dm.counts)
    trainer = _trainer(tmp_path)
    first = trainer.validate(model, dm, verbose=False)[0]["val_ppl"]
    second = trainer.validate(model, dm, verbose=False)[0]["val_ppl"]
    assert second == pytest.approx(first, rel=1e-9)


class _Inexact(LMHeadMixin, L.LightningModule):
    def __init__(self, vocab_size: int, counts: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 16)
        self.configure_head(build_head("nce", 16, vocab_size, counts=counts, num_samples=8))

    def training_step(self, batch, batch_idx):
        return self.head_training_step(self.embed(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_sampled_head_logs_loss_but_no_train_ppl(dm, tmp_path) -> None:
    model = _Inexact(dm.vocab_size, dm.counts)
    assert isinstance(model.val_ppl, Perplexity) and isinstance(model.test_ppl, Perplexity)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, dm.train_dataloader())
    assert "train_loss" in trainer.callback_metrics
    assert "train_ppl" not in trainer.callback_metrics  # the NCE loss is not an NLL


def test_configure_head_errors() -> None:
    class Bare(LMHeadMixin, L.LightningModule):
        pass

    module = Bare()
    with pytest.raises(TypeError, match="needs in_features= and vocab_size="):
        module.configure_head("full")
    with pytest.raises(TypeError, match="takes no other arguments"):
        module.configure_head(build_head("full", 4, 10), vocab_size=10)
    with pytest.raises(TypeError, match="registered head name or a Head"):
        module.configure_head(3)
    with pytest.raises(KeyError, match="unknown head"):
        module.configure_head("nope", in_features=4, vocab_size=10)
    with pytest.raises(RuntimeError, match="configure_head"):
        module.head_evaluation_step(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long))
    module.configure_head("full", in_features=4, vocab_size=10)
    with pytest.raises(ValueError, match="stage must be one of"):
        module.head_evaluation_step(
            torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), "dev"
        )


def _exact_ppl(model: MyLM, loader) -> float:
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for inputs, targets in loader:
            nll -= float(model.head.target_log_prob(model.hidden(inputs), targets).double().sum())
            tokens += int((targets != -100).sum())
    return math.exp(nll / tokens)


def test_each_validation_dataloader_has_its_own_perplexity(dm, tmp_path) -> None:
    torch.manual_seed(3)
    model = MyLM(dm.vocab_size, dm.counts).eval()
    a, b = dm.val_dataloader(), dm.test_dataloader()
    logged = _trainer(tmp_path).validate(model, [a, b], verbose=False)
    assert logged[0]["val_ppl/dataloader_idx_0"] == pytest.approx(_exact_ppl(model, a), rel=1e-6)
    assert logged[1]["val_ppl/dataloader_idx_1"] == pytest.approx(_exact_ppl(model, b), rel=1e-6)
    assert abs(_exact_ppl(model, a) - _exact_ppl(model, b)) > 1e-3  # pooling would be visible
    again = _trainer(tmp_path).validate(model, [a, b], verbose=False)
    assert again == logged  # every metric was reset between runs


def test_leftover_state_never_leaks_into_the_next_validation(dm, tmp_path) -> None:
    torch.manual_seed(4)
    model = MyLM(dm.vocab_size, dm.counts).eval()
    clean = _trainer(tmp_path).validate(model, dm.val_dataloader(), verbose=False)[0]["val_ppl"]
    # A manual call outside any trainer leaves state behind...
    inputs, targets = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        model.head_evaluation_step(model.hidden(inputs), targets)
    assert int(model.val_ppl.num_tokens) > 0
    after_manual = _trainer(tmp_path).validate(model, dm.val_dataloader(), verbose=False)
    assert after_manual[0]["val_ppl"] == pytest.approx(clean, rel=1e-12)

    # ...and so does a validation that dies half-way.
    class Interrupted(MyLM):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 2:
                raise RuntimeError("interrupted")
            super().validation_step(batch, batch_idx)

    broken = Interrupted(dm.vocab_size, dm.counts).eval()
    broken.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="interrupted"):
        _trainer(tmp_path).validate(broken, dm.val_dataloader(), verbose=False)
    assert int(broken.val_ppl.num_tokens) > 0
    broken.validation_step = MyLM.validation_step.__get__(broken)  # the fixed step
    logged = _trainer(tmp_path).validate(broken, dm.val_dataloader(), verbose=False)
    assert logged[0]["val_ppl"] == pytest.approx(clean, rel=1e-12)


def test_all_padding_batch_logs_no_perfect_score(dm, tmp_path) -> None:
    torch.manual_seed(5)
    model = MyLM(dm.vocab_size, dm.counts)
    inputs = torch.randint(0, dm.vocab_size, (4, 6))
    padding = DataLoader(TensorDataset(inputs, torch.full((4, 6), -100)), batch_size=4)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, padding)
    assert trainer.global_step == 1  # the step ran (zero loss, zero gradient)...
    assert "train_loss" not in trainer.callback_metrics  # ...but logged no 0 loss
    assert "train_ppl" not in trainer.callback_metrics  # and no perplexity of 1.0
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(inputs, inputs), batch_size=4))
    assert float(trainer.callback_metrics["train_ppl"]) > 1.0


def test_readme_model_loads_from_its_checkpoint_without_counts(dm, tmp_path) -> None:
    torch.manual_seed(6)
    model = MyLM(dm.vocab_size, dm.counts)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "my.ckpt")
    restored = MyLM.load_from_checkpoint(tmp_path / "my.ckpt")  # no counts, no corpus
    inputs, targets = next(iter(dm.val_dataloader()))
    model.eval(), restored.eval()
    with torch.no_grad():
        expected = model.head.target_log_prob(model.hidden(inputs), targets)
        got = restored.head.target_log_prob(restored.hidden(inputs), targets)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert restored.head.extra_repr() == model.head.extra_repr()


def test_mistakes_get_helpful_messages() -> None:
    class Bare(LMHeadMixin, L.LightningModule):
        pass

    module = Bare()
    hidden, target = torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"call self\.configure_head"):
        module.head_training_step(hidden, target)
    module.configure_head("full", in_features=4, vocab_size=10)
    with pytest.raises(ValueError, match="did you pass logits instead of hidden states"):
        module.head_training_step(torch.zeros(1, 2, 10), target)
    with pytest.raises(ValueError, match=r"got \(1, 2, 7\)$"):  # no logits hint for other sizes
        module.head_training_step(torch.zeros(1, 2, 7), target)
    pending = Bare()
    pending.configure_head("class", in_features=4, vocab_size=10)  # no counts: waits for weights
    with pytest.raises(RuntimeError, match="configured without counts="):
        pending.head_training_step(hidden, target)
    with pytest.raises(RuntimeError, match="not its structure"):
        pending.load_state_dict({"head.weight": torch.zeros(13, 4)})


class _Plain(LMHeadMixin, L.LightningModule):
    """Embedding → head: the gradient of one optimizer step is easy to recompute by hand."""

    def __init__(self, vocab_size: int = 12, **options) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 8)
        self.configure_head("full", in_features=8, vocab_size=vocab_size, **options)
        self.grads: dict[str, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        return self.head_training_step(self.embed(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.head_evaluation_step(self.embed(batch[0]), batch[1])

    def on_before_optimizer_step(self, optimizer) -> None:  # no super(): nothing to chain
        self.grads = {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences: 6 counted tokens, then 1 (the rest padding)."""
    inputs = torch.randint(0, 12, (2, 6))
    targets = torch.randint(0, 12, (2, 6))
    targets[1, 1:] = -100
    return inputs, targets


def test_train_ppl_is_the_nll_not_the_regularised_loss(tmp_path) -> None:
    torch.manual_seed(7)
    model = _Plain(z_loss=0.5, label_smoothing=0.1)
    inputs, targets = _batches()
    with torch.no_grad():
        out = model.head(model.embed(inputs), targets)
    nll_ppl = math.exp(float(out.nll_sum) / int(out.num_tokens))
    assert float(out.loss) > float(out.nll_sum) / int(out.num_tokens) + 0.5  # regularised
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(inputs, targets), batch_size=2))
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(float(out.loss))
    assert float(trainer.callback_metrics["train_ppl"]) == pytest.approx(nll_ppl, rel=1e-5)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_gradient_accumulation_weighs_micro_batches_by_tokens(tmp_path, clip) -> None:
    torch.manual_seed(8)
    model = _Plain()
    inputs, targets = _batches()
    reference = _Plain()
    reference.load_state_dict(model.state_dict())
    out = reference.head(reference.embed(inputs), targets)  # one batch of all 7 tokens
    out.loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters()}
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(list(expected.values()), clip)
    trainer = _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, gradient_clip_val=clip)
    trainer.fit(model, DataLoader(TensorDataset(inputs, targets), batch_size=1))
    for name, grad in expected.items():
        torch.testing.assert_close(model.grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # The step's logged values are over its 7 tokens, not the last micro-batch's one token.
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(float(out.loss))
    nll_ppl = math.exp(float(out.nll_sum) / 7)
    assert float(trainer.callback_metrics["train_ppl"]) == pytest.approx(nll_ppl, rel=1e-5)


def test_accumulated_inexact_head_logs_loss_but_no_train_ppl(dm, tmp_path) -> None:
    model = _Inexact(dm.vocab_size, dm.counts)
    trainer = _trainer(tmp_path, max_steps=2, accumulate_grad_batches=3)
    trainer.fit(model, dm.train_dataloader())
    assert "train_loss" in trainer.callback_metrics
    assert "train_ppl" not in trainer.callback_metrics


@pytest.mark.parametrize("rank", [0, 1])
def test_repeats_of_a_distributed_sampler_are_counted_once(tmp_path, rank) -> None:
    """7 samples on 2 ranks: the sampler gives rank 1 samples 1, 3, 5 and a repeat of sample 0."""
    from torch.utils.data import DistributedSampler

    torch.manual_seed(9)
    model = _Plain().eval()
    inputs, targets = torch.randint(0, 12, (7, 5)), torch.randint(0, 12, (7, 5))
    targets[0, 1:] = -100  # sample 0 is unlike the others: counting it twice would show
    data = TensorDataset(inputs, targets)
    sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    logged = _trainer(tmp_path).validate(model, loader, verbose=False)[0]["val_ppl"]
    own = list(range(rank, 7, 2))
    with torch.no_grad():
        log_p = model.head.target_log_prob(model.embed(inputs[own]), targets[own]).double()
    exact = math.exp(-float(log_p.sum()) / int((targets[own] != -100).sum()))
    assert logged == pytest.approx(exact, rel=1e-6)


# --- The README's Hugging Face-style example, verbatim -----------------------------------------
class CausalLM(LMHeadMixin, L.LightningModule):
    def __init__(self, vocab_size: int, counts: torch.Tensor, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)  # any causal backbone: [B, T] -> [B, T, d]
        self.configure_head("adaptive", in_features=dim, vocab_size=vocab_size, counts=counts)

    def shifted(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.rnn(self.embed(batch["input_ids"]))[0]
        return hidden[:, :-1], batch["labels"][:, 1:]  # hidden at t, the token at t + 1

    def training_step(self, batch, batch_idx):
        return self.head_training_step(*self.shifted(batch))

    def validation_step(self, batch, batch_idx):
        self.head_evaluation_step(*self.shifted(batch), stage="val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


# -----------------------------------------------------------------------------------------------


def _dict_batches(vocab_size: int) -> list[dict[str, torch.Tensor]]:
    """Padded-to-longest batches as a Hugging Face collator makes them (labels -100 at padding)."""
    batches = []
    for lengths in ([9, 4, 7], [5, 5], [3, 8, 6, 2]):
        ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            ids[row, :length] = torch.randint(0, vocab_size, (length,))
            mask[row, :length] = 1
        batches.append(
            {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        )
    return batches


def test_readme_dict_batch_example_trains_and_scores_next_tokens(tmp_path) -> None:
    torch.manual_seed(10)
    vocab_size = 40
    counts = torch.randint(1, 50, (vocab_size,))
    counts[::7] = 0  # ids that never occur in training
    model = CausalLM(vocab_size, counts)
    batches = _dict_batches(vocab_size)
    loader = DataLoader(batches, batch_size=None)  # each item is already a batch
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(model, loader)
    assert math.isfinite(float(trainer.callback_metrics["train_ppl"]))
    logged = trainer.validate(model, loader, verbose=False)[0]["val_ppl"]
    nll, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:  # by hand: row r, position t scores input_ids[r, t + 1]
            hidden = model.rnn(model.embed(batch["input_ids"]))[0]
            for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
                for t in range(length - 1):
                    log_p = model.head.log_prob(hidden[row, t])[batch["input_ids"][row, t + 1]]
                    nll -= float(log_p)
                    tokens += 1
    assert tokens == sum(int(b["attention_mask"].sum()) - len(b["input_ids"]) for b in batches)
    assert logged == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_readme_adaptive_input_example_builds_tied_and_trains(dm, tmp_path) -> None:
    from lm_heads import AdaptiveInput

    class AdaptiveLM(LMHeadMixin, L.LightningModule):
        def __init__(
            self, vocab_size: int, counts: torch.Tensor | None = None, dim: int = 64
        ) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["counts"])
            self.configure_head("adaptive", in_features=dim, vocab_size=vocab_size, counts=counts)
            self.embed = AdaptiveInput.from_head(self.head, tie_weights=True)
            self.rnn = nn.LSTM(dim, dim, batch_first=True)

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return self.head_training_step(self.rnn(self.embed(inputs))[0], targets)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    model = AdaptiveLM(dm.vocab_size, dm.counts)
    shared = {id(p) for p in model.head.parameters()} & {id(p) for p in model.embed.parameters()}
    assert shared  # tied: one Parameter in both
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, dm.train_dataloader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    restored = AdaptiveLM.load_from_checkpoint(tmp_path / "a.ckpt")  # no counts: from the state
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, msg=key)


# --- No hook to chain (issue 23, item 6) --------------------------------------------------------
class _GradientsSeen(L.Callback):
    """What a Lightning callback (a grad-norm monitor, say) sees of the step's gradients."""

    def __init__(self) -> None:
        self.after_backward: dict[str, torch.Tensor] = {}
        self.before_step: dict[str, torch.Tensor] = {}

    @staticmethod
    def _grads(module) -> dict[str, torch.Tensor]:
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_after_backward(self, trainer, pl_module) -> None:
        self.after_backward = self._grads(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before_step = self._grads(pl_module)


class _GradNormExample(_Plain):
    """Lightning's grad-norm example: overrides on_before_optimizer_step without super()."""

    def on_before_optimizer_step(self, optimizer) -> None:
        from lightning.pytorch.utilities import grad_norm

        self.log_dict(grad_norm(self, norm_type=2))
        self.grads = {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None}


def _one_batch_reference(model: _Plain, inputs, targets) -> tuple[dict[str, torch.Tensor], float]:
    reference = _Plain()
    reference.load_state_dict(model.state_dict())
    out = reference.head(reference.embed(inputs), targets)
    out.loss.backward()
    return {n: p.grad for n, p in reference.named_parameters()}, float(out.loss.detach())


def test_callbacks_and_overrides_see_token_weighted_gradients_under_accumulation(tmp_path) -> None:
    """Micro-batches of 6 and 1 tokens: the step's gradient is the mean over its 7 tokens for the
    module's hook overridden without super(), and for callbacks, which Lightning calls first."""
    torch.manual_seed(11)
    model = _GradNormExample()
    inputs, targets = _batches()
    expected, loss = _one_batch_reference(model, inputs, targets)
    seen = _GradientsSeen()
    trainer = _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, callbacks=[seen])
    trainer.fit(model, DataLoader(TensorDataset(inputs, targets), batch_size=1))
    for grads in (model.grads, seen.before_step, seen.after_backward):
        assert grads.keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(loss)
    assert "grad_2.0_norm_total" in trainer.callback_metrics  # the override ran


def test_a_partial_last_window_is_token_weighted(tmp_path) -> None:
    """3 batches with accumulate_grad_batches=2: the epoch's last step holds one micro-batch."""
    torch.manual_seed(12)
    model = _Plain()
    inputs, targets = torch.randint(0, 12, (3, 5)), torch.randint(0, 12, (3, 5))
    targets[2, 2:] = -100
    expected, _ = _one_batch_reference(model, inputs[2:], targets[2:])
    trainer = _trainer(tmp_path, max_steps=2, accumulate_grad_batches=2)
    trainer.fit(model, DataLoader(TensorDataset(inputs, targets), batch_size=1))
    assert trainer.global_step == 2
    for name, grad in expected.items():
        torch.testing.assert_close(model.grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_an_interrupted_window_never_leaks_into_the_next_fit(tmp_path) -> None:
    """A fit that dies after the first of two micro-batches, then a fit of a module that
    overrides on_train_start without super() (as the recipe's LanguageModel does)."""

    class Restarted(_Plain):
        fail = True

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.fail:
                raise RuntimeError("interrupted")
            return loss

        def on_train_start(self) -> None:
            pass

    torch.manual_seed(13)
    model = Restarted()
    inputs, targets = _batches()
    expected, _ = _one_batch_reference(model, inputs, targets)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2).fit(model, loader)
    assert model._head_window is not None  # its first micro-batch's sums were left behind
    model.fail = False
    _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2).fit(model, loader)
    for name, grad in expected.items():
        torch.testing.assert_close(model.grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_two_calls_in_one_accumulated_step_raise(tmp_path) -> None:
    class Twice(_Plain):
        def training_step(self, batch, batch_idx):
            hidden = self.embed(batch[0])
            return self.head_training_step(hidden, batch[1]) + self.head_training_step(
                hidden, batch[1]
            )

    inputs, targets = _batches()
    trainer = _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2)
    with pytest.raises(RuntimeError, match="called twice in one training_step"):
        trainer.fit(Twice(), DataLoader(TensorDataset(inputs, targets), batch_size=1))


def test_validation_hooks_overridden_without_super_keep_val_ppl_exact(dm, tmp_path) -> None:
    class Overrides(MyLM):
        def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0) -> None:
            self.batches = getattr(self, "batches", 0) + 1

        def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            pass

        def on_validation_epoch_start(self) -> None:
            pass

        def on_test_epoch_start(self) -> None:
            pass

    torch.manual_seed(14)
    model = Overrides(dm.vocab_size, dm.counts).eval()
    inputs, targets = next(iter(dm.train_dataloader()))
    with torch.no_grad():  # a manual call leaves state that the next validation must not see
        model.head_evaluation_step(model.hidden(inputs), targets)
        model.head_evaluation_step(model.hidden(inputs), targets, stage="test")
    loader = dm.val_dataloader()
    exact = _exact_ppl(model, loader)
    assert _trainer(tmp_path).validate(model, loader, verbose=False)[0]["val_ppl"] == (
        pytest.approx(exact, rel=1e-6)
    )
    assert model.batches == len(loader)
    assert _trainer(tmp_path).test(model, loader, verbose=False)[0]["test_ppl"] == (
        pytest.approx(exact, rel=1e-6)
    )


def test_overriding_configure_callbacks_keeps_or_names_the_bookkeeping(dm, tmp_path) -> None:
    class Chained(MyLM):
        def configure_callbacks(self):
            return [*super().configure_callbacks(), L.pytorch.callbacks.LearningRateMonitor()]

    class Replaced(MyLM):
        def configure_callbacks(self):
            return [L.pytorch.callbacks.LearningRateMonitor()]

    torch.manual_seed(15)
    loader = dm.val_dataloader()
    chained = Chained(dm.vocab_size, dm.counts).eval()
    logged = _trainer(tmp_path).validate(chained, loader, verbose=False)[0]["val_ppl"]
    assert logged == pytest.approx(_exact_ppl(chained, loader), rel=1e-6)
    with pytest.raises(RuntimeError, match=r"Return \[\*super\(\)\.configure_callbacks\(\)"):
        _trainer(tmp_path).validate(Replaced(dm.vocab_size, dm.counts), loader, verbose=False)


# --- Each sample once, whatever the collate_fn (issue 23, item 5) -------------------------------
def _longest_first(rows):
    """A collate_fn that reorders rows, as one preparing pack_padded_sequence does."""
    inputs, targets = (torch.stack(column) for column in zip(*rows, strict=True))
    order = (targets != -100).sum(1).argsort(descending=True, stable=True)
    return inputs[order], targets[order]


def _uneven_samples() -> TensorDataset:
    """7 samples, sample 0 the longest: a repeat of it sorts first in its batch."""
    inputs, targets = torch.randint(0, 12, (7, 6)), torch.randint(0, 12, (7, 6))
    for row in range(1, 7):
        targets[row, 1 + row % 3 :] = -100
    return TensorDataset(inputs, targets)


def _rank_ppl(model: _Plain, data: TensorDataset, rank: int) -> float:
    inputs, targets = data.tensors
    own = list(range(rank, len(data), 2))
    with torch.no_grad():
        log_p = model.head.target_log_prob(model.embed(inputs[own]), targets[own]).double()
    return math.exp(-float(log_p.sum()) / int((targets[own] != -100).sum()))


@pytest.mark.parametrize("rank", [0, 1])
def test_repeats_are_left_out_by_sample_when_the_collate_fn_reorders_rows(tmp_path, rank) -> None:
    """Before: the repeat of sample 0 sorted first in rank 1's last batch, and the mixin dropped
    the row in the repeat's position (sample 5) instead. Also through fit (sanity check first)."""
    from torch.utils.data import DistributedSampler

    torch.manual_seed(16)
    model = _Plain().eval()
    data = _uneven_samples()
    sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
    loader = DataLoader(data, batch_size=2, sampler=sampler, collate_fn=_longest_first)
    exact = _rank_ppl(model, data, rank)
    logged = _trainer(tmp_path).validate(model, loader, verbose=False)[0]["val_ppl"]
    assert logged == pytest.approx(exact, rel=1e-6)
    assert sum(len(batch[0]) for batch in loader) == len(range(rank, 7, 2))  # no repeat
    sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)  # a new one
    loader = DataLoader(data, batch_size=2, sampler=sampler, collate_fn=_longest_first)
    trainer = _trainer(tmp_path, max_steps=1, val_check_interval=1)  # lr 0: weights unchanged
    trainer.fit(model, DataLoader(data, batch_size=4), loader)
    assert float(trainer.callback_metrics["val_ppl"]) == pytest.approx(exact, rel=1e-6)


class _LongestFirstBatches(torch.utils.data.BatchSampler):
    """Length bucketing: the sampler's indices, longest sample first, in batches."""

    lengths: ClassVar[list[int]] = []

    def __iter__(self):
        indices = sorted(self.sampler, key=lambda index: -self.lengths[index])
        for start in range(0, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]


def test_a_custom_batch_sampler_over_a_repeating_sampler_warns(tmp_path) -> None:
    from torch.utils.data import DistributedSampler

    from lm_heads.mixin import EvaluationSamplingWarning

    torch.manual_seed(17)
    model = _Plain().eval()
    data = _uneven_samples()
    _LongestFirstBatches.lengths = (data.tensors[1] != -100).sum(1).tolist()
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(data, batch_sampler=_LongestFirstBatches(sampler, 2, drop_last=False))
    with pytest.warns(EvaluationSamplingWarning, match="own batch_sampler .*_LongestFirstBatches"):
        logged = _trainer(tmp_path).validate(model, loader, verbose=False)[0]["val_ppl"]
    assert logged == pytest.approx(_rank_ppl(model, data, 1), rel=1e-6)  # it draws lazily


def test_a_sampler_that_drops_samples_warns(tmp_path) -> None:
    from torch.utils.data import DistributedSampler

    from lm_heads.mixin import EvaluationSamplingWarning

    data = _uneven_samples()
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=False, drop_last=True)
    with pytest.warns(EvaluationSamplingWarning, match="drop_last=True, which leaves samples out"):
        _trainer(tmp_path).validate(_Plain(), DataLoader(data, sampler=sampler), verbose=False)


# --- predict, compiled heads (issue 23, item 7) -------------------------------------------------
def test_predict_returns_the_targets_log_probabilities(dm, tmp_path) -> None:
    torch.manual_seed(18)
    model = MyLM(dm.vocab_size, dm.counts).eval()
    loader = dm.val_dataloader()
    predicted = _trainer(tmp_path).predict(model, loader)
    assert len(predicted) == len(loader)
    with torch.no_grad():
        for (inputs, targets), log_p in zip(loader, predicted, strict=True):
            expected = model.head.target_log_prob(model.hidden(inputs), targets)
            torch.testing.assert_close(log_p, expected)
    assert int(model.val_ppl.num_tokens) == 0  # predict updates no metric

    class Own(MyLM):
        def predict_step(self, batch, batch_idx):
            return "own"

    assert _trainer(tmp_path).predict(Own(dm.vocab_size, dm.counts), [0]) == ["own"]

    class NoEvaluation(LMHeadMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.configure_head("full", in_features=4, vocab_size=10)

    with pytest.raises(RuntimeError, match="neither is defined; define predict_step"):
        _trainer(tmp_path).predict(NoEvaluation(), [torch.zeros(2, 3)])


def test_a_compiled_head_is_recognised(tmp_path) -> None:
    """``self.head = torch.compile(self.head)`` used to get "call self.configure_head"."""
    torch.manual_seed(19)
    model = _Plain()
    model.head = torch.compile(model.head, backend="eager")
    model.tie_head_weights(model.embed)  # reaches the Head inside the compiled module
    assert model.head._orig_mod.weight is model.embed.weight
    data = _uneven_samples()
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    assert math.isfinite(float(trainer.callback_metrics["train_ppl"]))
    inputs, targets = data.tensors
    with torch.no_grad():
        log_p = model.head.target_log_prob(model.embed(inputs), targets).double()
    exact = math.exp(-float(log_p.sum()) / int((targets != -100).sum()))
    assert float(trainer.callback_metrics["val_ppl"]) == pytest.approx(exact, rel=1e-6)


class _Dropout(MyLM):
    """The README model with dropout: every draw an evaluation took from the global generator
    would change the masks of the training steps after it."""

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(super().hidden(tokens), 0.5, self.training)


def test_validating_inside_fit_does_not_change_the_training(dm, tmp_path) -> None:
    """The mixin puts the random streams back after each validation (sanity check included),
    so a run trains to the same weights whether it validates every 2 steps or never."""

    def weights(**validation) -> dict[str, torch.Tensor]:
        torch.manual_seed(3)
        model = _Dropout(dm.vocab_size, dm.counts)
        _trainer(tmp_path, max_steps=6, **validation).fit(model, dm)
        return {name: t.detach().clone() for name, t in model.state_dict().items()}

    never = weights(limit_val_batches=0, num_sanity_val_steps=0)
    often = weights(val_check_interval=2, limit_val_batches=3, num_sanity_val_steps=2)
    assert never.keys() == often.keys()
    assert all(torch.equal(never[k], often[k]) for k in never)

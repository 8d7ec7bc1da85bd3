"""The recipe's LanguageModel: loads from its checkpoint without counts (tied or not); compiles."""

from __future__ import annotations

import warnings
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

import pytest
import torch
from recipe_helpers import load_recipe

VOCAB = 50


@pytest.mark.parametrize(
    ("head", "tie"), [("adaptive", False), ("importance", True), ("class", False)]
)
def test_load_from_checkpoint_needs_no_counts(
    head: str, tie: bool, tmp_path, fit_two_steps
) -> None:
    language_model = load_recipe("language_model")
    torch.manual_seed(0)
    counts = torch.randint(1, 100, (VOCAB,)).double()
    options = {"num_samples": 8} if head == "importance" else {}
    model = language_model.LanguageModel(
        vocab_size=VOCAB, counts=counts, head=head, head_options=options, embed_dim=8,
        d_model=12, dropout=0.0, tie_weights=tie, lr_schedule="constant",
    )  # fmt: skip
    tokens = torch.randint(0, VOCAB, (8, 2, 6))
    trainer = fit_two_steps(model, tokens)
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
def test_recipe_model_trains_compiled_and_saves_eager_names(tmp_path, fit_two_steps) -> None:
    language_model = load_recipe("language_model")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = language_model.LanguageModel(
        vocab_size=VOCAB, counts=torch.arange(VOCAB, 0, -1), head="adaptive",
        head_options={"cutoffs": [20]}, embed_dim=8, d_model=12, dropout=0.0, compile=True,
        lr_schedule="constant",
    )  # fmt: skip
    eager_keys = set(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = fit_two_steps(model, torch.randint(0, VOCAB, (8, 2, 6)))
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert model.backbone._compiled_call_impl is not None  # Module.compile() ran at fit start
    assert model.head._compiled_call_impl is not None
    assert set(model.state_dict()) == eager_keys  # compiled in place: checkpoints unchanged


@pytest.mark.parametrize(
    ("stage", "hook"), [("val", "on_validation_epoch_start"), ("test", "on_test_epoch_start")]
)
def test_evaluation_epoch_start_resets_the_mixins_metric(stage: str, hook: str) -> None:
    # The recipe's hooks once overrode the mixin's without super(): an evaluation epoch then
    # started with the previous pass's sums still in the metric. The mixin's reset now runs in
    # the callback it adds (configure_callbacks), whatever the recipe's hooks do.
    from lm_heads.mixin import HeadBookkeeping

    language_model = load_recipe("language_model")
    model = language_model.LanguageModel(vocab_size=VOCAB, head="full", embed_dim=8, d_model=8)
    tokens = torch.randint(0, VOCAB, (2, 6))
    model.head_evaluation_step(model(tokens)[0], tokens, stage=stage)  # by hand: accumulates
    metric = getattr(model, f"{stage}_ppl")
    assert int(metric.num_tokens) == 12
    getattr(model, hook)()
    assert model._carried[stage] is None
    (bookkeeping,) = [c for c in model.configure_callbacks() if isinstance(c, HeadBookkeeping)]
    getattr(bookkeeping, hook)(None, model)
    assert int(metric.num_tokens) == 0 and float(metric.nll_sum) == 0.0


def test_the_recipe_keeps_the_mixins_callbacks() -> None:
    # Dropping the mixin's bookkeeping would leave every evaluation without its metric reset
    # (the mixin then refuses to evaluate); dropping the random-state keeper would let curve
    # points change the training.
    from lm_heads.mixin import EvaluationKeepsRandomState, HeadBookkeeping

    language_model = load_recipe("language_model")
    model = language_model.LanguageModel(vocab_size=VOCAB, head="full", embed_dim=8, d_model=8)
    kinds = [type(c) for c in model.configure_callbacks()]
    assert kinds == [HeadBookkeeping, EvaluationKeepsRandomState]


def test_optimizer_and_lr_follow_the_backbone_unless_given() -> None:
    # SGD at lr 20 (pytorch/examples' LSTM) made the Transformer diverge: val ppl 4.7e6.
    language_model = load_recipe("language_model")

    def optimizer(**options):
        model = language_model.LanguageModel(
            vocab_size=VOCAB, embed_dim=8, d_model=8, num_heads=2, lr_schedule="constant", **options
        )
        opt = model.configure_optimizers()
        return type(opt).__name__, opt.param_groups[0]["lr"], model.hparams.optimizer

    assert optimizer(model="lstm") == ("SGD", 20.0, "sgd")
    assert optimizer(model="transformer") == ("AdamW", 1e-3, "adamw")
    assert optimizer(model="transformer", optimizer="sgd", lr=0.5) == ("SGD", 0.5, "sgd")
    assert optimizer(model="lstm", optimizer="adam") == ("Adam", 1e-3, "adam")


def test_one_set_of_defaults() -> None:
    # LanguageModel() once defaulted to 128/256/1 layer/Adam 2e-3 while the command line said
    # 200/200/2 layers/SGD 20: the command line's defaults are now the model's.
    from recipes.cli import parse_args
    from recipes.options import option_names

    language_model = load_recipe("language_model")
    args = parse_args([])
    model = language_model.LanguageModel(vocab_size=VOCAB)
    given = language_model.LanguageModel(vocab_size=VOCAB, **{k: args[k] for k in option_names()})
    assert dict(model.hparams) == dict(given.hparams)
    hp = model.hparams
    assert (hp.embed_dim, hp.d_model, hp.num_layers) == (200, 200, 2)
    listed = (
        r"\['embed_size'\]; the options are \['head', 'head_options', 'model', .*'warmup_steps'\]"
    )
    with pytest.raises(TypeError, match=r"unknown model option\(s\) " + listed):
        language_model.LanguageModel(vocab_size=VOCAB, embed_size=8)


def _plain(hint: object) -> object:
    """A field's type as a caller writes it: jsonargparse's ``PositiveInt`` is ``int``."""
    if get_origin(hint) in (Union, UnionType):
        return Union[tuple(_plain(h) for h in get_args(hint))]  # noqa: UP007
    if get_origin(hint) is list:
        return list[_plain(get_args(hint)[0])]  # type: ignore[misc]
    return getattr(hint, "_type", hint)


def test_the_typed_signature_is_the_declared_options() -> None:
    # LanguageModel's **options are typed by ModelOptionsDict for mypy; the dataclasses hold the
    # defaults and help. A field added to one and not the other fails here.
    from recipes.options import MODEL_GROUPS, ModelOptionsDict

    declared = {
        name: _plain(hint) for group in MODEL_GROUPS for name, hint in get_type_hints(group).items()
    }
    typed = get_type_hints(ModelOptionsDict)
    assert list(typed) == list(declared)
    assert typed == declared


OLD_HPARAMS = {
    "vocab_size": VOCAB, "max_len": 512, "head": "adaptive", "head_options": {"cutoffs": [20]},
    "model": "lstm", "input_layer": "embedding", "embed_dim": 8, "d_model": 12, "num_layers": 2,
    "num_heads": 4, "positions": "learned", "dropout": 0.0, "tie_weights": False,
    "carry_state": True, "compile": False, "optimizer": "sgd", "lr": 20.0, "weight_decay": 0.0,
    "lr_schedule": "constant", "lr_decay": 4.0, "lr_milestones": [], "lr_patience": 0,
    "warmup_steps": 0,
}  # fmt: skip
"""The hyperparameters as checkpoints before the typed signature saved them: one flat mapping."""


def test_a_checkpoint_with_flat_hyperparameters_loads(tmp_path, fit_two_steps) -> None:
    language_model = load_recipe("language_model")
    torch.manual_seed(0)
    counts = torch.arange(VOCAB, 0, -1).double()
    options = {k: v for k, v in OLD_HPARAMS.items() if k not in ("vocab_size", "max_len")}
    model = language_model.LanguageModel(vocab_size=VOCAB, counts=counts, **options)
    assert dict(model.hparams) == OLD_HPARAMS  # new checkpoints keep the flat mapping
    tokens = torch.randint(0, VOCAB, (8, 2, 6))
    fit_two_steps(model, tokens).save_checkpoint(tmp_path / "lm.ckpt")
    ckpt = torch.load(tmp_path / "lm.ckpt", weights_only=True)
    ckpt["hyper_parameters"] = dict(OLD_HPARAMS)
    torch.save(ckpt, tmp_path / "old.ckpt")
    restored = language_model.LanguageModel.load_from_checkpoint(tmp_path / "old.ckpt").eval()
    model.eval()
    assert dict(restored.hparams) == OLD_HPARAMS
    with torch.no_grad():
        expected = model.head.target_log_prob(model(tokens[:, 0])[0], tokens[:, 1])
        got = restored.head.target_log_prob(restored(tokens[:, 0])[0], tokens[:, 1])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_lstm_recurrence_runs_in_float32_under_cpu_autocast() -> None:
    from recipes.models import LSTMLM

    model = LSTMLM(30, embed_dim=8, d_model=8, num_layers=2, dropout=0.0)
    tokens = torch.randint(0, 30, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, state = model(tokens)
        carried, _ = model(tokens, state)
    assert hidden.dtype == carried.dtype == state[0].dtype == torch.float32

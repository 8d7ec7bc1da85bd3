"""Observing a run never changes it: curve points, epoch-end validations of any length and the
sanity check leave training's random streams as they found them (lm_heads/random_state.py and
the mixin's ``EvaluationKeepsRandomState``)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from recipe_helpers import load_recipe

from lm_heads.random_state import preserved_random_state

language_model = load_recipe("language_model")

# Dropout well above 0: every draw that an evaluation takes from the global generator would
# change the masks of the steps after it.
DROPOUT = ["--dropout", "0.5", "--lr-schedule", "constant"]


def _weights(lm, tiny_args: list[str], name: str, extra: list[str]) -> dict[str, torch.Tensor]:
    out = Path(tiny_args[tiny_args.index("--output-dir") + 1]).parent / name
    args = [*tiny_args, *DROPOUT, *extra]
    args[args.index("--output-dir") + 1] = str(out)
    lm.main(args)
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"parameters trained differently: {different}"


def test_curve_points_do_not_change_training(lm, tiny_args) -> None:
    run = ["--head", "adaptive", "--max-steps", "12", "--limit-val-batches", "2"]
    plain = _weights(lm, tiny_args, "plain", run)
    observed = _weights(lm, tiny_args, "observed", [*run, "--curve-every", "3",
                                                    "--curve-batches", "2"])  # fmt: skip
    _assert_same_weights(plain, observed)


def _fit(tmp_path: Path, val_batches: int) -> dict[str, torch.Tensor]:
    """Three short epochs, validating ``val_batches`` batches at each epoch end (0: never, and
    no sanity check either), as a Trainer of one's own runs the model: no recipe involved."""
    import lightning as L

    from lm_heads.data import LMDataModule

    dm = LMDataModule("synthetic", batch_size=4, bptt=8, synthetic_vocab_size=60,
                      synthetic_tokens=4000, cache_dir=tmp_path / "cache")  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    L.seed_everything(7, verbose=False)
    model = language_model.LanguageModel(
        vocab_size=dm.vocab_size, head="full", embed_dim=16, d_model=16, dropout=0.5,
        lr_schedule="constant",
    )  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=4,
                        limit_val_batches=val_batches, num_sanity_val_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_epoch_end_validation_does_not_change_the_next_epoch(tmp_path) -> None:
    # 0 batches: no validation at all; 1 and 3: validations (and sanity checks) of other lengths.
    runs = [_fit(tmp_path, n) for n in (0, 1, 3)]
    _assert_same_weights(runs[0], runs[1])
    _assert_same_weights(runs[0], runs[2])


def test_preserved_random_state_restores_every_stream() -> None:
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    with preserved_random_state(torch.device("cpu")):
        torch.rand(5), random.random(), np.random.rand(4)
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]

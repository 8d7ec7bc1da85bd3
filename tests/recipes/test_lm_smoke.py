"""recipes/lm.py end to end on a tiny synthetic language (in-process, few steps); backbones."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from recipe_helpers import TINY  # noqa: F401 - other test modules import it from here

from lm_heads import build_head
from lm_heads.tying import tie_weights as tie_head_weights
from recipes.models import LSTMLM, TransformerLM


def test_recipe_trains_evaluates_and_reports(lm, tiny_args, tmp_path, capsys) -> None:
    results = lm.main([*tiny_args, "--head", "adaptive", "--max-steps", "3"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("threads: 1 per rank (from --threads 1")  # before anything slow
    assert lines[1].startswith("data: synthetic language")
    gap = math.log(results["test_ppl"] / results["entropy_floor_ppl"])
    assert f"{gap:.3f} nats/token above it" in out  # the distance to the floor is reported

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["val_ppl"] == pytest.approx(results["val_ppl"])
    for key in ("head", "head_options", "data_description", "vocab_size", "val_ppl", "test_ppl",
                "entropy_floor_ppl", "similarity", "train_tokens_per_s", "peak_memory_mib",
                "wall_seconds"):  # fmt: skip
        assert key in saved, key
    assert saved["global_step"] == 3 and saved["world_size"] == 1
    assert 1.0 < saved["entropy_floor_ppl"] < saved["val_ppl"] < 10 * saved["vocab_size"]
    assert math.isfinite(saved["test_ppl"])
    assert saved["similarity"]["input"]["measured"] is True
    assert saved["similarity"]["input"]["covered"] > 0
    assert saved["train_tokens_per_s"] > 0 and saved["peak_memory_mib"] > 0
    assert not (tmp_path / "lightning_logs").exists()
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == [
        "last.ckpt", "step2.ckpt"]  # fmt: skip

    # The final step (3) is not a multiple of --checkpoint-every (2): last.ckpt still has it.
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["head"] == "adaptive"
    assert "rng_states" in ckpt


def test_eval_only_reproduces_the_final_perplexity(lm, tiny_args, tmp_path) -> None:
    trained = lm.main([*tiny_args, "--head", "full", "--tie-weights", "--max-steps", "2"])
    again = lm.main(
        [
            *tiny_args,
            "--head",
            "full",
            "--tie-weights",
            "--eval-only",
            "--resume",
            "last",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    assert again["val_ppl"] == pytest.approx(trained["val_ppl"], rel=1e-6)
    assert again["test_ppl"] == pytest.approx(trained["test_ppl"], rel=1e-6)
    out = trained["similarity"]["output"]
    assert out["measured"] is True  # full softmax has one output row per word


def test_transformer_and_sampled_head(lm, tiny_args) -> None:
    results = lm.main(
        [
            *tiny_args,
            "--model",
            "transformer",
            "--positions",
            "sinusoidal",
            "--num-heads",
            "2",
            "--head",
            "importance",
            "--head-option",
            "num_samples=16",
            "--max-steps",
            "2",
            "--optimizer",
            "adamw",
            "--lr",
            "2e-3",
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "1",
        ]
    )
    assert results["head_options"] == {"num_samples": 16}
    assert results["head_is_exact"] is False
    assert math.isfinite(results["val_ppl"])


def test_resume_last_without_checkpoint_says_so(lm, tiny_args, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        lm.main([*tiny_args, "--resume", "last", "--max-steps", "2"])
    assert exc.value.code == 2 and "no checkpoint at" in capsys.readouterr().err


def test_log_without_a_terminal_has_lines_not_carriage_returns(lm, tiny_args, capsys) -> None:
    argv = [a for a in tiny_args if a != "--no-progress-bar"]  # default: decided by the terminal
    lm.main([*argv, "--max-steps", "4", "--log-every", "2"])
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    steps = [line.split()[1] for line in captured.out.splitlines() if line.startswith("step ")]
    assert steps == ["2/4", "4/4"]


def test_similarity_set_is_named_in_summary(lm, tiny_args, tmp_path, capsys) -> None:
    pairs = tmp_path / "wordsim353.tsv"
    pairs.write_text("# WordSim\n" + "".join(f"w{i}\tw{i + 1}\t{i % 7}.5\n" for i in range(30)))
    out = lm.main([*tiny_args, "--max-steps", "1", "--similarity", str(pairs)])
    assert out["similarity"]["source"] == "WordSim-353"
    assert out["similarity"]["input"]["total"] == 30
    assert "pairs of WordSim-353" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["csv", "tensorboard", "wandb", "mlflow"])
def test_logger_by_name(lm, tiny_args, tmp_path, capsys, name: str) -> None:
    import importlib.util

    package = {"csv": "lightning", "tensorboard": "tensorboard"}.get(name, name)
    if importlib.util.find_spec(package) is None:
        with pytest.raises(SystemExit) as exc:
            lm.main([*tiny_args, "--max-steps", "1", "--logger", f"[{name}]"])
        assert exc.value.code == 2 and f"needs the package(s) {name}" in capsys.readouterr().err
        pytest.skip(f"{package} is not installed (the error it gives is tested)")
    lm.main([*tiny_args, "--max-steps", "1", "--logger", f"[{name}]"])
    written = {"csv": "logs", "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlruns"}
    assert (tmp_path / "run" / written[name]).is_dir()
    others = set(written.values()) - {written[name]}
    assert not any((tmp_path / "run" / other).exists() for other in others)


def test_print_config_from_the_script(lm, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        lm.main(["--head", "full", "--max-steps", "7", "--print_config"])
    assert exc.value.code == 0
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    from recipes.cli import parse_args

    args = parse_args(["--config", str(tmp_path / "c.yaml")])
    assert (args.head, args.max_steps) == ("full", 7)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_transformer_is_causal(positions: str) -> None:
    model = TransformerLM(50, embed_dim=8, d_model=16, num_layers=2, num_heads=2, dropout=0.0,
                          max_len=12, positions=positions).eval()  # fmt: skip
    tokens = torch.randint(0, 50, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 50
    (a, _), (b, _) = model(tokens), model(changed)
    assert a.shape == (2, 10, 16)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    with pytest.raises(ValueError, match="exceeds max_len"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_lstm_shapes_and_projection() -> None:
    model = LSTMLM(30, embed_dim=8, d_model=12, num_layers=2, dropout=0.1, out_features=8)
    hidden, (h, c) = model(torch.randint(0, 30, (3, 5)))
    assert hidden.shape == (3, 5, 8) and h.shape == c.shape == (2, 3, 12)
    with pytest.raises(ValueError, match="dropout"):
        LSTMLM(30, embed_dim=8, d_model=8, num_layers=1, dropout=1.0)


def test_tie_weights_shares_the_parameter() -> None:
    model = LSTMLM(40, embed_dim=8, d_model=12, num_layers=1, dropout=0.0, out_features=8)
    head = build_head("full", 8, 40)
    name = tie_head_weights(model.embedding, head)
    assert head.get_parameter(name) is model.embedding.weight
    params = list(model.parameters()) + list(head.parameters())
    assert len({id(p) for p in params}) == len(params) - 1  # one shared, counted once by optimizers
    out = head(model(torch.randint(0, 40, (2, 5)))[0], torch.randint(0, 40, (2, 5)))
    out.loss.backward()
    assert model.embedding.weight.grad is not None


def test_tie_weights_refuses_clearly() -> None:
    embedding = torch.nn.Embedding(40, 8)
    counts = torch.arange(40, 0, -1)
    with pytest.raises(ValueError, match=r"no output embedding per word|not one of its parameters"):
        tie_head_weights(embedding, build_head("adaptive", 8, 40, counts=counts, cutoffs=[10]))
    with pytest.raises(ValueError, match="must project"):
        tie_head_weights(embedding, build_head("full", 12, 40))


def test_no_weights_only_notice(lm, tiny_args, caplog, capsys) -> None:
    # Every run printed "`weights_only` was not set, defaulting to `False`" (Lightning, when the
    # final last.ckpt was saved without saying), against the README's weights_only=True loading.
    caplog.set_level(logging.INFO)
    lm.main([*tiny_args, "--max-steps", "3"])
    lm.main([*tiny_args, "--max-steps", "4", "--resume", "last"])
    captured = capsys.readouterr()
    assert "was not set, defaulting" not in caplog.text + captured.out + captured.err

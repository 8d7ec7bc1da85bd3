"""The recipe checks memory before training (recipes/preflight.py): a head that cannot fit is one
paragraph and exit status 2, before anything trains."""

from __future__ import annotations

import pytest
import torch

from lm_heads.memory import GiB
from recipes.cli import UsageError
from recipes.language_model import LanguageModel
from recipes.preflight import check_memory

V, D = 500, 16


def test_too_little_memory_is_a_clear_error_before_training() -> None:
    model = LanguageModel(vocab_size=V, head="full", embed_dim=D, d_model=D)
    line = check_memory(model, 20 * 35, torch.device("cpu"), available=64 * GiB)
    assert line.startswith("memory: about ") and line.endswith(" GiB to train of 64.0 GiB free")
    with pytest.raises(UsageError, match=r"--head full cannot train .* only 0\.0 GiB is free"):
        check_memory(model, 20 * 35, torch.device("cpu"), available=1024)


def test_recipe_refuses_a_head_that_does_not_fit(lm, tiny_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("lm_heads.memory.available_bytes", lambda device: 10_000)
    with pytest.raises(SystemExit) as exit_info:
        lm.main([*tiny_args, "--head", "full", "--max-steps", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--head full cannot train in the memory available" in err and "--batch-size" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained

"""Ctrl-C (SIGINT) and SIGTERM during training save last.ckpt at that step and say how to resume
(Lightning's own shutdown exited 1 without a checkpoint: before --checkpoint-every steps,
--resume last then found nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from recipe_helpers import REPO, TINY, load_recipe

language_model = load_recipe("language_model")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_checkpoint_and_resume_continues(
    lm, tiny_args, tmp_path, capsys, monkeypatch, signum
) -> None:
    step = language_model.LanguageModel.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 2:  # during the third step, as a user's Ctrl-C would
            os.kill(os.getpid(), signum)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(language_model.LanguageModel, "training_step", training_step)
    previous = signal.getsignal(signum)
    with pytest.raises(SystemExit) as exc:
        lm.main([*tiny_args, "--max-steps", "50", "--checkpoint-every", "100"])
    assert exc.value.code == 128 + signum
    assert signal.getsignal(signum) == previous  # handlers given back
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name}: training stopped at step 3" in err
    assert "--resume last" in err and "last.ckpt" in err
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert not (run / "results.json").exists()  # stopped: no final evaluation

    monkeypatch.setattr(language_model.LanguageModel, "training_step", step)
    again = lm.main([*tiny_args, "--max-steps", "5", "--checkpoint-every", "100", "--resume",
                     "last"])  # fmt: skip
    assert again["global_step"] == 5


@pytest.mark.slow  # a new interpreter loads torch and lightning (the tests above send real signals)
def test_ctrl_c_on_the_command_line(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "recipes" / "lm.py"), *TINY, "--cache-dir",
            str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run"), "--max-steps",
            "100000", "--checkpoint-every", "100000", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # LineProgress: one line per step
            if line.startswith("step 3/"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Continue with:" in err and "--resume last" in err, err
    assert "Traceback" not in err
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] >= 3


def test_resume_after_a_signal_continues_the_epoch_exactly(
    lm, tiny_args, tmp_path, monkeypatch
) -> None:
    """Stopped by a signal mid-epoch and resumed, a run ends with exactly the weights of one that
    never stopped: the resume skips the batches trained, and the stop ran no validation (which
    would have stepped the plateau schedule and the data's state after last.ckpt was written)."""
    steps = ["--max-steps", "8", "--checkpoint-every", "100", "--dropout", "0.3"]
    whole = lm.main([*tiny_args, *steps, "--output-dir", str(tmp_path / "whole")])
    assert whole["global_step"] == 8

    step = language_model.LanguageModel.training_step
    validations = []
    monkeypatch.setattr(
        language_model.LanguageModel,
        "on_validation_start",
        lambda self: validations.append(self.trainer.sanity_checking),
    )

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(language_model.LanguageModel, "training_step", training_step)
    with pytest.raises(SystemExit):
        lm.main([*tiny_args, *steps])
    assert validations == [True]  # the sanity check; the stop itself validated nothing
    stopped = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu",
                         weights_only=True)  # fmt: skip
    assert (stopped["global_step"], stopped["epoch"]) == (3, 0)  # mid-epoch, not epoch end
    monkeypatch.setattr(language_model.LanguageModel, "training_step", step)
    resumed = lm.main([*tiny_args, *steps, "--resume", "last"])
    assert resumed["global_step"] == 8

    def weights(run: str) -> dict[str, torch.Tensor]:
        path = tmp_path / run / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    ours, reference = weights("run"), weights("whole")
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)

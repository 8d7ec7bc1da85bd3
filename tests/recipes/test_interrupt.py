"""Ctrl-C (SIGINT) and SIGTERM during training save last.ckpt at that step and say how to resume
(Lightning's own shutdown exited 1 without a checkpoint: before --checkpoint-every steps,
--resume last then found nothing). Under SLURM, the requeue signal saves an hpc_ckpt at a step's
end, a requeued job continues from the newest checkpoint, and the final evaluation is of the
weights trained, whatever hpc_ckpt lies beside them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_helpers import REPO, SLURM, TINY, fake_scontrol, load_recipe

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


# SLURM: the requeue signal, the checkpoint a requeued job continues from, and the final evaluation.
def _under_slurm(monkeypatch, tmp_path) -> Path:
    """This process as a one-task SLURM job whose ``scontrol`` records its calls."""
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    calls = fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return calls


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)


def test_requeue_signal_saves_an_hpc_checkpoint_that_resumes_exactly(
    lm, tiny_args, tmp_path, capsys, monkeypatch
) -> None:
    """SIGUSR1 (SLURM's warning before the time limit), arriving mid-step, saves hpc_ckpt_1 at
    that step's end, asks SLURM to requeue the job, and training goes on unchanged; the requeued
    job (no --resume) continues from the hpc_ckpt to exactly the same weights (carried state,
    dropout)."""
    calls = _under_slurm(monkeypatch, tmp_path)
    step = language_model.LanguageModel.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(language_model.LanguageModel, "training_step", training_step)
    previous = signal.getsignal(signal.SIGUSR1)
    steps = ["--max-steps", "6", "--checkpoint-every", "100", "--dropout", "0.3"]
    whole = lm.main([*tiny_args, *steps])
    assert whole["global_step"] == 6
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert "SIGUSR1: saved" in capsys.readouterr().err
    assert calls.read_text() == "requeue 4242\n"
    run = tmp_path / "run"
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 3  # the end of the step the signal arrived in
    assert hpc["carried_state"]["batches_in_epoch"] == 3

    monkeypatch.setattr(language_model.LanguageModel, "training_step", step)
    requeued = tmp_path / "requeued"  # the job as SLURM restarts it, right after the save
    requeued.mkdir()
    shutil.copy(run / "hpc_ckpt_1.ckpt", requeued)
    again = lm.main([*tiny_args, *steps, "--output-dir", str(requeued)])
    assert again["global_step"] == 6
    _assert_same_weights(_weights(requeued / "checkpoints/last.ckpt"),
                         _weights(run / "checkpoints/last.ckpt"))  # fmt: skip
    assert (again["val_ppl"], again["test_ppl"]) == (whole["val_ppl"], whole["test_ppl"])


def test_final_evaluation_is_of_the_trained_weights_beside_an_hpc_checkpoint(
    lm, tiny_args, tmp_path, monkeypatch
) -> None:
    """Under SLURM, Lightning evaluates the newest hpc_ckpt when validate/test get no checkpoint:
    after a resume it reported an older step's perplexities (and SimLex on those weights)."""
    steps = ["--max-steps", "6", "--dropout", "0.3"]
    whole = lm.main([*tiny_args, *steps, "--output-dir", str(tmp_path / "whole")])
    lm.main([*tiny_args, *steps[2:], "--max-steps", "3"])  # last.ckpt at step 3, step2.ckpt
    run = tmp_path / "run"
    shutil.copy(run / "checkpoints/step2.ckpt", run / "hpc_ckpt_1.ckpt")  # older than last.ckpt
    _under_slurm(monkeypatch, tmp_path)
    resumed = lm.main([*tiny_args, *steps, "--resume", "last"])
    assert resumed["global_step"] == 6
    for key in ("val_ppl", "test_ppl", "similarity"):
        assert resumed[key] == whole[key], key


def test_resume_last_takes_the_newer_of_last_and_hpc_checkpoints(tmp_path) -> None:
    from recipes.checkpoint import newest_checkpoint

    def save(path: Path, step: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": step}, path)
        return path

    assert newest_checkpoint(tmp_path) is None
    last = save(tmp_path / "checkpoints/last.ckpt", 30)
    assert newest_checkpoint(tmp_path) == last
    hpc = save(tmp_path / "hpc_ckpt_1.ckpt", 20)
    assert newest_checkpoint(tmp_path) == last  # an hpc_ckpt no longer wins for being one
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"PK cut short")  # a save killed midway
    hpc = save(tmp_path / "hpc_ckpt_2.ckpt", 40)
    assert newest_checkpoint(tmp_path) == hpc
    save(last, 40)  # the same step: the later written wins (e.g. after an epoch-end validation)
    for later, earlier in ((last, hpc), (hpc, last)):
        os.utime(later, ns=(earlier.stat().st_mtime_ns + 10**9,) * 2)
        assert newest_checkpoint(tmp_path) == later

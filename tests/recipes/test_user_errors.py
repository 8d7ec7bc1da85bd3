"""Every user mistake exits with status 2 and one paragraph, before training starts;
no work is lost (one last.ckpt, no silent overwrite, whole-run time, exact resume, clean cache)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from recipe_helpers import SLURM, load_recipe, write_corpus

from lm_heads.data import LMDataModule


def _fails(lm, argv: list[str], capsys, *messages: str) -> str:
    """Run the recipe, expect exit status 2 with one paragraph holding ``messages``."""
    with pytest.raises(SystemExit) as exc:
        lm.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("recipes/lm.py: error:")]
    assert len(lines) == 1, err
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


def _not_trained(run: Path) -> None:
    assert not (run / "checkpoints").exists() and not (run / "results.json").exists()


# 1. The similarity file is read before training.
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "bad.txt").write_text("old new\n") and p / "bad.txt", "line 1"),
    ],
)
def test_bad_similarity_file_stops_before_training(lm, tiny_args, tmp_path, capsys, make, message):
    path = make(tmp_path)
    _fails(lm, [*tiny_args, "--similarity", str(path)], capsys, "--similarity", message)
    _not_trained(tmp_path / "run")


# 2. and 3. Data that cannot be used.
def test_data_without_test_split(lm, tiny_args, tmp_path, capsys) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "test.txt").unlink()
    _fails(lm, [*tiny_args, "--data", str(corpus)], capsys, "lacks the split(s) test")
    _not_trained(tmp_path / "run")


@pytest.mark.parametrize("kind", ["nonexistent", "empty", "hub"])
def test_unusable_data_source(lm, tiny_args, tmp_path, capsys, monkeypatch, kind: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    data = {"nonexistent": str(tmp_path / "nope"), "empty": str(tmp_path / "empty"),
            "hub": "wikitext-103"}[kind]  # fmt: skip
    expected = {"nonexistent": "neither one of", "empty": "lacks the split",
                "hub": "cannot load Salesforce/wikitext"}[kind]  # fmt: skip
    _fails(lm, [*tiny_args, "--data", data], capsys, expected)


@pytest.mark.parametrize(
    ("head", "option", "message"),
    [("adaptive", "cutoffs=abc", "cutoffs"), ("class", "num_classes=0", "num_classes")],
)
def test_bad_head_option_values(lm, tiny_args, tmp_path, capsys, head, option, message) -> None:
    line = _fails(lm, [*tiny_args, "--head", head, "--head-option", option], capsys,
                  f"--head {head}", message)  # fmt: skip
    assert "cannot build the model" in line
    _not_trained(tmp_path / "run")


def test_bad_hardware_options(lm, tiny_args, capsys) -> None:
    _fails(lm, [*tiny_args, "--precision", "foo"], capsys, "--precision 'foo'")
    if not torch.cuda.is_available():
        _fails(lm, [*tiny_args, "--accelerator", "gpu"], capsys, "--accelerator gpu")


def test_output_dir_that_is_a_file(lm, tiny_args, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    _fails(lm, [*tiny_args, "--output-dir", str(tmp_path / "file")], capsys, "is a file")


def test_corrupt_checkpoint(lm, tiny_args, tmp_path, capsys, trained) -> None:
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained.read_bytes()[:5000])  # as after a kill or a full disk
    _fails(lm, [*tiny_args, "--resume", str(cut)], capsys, "cannot read checkpoint", "damaged")
    (tmp_path / "text.ckpt").write_text("hello")
    _fails(lm, [*tiny_args, "--resume", str(tmp_path / "text.ckpt")], capsys, "is a text file")
    _not_trained(tmp_path / "run")


def test_results_json_given_as_a_checkpoint(lm, tiny_args, tmp_path, capsys, trained) -> None:
    # It was called "damaged (e.g. cut short by a full disk)".
    results = trained.parent.parent / "results.json"
    line = _fails(lm, [*tiny_args, "--resume", str(results)], capsys, "is a JSON file",
                  "results.json", "checkpoints/")  # fmt: skip
    assert "damaged" not in line
    generate = load_recipe("generate")
    with pytest.raises(SystemExit):
        generate.main(["--checkpoint", str(results)])
    err = capsys.readouterr().err
    assert "is a JSON file" in err and "--resume" not in err  # generate.py has no --resume


def test_other_heads_checkpoint(lm, tiny_args, capsys, trained) -> None:
    line = _fails(lm, [*tiny_args, "--head", "full", "--resume", str(trained), "--max-steps", "4"],
                  capsys, "was trained with --head adaptive")  # fmt: skip
    assert "missing" not in line


def test_other_sizes_checkpoint(lm, tiny_args, capsys, trained) -> None:
    argv = [*tiny_args, "--resume", str(trained), "--max-steps", "4", "--embed-dim", "8"]
    _fails(lm, argv, capsys, "does not fit this model", "embed_dim=16 (now 8)")


# 4. No silent overwrite, one last checkpoint.
def test_rerun_refuses_then_overwrites_and_keeps_one_last_checkpoint(lm, tiny_args, tmp_path,
                                                                     capsys) -> None:  # fmt: skip
    run = tmp_path / "run"
    lm.main([*tiny_args, "--max-steps", "3"])
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    _fails(lm, [*tiny_args, "--max-steps", "3"], capsys, "holds an earlier run", "--overwrite")
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    lm.main([*tiny_args, "--max-steps", "3", "--overwrite", "--head", "full"])
    lm.main([*tiny_args, "--max-steps", "5", "--head", "full", "--resume", "last"])
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step4.ckpt"], names  # no last-v1.ckpt
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["hyper_parameters"]["head"] == "full"


# 5. A checkpoint of other data: the vocabulary is named as the cause.
def test_other_vocabulary_checkpoint(lm, tiny_args, tmp_path, capsys, trained) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    argv = [*tiny_args, "--data", str(corpus), "--resume", str(trained), "--max-steps", "4"]
    _fails(lm, argv, capsys, "different vocabulary", "first difference at id")


# 6. Text that is not UTF-8: file and line named, or --encoding.
def test_non_utf8_text(lm, tiny_args, tmp_path, capsys) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with (corpus / "valid.txt").open("ab") as handle:
        handle.write("caf\u00e9 au lait\n".encode("latin-1"))
    lines = (corpus / "valid.txt").read_bytes().count(b"\n")
    line = _fails(lm, [*tiny_args, "--data", str(corpus)], capsys, "valid.txt", f"line {lines}")
    assert "0xe9" in line and "--encoding" in line
    _not_trained(tmp_path / "run")
    out = lm.main([*tiny_args, "--data", str(corpus), "--encoding", "latin-1", "--max-steps", "1"])
    assert out["vocab_size"] == 40 + 2  # word0..39, <unk>, <eos> (the vocabulary is train's)


# 7. Lengths are checked before training.
def test_bptt_longer_than_a_split(lm, tiny_args, tmp_path, capsys) -> None:
    line = _fails(lm, [*tiny_args, "--bptt", "5000"], capsys, "--bptt 5000", "split has")
    assert "lower --bptt" in line
    _not_trained(tmp_path / "run")


# 8. A killed cache build leaves temporaries; the next build removes them.
def test_stale_cache_temporaries_are_removed(tmp_path) -> None:
    from lm_heads.data.cache import _HOST

    corpus = write_corpus(tmp_path / "corpus")
    dm = LMDataModule(str(corpus), batch_size=2, bptt=4, cache_dir=tmp_path / "cache")
    entry = dm._resolve().path
    entry.mkdir(parents=True)
    stale = entry / f".train.npy@{_HOST}@{2**22 + 11}@abc.tmp"  # above pid_max: its writer died
    live = entry / f".train.npy@{_HOST}@{os.getpid()}@abc.tmp"
    old = entry / ".valid.npy.legacy.tmp"
    for path in (stale, live, old):
        path.write_bytes(b"partial")
    os.utime(old, (0, 0))  # a day old: stale whoever wrote it
    again = LMDataModule(str(corpus), batch_size=2, bptt=4, cache_dir=tmp_path / "cache")
    again.prepare_data()
    again.setup()
    assert not stale.exists() and not old.exists()
    assert live.exists()  # a running writer's file is left alone
    assert again.vocab_size == 42


# 9. is in test_configs.py (option checks) and below through main.
def test_step_limits_through_main(lm, tiny_args, capsys) -> None:
    _fails(lm, [*tiny_args, "--max-steps", "-5"], capsys, "-1 for no step limit")
    _fails(lm, [*tiny_args, "--max-steps", "-1", "--max-epochs", "0"], capsys, "trains nothing")


def test_cosine_needs_a_step_count_that_max_time_alone_does_not_give(lm, tiny_args, capsys) -> None:
    budget = ["--max-steps", "-1", "--max-epochs", "null", "--max-time", "5"]
    _fails(lm, [*tiny_args, *budget, "--lr-schedule", "cosine"], capsys, "--max-steps N")


def test_warmup_under_a_time_budget_alone_trains(lm, tiny_args, tmp_path) -> None:
    budget = ["--max-steps", "-1", "--max-epochs", "null", "--max-time", "3"]
    lm.main([*tiny_args, *budget, "--lr-schedule", "constant", "--warmup-steps", "2"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["global_step"] >= 1


# 10. Resume: no misleading warning, and the time of the whole run.
def test_resume_is_quiet_and_counts_the_whole_run(lm, tiny_args, tmp_path) -> None:
    run = tmp_path / "run"
    first = lm.main([*tiny_args, "--max-steps", "3"])
    ckpt = torch.load(run / "checkpoints" / "step2.ckpt", map_location="cpu", weights_only=True)
    saved = ckpt["callbacks"]["FitTimer"]["seconds"]
    assert 0 < saved <= first["train_seconds"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step2 = str(run / "checkpoints" / "step2.ckpt")
        again = lm.main([*tiny_args, "--max-steps", "5", "--resume", step2])
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert again["global_step"] == 5
    assert again["train_seconds"] > saved  # the saved part plus this run's
    steps = [p["step"] for p in again["val_curve"]]
    assert steps == sorted(steps)
    results = json.loads((run / "results.json").read_text())
    assert results["train_seconds"] == pytest.approx(again["train_seconds"])


def test_output_dir_rules_on_every_rank(tmp_path, monkeypatch) -> None:
    from recipes.cli import UsageError, grouped, parse_args
    from recipes.preflight import prepare_output_dir

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    fresh = grouped(parse_args(["--output-dir", str(out)])).run
    for rank in (0, 1):  # every rank refuses alike: none is left waiting for the others
        with pytest.raises(UsageError, match="holds an earlier run"):
            prepare_output_dir(fresh, rank)
    overwrite = grouped(parse_args(["--output-dir", str(out), "--overwrite"])).run
    prepare_output_dir(overwrite, rank=1)
    assert (out / "results.json").exists()  # only rank 0 deletes
    (out / "hpc_ckpt_1.ckpt").write_bytes(b"")  # a requeued SLURM job resumes from it itself
    with pytest.raises(UsageError, match=r"hpc_ckpt_1\.ckpt"):  # not under SLURM: --resume last
        prepare_output_dir(fresh, rank=0)
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    prepare_output_dir(fresh, rank=0)
    prepare_output_dir(overwrite, rank=0)  # --overwrite: the hpc_ckpt goes too
    assert not [*out.iterdir()]


# 11. Mistakes that used to surface as a traceback after the data had loaded.
def test_negative_weight_decay(lm, tiny_args, tmp_path, capsys) -> None:
    _fails(lm, [*tiny_args, "--weight-decay", "-1"], capsys, "--weight-decay")
    _not_trained(tmp_path / "run")


def test_output_dir_in_a_read_only_folder(lm, tiny_args, tmp_path, capsys, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere but on a read-only file system: pretend one
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and Path(p) != locked)
    try:
        argv = [*tiny_args, "--output-dir", str(locked / "run" / "deeper")]
        _fails(lm, argv, capsys, f"its parent {locked} is not writable")
    finally:
        locked.chmod(0o755)
    assert not (locked / "run").exists()


def test_a_vocabulary_of_only_unk_and_eos_is_refused(lm, tiny_args, tmp_path, capsys) -> None:
    # --min-count 1000000 left V = 2 and reported "val ppl 1.30" without a word of warning.
    argv = [*tiny_args, "--data", str(write_corpus(tmp_path / "corpus")), "--max-steps", "1"]
    _fails(lm, [*argv, "--min-count", "1000000"], capsys, "no word besides <unk> and <eos>",
           "lower --min-count")  # fmt: skip
    _not_trained(tmp_path / "run")


def test_a_vocabulary_of_mostly_unk_is_warned_about(lm, tiny_args, tmp_path, capsys) -> None:
    corpus = write_corpus(tmp_path / "corpus")  # 40 words, each about 75 times in train
    results = lm.main([*tiny_args, "--data", str(corpus), "--min-count", "76", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert "warning:" in err and "of the training tokens are <unk>" in err, err
    assert results["vocab_size"] > 2


def test_missing_logger_package_is_not_called_a_hardware_problem(lm, tiny_args, capsys,
                                                                monkeypatch) -> None:  # fmt: skip
    from recipes import preflight

    monkeypatch.setattr(preflight, "_installed", lambda package: package != "tensorboard")
    line = _fails(lm, [*tiny_args, "--logger", "[tensorboard]"], capsys, "needs the package(s)")
    assert "hardware" not in line


def test_more_ranks_times_threads_than_cpus_is_warned_about(capsys, monkeypatch) -> None:
    from recipes.options import TrainerOptions
    from recipes.preflight import warn_oversubscribed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    warn_oversubscribed(TrainerOptions(devices=3, accelerator="cpu"), 1)
    err = capsys.readouterr().err
    assert "3 ranks x 1 thread(s) need 3 CPUs, but this process may use 2" in err
    assert "--devices 2 or fewer" in err
    warn_oversubscribed(TrainerOptions(devices=2, accelerator="cpu"), 1)
    assert capsys.readouterr().err == ""


def test_bf16_mixed_lstm_run_on_cpu(lm, tiny_args, monkeypatch) -> None:
    # It crashed after startup in _VF.lstm on CPUs whose oneDNN has no bfloat16 LSTM primitive;
    # this one has it, so the LSTM kernel is made to fail as it does there.
    from torch.nn.modules import rnn

    real = rnn._VF

    class NoBfloat16Lstm:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def lstm(self, inputs, *args, **kwargs):
            if inputs.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu"):
                raise RuntimeError("could not create a primitive descriptor for the LSTM forward "
                                   "propagation primitive")  # fmt: skip
            return real.lstm(inputs, *args, **kwargs)

    monkeypatch.setattr(rnn, "_VF", NoBfloat16Lstm())
    results = lm.main([*tiny_args, "--precision", "bf16-mixed", "--max-steps", "2"])
    assert math.isfinite(results["val_ppl"]) and math.isfinite(results["test_ppl"])

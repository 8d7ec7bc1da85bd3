"""What a new user meets in recipes/lm.py (issue 23, items 8-16): plain sentences for mistakes,
paths checked at once, no advice that trains on garbage, a run that says what it does."""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import logging
import lzma
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_helpers import write_corpus

from lm_heads.data import DataUnavailableError
from lm_heads.data.sources import LocalTextSource


@pytest.fixture(scope="module")
def cli():
    from recipes import cli

    return cli


def _usage_error(cli, argv: list[str], capsys) -> str:
    """Parse ``argv``; expect exit status 2 and one line, returned."""
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# 8. A value that does not fit its option: one sentence in words, no Python type names.
@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--lr", "abc", "a number > 0 or null"),
        ("--lr", "-1", "a number > 0 or null"),
        ("--threads", "0", "a whole number > 0 or null"),
        ("--devices", "0", "a whole number > 0 or auto"),
        ("--optimizer", "sgdd", "one of adam, adamw, sgd or null"),
        ("--logger", "foo", "one of csv, tensorboard, wandb, mlflow or a list, each one of csv, "
         "tensorboard, wandb, mlflow or null"),
        ("--eval-batch-size", "0", "a whole number > 0 or null"),
        ("--max-time", "-5", "a number > 0 or null"),
        ("--curve-every", "0", "a whole number > 0 or null"),
        ("--max-size", "0", "a whole number > 0 or null"),
        ("--limit-val-batches", "0", "a whole number > 0 or a number > 0 and <= 1 or null"),
        ("--batch-size", "2.5", "a whole number > 0"),
        ("--model", "lsmt", "one of lstm, transformer"),
    ],
)  # fmt: skip
def test_a_wrong_value_is_one_plain_sentence(cli, capsys, option, value, expected) -> None:
    err = _usage_error(cli, [option, value], capsys)
    assert err == f"recipes/lm.py: error: {option}: expected {expected}, got {value!r}"


def test_describe_type_reads_any_declared_type(cli) -> None:
    from typing import Literal

    from recipes.options import Fraction

    assert cli.describe_type(int | None) == "a whole number or null"
    assert cli.describe_type(Fraction) == "a number >= 0 and < 1"
    assert cli.describe_type(list[Literal["a", "b"]]) == "a list, each one of a, b"


# 14. --print-config with a dash, as every other option may be spelled.
@pytest.mark.parametrize("spelling", ["--print-config", "--print_config"])
def test_print_config_in_either_spelling(cli, capsys, spelling: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--lr", "0.5", spelling])
    assert exc.value.code == 0
    assert "lr: 0.5" in capsys.readouterr().out


# 9. A mistyped path is reported before torch loads (the README promises under a second).
def test_path_mistakes_are_reported_before_torch_loads(repo, tmp_path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cases = {
        "--data": "neither one of auto",
        "--resume": "no such checkpoint",
        "--similarity": "the file does not exist",
        "--output-dir": "is a file",
    }
    probe = (
        "import runpy, sys\n"
        "from pathlib import Path\n"
        f"cases = {cases!r}\n"
        "for option, message in cases.items():\n"
        f"    path = {str(afile)!r} if option == '--output-dir' else '/no/such/path'\n"
        "    sys.argv = ['recipes/lm.py', option, path]\n"
        "    try:\n"
        "        runpy.run_path('recipes/lm.py', run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        "        print(option, exit.code, 'torch' in sys.modules, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    assert done.stdout.split("\n")[:4] == [f"{o} 2 False" for o in cases], done.stdout + done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 4 and all(m in e for m, e in zip(cases.values(), errors, strict=True))


def test_unwritable_output_dir_is_refused_by_the_parser(cli, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere but on a read-only file system: pretend one
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and Path(p) != locked)
    try:
        err = _usage_error(cli, ["--output-dir", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o755)
    assert f"its parent {locked} is not writable by this user" in err


def test_an_empty_data_folder_names_every_missing_split(lm, tiny_args, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        lm.main([*tiny_args, "--data", str(tmp_path / "empty")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lacks the split(s) train (wiki.train.tokens or train.txt), valid (" in err
    assert "test (wiki.test.tokens or test.txt)" in err
    assert "GPU available" not in capsys.readouterr().out  # before the Trainer is built


# 10. A checkpoint given as --config, and --max-size below 3: a sentence, not a traceback.
def test_a_checkpoint_given_as_config(cli, tmp_path, capsys) -> None:
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # torch.save's zip
    for argv in (["--config", str(checkpoint)], [f"--config={checkpoint}"]):
        err = _usage_error(cli, argv, capsys)
        assert f"--config {checkpoint} is not a text file" in err
        assert "--resume CHECKPOINT" in err


@pytest.mark.parametrize("size", ["1", "2"])
def test_max_size_that_keeps_no_word(cli, capsys, size: str) -> None:
    err = _usage_error(cli, ["--max-size", size], capsys)
    assert f"--max-size {size} counts <unk> and <eos>, so it keeps no word: give 3 or more" in err


# 13. Options that would be dropped silently are refused, naming the option.
@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["--devices", "2", "--strategy", "single_device"],
         "--strategy single_device runs one process, but --devices 2"),
        (["--num-heads", "8"],
         "--num-heads does nothing with --model lstm (it applies to --model transformer only)"),
        (["--positions", "sinusoidal"], "--positions does nothing with --model lstm"),
        (["--model", "transformer", "--no-carry-state"],
         "--carry-state does nothing with --model transformer (it applies to --model lstm only)"),
        (["--lr-schedule", "constant", "--lr-decay", "2"],
         "--lr-decay does nothing with --lr-schedule constant"),
        (["--lr-schedule", "cosine", "--max-steps", "9", "--lr-patience", "2"],
         "--lr-patience does nothing with --lr-schedule cosine"),
        (["--curve-batches", "5"], "--curve-batches does nothing without --curve-every"),
        (["--data", "synthetic", "--min-count", "3"],
         "--min-count does nothing with --data synthetic"),
        (["--encoding", "foo-8"], "--encoding 'foo-8' is not a text encoding Python knows"),
    ],
)  # fmt: skip
def test_an_option_that_would_do_nothing_is_refused(cli, capsys, argv, sentence) -> None:
    assert sentence in _usage_error(cli, argv, capsys)


def test_options_that_apply_are_accepted(cli) -> None:
    args = cli.parse_args(["--model", "transformer", "--num-heads", "8", "--positions",
                           "sinusoidal", "--lr-decay", "2", "--curve-every", "100",
                           "--curve-batches", "5", "--encoding", "latin-1",
                           "--max-size", "3"])  # fmt: skip
    assert (args.num_heads, args.lr_decay, args.curve_batches, args.max_size) == (8, 2.0, 5, 3)


def test_only_with_declarations_name_real_options(cli) -> None:
    names = {a.dest for a in cli.build_parser()._actions}
    for option, (other, _values) in cli.only_with().items():
        assert {option, other} <= names
    assert cli.only_with()["lr_decay"][0] == "lr_schedule"


def test_corpus_names_match_the_data_package(cli) -> None:
    from lm_heads.data.datamodule import DATA_CHOICES

    assert set(cli.DATA_NAMES) == set(DATA_CHOICES)


# 11. Compressed or binary "text" is named for what it is (latin-1 would train on the bytes).
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(b"the cat sat\n" * 50), "is gzip-compressed, not text: unpack it (gunzip"),
        (bz2.compress(b"the cat sat\n" * 50), "is bzip2-compressed, not text: unpack it (bunzip2"),
        (lzma.compress(b"the cat sat\n" * 50), "is xz-compressed, not text: unpack it (unxz"),
        (b"PK\x03\x04" + b"\x00" * 60, "is a zip archive, not text: unpack it (unzip"),
        (b"\x00" * 4096, "holds binary data, not text (NUL bytes in its first 4,096 bytes)"),
        (bytes(range(1, 32)) * 100, "holds binary data, not text (control characters"),
        ("the cat\n".encode("utf-16"), "--encoding utf-16"),
    ],
)
def test_binary_or_compressed_text_is_named(tmp_path, content: bytes, message: str) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "train.txt").write_bytes(content)
    with pytest.raises(DataUnavailableError, match=r"train\.txt") as error:
        LocalTextSource.open(corpus, encoding="latin-1")  # the advice that trained on garbage
    assert message in str(error.value)
    assert "--encoding latin-1" not in str(error.value)


def test_text_in_utf16_and_with_escapes_is_still_text(tmp_path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "valid.txt").write_bytes("the cat sat\tdown\n".encode("utf-16"))
    (corpus / "test.txt").write_bytes(b"colour \x1b[1mbold\x1b[0m text\r\n\x0c")
    with pytest.raises(DataUnavailableError, match="--encoding utf-16"):
        LocalTextSource.open(corpus)  # valid.txt begins with UTF-16's byte-order mark
    (corpus / "valid.txt").write_text("the cat sat\n")
    assert LocalTextSource.open(corpus).has_split("test")


# 12., 15. and 16. One short run on a local corpus: what it prints, and what it no longer prints.
@pytest.fixture(scope="module")
def short_run(lm, tmp_path_factory):
    """A 12-step run (one epoch, --log-every 5) with --min-count and --max-time, its output."""
    from recipe_helpers import TINY

    root = tmp_path_factory.mktemp("short")
    corpus = write_corpus(root / "corpus")
    argv = [*TINY, "--cache-dir", str(root / "cache"), "--output-dir", str(root / "run"),
            "--data", str(corpus), "--min-count", "70", "--max-steps", "-1", "--max-epochs", "1",
            "--limit-train-batches", "12", "--log-every", "5", "--max-time", "3600"]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    logged = logging.StreamHandler(err)  # Lightning's lines go through logging, not sys.stdout
    logging.getLogger("lightning.pytorch").addHandler(logged)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            results = lm.main(argv)
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(logged)
    return results, out.getvalue(), err.getvalue(), root


def test_the_end_of_a_run_says_what_it_does(short_run) -> None:
    results, out, _, _ = short_run
    lines = out.splitlines()
    steps = [line.split()[1] for line in lines if line.startswith("step ") and "ETA" in line]
    assert steps == ["5/12", "10/12", "12/12"]  # the last step too, not only each 5th
    val = f"step 12  val_ppl {results['val_curve'][-1]['val_ppl']:.2f}"
    assert val in lines  # the epoch end's validation perplexity, in the console
    assert lines.index(val) > lines.index(next(x for x in lines if x.startswith("step 12/12")))
    assert any(x.startswith("test of the final weights (") for x in lines)


def test_the_summary_names_what_happened(short_run) -> None:
    _, out, _, root = short_run
    assert "data            local text from" in out and "data: local" not in out.split("head ")[-1]
    assert f"checkpoint      {root / 'run' / 'checkpoints' / 'last.ckpt'}" in out
    assert "training steps  " in out and "fit time        " in out and "train time" not in out
    assert "stopped by --max-time" not in out  # it ended at its epoch


def test_a_smaller_vocabulary_is_noted(short_run) -> None:
    _, out, _, _ = short_run
    assert "note: --min-count 70 keeps" in out
    assert "perplexities compare only between runs with the same vocabulary" in out


def test_no_noise(short_run) -> None:
    _, out, err, _ = short_run
    for noise in ("GPU available", "TPU available", "litlogger", "val_check_interval",
                  "LeafSpec", "FLOPs", "Total Flops", "Trainer already configured",
                  "will override existing callbacks"):  # fmt: skip
        assert noise not in out + err, noise
    assert "Trainable params" in err  # the model summary itself stays


def test_metrics_csv_has_an_lr_column_and_the_progress_lines_steps(short_run) -> None:
    _, out, _, root = short_run
    (metrics,) = (root / "run" / "logs").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r["train_loss"]]
    assert rows and all(float(r["lr"]) == 20.0 for r in rows)  # the reference config's lr
    # Each progress line's step and loss are a row of metrics.csv (Lightning's rows said step 4
    # for the progress line's "step 5": its 0-based index of the step).
    lines = out.splitlines()
    printed = [x.split() for x in lines if x.startswith("step ") and "ETA" in x]
    logged = {int(r["step"]): float(r["train_loss"]) for r in rows}
    for words in printed:
        step, loss = int(words[1].split("/")[0]), float(words[words.index("loss") + 1])
        if step % 5 == 0:  # --log-every 5: the last step's line has no row of its own
            assert round(logged[step], 4) == loss, (step, logged)


def test_summary_reports_a_max_time_stop(lm, capsys) -> None:
    lm._print_summary(
        {"head": "full", "head_options": {}, "head_structure": "", "data_description": "data: x",
         "vocab_size": 5, "global_step": 7, "world_size": 1, "val_ppl": 2.0, "test_ppl": 2.0,
         "entropy_floor_ppl": None, "train_tokens_per_s": 1.0, "train_seconds": 9.0,
         "train_step_seconds": 5.0, "stopped_by_time": True, "peak_memory_mib": 1.0,
         "peak_memory_kind": "rss", "wall_seconds": 10.0, "checkpoint_last": "c/last.ckpt"},
        Path("r.json"),
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "steps           7 on 1 rank(s) (stopped by --max-time)" in out
    assert "data            x (V=5)" in out


def test_an_empty_train_file_is_called_empty(lm, tiny_args, tmp_path, capsys) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "train.txt").write_text("")
    with pytest.raises(SystemExit) as exc:
        lm.main([*tiny_args, "--data", str(corpus)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"the train split is empty: {corpus / 'train.txt'} holds no text" in err
    assert "--bptt" not in err


def test_unknown_prompt_words_are_named(trained, capsys) -> None:
    from recipe_helpers import load_recipe

    load_recipe("generate").main(["--checkpoint", str(trained), "--prompt", "w3 zzz w7 qqq zzz"])
    err = capsys.readouterr().err
    assert "2 prompt word(s) are not in the model's vocabulary and become <unk>: zzz, qqq" in err


def test_one_rank_with_too_many_threads_is_not_told_about_ranks() -> None:
    from recipes.threads import oversubscription

    warning = oversubscription(2, 1, environ={}, affinity=1, quota=None)
    assert warning is not None and warning.startswith("2 threads need 2 CPUs")
    assert "rank" not in warning


def test_signals_are_named_and_a_second_ctrl_c_exits_130(capsys) -> None:
    import signal

    from recipes.language_model import StopOnSignal

    stop = StopOnSignal()
    stop.request(signal.SIGTERM)
    assert "SIGTERM: stopping after this step" in capsys.readouterr().err
    assert "Ctrl-C again" not in capsys.readouterr().err
    stop = StopOnSignal()
    stop.request(signal.SIGINT)
    assert "(Ctrl-C again to stop at once" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        stop.request(signal.SIGINT)
    assert exc.value.code == 130


# 14. The README's command lines work as written.
def _readme_commands(repo: Path) -> list[list[str]]:
    """Every ``python recipes/lm.py ...`` line of the README's code blocks, as arguments."""
    text = (repo / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line.split("#")[0] for line in lines if "python recipes/lm.py" in line]
    return [shlex.split(c.split("python recipes/lm.py", 1)[1].split(">")[0]) for c in commands]


def test_readme_commands_parse(cli, repo, monkeypatch, capsys) -> None:
    commands = _readme_commands(repo)
    assert len(commands) >= 10
    monkeypatch.chdir(repo)
    monkeypatch.setattr(cli, "check_paths", lambda args: None)  # DIR, runs/lm: the user's paths
    shipped = {f"recipes/configs/{p.name}" for p in (repo / "recipes" / "configs").glob("*.yaml")}
    for argv in commands:
        config = argv[argv.index("--config") + 1] if "--config" in argv else None
        if config is not None and config not in shipped:
            continue  # my.yaml, runs/lm/results.json: written by an earlier command
        try:
            cli.parse_args(argv)
        except SystemExit as exit:  # --print_config exits 0; a mistake, 2
            assert exit.code == 0, argv
    assert "error" not in capsys.readouterr().err


def test_readme_says_what_its_commands_need(repo) -> None:
    text = (repo / "README.md").read_text()
    mlflow = next(line for line in text.splitlines() if "--logger" in line and "mlflow" in line)
    assert '".[loggers]"' in mlflow  # .[dev] does not install mlflow or wandb
    lm1b = [line for line in text.splitlines() if "configs/lm1b.yaml --data DIR" in line]
    assert any("cutoffs=auto" in line for line in lm1b)  # 200,000 cutoff needs all of LM1B
    assert "first line says which data" not in text
    assert "`--print-config`" in text


def test_the_value_a_message_offers_for_none_is_one_that_parses(capsys) -> None:
    # The message once offered "or none", and --max-epochs none was then refused in turn.
    from recipes.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--max-epochs", "x"])
    assert "a whole number or null, got 'x'" in capsys.readouterr().err
    assert parse_args(["--max-epochs", "null", "--max-steps", "5"]).max_epochs is None

"""What a new user meets in recipes/lm.py (issue 23, items 8-16): plain sentences for mistakes,
paths checked at once, no advice that trains on garbage, a run that says what it does."""

from __future__ import annotations

import pytest


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
        ("--lr", "abc", "a number > 0 or none"),
        ("--lr", "-1", "a number > 0 or none"),
        ("--threads", "0", "a whole number > 0 or none"),
        ("--devices", "0", "a whole number > 0 or auto"),
        ("--optimizer", "sgdd", "one of adam, adamw, sgd or none"),
        ("--logger", "foo", "one of csv, tensorboard, wandb, mlflow or a list, each one of csv, "
         "tensorboard, wandb, mlflow or none"),
        ("--eval-batch-size", "0", "a whole number > 0 or none"),
        ("--max-time", "-5", "a number > 0 or none"),
        ("--curve-every", "0", "a whole number > 0 or none"),
        ("--max-size", "0", "a whole number > 0 or none"),
        ("--limit-val-batches", "0", "a whole number > 0 or a number > 0 and <= 1 or none"),
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

    assert cli.describe_type(int | None) == "a whole number or none"
    assert cli.describe_type(Fraction) == "a number >= 0 and < 1"
    assert cli.describe_type(list[Literal["a", "b"]]) == "a list, each one of a, b"


# 14. --print-config with a dash, as every other option may be spelled.
@pytest.mark.parametrize("spelling", ["--print-config", "--print_config"])
def test_print_config_in_either_spelling(cli, capsys, spelling: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--lr", "0.5", spelling])
    assert exc.value.code == 0
    assert "lr: 0.5" in capsys.readouterr().out

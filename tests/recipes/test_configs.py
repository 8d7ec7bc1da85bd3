"""Every shipped YAML validates against recipes/lm.py's parser; bad configs fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_heads import HEADS, head_options

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"wikitext2_quick.yaml", "wikitext103.yaml", "lm1b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(lm, path: Path) -> None:
    args = lm.parse_args(["--config", str(path)])
    assert args.head in HEADS
    assert set(args.head_options) <= set(head_options(args.head))
    # Every key is used: an option that silently kept its default would mean a typo.
    parser = lm.build_parser()
    raw = lm.load_config(path, parser)
    for dest, value in raw.items():
        if dest != "head_option":
            assert getattr(args, dest) == value, dest


def test_standard_recipes(lm) -> None:
    w103 = lm.parse_args(["--config", str(REPO / "recipes/configs/wikitext103.yaml")])
    assert w103.head == "adaptive" and w103.head_options["cutoffs"] == [20000, 60000]
    lm1b = lm.parse_args(["--config", str(REPO / "recipes/configs/lm1b.yaml")])
    assert lm1b.head_options["cutoffs"] == [4000, 40000, 200000]
    assert lm1b.min_count == 3


def test_cli_overrides_config(lm) -> None:
    path = str(REPO / "recipes/configs/wikitext2_quick.yaml")
    args = lm.parse_args(
        [
            "--config",
            path,
            "--lr",
            "0.01",
            "--head-option",
            "cutoffs=[100, 500]",
            "--max-steps",
            "7",
        ]
    )
    assert args.lr == 0.01 and args.max_steps == 7
    assert args.head_options == {"cutoffs": [100, 500]}
    assert args.batch_size == 32  # from the file


def test_head_option_values_are_yaml(lm) -> None:
    args = lm.parse_args(
        [
            "--head",
            "importance",
            "--head-option",
            "num_samples=64",
            "--head-option",
            "alpha=0.5",
            "--head-option",
            "proposal=uniform",
            "--head-option",
            "bias=false",
        ]
    )
    assert args.head_options == {
        "num_samples": 64,
        "alpha": 0.5,
        "proposal": "uniform",
        "bias": False,
    }


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: fast\n", "lr: invalid value 'fast'"),
        ("batch_size: 0\n", "batch_size: invalid value 0"),
        ("batch_size: 3.5\n", "batch_size: invalid value 3.5"),
        ("model: rnn\n", "invalid choice 'rnn'"),
        ("learning_rate: 0.1\n", "unknown option; valid keys"),
        ("tie_weights: yes please\n", "must be true or false"),
        ("bptt: [1, 2]\n", "must be a single value"),
        ("head_options: [1, 2]\n", "must be a mapping"),
        ("- just\n- a list\n", "must be a mapping of option: value"),
        ("lr: [\n", "not valid YAML"),
        ("head: adaptive\nhead_options: {cutof: [1]}\n", "has no option(s) ['cutof']"),
    ],
)
def test_malformed_config_is_a_clear_error(lm, tmp_path, capsys, text: str, message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        lm.parse_args(["--config", _write(tmp_path, text)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_bad_cli_values(lm, capsys) -> None:
    for argv, message in [
        (["--head", "nope"], "invalid choice: 'nope'"),
        (["--head-option", "cutoffs"], "expected KEY=VALUE"),
        (["--dropout", "1.5"], "must lie in [0, 1)"),
        (["--eval-only"], "--eval-only needs --resume"),
    ]:
        with pytest.raises(SystemExit):
            lm.parse_args(argv)
        assert message in capsys.readouterr().err
